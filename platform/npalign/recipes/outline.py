"""The one outline every training recipe follows: data → episodes → a run folder with the config
copy → one Ray Train fit per model (and per user type for the oracle) → test-split evaluation →
metrics.json, table.txt and a plot of accuracy vs context size.

A recipe (`recipes/reward.py`, `recipes/policy.py`) supplies only what differs: what it runs
first (the policy's NP-BTL encoder), how it loads its splits, fits one registered model and scores
a checkpoint. The sweep reuses the same four.
Everything that can be wrong with the input (config, data, context sizes) is checked before the
run folder is created, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from npalign.config import ORACLE, EvalConfig
from npalign.data.episodes import sample_train_val, write_episodes
from npalign.data.preferences import PairTable, write_pairs
from npalign.data.sequences import TokenizedPairs
from npalign.evaluation.accuracy import (
    combine_types,
    evaluation_episodes,
    format_table,
    plot_accuracy,
)
from npalign.files import new_run_folder, write_json, write_text
from npalign.registry import DATA_SOURCES, Registry

log = logging.getLogger(__name__)


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
    folder: Path
    results: dict[str, dict]  # model → evaluation by context size (+ checkpoint, train metrics)
    reference: dict[str, list[float]]  # e.g. the Bayes limit per context size
    table: str
    splits: Splits = field(repr=False)
    earlier: dict[str, Run] = field(default_factory=dict)  # runs `prepare` made first

    @property
    def report(self) -> str:
        """The earlier runs' tables, then this run's."""
        parts = [f"{name}:\n{run.table}" for name, run in self.earlier.items()]
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
    load: Callable[[Any], Splits]
    fit: Callable[..., Any]
    evaluate: Callable[[Any, Path, Splits, str, EvalConfig], dict]


def nothing_first(job) -> tuple[Any, dict[str, Run]]:
    """`Recipe.prepare` of a recipe that needs nothing run first."""
    return job, {}


def config_yaml(job) -> str:
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)


def limit_reference(job, test: PairTable) -> dict[str, list[float]]:
    """The data source's best possible accuracy on the very test episodes the models are scored
    on (sources that know the users' rewards: the synthetic task's Bayes limit)."""
    limit = DATA_SOURCES[job.data.source].limit
    if limit is None:
        return {}
    e = job.eval
    episodes = evaluation_episodes(
        test, e.context_sizes, e.num_episodes, job.data.num_targets, e.seed
    )
    return {"Bayes limit": [float(limit(test, episodes[m]).mean()) for m in e.context_sizes]}


def fit_and_evaluate(job, recipe: Recipe, model: str, splits: Splits, files, folder: Path, name):
    """One fit of `model`, then its test-split evaluation with checkpoint and train metrics."""
    fit = recipe.fit(job, model, splits, files, folder / "checkpoints", name)
    result = recipe.evaluate(job, Path(fit.checkpoint.path), splits, "test", job.eval)
    return {**result, "checkpoint": fit.checkpoint.path, "train_metrics": fit.metrics}


def fit_oracle(job, recipe: Recipe, splits: Splits, folder: Path) -> dict:
    """The recipe's context-blind model once per user type, trained and scored on that type's
    labels only: what a model that is told the type reaches."""
    out: dict = {"average": {}, "by_type": {}, "checkpoint": {}, "train_metrics": {}}
    for user_type in sorted(set(splits.pairs["train"].user_type)):
        typed = splits.select_type(user_type)
        name = f"{ORACLE}-{user_type}"
        files = write_episodes(sample_train_val(job.data, typed.pairs), folder / "episodes" / name)
        result = fit_and_evaluate(job, recipe, recipe.oracle_model, typed, files, folder, name)
        out["by_type"][user_type] = result["by_type"][user_type]
        out["checkpoint"][user_type] = result["checkpoint"]
        out["train_metrics"][user_type] = result["train_metrics"]
    for m in job.eval.context_sizes:
        out["average"][m] = combine_types([by_m[m] for by_m in out["by_type"].values()])
    return out


def run_recipe(job, recipe: Recipe) -> Run:
    """The whole outline for `job` (a `recipe.schema` config)."""
    job, earlier = recipe.prepare(job)
    splits = recipe.load(job)
    # Sample every episode before creating the run folder: a context size that a user cannot
    # fill raises here.
    episodes = sample_train_val(job.data, splits.pairs)
    evaluation_episodes(
        splits.pairs["test"], job.eval.context_sizes, 1, job.data.num_targets, job.eval.seed
    )

    folder = new_run_folder(job.run.output_dir, job.run.name)
    write_text(folder / "config.yaml", config_yaml(job))
    for split, pairs in splits.pairs.items():
        write_pairs(pairs, folder / "data" / f"{split}.parquet")
    files = write_episodes(episodes, folder / "episodes")
    log.info("run folder: %s", folder)

    results = {}
    for model in job.models:
        if model == ORACLE:
            results[model] = fit_oracle(job, recipe, splits, folder)
        else:
            results[model] = fit_and_evaluate(job, recipe, model, splits, files, folder, model)

    reference = limit_reference(job, splits.pairs["test"])
    sizes = job.eval.context_sizes
    table = format_table(results, sizes, reference)
    write_json(
        folder / "metrics.json",
        {"results": results, "reference": reference, "context_sizes": sizes},
    )
    write_text(folder / "table.txt", table + "\n")
    plot_accuracy(results, sizes, folder / recipe.plot_file, reference)
    return Run(folder, results, reference, table, splits, earlier)
