"""What the reward benchmarks share: parse `--config/--out/--run/overrides`, run the reward recipe
(or score an earlier run's models again), and write its results as JSON."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npalign.config import RewardJobConfig, load_config
from npalign.files import write_json
from npalign.recipes.outline import Run, rescore_run, run_recipe
from npalign.recipes.reward import REWARD

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Bench:
    config: RewardJobConfig
    run: Run
    minutes: float
    out: str | None


def run_benchmark(doc: str, default_config: str, name: str) -> Bench:
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / default_config))
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--run",
        type=Path,
        help="score the fitted models of this earlier run folder again (its config.yaml plus the "
        "overrides, e.g. eval.split=val): no training",
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    if args.run:
        config = load_config(args.run / "config.yaml", args.overrides)
        run = rescore_run(config, REWARD, args.run)
    else:
        config = load_config(args.config, [f"run.name={name}", *args.overrides])
        run = run_recipe(config, REWARD)
    return Bench(config, run, (time.perf_counter() - start) / 60, args.out)


def write_results(bench: Bench, **extra: Any) -> None:
    if not bench.out:
        return
    write_json(
        bench.out,
        {
            "config": bench.config.model_dump(mode="json"),
            "minutes": bench.minutes,
            "context_sizes": bench.config.eval.context_sizes,
            "results": {
                k: {"average": v["average"], "by_type": v["by_type"]}
                for k, v in bench.run.results.items()
            },
            **extra,
        },
    )
