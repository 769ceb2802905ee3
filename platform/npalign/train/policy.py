"""The NP-DPO policy as a task of the shared training loop, and its Ray Train fit.

The driver prepares everything text-shaped once (embeddings of the context options, tokens of
the target prompts and responses) and puts it in Ray's object store; each worker fetches it once
and builds DPO batches from the episode rows Ray Data streams to it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.train
import torch
from torch import nn

from npalign.config import PolicyJobConfig
from npalign.data.episodes import collate, episode_arrays, sample_episodes
from npalign.data.preferences import PairTable
from npalign.data.sequences import PolicyBatch, TokenizedPairs, collate_policy
from npalign.files import Location
from npalign.models.policy import (
    build_policy,
    measure_latent_frame,
    preference_metrics,
    save_policy,
    starting_encoder,
)
from npalign.train.loop import fit_task

log = logging.getLogger(__name__)

# Users whose full contexts measure z's scale: its estimate's relative error is then a few %.
SCALE_USERS = 256


@dataclass
class PolicyTask:
    job: PolicyJobConfig
    feature_dim: int
    use_latent: bool
    # split → ObjectRef of (PairTable, TokenizedPairs), fetched once per worker
    data: dict[str, Any]
    _tables: dict[str, tuple[PairTable, TokenizedPairs]] = field(default_factory=dict, repr=False)

    def build_model(self) -> nn.Module:
        policy, _ = build_policy(self.job.policy, self.feature_dim, self.use_latent)
        return policy

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        p = self.job.policy
        kept = 0.0 if p.encoder_init else p.latent_lr
        rates = {"encoder.": kept if p.encoder_lr is None else p.encoder_lr}
        rates["film."] = p.latent_lr
        groups: dict[str, list[nn.Parameter]] = {"": [], "encoder.": [], "film.": []}
        for name, param in model.named_parameters():
            if param.requires_grad:
                groups[next((k for k in rates if name.startswith(k)), "")].append(param)
        return [
            {"params": params, "lr": rates.get(k, lr)} for k, params in groups.items() if params
        ]

    def collate(self, rows: pa.Table, split: str) -> PolicyBatch:
        if split not in self._tables:
            self._tables[split] = ray.get(self.data[split])
        pairs, tokens = self._tables[split]
        return collate_policy(episode_arrays(rows, ("context", "target")), pairs, tokens)

    def loss(self, model: nn.Module, batch: PolicyBatch, step: int):
        p = self.job.policy
        # A context-blind policy never reads the context: for it every episode is one without.
        with_context = batch.context.context_mask.any(-1) & self.use_latent
        output = model(batch, self.use_latent)
        return preference_metrics(output, p.beta, p.sft_weight, p.loss, with_context, p.per_token)

    def save(self, folder: Path, state_dict: dict[str, torch.Tensor]) -> None:
        save_policy(
            folder,
            self.job.policy,
            self.job.data.embed,
            self.feature_dim,
            self.use_latent,
            state_dict,
        )


def fit_policy(
    job: PolicyJobConfig,
    use_latent: bool,
    data: dict[str, tuple[PairTable, TokenizedPairs]],
    episodes: dict[str, Path | Location],
    storage: Path | Location,
    name: str,
    callbacks: list | None = None,
) -> ray.train.Result:
    """Train one policy (NP-DPO with the latent, plain DPO without); checkpoints in
    storage/name, resumed from there when rerun. `callbacks`: Ray Train callbacks (a Tune
    sweep passes its report callback)."""
    if use_latent:
        job = with_latent_frame(job, data["train"][0])
    task = PolicyTask(
        job=job,
        feature_dim=data["train"][0].feature_dim,
        use_latent=use_latent,
        data={split: ray.put(data[split]) for split in ("train", "val")},
    )
    return fit_task(task, job.train, job.data.train_episodes, episodes, storage, name, callbacks)


def with_latent_frame(job: PolicyJobConfig, pairs: PairTable) -> PolicyJobConfig:
    """`job` with `policy.latent_centre` and `policy.latent_scale` measured from the NP-BTL
    encoder it starts from (`policy.encoder_init`) on SCALE_USERS training users with a full
    context (data.max_context pairs), where they are not set, unless the encoder starts fresh
    (its latents say nothing of the trained one's: z is then measured from μ(∅) and left
    unscaled) or no episode has context (z is always 0). The same seed and encoder measure the
    same frame again when a fit resumes."""
    p, d = job.policy, job.data
    measured = p.latent_scale is not None and p.latent_centre is not None
    if measured or not p.encoder_init or d.max_context == 0:
        return job
    users = sample_episodes(
        pairs, SCALE_USERS, d.max_context, d.max_context, d.num_targets, job.train.seed
    )
    c = collate(episode_arrays(users, ("context", "target")), pairs)
    encoder = starting_encoder(p, pairs.feature_dim)
    centre, scale = measure_latent_frame(
        encoder, c.context_chosen, c.context_rejected, c.context_mask
    )
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(
            f"{p.encoder_init}: its encoder gives every user the same latent (scale {scale}), "
            "so z cannot tell users apart: train it longer or set policy.latent_scale"
        )
    frame = {
        "latent_scale": scale if p.latent_scale is None else p.latent_scale,
        "latent_centre": centre if p.latent_centre is None else p.latent_centre,
    }
    log.info("z's frame: scale %.3g (a full context's z about 1 in norm)", frame["latent_scale"])
    return job.model_copy(update={"policy": p.model_copy(update=frame)})
