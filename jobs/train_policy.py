"""Train steerable policies (NP-DPO, pooled DPO, per-type oracle DPO) and score them.

  python jobs/train_policy.py --config configs/steer_policy.yaml [key=value ...]
  python jobs/submit.py --address http://127.0.0.1:8265 -- \\
      python jobs/train_policy.py --config configs/steer_policy.yaml

The policy is an HF causal LM (policy.base: 'smollm2', the packaged SmolLM2-135M-Instruct, or
any name or path) with LoRA and a FiLM layer after every block, conditioned on z from the user's
context pairs; DPO against the same network with LoRA and FiLM off. With `policy.encoder_job`
(configs/steer_policy.yaml names configs/steer_encoder.yaml) an NP-BTL is trained on the same
pairs first and starts z's encoder. Overrides, e.g.:
  models=[npdpo,dpo,oracle] policy.beta=2 policy.num_layers=4 train.zero_stage=3
  policy.encoder_init=RUN/checkpoints/npbtl/checkpoint_...   (an NP-BTL trained before)
`models` holds registered policies and `oracle` (one DPO per user type); `data.source` a
registered source of text preference tables (both listed at the end).

`jobs/submit.py` ships this checkout's library to every node of the cluster (as `ray job submit
--working-dir .` would the entrypoint alone); `--resume RUN_FOLDER` goes on with an interrupted
run in its own folder.

Prints the implicit-reward accuracy per user type vs context size (targets never in the context)
and the run folder holding metrics.json, table.txt, implicit_accuracy.png and the checkpoints
(adapters, FiLM and context encoder together).
"""

from __future__ import annotations

import sys

from npalign.cli import registered, run_job
from npalign.recipes.policy import POLICY
from npalign.registry import DATA_SOURCES, POLICY_MODELS


def main(argv: list[str] | None = None) -> int:
    doc = f"{__doc__}\n{registered(POLICY_MODELS, DATA_SOURCES)}"
    return run_job(doc, argv, POLICY)


if __name__ == "__main__":
    sys.exit(main())
