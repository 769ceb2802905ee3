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

import argparse
import logging
import sys

from npalign.config import ConfigError, load_config
from npalign.data.preferences import PreferenceDataError
from npalign.experiment import run_reward_experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config (see configs/); defaults when omitted")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.overrides)
        run = run_reward_experiment(config)
    except (ConfigError, PreferenceDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(run.table)
    print(f"run folder: {run.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
