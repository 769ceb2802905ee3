"""Train reward models (BTL, DPL, NP-BTL) through Ray Train + DeepSpeed and evaluate them.

  python jobs/train_reward.py --config configs/synthetic.yaml [key=value ...]
  ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
      python jobs/train_reward.py --config configs/synthetic.yaml

Overrides use dotted keys into the config, e.g.:
  models=[npbtl] train.epochs=1 train.zero_stage=3 model.aggregation=attention
  data.source=parquet data.path=/data/prefs   (a folder with train/val/test.parquet)

Prints the accuracy-vs-context table and the run folder holding metrics.json, table.txt,
accuracy.png and the checkpoints.
"""

from __future__ import annotations

import sys

from npalign.cli import run_job
from npalign.config import RewardJobConfig
from npalign.experiment import run_reward_experiment


def main(argv: list[str] | None = None) -> int:
    return run_job(__doc__, argv, RewardJobConfig, run_reward_experiment)


if __name__ == "__main__":
    sys.exit(main())
