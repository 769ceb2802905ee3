"""The command line shared by the training jobs: `--config FILE key=value ...`, one clear error
and exit code 2 for bad input, the results table and the run folder printed at the end."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from npalign.config import ConfigError, load_config
from npalign.data.preferences import PreferenceDataError


def run_job(doc: str, argv: list[str] | None, schema: type, run: Callable[[Any], Any]) -> int:
    """Parse, validate into `schema`, call `run(config)` (which returns an object with `.table`
    and `.folder`) and report."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config (see configs/); defaults when omitted")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        result = run(load_config(args.config, args.overrides, schema))
    except (ConfigError, PreferenceDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.table)
    print(f"run folder: {result.folder}")
    return 0
