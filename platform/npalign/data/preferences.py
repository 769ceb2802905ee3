"""The preference table: one row per (pair, user) with the features of both options and the choice.

Stored as parquet. Columns:
  pair_id     string   the option pair (the same pair may be labelled by several users)
  prompt_id   string   the prompt x of the pair
  features_a  list<f32> φ(x, a): features or a frozen-encoder embedding of option a
  features_b  list<f32> φ(x, b)
  user        string   who chose: a person, or a user type in the paper's experiments
  user_type   string   optional; the type the user belongs to, for per-type metrics
  choice      int8     0 if the user prefers a, 1 if b
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from npalign.files import Location, atomic_path

REQUIRED_COLUMNS = ("pair_id", "prompt_id", "features_a", "features_b", "user", "choice")
SPLITS = ("train", "val", "test")


class PreferenceDataError(ValueError):
    """Preference data that does not fit the schema; the message names file, row and column."""


@dataclass
class PairTable:
    pair_id: np.ndarray  # (rows,) str
    prompt_id: np.ndarray  # (rows,) str
    features_a: np.ndarray  # (rows, dim) float32
    features_b: np.ndarray  # (rows, dim) float32
    user: np.ndarray  # (rows,) str
    user_type: np.ndarray  # (rows,) str
    choice: np.ndarray  # (rows,) int8

    def __len__(self) -> int:
        return len(self.choice)

    @property
    def feature_dim(self) -> int:
        return self.features_a.shape[1]

    def select(self, rows: np.ndarray) -> PairTable:
        """The rows picked by a boolean mask or an index array."""
        return PairTable(**{f: getattr(self, f)[rows] for f in self.__dataclass_fields__})

    def to_arrow(self) -> pa.Table:
        dim = self.feature_dim
        return pa.table(
            {
                "pair_id": pa.array(self.pair_id, pa.string()),
                "prompt_id": pa.array(self.prompt_id, pa.string()),
                "features_a": pa.FixedSizeListArray.from_arrays(
                    pa.array(self.features_a.reshape(-1), pa.float32()), dim
                ),
                "features_b": pa.FixedSizeListArray.from_arrays(
                    pa.array(self.features_b.reshape(-1), pa.float32()), dim
                ),
                "user": pa.array(self.user, pa.string()),
                "user_type": pa.array(self.user_type, pa.string()),
                "choice": pa.array(self.choice, pa.int8()),
            }
        )


def _features(table: pa.Table, column: str, source: str) -> np.ndarray:
    values = table.column(column).combine_chunks()
    if not pa.types.is_list(values.type) and not pa.types.is_fixed_size_list(values.type):
        raise PreferenceDataError(
            f"{source}: column {column!r} must be a list of floats, found {values.type}"
        )
    lengths = values.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise PreferenceDataError(
            f"{source}: row {row}, column {column!r}: {lengths[row]} features, "
            f"expected {lengths[0]} like row 0"
        )
    dim = int(lengths[0]) if len(lengths) else 0
    flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    array = flat.reshape(len(values), dim)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PreferenceDataError(
            f"{source}: row {row}, column {column!r}: features contain NaN or inf "
            f"({int(bad.sum())} bad rows in all)"
        )
    return array


def check_labels(pair_id, user, source: str) -> None:
    """At least one row, and each user labels a pair once: a second row of the same (user,
    pair) could land in an episode's context and its targets at once, inflating accuracy."""
    if not len(pair_id):
        raise PreferenceDataError(f"{source}: no rows (an empty split)")
    first: dict[tuple, int] = {}
    for row, key in enumerate(zip(user, pair_id, strict=True)):
        if key in first:
            raise PreferenceDataError(
                f"{source}: row {row}: user {key[0]!r} labels pair {key[1]!r} again "
                f"(first at row {first[key]})"
            )
        first[key] = row


def pairs_from_arrow(table: pa.Table, source: str = "<table>") -> PairTable:
    """Validate an arrow table against the schema; errors name `source`, the row and the column."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise PreferenceDataError(
            f"{source}: missing column(s) {missing}; found {table.column_names}, "
            f"expected {list(REQUIRED_COLUMNS)}"
        )
    for column in ("pair_id", "prompt_id", "user"):
        if table.column(column).null_count:
            row = int(np.flatnonzero(table.column(column).is_null().to_numpy())[0])
            raise PreferenceDataError(f"{source}: row {row}, column {column!r}: empty value")
    choice = table.column("choice").to_numpy(zero_copy_only=False)
    bad = ~np.isin(choice, (0, 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PreferenceDataError(
            f"{source}: row {row}, column 'choice': expected 0 (a) or 1 (b), found {choice[row]}"
        )
    features_a = _features(table, "features_a", source)
    features_b = _features(table, "features_b", source)
    if features_a.shape != features_b.shape:
        raise PreferenceDataError(
            f"{source}: features_a has {features_a.shape[1]} features, "
            f"features_b {features_b.shape[1]}"
        )
    user = np.asarray(table.column("user").to_pylist(), dtype=object)
    pair_id = np.asarray(table.column("pair_id").to_pylist(), dtype=object)
    check_labels(pair_id, user, source)
    if "user_type" in table.column_names:
        user_type = np.asarray(table.column("user_type").to_pylist(), dtype=object)
    else:
        user_type = user
    return PairTable(
        pair_id=pair_id,
        prompt_id=np.asarray(table.column("prompt_id").to_pylist(), dtype=object),
        features_a=features_a,
        features_b=features_b,
        user=user,
        user_type=user_type,
        choice=choice.astype(np.int8),
    )


def read_pairs(path: str | Path) -> PairTable:
    path = Path(path)
    if not path.exists():
        raise PreferenceDataError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise PreferenceDataError(f"{path}: not a readable parquet file: {e}") from e
    return pairs_from_arrow(table, str(path))


def write_pairs(pairs: PairTable, path: str | Path | Location) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(pairs.to_arrow(), tmp)


def read_splits(folder: str | Path) -> dict[str, PairTable]:
    """Read train/val/test parquet files and check that no pair appears in two splits."""
    folder = Path(folder)
    splits = {split: read_pairs(folder / f"{split}.parquet") for split in SPLITS}
    seen: dict[str, str] = {}
    for split, pairs in splits.items():
        for pair_id in set(pairs.pair_id):
            if pair_id in seen:
                raise PreferenceDataError(
                    f"{folder}: pair {pair_id!r} is in both {seen[pair_id]} and {split}"
                )
            seen[pair_id] = split
    return splits
