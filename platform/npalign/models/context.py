"""The context encoder shared by NP-BTL and NP-DPO: a user's labelled pairs → latent z.

Each context pair becomes e_i = f([φ(chosen); φ(rejected)]) (the order carries the choice); the
e_i are aggregated with a masked mean (optionally after self-attention) and mapped to z. A mean,
not the paper's sum, keeps the latent's scale independent of the context size m; an empty context
(m = 0) maps to a learned "no information" aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def mlp(
    in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, dropout: float = 0.0
) -> nn.Sequential:
    """`layers` hidden layers of width hidden_dim with ReLU (and dropout after it, in training),
    then a linear output; He-initialised, biases zero."""
    modules: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        modules += [he_linear(dim, hidden_dim, "relu"), activation(dropout)]
        dim = hidden_dim
    modules.append(he_linear(dim, out_dim, "linear"))
    return nn.Sequential(*modules)


def he_linear(in_dim: int, out_dim: int, followed_by: str) -> nn.Linear:
    """A linear layer that keeps its input's scale through `followed_by` (He's init). PyTorch's
    default shrinks it about 2.4× per ReLU layer: through the context encoder and the decoder
    (7 layers) the context then reaches the reward about 1e-3 as strongly, and where only the
    context predicts anything (every pair disputed by the user types) training can sit on
    that flat start for over 1,000 steps, or leave it in 150, by the seed alone."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.kaiming_normal_(layer.weight, nonlinearity=followed_by)
    nn.init.zeros_(layer.bias)
    return layer


def activation(dropout: float) -> nn.Module:
    """ReLU, then dropout when asked: one module either way, so the linear layers keep their
    indices and a checkpoint's keys do not depend on the dropout setting."""
    return nn.Sequential(nn.ReLU(), nn.Dropout(dropout)) if dropout else nn.ReLU()


@dataclass
class Latent:
    """z, or the diagonal Gaussian q(z | set) of the variational variant (std is None otherwise)."""

    mean: torch.Tensor  # (batch, latent)
    std: torch.Tensor | None = None  # (batch, latent)

    def sample(self) -> torch.Tensor:
        if self.std is None:
            return self.mean
        return self.mean + self.std * torch.randn_like(self.std)

    def kl(self, other: Latent) -> torch.Tensor:
        """KL(self ‖ other) per batch row, both diagonal Gaussians. (batch,)"""
        var, other_var = self.std**2, other.std**2
        return 0.5 * (
            torch.log(other_var / var) + (var + (self.mean - other.mean) ** 2) / other_var - 1
        ).sum(-1)


class ContextEncoder(nn.Module):
    def __init__(
        self,
        feature_dim: int,
        hidden_dim: int,
        latent_dim: int,
        aggregation: str = "mean",
        variational: bool = False,
        num_heads: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.variational = variational
        self.pair_net = mlp(2 * feature_dim, hidden_dim, hidden_dim, dropout=dropout)
        self.attention = (
            nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
            if aggregation == "attention"
            else None
        )
        self.empty = nn.Parameter(torch.zeros(hidden_dim))
        self.to_latent = mlp(
            hidden_dim, hidden_dim, latent_dim * (2 if variational else 1), 1, dropout
        )

    def forward(self, chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor) -> Latent:
        """chosen, rejected: (batch, m, dim); mask: (batch, m) bool, False on padding."""
        e = self.pair_net(torch.cat([chosen, rejected], dim=-1))  # (batch, m, hidden)
        has_context = mask.any(dim=1)  # (batch,)
        if self.attention is not None:
            # A row with no context would attend to nothing (NaN): let it see its padding, and
            # replace its aggregate with `empty` below.
            padding = ~mask
            padding[~has_context, 0] = False
            attended, _ = self.attention(e, e, e, key_padding_mask=padding, need_weights=False)
            e = e + attended
        weights = mask.to(e.dtype)[..., None]  # (batch, m, 1)
        aggregate = (e * weights).sum(1) / weights.sum(1).clamp(min=1)  # (batch, hidden)
        aggregate = torch.where(has_context[:, None], aggregate, self.empty.to(e.dtype))
        out = self.to_latent(aggregate)  # (batch, latent) or (batch, 2 * latent)
        if not self.variational:
            return Latent(out)
        mean, raw_std = out.chunk(2, dim=-1)
        # Bounded below so the KL stays finite and the posterior cannot collapse to a point.
        return Latent(mean, 0.1 + 0.9 * F.sigmoid(raw_std))
