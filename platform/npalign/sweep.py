"""Ray Tune sweeps of the reward job or the policy job: context sizes, latent and hidden dims,
learning rate, aggregation, ZeRO stage, DPO β or any other job field, with ASHA early stopping.

Each trial is a function trainable that runs the very Ray Train fit of `jobs/train_reward.py`
(sweep `model` btl, dpl or npbtl) or `jobs/train_policy.py` (npdpo or dpo) — the Train V2
pattern: Tune drives a TorchTrainer, `TuneReportCallback` forwards its epoch reports. All
trials share one dataset and one set of validation episodes (context sizes spanning the sweep's
evaluation sizes), so their validation losses compare like with like. A trial that finishes
scores its model on the validation split at each context size (a policy: its implicit-reward
accuracy). A sweep folder holds:

    trials.csv           every trial: its point of the space, status, last metrics
    best.yaml            the best trial's full job config, ready for its job
    accuracy_vs_context.png   validation accuracy vs m for the best few trials
    sweep.yaml, base.yaml     the sweep and the base job config it started from
    tune/                Tune's experiment state (`resume_sweep` continues from it)
    trials/<id>/         each trial's episodes, checkpoints and evaluation.json
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
    REWARD_MODELS,
    PolicyJobConfig,
    RewardJobConfig,
    SweepConfig,
    load_tree,
    set_dotted,
    validate_config,
)
from npalign.data.preferences import PairTable
from npalign.files import write_json, write_text

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.yaml"
BASE_FILE = "base.yaml"  # the base job config as loaded, overrides applied
TUNE_DIR = "tune"


@dataclass
class SweepRun:
    folder: Path
    rows: list[dict[str, Any]]  # one per trial, as in trials.csv
    best: dict[str, Any] | None
    table: str


JobConfig = RewardJobConfig | PolicyJobConfig


def trial_config(base: dict, sweep: SweepConfig, point: dict[str, Any]) -> JobConfig:
    """The base job config (as loaded: a YAML tree) with one point of the space set (point:
    dotted key → value)."""
    tree = copy.deepcopy(base)
    tree["models"] = [sweep.model]
    for key, value in point.items():
        set_dotted(tree, key, value)
    where = ", ".join(f"{k}={v!r}" for k, v in point.items()) or "no overrides"
    schema = RewardJobConfig if sweep.model in REWARD_MODELS else PolicyJobConfig
    return validate_config(tree, schema, f"{sweep.base} with {where}")


# --- what differs between a reward and a policy trial ------------------------------------------


def load_data(config: JobConfig) -> tuple[dict[str, PairTable], dict[str, Any]]:
    """(pairs by split, what the fit needs by split: the pairs, or a policy's pairs + tokens)."""
    if isinstance(config, RewardJobConfig):
        from npalign.experiment import load_pairs

        pairs = load_pairs(config)
        return pairs, pairs
    from npalign.policy_experiment import policy_data

    data = policy_data(config)
    return {split: p for split, (p, _) in data.items()}, data


def fit_and_score(
    config: JobConfig, model: str, data: dict, files: dict, trial_dir: Path, evaluation
) -> tuple[Any, dict]:
    """The job's Ray Train fit reporting to Tune, then accuracy by context size on the
    validation split: (Ray Train result, scores)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    callbacks = [TuneReportCallback()]
    if isinstance(config, RewardJobConfig):
        from npalign.evaluate import evaluate_reward_model
        from npalign.models.reward import load_reward_model
        from npalign.train.reward import fit_reward_model

        result = fit_reward_model(config, model, data, files, trial_dir, "fit", callbacks)
        trained = load_reward_model(Path(result.checkpoint.path))
        scores = evaluate_reward_model(trained, data["val"], evaluation, config.data.num_targets)
        return result, scores
    from npalign.policy_experiment import evaluate_policy
    from npalign.train.policy import fit_policy

    result = fit_policy(config, model == "npdpo", data, files, trial_dir, "fit", callbacks)
    scored = config.model_copy(update={"eval": evaluation})
    return result, evaluate_policy(scored, Path(result.checkpoint.path), data, split="val")


def check_space(base: dict, sweep: SweepConfig) -> JobConfig:
    """Every value (or range end) of every dimension must make a valid job config: a typo in a
    key or a wrong type fails here, before any trial runs. Returns the base config."""
    config = trial_config(base, sweep, {})
    for key, dim in sweep.space.items():
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
    pairs: dict[str, PairTable],
    data: dict[str, Any],
    val_episodes: str,
    folder: str,
) -> None:
    """One trial: the job's Ray Train fit with this point, then validation accuracy by context
    size (reported last, with the final epoch's metrics)."""
    import ray.tune

    from npalign.experiment import sample_train_val, write_episodes

    config = trial_config(base, sweep, point)
    trial_id = ray.tune.get_context().get_trial_id()
    trial_dir = Path(folder) / "trials" / trial_id
    log.info("trial %s: %s", trial_id, point)
    with open(Path(folder) / "trial_starts.log", "a") as starts:  # one line per (re)start
        starts.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {trial_id}\n")
    train = sample_train_val(config.data, pairs)["train"]
    files = write_episodes({"train": train}, trial_dir / "episodes")
    files["val"] = Path(val_episodes)
    # Same storage on a restart: the fit resumes from the trial's latest checkpoint.
    result, scores = fit_and_score(config, sweep.model, data, files, trial_dir, sweep.eval)
    write_json(trial_dir / "evaluation.json", scores)
    accuracy = {f"val_acc_m{m}": s["mean"] for m, s in scores["average"].items()}
    ray.tune.report(
        {**result.metrics, **accuracy, "finished": 1, "checkpoint": result.checkpoint.path}
    )


def _trainable(base: dict, sweep: SweepConfig, folder: Path):
    """The trial function with the base config, the shared dataset and validation episodes
    bound (the config travels as data: trials run in other folders, maybe on other nodes; the
    dataset is rebuilt the same way on resume: it is deterministic)."""
    from ray import tune

    from npalign.experiment import sample_train_val, write_episodes

    config = trial_config(base, sweep, {})
    pairs, data = load_data(config)
    folder = folder.resolve()  # trials run in their own working directories
    val_file = folder / "episodes" / "val.parquet"
    if not val_file.exists():
        # Context sizes of the sweep's evaluation, not of any trial's training: a trial that
        # trains on short contexts is not favoured by validating on short contexts.
        sizes = sweep.eval.context_sizes
        spanning = {"min_context": min(sizes), "max_context": max(sizes)}
        val_data = config.data.model_copy(update=spanning)
        write_episodes({"val": sample_train_val(val_data, pairs)["val"]}, val_file.parent)
    trainable = tune.with_parameters(
        run_trial,
        base=base,
        sweep=sweep,
        pairs=pairs,
        data=data,
        val_episodes=str(val_file),
        folder=str(folder),
    )
    # The trial's own process is light; its Ray Train workers ask for train.cpus_per_worker.
    return tune.with_resources(trainable, {"CPU": sweep.trial_cpus})


def run_sweep(sweep: SweepConfig) -> SweepRun:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    base = load_tree(sweep.base, sweep.overrides)
    config = check_space(base, sweep)
    folder = Path(sweep.output_dir) / f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=False)
    write_text(folder / SWEEP_FILE, yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False))
    write_text(folder / BASE_FILE, yaml.safe_dump(base, sort_keys=False))
    log.info("sweep folder: %s", folder)
    if not ray.is_initialized():
        ray.init()
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
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(folder.resolve())),
    )
    return summarize(base, sweep, folder, tuner.fit())


