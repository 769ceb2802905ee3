"""Small data, where users start: the reward recipe (pooled BTL, per-type oracle BTLs, NP-BTL) on
a 10 % subset of the steer task and on a small rated-responses table, keeping each fit's
checkpoint with the lowest validation NLL.

- "steer 10%": the first 30 of the corpus's stories (configs/steer.yaml otherwise).
- "rated": the steer task's candidate answers for 120 stories as a rated table (one row per
  prompt and response, scored on `length` and `formality`, `npalign.data.steer.rated_responses`),
  read through `data.source=records` with `format: rated`: a user type per attribute on the pairs
  where the two disagree by more than 0.5.

Both split by prompt 60/20/20 (a 10 % split of 30 stories would leave 3 validation prompts,
under `data.min_val_pairs`) and train 8 epochs of 4,000 episodes, long enough that the
validation NLL turns up where the data is small. Nothing is chosen on the test split: the
settings are fixed above, the epoch kept is the validation minimum.

Checks printed at the end: NP-BTL at 10 context pairs within 2 points of each type's oracle; the
kept checkpoint of every fit at its validation minimum.

  .venv/bin/python benchmarks/small_data.py --out benchmarks/small_data.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from npalign.config import SteerConfig, load_config
from npalign.data.steer import rated_responses
from npalign.evaluation.accuracy import format_table
from npalign.files import atomic_path, cache_dir, write_json
from npalign.recipes.outline import run_recipe
from npalign.recipes.reward import REWARD

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["train.epochs=8", "data.train_episodes=4000", "data.val_episodes=500"]
RATED_STORIES = 120
RATED = {
    "format": "rated",
    "attributes": ["length", "formality"],
    "margin": 0.5,
    "split_fractions": [0.6, 0.2, 0.2],
}


def rated_file() -> Path:
    """The rated table of the steer answers, written once to the cache."""
    path = cache_dir("benchmarks", f"steer_rated_{RATED_STORIES}.parquet")
    if not path.exists():
        rows = rated_responses(SteerConfig(stories=RATED_STORIES))
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
    return path


def datasets() -> dict[str, list[str]]:
    return {
        "steer 10%": ["data.steer.stories=30", "data.steer.split=[0.6,0.2,0.2]"],
        "rated": [
            "data.source=records",
            f"data.path={rated_file()}",
            f"data.records={json.dumps(RATED)}",
        ],
    }


def fits(result: dict) -> dict[str, tuple[int, dict]]:
    """fit name → (kept epoch, val_nll by epoch); the oracle has one fit per type."""
    if "val_nll_by_epoch" not in result:
        return {}
    if isinstance(result["checkpoint"], str):
        return {"": (result["train_metrics"]["epoch"], result["val_nll_by_epoch"])}
    return {
        f" [{t}]": (result["train_metrics"][t]["epoch"], result["val_nll_by_epoch"][t])
        for t in result["checkpoint"]
    }


def checks_of(results: dict, largest: int) -> dict[str, dict]:
    checks = {}
    for user_type, oracle in results["oracle"]["by_type"].items():
        gap = oracle[largest]["mean"] - results["npbtl"]["by_type"][user_type][largest]["mean"]
        checks[f"npbtl within 2 of oracle [{user_type}] at m={largest}"] = {
            "gap": gap,
            "pass": gap <= 2,
        }
    for model, result in results.items():
        for suffix, (epoch, curve) in fits(result).items():
            best = min(curve, key=curve.get)
            checks[f"{model}{suffix} kept the validation minimum"] = {
                "kept_epoch": epoch,
                "val_nll_by_epoch": {e: round(v, 4) for e, v in curve.items()},
                "pass": epoch == best,
            }
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for both runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = {}
    for name, settings in datasets().items():
        start = time.perf_counter()
        run_name = "bench-small-" + name.split()[0]
        config = load_config(
            ROOT / "configs/steer.yaml",
            [f"run.name={run_name}", *SMALL, *settings, *args.overrides],
        )
        run = run_recipe(config, REWARD)
        sizes = config.eval.context_sizes
        checks = checks_of(run.results, max(sizes))
        rows = {split: len(table) for split, table in run.splits.pairs.items()}
        print(f"\n{name}: labelled pairs per split {rows}; {run.folder}")
        print(format_table(run.results, sizes))
        for check, outcome in checks.items():
            print(f"{'PASS' if outcome['pass'] else 'FAIL'}  {check}: {outcome}")
        out[name] = {
            "config": config.model_dump(mode="json"),
            "minutes": (time.perf_counter() - start) / 60,
            "rows": rows,
            "results": {
                k: {"average": v["average"], "by_type": v["by_type"]}
                for k, v in run.results.items()
            },
            "checks": checks,
        }
    if args.out:
        write_json(args.out, {"context_sizes": sizes, "datasets": out})


if __name__ == "__main__":
    main()
