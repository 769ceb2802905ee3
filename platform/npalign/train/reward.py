"""Training NP-BTL, BTL and DPL through the shared Ray Train + DeepSpeed loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.train
import torch
from torch import nn

from npalign.config import ModelConfig, RewardJobConfig
from npalign.data.episodes import EpisodeBatch, collate, episode_arrays
from npalign.data.preferences import PairTable
from npalign.files import Location
from npalign.models.reward import preference_loss, save_reward_model
from npalign.registry import REWARD_MODELS
from npalign.train.loop import fit_task


@dataclass
class RewardTask:
    kind: str
    # The registered class itself, looked up in the driver: a worker process need not have run
    # the registration (a model registered outside npalign only has to be importable there).
    model_class: type[nn.Module]
    model: ModelConfig
    feature_dim: int
    pairs: dict[str, Any]  # split → ObjectRef of its PairTable, fetched once per worker
    _tables: dict[str, PairTable] = field(default_factory=dict, repr=False)

    def build_model(self) -> nn.Module:
        return self.model_class(self.feature_dim, self.model)

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


def fit_reward_model(
    config: RewardJobConfig,
    kind: str,
    pairs: dict[str, PairTable],
    episodes: dict[str, Path | Location],
    storage: Path | Location,
    name: str | None = None,
    callbacks: list | None = None,
) -> ray.train.Result:
    """Train one reward model; checkpoints go to storage/name (default: the kind). Rerunning
    with the same storage resumes from the latest checkpoint. `callbacks`: Ray Train callbacks
    (a Tune sweep passes its report callback)."""
    task = RewardTask(
        kind=kind,
        model_class=REWARD_MODELS[kind],
        model=config.model,
        feature_dim=pairs["train"].feature_dim,
        pairs={split: ray.put(pairs[split]) for split in ("train", "val")},
    )
    return fit_task(
        task,
        config.train,
        config.data.train_episodes,
        episodes,
        storage,
        name or kind,
        callbacks,
    )
