"""The command line shared by the entrypoints (jobs/, tune/): `--config FILE key=value ...`, one
clear error and exit code 2 for bad input, the results table and the run folder printed at the
end.

Nothing here or in the library initialises Ray: it joins a cluster on first use — the one
`ray job submit` names in RAY_ADDRESS, else a new local one — so a bad config or bad data fails
before any cluster starts, and a notebook or test that initialised Ray its own way keeps it."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from npalign.config import ConfigError, load_config
from npalign.data.preferences import PreferenceDataError
from npalign.recipes.outline import Recipe, resume_recipe, run_recipe
from npalign.registry import Registry

T = TypeVar("T")


def job_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose --help shows the entrypoint's docstring as written."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def registered(*registries: Registry) -> str:
    """What the registries hold, each name with its description (or docstring's first line),
    for an entrypoint's --help."""
    lines = []
    for registry in registries:
        lines.append(f"registered {registry.family} names:")
        for name in registry.names():
            entry = registry[name]
            about = getattr(entry, "description", None) or (entry.__doc__ or "").split("\n")[0]
            lines.append(f"  {name:<12} {about}")
    return "\n".join(lines)


def run_checked(run: Callable[[], T]) -> T | None:
    """`run()` with logging on; bad input (a config or data error, whose message names the file
    and field) is printed as one line on stderr and gives None instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return run()
    except (ConfigError, PreferenceDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def run_job(doc: str, argv: list[str] | None, recipe: Recipe) -> int:
    """`--config FILE [key=value ...]` runs `recipe` on a new run folder, `--resume FOLDER` goes
    on with an interrupted one; prints its tables and folder."""
    parser = job_parser(doc)
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--config", help="YAML config (see configs/); defaults when omitted")
    start.add_argument(
        "--resume",
        help="the run folder (a path or a URI) of an interrupted run: finished fits are kept, "
        "an interrupted one goes on from its latest checkpoint (its config.yaml as it is)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4")
    args = parser.parse_args(argv)
    if args.resume and args.overrides:
        parser.error("--resume takes no overrides: the run goes on with its own config.yaml")

    def run():
        if args.resume:
            return resume_recipe(args.resume, recipe)
        return run_recipe(load_config(args.config, args.overrides, recipe.schema), recipe)

    result = run_checked(run)
    if result is None:
        return 2
    print(result.report)
    print(f"run folder: {result.folder}")
    return 0


def run_sweep_job(doc: str, argv: list[str] | None, models: Registry) -> int:
    """The sweep entrypoints: `--config SWEEP.yaml [key=value ...]` or `--resume FOLDER`; the
    sweep's `model` must be one of `models` (the reward or the policy family)."""
    from npalign.config import SweepConfig
    from npalign.sweep import resume_sweep, run_sweep

    parser = job_parser(doc)
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--config", help="sweep YAML (see configs/sweep_*.yaml)")
    start.add_argument("--resume", help="folder (a path or a URI) of an interrupted sweep")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the sweep config")
    args = parser.parse_args(argv)

    def run():
        if args.resume:
            return resume_sweep(args.resume)
        sweep = load_config(args.config, args.overrides, SweepConfig)
        if sweep.model not in models:
            raise ConfigError(
                f"{args.config}: model {sweep.model!r} is not swept here (this entrypoint sweeps "
                f"the {models.family}s {', '.join(models.names())})"
            )
        return run_sweep(sweep)

    run = run_checked(run)
    if run is None:
        return 2
    print(run.table)
    if run.best:
        print(f"best trial: {run.best['trial']} → {run.folder / 'best.yaml'}")
    print(f"sweep folder: {run.folder}")
    if not run.best:
        print("error: no trial finished (see the error files Tune listed above)", file=sys.stderr)
        return 1
    return 0