def resume_sweep(folder: Path) -> SweepRun:
    """Continue an interrupted sweep: finished trials are kept, the others run (an interrupted
    trial's fit resumes from its latest checkpoint)."""
    import ray
    from ray import tune

    from npalign.config import ConfigError, load_config

    if not (folder / SWEEP_FILE).exists() or not (folder / TUNE_DIR).is_dir():
        raise ConfigError(f"{folder}: not a sweep folder (no {SWEEP_FILE} or {TUNE_DIR}/)")
    sweep = load_config(folder / SWEEP_FILE, schema=SweepConfig)
    base = load_tree(folder / BASE_FILE)
    if not ray.is_initialized():
        ray.init()
    log.info("resuming sweep %s", folder)
    tuner = tune.Tuner.restore(
        str((folder / TUNE_DIR).resolve()),
        trainable=_trainable(base, sweep, folder),
        resume_unfinished=True,
        resume_errored=True,
    )
    return summarize(base, sweep, folder, tuner.fit())


def max_epochs(sweep: SweepConfig, base: JobConfig) -> int:
    dim = sweep.space.get("train.epochs")
    return max([base.train.epochs, *(dim.values() if dim else [])])


def summarize(base: dict, sweep: SweepConfig, folder: Path, results) -> SweepRun:
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
    columns = ["trial", *sweep.space, "status", "epochs", "val_nll", *accuracy]
    table = [[_short(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(t, widths, strict=True)) for t in table]
    return "\n".join(lines)


def plot_best(trials: list[dict[str, Any]], sweep: SweepConfig, folder: Path) -> None:
    import json

    from npalign.evaluate import plot_accuracy

    results = {}
    for row in trials:
        scores = json.loads((folder / "trials" / row["trial"] / "evaluation.json").read_text())
        label = ", ".join(f"{k.split('.')[-1]}={_short(row[k])}" for k in sweep.space)
        results[label] = {
            "average": {int(m): s for m, s in scores["average"].items()},
            "by_type": {},
        }
    plot_accuracy(results, sweep.eval.context_sizes, folder / "accuracy_vs_context.png")
