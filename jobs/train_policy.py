"""Train steerable policies (NP-DPO, pooled DPO, per-type oracle DPO) and score them.

  python jobs/train_policy.py --config configs/steer_policy.yaml [key=value ...]
  ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
      python jobs/train_policy.py --config configs/steer_policy.yaml

The policy is an HF causal LM (policy.base: 'smollm2', the packaged SmolLM2-135M-Instruct, or
any name or path) with LoRA and a FiLM layer after every block, conditioned on z from the user's
context pairs; DPO against the same network with LoRA and FiLM off. Overrides, e.g.:
  models=[npdpo,dpo,oracle] policy.beta=0.1 policy.num_layers=4 train.zero_stage=3
  policy.encoder_init=RUN/checkpoints/npbtl/checkpoint_...   (start z's encoder from NP-BTL)

Prints the implicit-reward accuracy per user type vs context size (targets never in the context)
and the run folder holding metrics.json, table.txt, implicit_accuracy.png and the checkpoints
(adapters, FiLM and context encoder together).
"""

from __future__ import annotations

import sys

from npalign.cli import run_job
from npalign.config import PolicyJobConfig
from npalign.policy_experiment import run_policy_experiment


def main(argv: list[str] | None = None) -> int:
    return run_job(__doc__, argv, PolicyJobConfig, run_policy_experiment)


if __name__ == "__main__":
    sys.exit(main())
