"""Sweep the reward job with Ray Tune: ASHA early stopping on the shared validation episodes.

  python tune/sweep_reward.py --config configs/sweep_synthetic.yaml [key=value ...]
  python tune/sweep_reward.py --resume runs/sweep-synthetic-20261128-101500
  python jobs/submit.py --address http://127.0.0.1:8265 -- \\
      python tune/sweep_reward.py --config configs/sweep_synthetic.yaml

The sweep config names a base job config (`base`, e.g. configs/synthetic.yaml), the reward model
to tune (`model`: a registered reward model, listed below) and a search space over any job
field by dotted key, each dimension one of grid / choice / uniform / loguniform / randint:

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

import sys

from npalign.cli import registered, run_sweep_job
from npalign.registry import REWARD_MODELS


def main(argv: list[str] | None = None) -> int:
    return run_sweep_job(f"{__doc__}\n{registered(REWARD_MODELS)}", argv, REWARD_MODELS)


if __name__ == "__main__":
    sys.exit(main())
