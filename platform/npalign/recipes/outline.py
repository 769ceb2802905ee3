"""The one outline every training recipe follows: data → episodes → a run folder with the config
copy → one Ray Train fit per model (and per user type for the oracle) → evaluation →
metrics.json, table.txt and a plot of accuracy vs context size.

A recipe (`recipes/reward.py`, `recipes/policy.py`) supplies only what differs: what it runs
first (the policy's NP-BTL encoder), how it loads its splits, fits one registered model and scores
a checkpoint. The sweep reuses the same four. The evaluation scores `eval.split`: the test split,
once, for what is reported; the validation split while choosing settings. Everything that can be
wrong with the input (config, data, context sizes) is checked before the run folder is created,
so a bad input leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from npalign.config import ORACLE, ConfigError, EvalConfig
from npalign.data.episodes import sample_train_val, write_episodes
from npalign.data.preferences import PairTable, write_pairs
from npalign.data.sequences import TokenizedPairs
from npalign.evaluation.accuracy import (
    combine_types,
    evaluation_episodes,
    format_table,
    plot_accuracy,
)
from npalign.files import Location, new_run_folder, write_json, write_text
from npalign.registry import DATA_SOURCES, Registry

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"


@dataclass
class Splits:
    """What a recipe trains and scores on, per split (train, val, test), row-aligned."""

    pairs: dict[str, PairTable]  # features (reward models) or context embeddings (policies)
    text: dict[str, pa.Table] | None = None  # the text tables, for text sources
    tokens: dict[str, TokenizedPairs] | None = None  # policies: the targets' tokens

    def select_type(self, user_type: str) -> Splits:
        """The rows of one user type, in every split."""
        out = Splits({})
        for split, pairs in self.pairs.items():
            rows = np.flatnonzero(pairs.user_type == user_type)
            out.pairs[split] = pairs.select(rows)
            if self.text is not None:
                out.text = (out.text or {}) | {split: self.text[split].take(rows)}
            if self.tokens is not None:
                out.tokens = (out.tokens or {}) | {split: self.tokens[split].select(rows)}
        return out


@dataclass
class Run:
    folder: Location  # a local folder or a URI (run.output_dir)
    results: dict[str, dict]  # model → evaluation by context size (+ checkpoint, train metrics)
    reference: dict[str, list[float]]  # e.g. the Bayes limit per context size
    table: str
    splits: Splits = field(repr=False)
    earlier: dict[str, Run] = field(default_factory=dict)  # runs `prepare` made first

    @property
    def report(self) -> str:
        """The earlier runs' tables, then this run's."""
        parts = [
            f"{name}, run first ({run.folder}):\n{run.table}" for name, run in self.earlier.items()
        ]
        return "\n\n".join([*parts, self.table])


@dataclass(frozen=True)
class Recipe:
    """What differs between the reward and the policy recipe. `prepare(job)` runs what the job
    needs first and returns (the job completed with it, those runs by name); `fit(job, model,
    splits, episode_files, storage, name, callbacks)` runs one Ray Train fit of a registered
    model (checkpoints in storage/name, resumed from there when rerun); `evaluate(job,
    checkpoint, splits, split, settings)` scores a checkpoint by context size on one split."""

    name: str
    schema: type  # the job config
    models: Registry  # the models it trains
    oracle_model: str  # the context-blind model fitted per user type for the oracle
    plot_file: str
    prepare: Callable[[Any], tuple[Any, dict[str, Run]]]
    # Job keys what `prepare` ran depends on: a sweep, which prepares once, cannot vary them.
    prepared_keys: Callable[[Any], tuple[str, ...]]
    load: Callable[[Any], Splits]
    fit: Callable[..., Any]
    evaluate: Callable[[Any, Location, Splits, str, EvalConfig], dict]


def nothing_first(job) -> tuple[Any, dict[str, Run]]:
    """`Recipe.prepare` of a recipe that needs nothing run first."""
    return job, {}


def no_keys(job) -> tuple[str, ...]:
    """`Recipe.prepared_keys` of a recipe that needs nothing run first."""
    return ()


def config_yaml(job) -> str:
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)


def limit_reference(job, test: PairTable) -> dict[str, list[float]]:
    """The data source's best possible accuracy on the very episodes the models are scored on
    (sources that know the users' rewards: the synthetic task's Bayes limit)."""
    source = DATA_SOURCES[job.data.source]
    if source.limit is None:
        return {}
    e = job.eval
    episodes = evaluation_episodes(
        test, e.context_sizes, e.num_episodes, job.data.num_targets, e.seed
    )
    return {
        source.limit_label: [float(source.limit(test, episodes[m]).mean()) for m in e.context_sizes]
    }


def fit_and_evaluate(
    job, recipe: Recipe, model: str, splits: Splits, files, folder: Location, name: str
):
    """One fit of `model`, then its evaluation (on `eval.split`) with checkpoint and train
    metrics."""
    # DeepSpeed and Ray Train load only when a fit runs.
    from npalign.train.loop import kept, val_by_epoch

    storage = folder / "checkpoints"
    fit = recipe.fit(job, model, splits, files, storage, name)
    checkpoint, metrics = kept(fit, job.train)
    where = storage.at(checkpoint.path)  # a path on the storage's filesystem → its URI
    result = recipe.evaluate(job, where, splits, job.eval.split, job.eval)
    return {
        **result,
        "checkpoint": str(where),
        "train_metrics": metrics,  # the kept epoch's
        "last_epoch_metrics": fit.metrics,
        "val_nll_by_epoch": val_by_epoch(fit),
    }


def oracle_result(job, per_type: dict[str, dict]) -> dict:
    """The oracle's result from each type's own (each scored on its type's episodes only)."""
    keys = ("average", "by_type", "checkpoint", "train_metrics", "val_nll_by_epoch")
    out: dict = {key: {} for key in keys}
    for user_type, result in per_type.items():
        out["by_type"][user_type] = result["by_type"][user_type]
        out["checkpoint"][user_type] = result["checkpoint"]
        out["train_metrics"][user_type] = result.get("train_metrics")
        out["val_nll_by_epoch"][user_type] = result.get("val_nll_by_epoch")
    for m in job.eval.context_sizes:
        out["average"][m] = combine_types([by_m[m] for by_m in out["by_type"].values()])
    return out


def fit_oracle(job, recipe: Recipe, splits: Splits, folder: Location) -> dict:
    """The recipe's context-blind model once per user type, trained and scored on that type's
    labels only: what a model that is told the type reaches."""
    per_type = {}
    for user_type in sorted(set(splits.pairs["train"].user_type)):
        typed = splits.select_type(user_type)
        name = f"{ORACLE}-{user_type}"
        per_type[user_type] = finished_or_fit(
            folder,
            name,
            lambda typed=typed, name=name: fit_and_evaluate(
                job,
                recipe,
                recipe.oracle_model,
                typed,
                oracle_episodes(job, typed, folder, name),
                folder,
                name,
            ),
        )
    return oracle_result(job, per_type)


def oracle_episodes(job, typed: Splits, folder: Location, name: str) -> dict[str, Location]:
    """One type's train and val episodes, written once (a resumed run trains on the same)."""
    files = {split: folder / "episodes" / name / f"{split}.parquet" for split in ("train", "val")}
    if all(path.exists() for path in files.values()):
        return files
    return write_episodes(sample_train_val(job.data, typed.pairs), folder / "episodes" / name)


RESULTS_DIR = "results"  # one JSON per finished fit: what a resumed run does not redo


def by_context_size(result: dict) -> dict:
    """A result read back from JSON, its accuracies keyed by context size (int) again."""
    out = dict(result)
    out["average"] = {int(m): v for m, v in result["average"].items()}
    out["by_type"] = {
        user_type: {int(m): v for m, v in by_m.items()}
        for user_type, by_m in result["by_type"].items()
    }
    return out


def finished_or_fit(folder: Location, name: str, fit: Callable[[], dict]) -> dict:
    """The result of fit `name` of the run in `folder`: read back if an earlier attempt finished
    it, else `fit()`, saved at once."""
    path = folder / RESULTS_DIR / f"{name}.json"
    if path.exists():
        log.info("%s: finished before, not run again (%s)", name, path)
        return by_context_size(json.loads(path.read_text()))
    result = fit()
    write_json(path, result)
    return result


def rescore(job, recipe: Recipe, checkpoint: str, splits: Splits, split: str) -> dict:
    """`recipe.evaluate` of a checkpoint given by path or URI, and that checkpoint."""
    scores = recipe.evaluate(job, Location(checkpoint), splits, split, job.eval)
    return scores | {"checkpoint": checkpoint}


def rescore_run(job, recipe: Recipe, folder: str | Path | Location) -> Run:
    """The checkpoints of a finished run (its folder's metrics.json) scored again, on
    `job.eval.split`, nothing trained: settings are chosen on the validation split, then the test
    split is scored once. `job` is the run's config.yaml, maybe with other evaluation settings."""
    folder = Location(folder)
    fitted = json.loads((folder / "metrics.json").read_text())["results"]
    splits = recipe.load(job)
    split = job.eval.split
    results = {}
    for model, earlier in fitted.items():
        if model == ORACLE:
            per_type = {
                user_type: rescore(job, recipe, checkpoint, splits.select_type(user_type), split)
                for user_type, checkpoint in earlier["checkpoint"].items()
            }
            results[model] = oracle_result(job, per_type)
        else:
            results[model] = rescore(job, recipe, earlier["checkpoint"], splits, split)
    reference = limit_reference(job, splits.pairs[split])
    table = format_table(results, job.eval.context_sizes, reference)
    return Run(folder, results, reference, table, splits)


def run_recipe(job, recipe: Recipe) -> Run:
    """The whole outline for `job` (a `recipe.schema` config)."""
    from npalign.train.deepspeed import check_deepspeed_config  # DeepSpeed: loaded to train

    splits = recipe.load(job)
    # Sample every episode before anything runs: a context size that a user cannot fill raises
    # here, before what the recipe runs first and before the run folder.
    episodes = sample_train_val(job.data, splits.pairs)
    evaluation_episodes(
        splits.pairs[job.eval.split], job.eval.context_sizes, 1, job.data.num_targets, job.eval.seed
    )
    check_deepspeed_config(job.train)
    job, earlier = recipe.prepare(job)

    folder = new_run_folder(job.run.output_dir, job.run.name)
    write_text(folder / CONFIG_FILE, config_yaml(job))
    for split, pairs in splits.pairs.items():
        write_pairs(pairs, folder / "data" / f"{split}.parquet")
    write_episodes(episodes, folder / "episodes")
    log.info("run folder: %s", folder)
    return fit_all(job, recipe, splits, folder, earlier)


def resume_recipe(folder: str | Path | Location, recipe: Recipe) -> Run:
    """Go on with an interrupted run in its own folder: its config.yaml (with what the recipe
    ran first already filled in) and episodes; finished fits are read back, an interrupted fit
    resumes from its latest checkpoint, the rest run."""
    from npalign.config import load_config
    from npalign.train.deepspeed import check_deepspeed_config  # DeepSpeed: loaded to train

    folder = Location(folder)
    if not (folder / CONFIG_FILE).exists() or not (folder / "episodes").is_dir():
        raise ConfigError(f"{folder}: not a run folder (no {CONFIG_FILE} or episodes/)")
    job = load_config(folder / CONFIG_FILE, schema=recipe.schema)
    check_deepspeed_config(job.train)
    log.info("resuming run %s", folder)
    return fit_all(job, recipe, recipe.load(job), folder, {})


def fit_all(job, recipe: Recipe, splits: Splits, folder: Location, earlier: dict[str, Run]) -> Run:
    """Every model of `job` fitted (or read back) and scored, then metrics.json, table.txt and
    the plot."""
    files = {split: folder / "episodes" / f"{split}.parquet" for split in ("train", "val")}
    results = {}
    for model in job.models:
        if model == ORACLE:
            results[model] = fit_oracle(job, recipe, splits, folder)
        else:
            results[model] = finished_or_fit(
                folder,
                model,
                lambda model=model: fit_and_evaluate(
                    job, recipe, model, splits, files, folder, model
                ),
            )

    reference = limit_reference(job, splits.pairs[job.eval.split])
    sizes = job.eval.context_sizes
    table = format_table(results, sizes, reference)
    write_json(
        folder / "metrics.json",
        {"results": results, "reference": reference, "context_sizes": sizes},
    )
    write_text(folder / "table.txt", table + "\n")
    plot_accuracy(results, sizes, folder / recipe.plot_file, reference)
    return Run(folder, results, reference, table, splits, earlier)
