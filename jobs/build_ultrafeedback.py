"""Build the paper's UltraFeedback HH or HHT conflicting-pair splits as text preference parquet.

  python jobs/build_ultrafeedback.py --source openbmb/UltraFeedback --variant hh --out data/uf-hh
  python jobs/build_ultrafeedback.py --source /data/ultrafeedback.jsonl --variant hht --out ...

--source is a hub name (when online), a local HF dataset folder, a JSONL or a parquet file in
UltraFeedback's schema. Writes train/val/test.parquet (split 80/10/10 by prompt) into --out.
"""

from __future__ import annotations

import argparse
import logging
import sys

from npalign.data.preferences import PreferenceDataError
from npalign.data.text import load_records
from npalign.data.ultrafeedback import ATTRIBUTES, build_ultrafeedback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default="openbmb/UltraFeedback")
    parser.add_argument("--variant", choices=sorted(ATTRIBUTES), default="hh")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split by prompt")
    parser.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.05,
        help="fail when more than this share of source rows is bad",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        counts = build_ultrafeedback(
            load_records(args.source),
            args.variant,
            args.out,
            args.source,
            args.seed,
            args.max_bad_fraction,
        )
    except PreferenceDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.variant}: {counts} rows (pair × attribute user) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
