"""Episodes, the NP "tasks": one user, a context set of m labelled pairs and a disjoint target set.

An episode table holds row indices into a split's PairTable (built ahead, so Ray Data can stream
it without a group-by shuffle), as fixed-width integer columns padded with -1: Ray Data hands
those to a worker as plain 2-D arrays, with no per-row Python objects. `collate` turns a batch of
episode rows into padded tensors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from npalign.config import DataConfig
from npalign.data.preferences import PairTable, PreferenceDataError
from npalign.files import Location, atomic_path

PADDING = -1  # an index slot with no pair in it


def sample_episodes(
    pairs: PairTable,
    num_episodes: int,
    min_context: int,
    max_context: int,
    num_targets: int,
    seed: int,
    source: str = "<pairs>",
    paired: bool = False,
    empty_context_share: float = 0.0,
) -> pa.Table:
    """Draw episodes: a user uniformly, m ~ U{min_context..max_context} per episode, then m + n
    distinct rows of that user; the first m are the context, the other n the targets.

    `paired`: episodes come instead in groups of consecutive rows, one episode per user, whose
    targets are the same n pairs (each labelled by that user) and whose contexts are each
    user's own, one m for the whole group: the users then differ only in whose choices the
    context holds, and a group without context is whole (all users of a disputed pair at once).
    Where the users label a pair differently, the part of the loss gradient that ignores the user
    cancels within the group, so a batch of a few episodes carries mostly how users differ: the
    signal that teaches a policy to read z. Needs pairs labelled by every user (as in the
    synthetic and steer tasks).

    `empty_context_share`: each episode (each group, when paired) has an empty context with this
    probability, whatever m was drawn. A paired group with no context is the pooled preference
    on disputed pairs (the users' losses pull the no-context margin to 0), so it anchors what a
    policy does for a user nobody knows."""
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
    if paired:
        episode_user, target = _paired_targets(
            pairs, rows_of_user, num_episodes, num_targets, rng, source
        )
    else:
        episode_user = rng.integers(0, len(users), size=num_episodes)
        target = np.empty((num_episodes, num_targets), dtype=np.int64)
    group = len(users) if paired else 1
    groups = -(-num_episodes // group)
    sizes = np.repeat(rng.integers(min_context, max_context + 1, size=groups), group)
    if empty_context_share > 0:  # drawn only when asked, so other configs keep their episodes
        sizes[np.repeat(rng.random(groups) < empty_context_share, group)] = 0
    sizes = sizes[:num_episodes]
    width = max(1, max_context)  # keep a real axis even when every context is empty
    context = np.full((num_episodes, width), PADDING, dtype=np.int64)
    for i, (u, m) in enumerate(zip(episode_user, sizes, strict=True)):
        rows = rows_of_user[u]
        if paired:
            free = rows[~np.isin(rows, target[i])]
            context[i, :m] = free[rng.choice(len(free), size=m, replace=False)]
        else:
            picked = rows[rng.choice(len(rows), size=m + num_targets, replace=False)]
            context[i, :m] = picked[:m]
            target[i] = picked[m:]
    user_type = {u: pairs.user_type[rows[0]] for u, rows in enumerate(rows_of_user)}
    return pa.table(
        {
            "user": pa.array(users[episode_user], pa.string()),
            "user_type": pa.array([user_type[u] for u in episode_user], pa.string()),
            "context": index_column(context),
            "target": index_column(target),
        }
    )


def sample_train_val(data: DataConfig, pairs: dict[str, PairTable]) -> dict[str, pa.Table]:
    """The training and validation episodes of a job, as its `data` section says."""
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


def write_episodes(
    episodes: dict[str, pa.Table], folder: Path | Location
) -> dict[str, Path | Location]:
    """Each split's episode table as folder/<split>.parquet (a path or a URI), written
    atomically."""
    files = {}
    for split, table in episodes.items():
        files[split] = folder / f"{split}.parquet"
        with atomic_path(files[split]) as tmp:
            pq.write_table(table, tmp)
    return files


def _paired_targets(
    pairs: PairTable,
    rows_of_user: list[np.ndarray],
    num_episodes: int,
    num_targets: int,
    rng: np.random.Generator,
    source: str,
) -> tuple[np.ndarray, np.ndarray]:
    """For groups of one episode per user: (episodes,) users and (episodes, n) target rows,
    the same n pairs within a group, each row that user's label of the pair."""
    row_of = [dict(zip(pairs.pair_id[rows], rows, strict=True)) for rows in rows_of_user]
    shared = sorted(set.intersection(*(set(r) for r in row_of)))
    if len(shared) < num_targets:
        raise PreferenceDataError(
            f"{source}: paired episodes score every user on the same targets, but only "
            f"{len(shared)} pairs are labelled by all {len(row_of)} users and an episode needs "
            f"num_targets ({num_targets}); set paired_targets false"
        )
    groups = -(-num_episodes // len(row_of))
    episode_user = np.tile(np.arange(len(row_of)), groups)[:num_episodes]
    target = np.empty((num_episodes, num_targets), dtype=np.int64)
    for g in range(groups):
        picked = [shared[j] for j in rng.choice(len(shared), size=num_targets, replace=False)]
        for i in range(g * len(row_of), min((g + 1) * len(row_of), num_episodes)):
            target[i] = [row_of[episode_user[i]][p] for p in picked]
    return episode_user, target


def index_column(index: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(index.reshape(-1)), index.shape[1])


def episode_arrays(
    episodes: pa.Table, columns: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """An episode table (or some of its `columns`) as numpy: (episodes, width) index arrays
    padded with -1, without a copy, and the user columns."""
    out = {}
    for name in columns or episodes.column_names:
        column = episodes.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            flat = column.flatten().to_numpy()
            out[name] = flat.reshape(len(column), column.type.list_size)
        else:
            out[name] = np.asarray(column.to_pylist(), dtype=object)
    return out


def context_prefix(episodes: pa.Table, size: int) -> pa.Table:
    """The same episodes with only the first `size` pairs of each context (the rest padding):
    the same users and targets with less context."""
    context = episode_arrays(episodes, ("context",))["context"].copy()
    context[:, size:] = PADDING
    return episodes.set_column(
        episodes.schema.get_field_index("context"), "context", index_column(context)
    )


def context_rows(episodes: pa.Table) -> list[np.ndarray]:
    """Each episode's context row indices, padding dropped."""
    return [row[row != PADDING] for row in episode_arrays(episodes)["context"]]


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


def _mask(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, width) indices padded with -1 → indices safe to gather (0 on padding), mask."""
    index = torch.from_numpy(np.array(index, dtype=np.int64))  # a copy: Ray's arrays are read-only
    mask = index != PADDING
    return index.clamp(min=0), mask


def collate(episodes: dict[str, np.ndarray], pairs: PairTable) -> EpisodeBatch:
    """A batch of episode rows (numpy, as Ray Data yields them) → padded tensors."""
    with warnings.catch_warnings():
        # Features shared through Ray's object store are read-only; they are only ever indexed
        # (which copies), so sharing them without a copy is safe.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        a = torch.from_numpy(pairs.features_a)
        b = torch.from_numpy(pairs.features_b)
    choice = torch.from_numpy(pairs.choice.astype(np.float32))

    c_index, c_mask = _mask(episodes["context"])
    t_index, t_mask = _mask(episodes["target"])
    c_choice = choice[c_index][..., None].bool()  # (batch, max_context, 1)
    return EpisodeBatch(
        context_chosen=torch.where(c_choice, b[c_index], a[c_index]),
        context_rejected=torch.where(c_choice, a[c_index], b[c_index]),
        context_mask=c_mask,
        target_a=a[t_index],
        target_b=b[t_index],
        target_choice=choice[t_index],
        target_mask=t_mask,
    )
