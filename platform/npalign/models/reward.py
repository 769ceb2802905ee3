"""Reward models over pair features: BTL, DPL and NP-BTL (arXiv 2412.13998, §3–4).

All three map an EpisodeBatch to log P(a ≻ b) and log P(b ≻ a) for every target pair;
`preference_loss` is the BTL cross-entropy on targets (+ the KL of the NP-ELBO). BTL and DPL
ignore the context; NP-BTL encodes it into a latent z that conditions the reward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from npalign.config import ModelConfig
from npalign.data.episodes import EpisodeBatch
from npalign.files import Location, atomic_path, write_json
from npalign.models.context import ContextEncoder, Latent, mlp
from npalign.registry import REWARD_MODELS


@dataclass
class PreferenceOutput:
    log_prob_a: torch.Tensor  # (batch, targets) log P(a ≻ b)
    log_prob_b: torch.Tensor  # (batch, targets) log P(b ≻ a)
    kl: torch.Tensor | None = None  # (batch,) KL(q(z|C∪T) ‖ q(z|C)), variational NP-BTL only


@REWARD_MODELS.register("btl")
class BTL(nn.Module):
    """Bradley–Terry–Luce: one reward r(x, y) for everyone; P(b ≻ a) = σ(r_b − r_a)."""

    uses_context = False

    def __init__(self, feature_dim: int, config: ModelConfig):
        super().__init__()
        self.feature_dim = feature_dim
        self.reward_net = mlp(feature_dim, config.hidden_dim, 1, dropout=config.dropout)

    def forward(self, batch: EpisodeBatch) -> PreferenceOutput:
        r_a = self.reward_net(batch.target_a).squeeze(-1)  # (batch, targets)
        r_b = self.reward_net(batch.target_b).squeeze(-1)
        return PreferenceOutput(F.logsigmoid(r_a - r_b), F.logsigmoid(r_b - r_a))


@REWARD_MODELS.register("dpl")
class DPL(nn.Module):
    """Distributional preference learning (mean–variance head): each option's reward is
    N(μ, σ²), so P(b ≻ a) = Φ((μ_b − μ_a) / sqrt(σ_a² + σ_b²))."""

    uses_context = False

    def __init__(self, feature_dim: int, config: ModelConfig):
        super().__init__()
        self.feature_dim = feature_dim
        self.reward_net = mlp(feature_dim, config.hidden_dim, 2, dropout=config.dropout)

    def forward(self, batch: EpisodeBatch) -> PreferenceOutput:
        mean_a, raw_a = self.reward_net(batch.target_a).unbind(-1)  # (batch, targets) each
        mean_b, raw_b = self.reward_net(batch.target_b).unbind(-1)
        std_a, std_b = F.softplus(raw_a) + 1e-3, F.softplus(raw_b) + 1e-3
        score = (mean_b - mean_a) / torch.sqrt(std_a**2 + std_b**2)
        return PreferenceOutput(torch.special.log_ndtr(-score), torch.special.log_ndtr(score))


@REWARD_MODELS.register("npbtl")
class NPBTL(nn.Module):
    """Neural-process BTL: z from the context pairs; r(x, y, z) = decoder([g(φ(x, y)); z])."""

    uses_context = True

    def __init__(self, feature_dim: int, config: ModelConfig):
        super().__init__()
        self.feature_dim = feature_dim
        self.variational = config.latent == "variational"
        self.context_encoder = ContextEncoder(
            feature_dim,
            config.hidden_dim,
            config.latent_dim,
            config.aggregation,
            self.variational,
            config.num_heads,
            config.dropout,
        )
        self.target_encoder = mlp(
            feature_dim, config.hidden_dim, config.hidden_dim, 1, config.dropout
        )
        self.decoder = mlp(
            config.hidden_dim + config.latent_dim, config.hidden_dim, 1, dropout=config.dropout
        )

    def latent(self, chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor) -> Latent:
        """q(z | context) for a user's labelled pairs: (batch, m, dim) ×2, (batch, m)."""
        return self.context_encoder(chosen, rejected, mask)

    def reward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """features: (batch, n, dim), z: (batch, latent) → rewards (batch, n)."""
        h = self.target_encoder(features)  # (batch, n, hidden)
        z = z[:, None, :].expand(-1, h.shape[1], -1)  # (batch, n, latent)
        return self.decoder(torch.cat([h, z], dim=-1)).squeeze(-1)

    def reward_samples(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """`reward` for several latents per row at once: features (batch, n, dim), z (batch,
        samples, latent) → rewards (batch, samples, n). The decoder's first layer is split into
        its target and latent parts, so [h; z] is never built per (sample, target)."""
        h = self.target_encoder(features)  # (batch, n, hidden)
        first, rest = self.decoder[0], self.decoder[1:]
        width = h.shape[-1]
        from_h = F.linear(h, first.weight[:, :width], first.bias)  # (batch, n, hidden)
        from_z = F.linear(z, first.weight[:, width:])  # (batch, samples, hidden)
        return rest(from_h[:, None] + from_z[:, :, None]).squeeze(-1)

    def forward(self, batch: EpisodeBatch) -> PreferenceOutput:
        prior = self.latent(batch.context_chosen, batch.context_rejected, batch.context_mask)
        kl = None
        if self.variational and self.training:
            # NP-ELBO: z ~ q(z | C ∪ T) in training, KL(q(z | C ∪ T) ‖ q(z | C)).
            posterior = self.latent(
                torch.cat([batch.context_chosen, batch.target_chosen], dim=1),
                torch.cat([batch.context_rejected, batch.target_rejected], dim=1),
                torch.cat([batch.context_mask, batch.target_mask], dim=1),
            )
            z = posterior.sample()
            kl = posterior.kl(prior)
        else:
            z = prior.mean  # predict with the mean of q(z | C)
        r_a, r_b = self.reward(batch.target_a, z), self.reward(batch.target_b, z)
        return PreferenceOutput(F.logsigmoid(r_a - r_b), F.logsigmoid(r_b - r_a), kl)


def build_reward_model(kind: str, config: ModelConfig, feature_dim: int) -> nn.Module:
    """A registered reward model: a module built as `cls(feature_dim, config)` that maps an
    EpisodeBatch to a PreferenceOutput and says whether it reads the context (`uses_context`)."""
    return REWARD_MODELS[kind](feature_dim, config)


def preference_loss(
    out: PreferenceOutput, batch: EpisodeBatch, kl_weight: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over episodes of (target cross-entropy + kl_weight · KL / targets). Also returns
    per-episode accuracy on the targets: (batch,)."""
    choice, mask = batch.target_choice, batch.target_mask.to(out.log_prob_a.dtype)
    log_a, log_b = out.log_prob_a.float(), out.log_prob_b.float()
    nll = -(choice * log_b + (1 - choice) * log_a)  # (batch, targets)
    targets = mask.sum(1).clamp(min=1)  # (batch,)
    episode_nll = (nll * mask).sum(1) / targets
    loss = episode_nll
    if out.kl is not None:
        loss = loss + kl_weight * out.kl.float() / targets
    correct = ((log_b > log_a).float() == choice).float()
    accuracy = (correct * mask).sum(1) / targets  # (batch,)
    metrics = {"nll": episode_nll.detach(), "accuracy": accuracy.detach()}
    if out.kl is not None:
        metrics["kl"] = out.kl.detach().float()
    return loss.mean(), metrics


MODEL_FILE, SPEC_FILE = "model.safetensors", "reward_model.json"


def save_reward_model(
    folder: str | Path,
    kind: str,
    config: ModelConfig,
    feature_dim: int,
    state_dict: dict[str, torch.Tensor],
) -> None:
    """Full fp32 weights as safetensors + what is needed to rebuild the module."""
    folder = Path(folder)
    with atomic_path(folder / MODEL_FILE) as tmp:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()}, tmp)
    spec = {"kind": kind, "feature_dim": feature_dim, "model": config.model_dump()}
    write_json(folder / SPEC_FILE, spec)


def load_reward_model(folder: str | Path | Location) -> nn.Module:
    """Rebuild a reward model saved by `save_reward_model` in a folder (a path or a URI; the
    ZeRO shards beside it are not read); strict: every weight must match."""
    folder = Location(folder)
    spec = json.loads((folder / SPEC_FILE).read_text())
    model = build_reward_model(
        spec["kind"], ModelConfig.model_validate(spec["model"]), spec["feature_dim"]
    )
    with (folder / MODEL_FILE).local_copy() as weights:
        model.load_state_dict(load_file(weights), strict=True)
    return model.eval()
