"""Training NP-BTL, BTL and DPL through the shared Ray Train + DeepSpeed loop."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.data
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn

from npalign.config import ModelConfig, RewardJobConfig
from npalign.data.episodes import EpisodeBatch, collate, episode_arrays
from npalign.data.preferences import PairTable
from npalign.models.reward import build_reward_model, preference_loss, save_reward_model
from npalign.train.loop import train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass
class RewardTask:
    kind: str
    model: ModelConfig
    feature_dim: int
    pairs: dict[str, Any]  # split → ObjectRef of its PairTable, fetched once per worker
    _tables: dict[str, PairTable] = field(default_factory=dict, repr=False)

    def build_model(self) -> nn.Module:
        return build_reward_model(self.kind, self.model, self.feature_dim)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]

    def collate(self, rows: pa.Table, split: str) -> EpisodeBatch:
        if split not in self._tables:
            self._tables[split] = ray.get(self.pairs[split])
        return collate(episode_arrays(rows, ("context", "target")), self._tables[split])

    def kl_weight(self, step: int) -> float:
        if self.model.kl_anneal_steps == 0:
            return self.model.kl_weight
        return self.model.kl_weight * min(1.0, step / self.model.kl_anneal_steps)

    def loss(self, model: nn.Module, batch: EpisodeBatch, step: int):
        return preference_loss(model(batch), batch, self.kl_weight(step))

    def save(self, folder: Path, state_dict: dict[str, torch.Tensor]) -> None:
        save_reward_model(folder, self.kind, self.model, self.feature_dim, state_dict)


def scaling_config(config: RewardJobConfig) -> ScalingConfig:
    train = config.train
    use_gpu = (
        ray.cluster_resources().get("GPU", 0) > 0 if train.use_gpu == "auto" else train.use_gpu
    )
    resources = {"CPU": train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    return ScalingConfig(
        num_workers=train.num_workers, use_gpu=use_gpu, resources_per_worker=resources
    )


def fit_reward_model(
    config: RewardJobConfig,
    kind: str,
    pairs: dict[str, PairTable],
    episodes: dict[str, Path],
    storage: Path,
    name: str | None = None,
) -> ray.train.Result:
    """Train one reward model; checkpoints go to storage/name (default: the kind). Rerunning
    with the same storage resumes from the latest checkpoint."""
    # Our own progress bar shows the training steps; Ray Data's per-operator bars would bury it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    task = RewardTask(
        kind=kind,
        model=config.model,
        feature_dim=pairs["train"].feature_dim,
        pairs={split: ray.put(pairs[split]) for split in ("train", "val")},
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "task": task,
            "train": config.train.model_dump(),
            "train_episodes": config.data.train_episodes,
        },
        scaling_config=scaling_config(config),
        run_config=RunConfig(
            name=name or kind,
            storage_path=str(storage.resolve()),
            failure_config=FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets={
            split: ray.data.read_parquet(str(episodes[split].resolve()))
            for split in ("train", "val")
        },
    )
    log.info(
        "training %s on %d workers (ZeRO-%d)",
        name or kind,
        config.train.num_workers,
        config.train.zero_stage,
    )
    return trainer.fit()
