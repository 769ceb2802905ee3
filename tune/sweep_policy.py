"""Sweep the steerable policy (NP-DPO or pooled DPO) with Ray Tune: ASHA on the sweep's `metric`.

  python tune/sweep_policy.py --config configs/sweep_policy.yaml [key=value ...]
  python tune/sweep_policy.py --resume runs/sweep-policy-20261128-131500
  python jobs/submit.py --address http://127.0.0.1:8265 -- \\
      python tune/sweep_policy.py --config configs/sweep_policy.yaml output_dir=/abs/runs

The sweep config names a base policy job config (`base`, e.g. configs/steer_policy.yaml), the
policy to tune (`model`: a registered policy, listed below) and a search space over any job
field by dotted key, each dimension one of grid / choice / uniform / loguniform / randint:

  space:
    policy.latent_dim: {grid: [16, 64]}
    policy.beta: {choice: [2.0, 4.0]}
    policy.latent_lr: {loguniform: [3.0e-4, 3.0e-3]}
    train.zero_stage: {grid: [2, 3]}

Each trial runs the same Ray Train + DeepSpeed fit as jobs/train_policy.py and then scores its
implicit-reward accuracy by context size on the validation split. A policy trial holds a whole
LM: on a small machine keep max_concurrent_trials at 1.

Prints the table of trials and the sweep folder: trials.csv, best.yaml (run it with
`python jobs/train_policy.py --config FOLDER/best.yaml`), accuracy_vs_context.png and Tune's
state for `--resume FOLDER`.
"""

from __future__ import annotations

import sys

from npalign.cli import registered, run_sweep_job
from npalign.registry import POLICY_MODELS


def main(argv: list[str] | None = None) -> int:
    return run_sweep_job(f"{__doc__}\n{registered(POLICY_MODELS)}", argv, POLICY_MODELS)


if __name__ == "__main__":
    sys.exit(main())
