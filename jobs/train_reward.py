"""Train reward models (BTL, DPL, NP-BTL) through Ray Train + DeepSpeed and evaluate them.

  python jobs/train_reward.py --config configs/synthetic.yaml [key=value ...]
  python jobs/submit.py --address http://127.0.0.1:8265 -- \\
      python jobs/train_reward.py --config configs/synthetic.yaml

Overrides use dotted keys into the config, e.g.:
  models=[npbtl] train.epochs=1 train.zero_stage=3 model.aggregation=attention
  data.source=parquet data.path=/data/prefs   (a folder with train/val/test.parquet)
`models` holds registered reward models and `oracle` (one BTL per user type); `data.source` a
registered data source (both listed at the end).

`jobs/submit.py` ships this checkout's library to every node of the cluster (as `ray job submit
--working-dir .` would the entrypoint alone); `--resume RUN_FOLDER` goes on with an interrupted
run in its own folder.

Prints the accuracy-vs-context table and the run folder holding metrics.json, table.txt,
accuracy.png and the checkpoints.
"""

from __future__ import annotations

import sys

from npalign.cli import registered, run_job
from npalign.recipes.reward import REWARD
from npalign.registry import DATA_SOURCES, REWARD_MODELS


def main(argv: list[str] | None = None) -> int:
    doc = f"{__doc__}\n{registered(REWARD_MODELS, DATA_SOURCES)}"
    return run_job(doc, argv, REWARD)


if __name__ == "__main__":
    sys.exit(main())
