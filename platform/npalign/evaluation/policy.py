"""A policy's implicit-reward accuracy vs context size, on targets never in the context.

DPO's implicit reward of a response is β · (log π(y | x, z) − log π_ref(y | x)), the log-ratio
summed over the response's tokens, or averaged over them for a policy trained so
(`policy.per_token`); a target pair counts as right when the chosen response's is higher.
Scored on the same users and targets at every context size (`evaluate_by_context`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from npalign.config import EvalConfig
from npalign.data.episodes import episode_arrays
from npalign.data.preferences import PairTable
from npalign.data.sequences import TokenizedPairs, collate_policy
from npalign.evaluation.accuracy import evaluate_by_context
from npalign.files import Location
from npalign.models.policy import available_device, device_of, load_policy, log_ratios


@torch.no_grad()
def implicit_reward_accuracy(
    policy,
    use_latent: bool,
    per_token: bool,
    pairs: PairTable,
    tokens: TokenizedPairs,
    episodes: pa.Table,
    references: dict[int, torch.Tensor],
    batch_size: int = 8,
) -> np.ndarray:
    """100 for each target pair whose DPO implicit reward ranks the chosen response higher, else
    0: (episodes, targets). `references` caches π_ref's (chosen, rejected) log-probs by pair row:
    they do not depend on the context, and every context size scores the same test pairs."""
    rows = episode_arrays(episodes, ("context", "target"))
    device = device_of(policy)
    out = []
    for start in range(0, len(rows["target"]), batch_size):
        part = {k: v[start : start + batch_size] for k, v in rows.items()}
        targets = part["target"].reshape(-1).tolist()
        known = None
        if all(t in references for t in targets):
            known = torch.cat([references[t] for t in targets])  # (sequences,)
        batch = collate_policy(part, pairs, tokens).to(device)
        output = policy(batch, use_latent, known)
        for t, reference in zip(targets, output.reference.reshape(-1, 2), strict=True):
            references[t] = reference
        chosen, rejected = log_ratios(output, per_token)
        out.append((chosen > rejected).float().cpu().numpy() * 100)  # (batch, targets)
    return np.concatenate(out)


def evaluate_policy(
    checkpoint: str | Path | Location,
    pairs: PairTable,
    tokens: TokenizedPairs,
    settings: EvalConfig,
    num_targets: int,
) -> dict:
    """Implicit-reward accuracy by context size on episodes drawn from `pairs` (one split), on
    this process's GPU when it has one."""
    loaded = load_policy(checkpoint, available_device())
    references: dict[int, torch.Tensor] = {}
    return evaluate_by_context(
        lambda episodes: implicit_reward_accuracy(
            loaded.policy, loaded.use_latent, loaded.per_token, pairs, tokens, episodes, references
        ),
        pairs,
        settings,
        num_targets,
        context_blind=not loaded.use_latent,
    )
