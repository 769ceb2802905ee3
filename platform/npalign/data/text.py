"""Text preference data: prompt, response_a, response_b, user (and user_type), choice.

Loaded from a HF `datasets` hub name (when online), a local dataset folder, JSONL or parquet,
with a mapping from the source's column names. Bad rows (missing or empty text, a choice that is
not 0/1, a duplicated pair id) are skipped and counted with their reason; more than
`max_bad_fraction` of them is one clear error instead. Written as parquet, atomically.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from npalign.config import TextSourceConfig
from npalign.data.preferences import SPLITS, PreferenceDataError, check_labels
from npalign.files import atomic_path

log = logging.getLogger(__name__)

TEXT_COLUMNS = (
    "pair_id",
    "prompt_id",
    "prompt",
    "response_a",
    "response_b",
    "user",
    "user_type",
    "choice",
)


def text_id(*parts: str) -> str:
    """A stable id for a prompt or a (prompt, response) pair: the first 16 hex of a SHA-256."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return digest[:16]


@dataclass
class BadRows:
    """Rows skipped while reading a source, counted by reason."""

    source: str
    total: int = 0
    reasons: Counter = field(default_factory=Counter)
    first_row: dict[str, int] = field(default_factory=dict)

    def skip(self, row: int, reason: str) -> None:
        self.reasons[reason] += 1
        self.first_row.setdefault(reason, row)

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def check(self, max_bad_fraction: float) -> None:
        """Log what was skipped; raise when more than `max_bad_fraction` of the rows were bad."""
        if not self.count:
            return
        detail = "; ".join(
            f"{n} × {reason} (first at row {self.first_row[reason]})"
            for reason, n in self.reasons.most_common()
        )
        fraction = self.count / max(self.total, 1)
        if fraction > max_bad_fraction:
            raise PreferenceDataError(
                f"{self.source}: {self.count} of {self.total} rows are bad ({fraction:.1%}, "
                f"more than max_bad_fraction={max_bad_fraction:.1%}): {detail}"
            )
        log.warning("%s: skipped %d of %d rows: %s", self.source, self.count, self.total, detail)


def load_records(source: str, split: str = "train") -> Iterable[dict[str, Any]]:
    """Rows of a JSONL or parquet file, a saved or local HF dataset folder, or a hub name."""
    import datasets

    path = Path(source)
    if path.suffix in (".jsonl", ".json"):
        return datasets.load_dataset("json", data_files=str(path), split="train")
    if path.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(path), split="train")
    if path.is_dir() and (path / "dataset_info.json").exists():
        return datasets.load_from_disk(str(path))
    return datasets.load_dataset(source, split=split)  # a hub name, or a folder of data files


CHOICES = {0: 0, 1: 1, "0": 0, "1": 1, "a": 0, "b": 1, "A": 0, "B": 1}


def load_text_pairs(config: TextSourceConfig) -> list[dict[str, Any]]:
    """Rows in the text preference format from any source, mapped by `config.columns`."""
    columns = config.columns
    bad = BadRows(config.source)
    seen: set[tuple[str, str]] = set()
    rows = []
    for row_number, record in enumerate(load_records(config.source, config.split)):
        bad.total += 1
        try:
            texts = {
                f: record[getattr(columns, f)]
                for f in ("prompt", "response_a", "response_b", "user")
            }
            choice = record[columns.choice]
        except KeyError as e:
            raise PreferenceDataError(
                f"{config.source}: no column {e.args[0]!r} (data.columns maps the fields to "
                f"the source's columns; found {sorted(record)})"
            ) from None
        empty = [f for f, t in texts.items() if not isinstance(t, str) or not t.strip()]
        if empty:
            bad.skip(row_number, f"missing or empty {empty[0]}")
            continue
        if choice not in CHOICES:
            bad.skip(row_number, f"choice {choice!r} is not 0/1 or a/b")
            continue
        pair_id = (
            str(record[columns.pair_id])
            if columns.pair_id
            else text_id(texts["prompt"], texts["response_a"], texts["response_b"])
        )
        if (pair_id, texts["user"]) in seen:
            bad.skip(row_number, "duplicated pair id for this user")
            continue
        seen.add((pair_id, texts["user"]))
        rows.append(
            {
                **texts,
                "pair_id": pair_id,
                "prompt_id": text_id(texts["prompt"]),
                "user_type": str(record[columns.user_type]) if columns.user_type else texts["user"],
                "choice": CHOICES[choice],
            }
        )
    bad.check(config.max_bad_fraction)
    return rows


def write_text_pairs(rows: list[dict[str, Any]], path: str | Path) -> None:
    schema = pa.schema([(c, pa.int8() if c == "choice" else pa.string()) for c in TEXT_COLUMNS])
    table = pa.Table.from_pylist([{c: r[c] for c in TEXT_COLUMNS} for r in rows], schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def split_by_prompt(
    rows: list[dict[str, Any]], fractions=(0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    prompts = sorted({r["prompt_id"] for r in rows})
    order = np.random.default_rng(seed).permutation(len(prompts))
    bounds = np.cumsum([int(round(f * len(prompts))) for f in fractions[:2]])
    split_of = {}
    for split, idx in zip(SPLITS, np.split(order, bounds), strict=True):
        for i in idx:
            split_of[prompts[i]] = split
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for r in rows:
        out[split_of[r["prompt_id"]]].append(r)
    return out


def check_text_table(table: pa.Table, source: str) -> None:
    """Every text present and not blank, choices 0 or 1, each (user, pair) once."""
    columns = table.to_pydict()
    for column in ("pair_id", "prompt_id", "prompt", "response_a", "response_b", "user"):
        for row, value in enumerate(columns[column]):
            if not isinstance(value, str) or not value.strip():
                raise PreferenceDataError(
                    f"{source}: row {row}, column {column!r}: missing or empty text"
                )
    for row, choice in enumerate(columns["choice"]):
        if choice not in (0, 1):
            raise PreferenceDataError(
                f"{source}: row {row}, column 'choice': expected 0 (a) or 1 (b), found {choice}"
            )
    check_labels(columns["pair_id"], columns["user"], source)


def read_text_splits(folder: str | Path) -> dict[str, pa.Table]:
    """train/val/test.parquet in the text preference format; a missing column or a prompt in two
    splits is an error that names the file."""
    tables = {}
    for split in SPLITS:
        path = Path(folder) / f"{split}.parquet"
        if not path.exists():
            raise PreferenceDataError(f"{path}: not found (a text data folder holds {SPLITS})")
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise PreferenceDataError(f"{path}: not a readable parquet file: {e}") from e
        missing = [c for c in TEXT_COLUMNS if c not in table.column_names]
        if missing:
            raise PreferenceDataError(f"{path}: missing column(s) {missing}")
        tables[split] = table.select(list(TEXT_COLUMNS))
        check_text_table(tables[split], str(path))
    prompts = {s: set(t.column("prompt_id").to_pylist()) for s, t in tables.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = prompts[a] & prompts[b]
        if shared:
            raise PreferenceDataError(
                f"{folder}: {len(shared)} prompt(s) in both {a} and {b} (e.g. {min(shared)}); "
                "text data is split by prompt"
            )
    return tables
