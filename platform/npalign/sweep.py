"""Ray Tune sweeps of the reward job or the policy job: context sizes, latent and hidden dims,
learning rate, aggregation, ZeRO stage, DPO β or any other job field, with ASHA early stopping.

Each trial is a function trainable that runs the fit of the recipe whose registry holds the
sweep's `model` (`jobs/train_reward.py`'s or `jobs/train_policy.py`'s) — the Train V2 pattern:
Tune drives a TorchTrainer, `TuneReportCallback` forwards its epoch reports. A policy sweep whose
base names `policy.encoder_job` trains that NP-BTL once and starts every trial from it. All
trials share one dataset and one set of validation episodes (context sizes spanning the sweep's
evaluation sizes), so their validation losses compare like with like. A trial that finishes
scores its model on the validation split at each context size (a policy: its implicit-reward
accuracy). A sweep folder holds:

    trials.csv           every trial: its point of the space, status, last metrics
    best.yaml            the best trial's full job config, ready for its job
    accuracy_vs_context.png   validation accuracy vs m for the best few trials
    sweep.yaml, base.yaml     the sweep and the base job config (validated, overrides and what
                         the recipe ran first applied)
    <name>-npbtl-*/      a policy sweep's NP-BTL encoder run
    tune/                Tune's experiment state (`resume_sweep` continues from it)
    trials/<id>/         each trial's episodes, checkpoints, evaluation.json and starts.log

The folder is a path (on a cluster: one every node mounts) or a URI (s3://..., any filesystem
pyarrow knows): Tune keeps its state there, Ray Train the trials' checkpoints.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from npalign.config import (
    ConfigError,
    RunSettings,
    SweepConfig,
    load_tree,
    set_dotted,
    validate_config,
)
from npalign.data.episodes import sample_train_val, write_episodes
from npalign.files import Location, new_run_folder, write_json, write_text
from npalign.recipes.outline import Recipe, Splits
from npalign.recipes.policy import POLICY
from npalign.recipes.reward import REWARD

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.yaml"
BASE_FILE = "base.yaml"  # the base job config every trial starts from
TUNE_DIR = "tune"
RECIPES = (REWARD, POLICY)


@dataclass
class SweepRun:
    folder: Location
    rows: list[dict[str, Any]]  # one per trial, as in trials.csv
    best: dict[str, Any] | None
    table: str


def recipe_of(model: str) -> Recipe:
    """The recipe whose registry holds `model` (SweepConfig checked it is in one)."""
    return next(recipe for recipe in RECIPES if model in recipe.models)


def trial_config(base: dict, sweep: SweepConfig, point: dict[str, Any]):
    """The base job config (as loaded: a YAML tree) with one point of the space set (point:
    dotted key → value), validated as the model's recipe's job."""
    tree = copy.deepcopy(base)
    tree["models"] = [sweep.model]
    for key, value in point.items():
        set_dotted(tree, key, value)
    # Tune reads every report of a trial as a result: checkpoints come once per epoch, with
    # the validation loss the scheduler compares (a restarted trial goes on from the last).
    set_dotted(tree, "train.checkpoint_every_steps", None)
    where = ", ".join(f"{k}={v!r}" for k, v in point.items()) or "no overrides"
    return validate_config(tree, recipe_of(sweep.model).schema, f"{sweep.base} with {where}")


def check_space(base: dict, sweep: SweepConfig):
    """Every value (or range end) of every dimension must make a valid job config: a typo in a
    key or a wrong type fails here, before any trial runs. Returns the base config."""
    config = trial_config(base, sweep, {})
    fixed = recipe_of(sweep.model).prepared_keys(config)
    for key, dim in sweep.space.items():
        if key in fixed:
            raise ConfigError(
                f"space.{key}: every trial starts from what the sweep runs first (e.g. the "
                f"policy's NP-BTL encoder, policy.encoder_job), which fixes {', '.join(fixed)}"
            )
        for value in dim.values():
            trial_config(base, sweep, {key: value})
    return config


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, dim in sweep.space.items():
        if dim.grid is not None:
            out[key] = tune.grid_search(dim.grid)
        elif dim.choice is not None:
            out[key] = tune.choice(dim.choice)
        elif dim.uniform is not None:
            out[key] = tune.uniform(*dim.uniform)
        elif dim.loguniform is not None:
            out[key] = tune.loguniform(*dim.loguniform)
        else:
            out[key] = tune.randint(*dim.randint)
    return out


def run_trial(
    point: dict[str, Any],
    base: dict,
    sweep: SweepConfig,
    splits: Splits,
    val_episodes: str,
    folder: str,
) -> None:
    """One trial: the recipe's Ray Train fit with this point, reporting each epoch to Tune,
    then validation accuracy by context size (reported last, with the final epoch's metrics)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from npalign.train.loop import kept

    config = trial_config(base, sweep, point)
    recipe = recipe_of(sweep.model)
    trial_id = ray.tune.get_context().get_trial_id()
    trial_dir = Location(folder) / "trials" / trial_id
    log.info("trial %s: %s", trial_id, point)
    log_start(trial_dir / "starts.log")
    train = sample_train_val(config.data, splits.pairs)["train"]
    files = write_episodes({"train": train}, trial_dir / "episodes")
    files["val"] = Location(val_episodes)
    # Same storage on a restart: the fit resumes from the trial's latest checkpoint.
    callbacks = [TuneReportCallback()]
    result = recipe.fit(config, sweep.model, splits, files, trial_dir, "fit", callbacks)
    checkpoint, metrics = kept(result, config.train)
    where = trial_dir.at(checkpoint.path)  # a path on the folder's filesystem → its URI
    scores = recipe.evaluate(config, where, splits, "val", sweep.eval)
    write_json(trial_dir / "evaluation.json", scores)
    accuracy = {f"val_acc_m{m}": s["mean"] for m, s in scores["average"].items()}
    ray.tune.report({**metrics, **accuracy, "finished": 1, "checkpoint": str(where)})


def log_start(path: Location) -> None:
    """One more line in a trial's starts.log (a trial runs in one process at a time; an object
    store cannot append, so the log is rewritten whole)."""
    earlier = path.read_text() if path.exists() else ""
    write_text(path, f"{earlier}{time.strftime('%Y-%m-%dT%H:%M:%S')}\n")


def _trainable(base: dict, sweep: SweepConfig, folder: Location):
    """The trial function with the base config, the shared dataset and validation episodes
    bound (the config travels as data: trials run in other folders, maybe on other nodes; the
    dataset is rebuilt the same way on resume: it is deterministic)."""
    from ray import tune

    config = trial_config(base, sweep, {})
    splits = recipe_of(sweep.model).load(config)
    val_file = folder / "episodes" / "val.parquet"
    if not val_file.exists():
        # Context sizes of the sweep's evaluation, not of any trial's training: a trial that
        # trains on short contexts is not favoured by validating on short contexts.
        sizes = sweep.eval.context_sizes
        spanning = {"min_context": min(sizes), "max_context": max(sizes)}
        val_data = config.data.model_copy(update=spanning)
        val = sample_train_val(val_data, splits.pairs)["val"]
        write_episodes({"val": val}, folder / "episodes")
    trainable = tune.with_parameters(
        run_trial,
        base=base,
        sweep=sweep,
        splits=splits,
        val_episodes=str(val_file),
        folder=str(folder),
    )
    # The trial's own process is light; its Ray Train workers ask for train.cpus_per_worker.
    return tune.with_resources(trainable, {"CPU": sweep.trial_cpus})


def run_sweep(sweep: SweepConfig) -> SweepRun:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    base = load_tree(sweep.base, sweep.overrides)
    config = check_space(base, sweep)
    folder = new_run_folder(sweep.output_dir, sweep.name)
    write_text(folder / SWEEP_FILE, yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False))
    log.info("sweep folder: %s", folder)
    # What the recipe runs first (a policy's NP-BTL encoder) runs once, in the sweep folder, and
    # every trial starts from it; base.yaml keeps it for a resume.
    inside = config.model_copy(update={"run": RunSettings(name=sweep.name, output_dir=str(folder))})
    prepared, _ = recipe_of(sweep.model).prepare(inside)
    base = {**prepared.model_dump(mode="json"), "run": config.run.model_dump(mode="json")}
    write_text(folder / BASE_FILE, yaml.safe_dump(base, sort_keys=False))
    mode = "min" if sweep.metric == "val_nll" else "max"
    tuner = tune.Tuner(
        _trainable(base, sweep, folder),
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            num_samples=sweep.num_samples,
            max_concurrent_trials=sweep.max_concurrent_trials,
            scheduler=ASHAScheduler(
                metric=sweep.metric,
                mode=mode,
                # One report per epoch, plus the final one with the accuracy by context size.
                max_t=max_epochs(sweep, config) + 1,
                grace_period=sweep.grace_period,
                reduction_factor=sweep.reduction_factor,
            ),
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=folder.path, storage_filesystem=folder.fs
        ),
    )
    return summarize(base, sweep, folder, tuner.fit())


