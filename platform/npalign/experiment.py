"""The reward experiment end to end: data → episodes → Ray Train fits → test-set evaluation →
a run folder with metrics.json, table.txt and accuracy.png.

Everything that can be wrong with the input (config, data, context sizes) is checked before the
run folder is created, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from npalign.config import RewardJobConfig
from npalign.data.episodes import sample_episodes
from npalign.data.preferences import PairTable, read_splits, write_pairs
from npalign.data.synthetic import bayes_accuracy, make_synthetic
from npalign.evaluate import (
    evaluate_reward_model,
    fixed_context_episodes,
    format_table,
    plot_accuracy,
)
from npalign.files import atomic_path, write_json, write_text
from npalign.models.reward import load_reward_model

log = logging.getLogger(__name__)


@dataclass
class RewardRun:
    folder: Path
    results: dict[str, dict]  # model kind → evaluate_reward_model(...)
    reference: dict[str, list[float]]  # e.g. the Bayes limit per context size
    table: str


def load_pairs(config: RewardJobConfig) -> dict[str, PairTable]:
    if config.data.source == "synthetic":
        return make_synthetic(config.data.synthetic)
    return read_splits(config.data.path)


def bayes_reference(config: RewardJobConfig, test: PairTable) -> dict[str, list[float]]:
    """The Bayes limit on the very test episodes the models are scored on (synthetic data only)."""
    if config.data.source != "synthetic":
        return {}
    e = config.eval
    limit = [
        float(
            bayes_accuracy(
                test,
                fixed_context_episodes(test, m, e.num_episodes, config.data.num_targets, e.seed),
            ).mean()
        )
        for m in e.context_sizes
    ]
    return {"Bayes limit": limit}


def run_reward_experiment(config: RewardJobConfig) -> RewardRun:
    from npalign.train.reward import fit_reward_model  # Ray Train: imported only when training

    data = config.data
    pairs = load_pairs(config)
    # Sample every episode before creating the run folder: a context size that a user cannot
    # fill raises here.
    episodes = {
        "train": sample_episodes(
            pairs["train"],
            data.train_episodes,
            data.min_context,
            data.max_context,
            data.num_targets,
            data.seed,
            "train split",
        ),
        "val": sample_episodes(
            pairs["val"],
            data.val_episodes,
            data.min_context,
            data.max_context,
            data.num_targets,
            data.seed + 1,
            "val split",
        ),
    }
    for m in config.eval.context_sizes:
        fixed_context_episodes(pairs["test"], m, 1, data.num_targets, config.eval.seed)

    folder = Path(config.run.output_dir) / f"{config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=False)
    write_text(folder / "config.yaml", config_yaml(config))
    for split, table in pairs.items():
        write_pairs(table, folder / "data" / f"{split}.parquet")
    episode_files = {}
    for split, table in episodes.items():
        episode_files[split] = folder / "episodes" / f"{split}.parquet"
        with atomic_path(episode_files[split]) as tmp:
            pq.write_table(table, tmp)
    log.info("run folder: %s", folder)

    import ray

    if not ray.is_initialized():
        ray.init()  # joins the cluster under `ray job submit`, else starts a local one
    results = {}
    for kind in config.models:
        result = fit_reward_model(config, kind, pairs, episode_files, folder / "checkpoints")
        model = load_reward_model(Path(result.checkpoint.path))
        results[kind] = evaluate_reward_model(
            model,
            pairs["test"],
            config.eval.context_sizes,
            config.eval.num_episodes,
            data.num_targets,
            config.eval.seed,
        )
        results[kind]["checkpoint"] = result.checkpoint.path
        results[kind]["train_metrics"] = result.metrics

    reference = bayes_reference(config, pairs["test"])
    table = format_table(results, config.eval.context_sizes, reference)
    write_json(
        folder / "metrics.json",
        {"results": results, "reference": reference, "context_sizes": config.eval.context_sizes},
    )
    write_text(folder / "table.txt", table + "\n")
    plot_accuracy(results, config.eval.context_sizes, folder / "accuracy.png", reference)
    return RewardRun(folder, results, reference, table)


def config_yaml(config: RewardJobConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
