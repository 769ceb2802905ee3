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

import pyarrow as pa
import pyarrow.parquet as pq

from npalign.config import DataConfig, RewardJobConfig
from npalign.data.episodes import sample_episodes
from npalign.data.preferences import PairTable, read_splits, write_pairs
from npalign.data.synthetic import bayes_accuracy, make_synthetic
from npalign.data.text import read_text_splits
from npalign.evaluate import (
    combine_types,
    evaluate_reward_model,
    evaluation_episodes,
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


def text_tables(data: DataConfig) -> dict[str, pa.Table]:
    """The text preference splits of a steer or text data source (the steer task built or
    taken from its cache)."""
    from npalign.data.steer import build_steer

    return read_text_splits(build_steer(data.steer) if data.source == "steer" else data.path)


def embed_tables(tables: dict[str, pa.Table], data: DataConfig) -> dict[str, PairTable]:
    import ray

    from npalign.data.embed import embed_pairs

    if not ray.is_initialized():
        ray.init()  # the embedding runs on Ray Data: joins the cluster or starts a local one
    pairs, _ = embed_pairs(tables, data.embed)
    return pairs


def load_pairs(config: RewardJobConfig) -> dict[str, PairTable]:
    data = config.data
    if data.source == "synthetic":
        return make_synthetic(data.synthetic)
    if data.source == "parquet":
        return read_splits(data.path)
    return embed_tables(text_tables(data), data)


def sample_train_val(data: DataConfig, pairs: dict[str, PairTable]) -> dict[str, pa.Table]:
    return {
        split: sample_episodes(
            pairs[split],
            num,
            data.min_context,
            data.max_context,
            data.num_targets,
            seed,
            f"{split} split",
            data.paired_targets,
            data.empty_context_share,
        )
        for split, num, seed in (
            ("train", data.train_episodes, data.seed),
            ("val", data.val_episodes, data.seed + 1),
        )
    }


def write_episodes(episodes: dict[str, pa.Table], folder: Path) -> dict[str, Path]:
    files = {}
    for split, table in episodes.items():
        files[split] = folder / f"{split}.parquet"
        with atomic_path(files[split]) as tmp:
            pq.write_table(table, tmp)
    return files


def bayes_reference(config: RewardJobConfig, test: PairTable) -> dict[str, list[float]]:
    """The Bayes limit on the very test episodes the models are scored on (synthetic data only)."""
    if config.data.source != "synthetic":
        return {}
    e = config.eval
    episodes = evaluation_episodes(
        test, e.context_sizes, e.num_episodes, config.data.num_targets, e.seed
    )
    limit = [float(bayes_accuracy(test, episodes[m]).mean()) for m in e.context_sizes]
    return {"Bayes limit": limit}


def run_reward_experiment(config: RewardJobConfig) -> RewardRun:
    from npalign.train.reward import fit_reward_model  # Ray Train: imported only when training

    data = config.data
    pairs = load_pairs(config)
    # Sample every episode before creating the run folder: a context size that a user cannot
    # fill raises here.
    episodes = sample_train_val(data, pairs)
    evaluation_episodes(
        pairs["test"], config.eval.context_sizes, 1, data.num_targets, config.eval.seed
    )

    folder = Path(config.run.output_dir) / f"{config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=False)
    write_text(folder / "config.yaml", config_yaml(config))
    for split, table in pairs.items():
        write_pairs(table, folder / "data" / f"{split}.parquet")
    episode_files = write_episodes(episodes, folder / "episodes")
    log.info("run folder: %s", folder)

    import ray

    if not ray.is_initialized():
        ray.init()  # joins the cluster under `ray job submit`, else starts a local one
    results = {}
    for kind in config.models:
        if kind == "oracle":
            results[kind] = fit_oracles(config, pairs, folder)
            continue
        result = fit_reward_model(config, kind, pairs, episode_files, folder / "checkpoints")
        model = load_reward_model(Path(result.checkpoint.path))
        results[kind] = evaluate_reward_model(model, pairs["test"], config.eval, data.num_targets)
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


def fit_oracles(config: RewardJobConfig, pairs: dict[str, PairTable], folder: Path) -> dict:
    """One BTL per user type, trained on that type's labels and scored on that type's test users:
    what a context-blind model reaches when it is told the type."""
    from npalign.train.reward import fit_reward_model

    result: dict = {"average": {}, "by_type": {}, "checkpoint": {}, "train_metrics": {}}
    for user_type in sorted(set(pairs["train"].user_type)):
        typed = {s: p.select(p.user_type == user_type) for s, p in pairs.items()}
        name = f"oracle-{user_type}"
        files = write_episodes(sample_train_val(config.data, typed), folder / "episodes" / name)
        fit = fit_reward_model(config, "btl", typed, files, folder / "checkpoints", name=name)
        model = load_reward_model(Path(fit.checkpoint.path))
        scores = evaluate_reward_model(model, typed["test"], config.eval, config.data.num_targets)
        result["by_type"][user_type] = scores["by_type"][user_type]
        result["checkpoint"][user_type] = fit.checkpoint.path
        result["train_metrics"][user_type] = fit.metrics
    for m in config.eval.context_sizes:
        result["average"][m] = combine_types([by_m[m] for by_m in result["by_type"].values()])
    return result
