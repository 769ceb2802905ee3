"""Sweep the reward job with Ray Tune: ASHA early stopping on the shared validation episodes.

  python tune/sweep_reward.py --config configs/sweep_synthetic.yaml [key=value ...]
  python tune/sweep_reward.py --resume runs/sweep-synthetic-20261128-101500
  ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
      python tune/sweep_reward.py --config configs/sweep_synthetic.yaml

The sweep config names a base job config (`base`, e.g. configs/synthetic.yaml), the reward model
to tune (`model`) and a search space over any job field by dotted key, each dimension one of
grid / choice / uniform / loguniform / randint:

  space:
    data.max_context: {grid: [2, 10]}
    model.latent_dim: {grid: [16, 64]}
    train.lr: {loguniform: [3.0e-4, 3.0e-3]}

Each trial runs the same Ray Train + DeepSpeed fit as jobs/train_reward.py (workers from the
base config's `train` section; `trial_cpus` for the trial's own process). Overrides apply to the
sweep config, e.g. max_concurrent_trials=1 num_samples=4.

Prints the table of trials and the sweep folder, which holds trials.csv, best.yaml (run it with
`python jobs/train_reward.py --config FOLDER/best.yaml`), accuracy_vs_context.png and Tune's
state: after an interruption (Ctrl-C, a lost node), `--resume FOLDER` continues without rerunning
finished trials.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from npalign.config import ConfigError, SweepConfig, load_config
from npalign.data.preferences import PreferenceDataError
from npalign.sweep import resume_sweep, run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--config", help="sweep YAML (see configs/sweep_synthetic.yaml)")
    start.add_argument("--resume", type=Path, help="sweep folder of an interrupted sweep")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the sweep config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if args.resume:
            run = resume_sweep(args.resume)
        else:
            run = run_sweep(load_config(args.config, args.overrides, SweepConfig))
    except (ConfigError, PreferenceDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(run.table)
    if run.best:
        print(f"best trial: {run.best['trial']} → {run.folder / 'best.yaml'}")
    print(f"sweep folder: {run.folder}")
    if not run.best:
        print("error: no trial finished (see the error files Tune listed above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
