"""Synthetic benchmark (paper §5.1): BTL, DPL and NP-BTL accuracy vs context size.

Trains each model through the platform's Ray Data → Ray Train → DeepSpeed path with
configs/synthetic.yaml, then scores targets that were never in the context, at 0/1/3/5/10 context
pairs, mean ± SEM over the test episodes. Prints the Bayes limit beside the measured rows: the
closed form 100 − 25·0.5^m for two balanced types, and the exact limit on these very episodes.

  .venv/bin/python benchmarks/synthetic_reward.py --out benchmarks/synthetic_reward.json
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from npalign.config import load_config
from npalign.evaluate import format_table
from npalign.experiment import run_reward_experiment
from npalign.files import write_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs/synthetic.yaml"))
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    config = load_config(args.config, ["run.name=bench-synthetic", *args.overrides])
    start = time.perf_counter()
    run = run_reward_experiment(config)
    minutes = (time.perf_counter() - start) / 60

    sizes = config.eval.context_sizes
    reference = {"Bayes 100-25*0.5^m": [100 - 25 * 0.5**m for m in sizes], **run.reference}
    print(
        f"\nseeds: data {config.data.synthetic.seed}, episodes {config.data.seed}, "
        f"train {config.train.seed}, eval {config.eval.seed}; "
        f"{config.eval.num_episodes} test episodes per context size; {minutes:.1f} min"
    )
    print(format_table(run.results, sizes, reference))
    print(f"run folder: {run.folder}")
    if args.out:
        write_json(
            args.out,
            {
                "config": config.model_dump(mode="json"),
                "minutes": minutes,
                "context_sizes": sizes,
                "results": {
                    k: {"average": v["average"], "by_type": v["by_type"]}
                    for k, v in run.results.items()
                },
                "reference": reference,
            },
        )


if __name__ == "__main__":
    main()
