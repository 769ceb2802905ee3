"""Export a trained policy so that it loads without npalign: a PEFT adapter folder for
`PeftModel.from_pretrained(base, ...)`, FiLM and the context encoder as safetensors with a JSON
description, and a model card (README.md) with the run's data section and table.

  python jobs/export_policy.py RUN/checkpoints/npdpo/checkpoint_... --out exported/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from npalign.export import export_policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="a policy checkpoint folder (policy.json)")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the export")
    args = parser.parse_args(argv)
    if not (args.checkpoint / "policy.json").exists():
        parser.error(f"{args.checkpoint}: no policy.json (not a policy checkpoint folder)")
    print(f"exported to {export_policy(args.checkpoint, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