def resume_sweep(folder: str | Path | Location) -> SweepRun:
    """Continue an interrupted sweep: finished trials are kept, the others run (an interrupted
    trial's fit resumes from its latest checkpoint)."""
    from ray import tune

    from npalign.config import load_config

    folder = Location(folder)
    if not (folder / SWEEP_FILE).exists() or not (folder / TUNE_DIR).is_dir():
        raise ConfigError(f"{folder}: not a sweep folder (no {SWEEP_FILE} or {TUNE_DIR}/)")
    sweep = load_config(folder / SWEEP_FILE, schema=SweepConfig)
    base = load_tree(folder / BASE_FILE)
    log.info("resuming sweep %s", folder)
    tuner = tune.Tuner.restore(
        (folder / TUNE_DIR).path,
        trainable=_trainable(base, sweep, folder),
        storage_filesystem=folder.fs,
        resume_unfinished=True,
        resume_errored=True,
    )
    return summarize(base, sweep, folder, tuner.fit())


def max_epochs(sweep: SweepConfig, base) -> int:
    dim = sweep.space.get("train.epochs")
    return max([base.train.epochs, *(dim.values() if dim else [])])


def summarize(base: dict, sweep: SweepConfig, folder: Location, results) -> SweepRun:
    """trials.csv, best.yaml and the plot, from Tune's ResultGrid and each trial's evaluation."""
    context_sizes = sweep.eval.context_sizes
    rows = []
    for result in results:
        metrics = result.metrics or {}
        point = {k.removeprefix("config/"): v for k, v in result.config.items()}
        rows.append(
            {
                "trial": metrics.get("trial_id", Path(result.path).name),
                **point,
                "status": "error"
                if result.error
                else ("finished" if metrics.get("finished") else "stopped early"),
                "epochs": metrics.get("epoch"),
                "val_nll": metrics.get("val_nll"),
                "val_accuracy": metrics.get("val_accuracy"),
                **{f"val_acc_m{m}": metrics.get(f"val_acc_m{m}") for m in context_sizes},
                "checkpoint": metrics.get("checkpoint"),
            }
        )
    finished = [r for r in rows if r["status"] == "finished"]
    sign = 1 if sweep.metric == "val_nll" else -1
    finished.sort(key=lambda r: sign * r[sweep.metric])
    best = finished[0] if finished else None

    if not rows:
        return SweepRun(folder, rows, None, "no trials")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(folder / "trials.csv", buffer.getvalue())
    if best:
        config = trial_config(base, sweep, {k: best[k] for k in sweep.space})
        config.run.name = f"{sweep.name}-best"
        write_text(
            folder / "best.yaml",
            f"# best of {len(rows)} trials by {sweep.metric} (sweep {folder.name})\n"
            + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False),
        )
        plot_best(finished[: sweep.best_few], sweep, folder)
    return SweepRun(folder, rows, best, format_trials(rows, sweep))


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def format_trials(rows: list[dict[str, Any]], sweep: SweepConfig) -> str:
    accuracy = [f"val_acc_m{m}" for m in sweep.eval.context_sizes]
    columns = ["trial", *sweep.space, "status", "epochs", sweep.metric, *accuracy]
    table = [[_short(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(t, widths, strict=True)) for t in table]
    return "\n".join(lines)


def plot_best(trials: list[dict[str, Any]], sweep: SweepConfig, folder: Location) -> None:
    import json

    from npalign.evaluation.accuracy import plot_accuracy

    results = {}
    for row in trials:
        scores = json.loads((folder / "trials" / row["trial"] / "evaluation.json").read_text())
        label = ", ".join(f"{k.split('.')[-1]}={_short(row[k])}" for k in sweep.space)
        results[label] = {
            "average": {int(m): s for m, s in scores["average"].items()},
            "by_type": {},
        }
    plot_accuracy(results, sweep.eval.context_sizes, folder / "accuracy_vs_context.png")
