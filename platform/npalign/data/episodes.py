"""Episodes, the NP "tasks": one user, a context set of m labelled pairs and a disjoint target set.

An episode table holds row indices into a split's PairTable (built ahead, so Ray Data can stream
it without a group-by shuffle). `collate` turns a batch of episode rows into padded tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import torch

from npalign.data.preferences import PairTable, PreferenceDataError


def sample_episodes(
    pairs: PairTable,
    num_episodes: int,
    min_context: int,
    max_context: int,
    num_targets: int,
    seed: int,
    source: str = "<pairs>",
) -> pa.Table:
    """Draw episodes: a user uniformly, m ~ U{min_context..max_context} per episode, then m + n
    distinct rows of that user; the first m are the context, the other n the targets."""
    rng = np.random.default_rng(seed)
    users, inverse = np.unique(pairs.user.astype(str), return_inverse=True)
    rows_of_user = [np.flatnonzero(inverse == u) for u in range(len(users))]
    needed = max_context + num_targets
    for name, rows in zip(users, rows_of_user, strict=True):
        if len(rows) < needed:
            raise PreferenceDataError(
                f"{source}: user {str(name)!r} has {len(rows)} pairs, but an episode needs up to "
                f"max_context ({max_context}) + num_targets ({num_targets}) = {needed} "
                "distinct pairs; lower max_context or num_targets"
            )
    episode_user = rng.integers(0, len(users), size=num_episodes)
    sizes = rng.integers(min_context, max_context + 1, size=num_episodes)
    context, target = [], []
    for u, m in zip(episode_user, sizes, strict=True):
        rows = rows_of_user[u]
        picked = rows[rng.choice(len(rows), size=m + num_targets, replace=False)]
        context.append(picked[:m])
        target.append(picked[m:])
    user_type = {u: pairs.user_type[rows[0]] for u, rows in enumerate(rows_of_user)}
    return pa.table(
        {
            "user": pa.array(users[episode_user], pa.string()),
            "user_type": pa.array([user_type[u] for u in episode_user], pa.string()),
            "context": pa.array(context, pa.list_(pa.int64())),
            "target": pa.array(target, pa.list_(pa.int64())),
        }
    )


@dataclass
class EpisodeBatch:
    context_chosen: torch.Tensor  # (batch, max_context, dim)
    context_rejected: torch.Tensor  # (batch, max_context, dim)
    context_mask: torch.Tensor  # (batch, max_context) bool, False on padding
    target_a: torch.Tensor  # (batch, max_targets, dim)
    target_b: torch.Tensor  # (batch, max_targets, dim)
    target_choice: torch.Tensor  # (batch, max_targets) float: 1 if b was chosen
    target_mask: torch.Tensor  # (batch, max_targets) bool

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> EpisodeBatch:
        # Features take the model's dtype (bf16 on GPU); choices stay fp32 for the loss.
        moved = {}
        for f in fields(self):
            t = getattr(self, f.name).to(device, non_blocking=True)
            is_feature = t.is_floating_point() and f.name != "target_choice"
            moved[f.name] = t.to(dtype) if is_feature else t
        return EpisodeBatch(**moved)

    @property
    def target_chosen(self) -> torch.Tensor:  # (batch, max_targets, dim)
        return torch.where(self.target_choice[..., None].bool(), self.target_b, self.target_a)

    @property
    def target_rejected(self) -> torch.Tensor:  # (batch, max_targets, dim)
        return torch.where(self.target_choice[..., None].bool(), self.target_a, self.target_b)


def _pad(lists) -> tuple[np.ndarray, np.ndarray]:
    """Ragged row-index lists → (batch, width) indices (0 on padding) and a validity mask."""
    lengths = np.array([len(x) for x in lists])
    width = max(1, int(lengths.max(initial=0)))  # keep a real axis even when every context is empty
    mask = np.arange(width)[None, :] < lengths[:, None]
    index = np.zeros(mask.shape, dtype=np.int64)
    if lengths.sum():
        index[mask] = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
    return index, mask


def collate(episodes: dict[str, np.ndarray], pairs: PairTable) -> EpisodeBatch:
    """A batch of episode rows (numpy, as Ray Data yields them) → padded tensors."""
    a = torch.from_numpy(pairs.features_a)
    b = torch.from_numpy(pairs.features_b)
    choice = torch.from_numpy(pairs.choice.astype(np.float32))

    c_index, c_mask = _pad(episodes["context"])
    t_index, t_mask = _pad(episodes["target"])
    c_index, t_index = torch.from_numpy(c_index), torch.from_numpy(t_index)
    c_choice = choice[c_index][..., None].bool()  # (batch, max_context, 1)
    return EpisodeBatch(
        context_chosen=torch.where(c_choice, b[c_index], a[c_index]),
        context_rejected=torch.where(c_choice, a[c_index], b[c_index]),
        context_mask=torch.from_numpy(c_mask),
        target_a=a[t_index],
        target_b=b[t_index],
        target_choice=choice[t_index],
        target_mask=torch.from_numpy(t_mask),
    )
