"""Text preference data: prompt, response_a, response_b, user (and user_type), choice.

Loaded from a HF `datasets` hub name (when online), a saved dataset folder, JSONL or parquet,
with a mapping from the source's column names, as pairs (response_a, response_b, choice) or in
TRL's format (chosen, rejected; plain strings or chat messages). A prompt that is a conversation
of several turns keeps them in `prompt_messages` (JSON), so a policy reads it through the chat
template turn by turn; `prompt` holds it flattened for the embedder and the ids. A pair's id is
a hash of the prompt and the two responses in either order, so a copy with the responses swapped
is the same pair. Bad rows (missing or empty text, a choice that is not 0/1, two identical
responses, a pair labelled twice by one user, one pair under two ids) are skipped and counted
with their reason; more than `max_bad_fraction` of them is one clear error instead. Written as
parquet, atomically.
"""

from __future__ import annotations

import hashlib
import json
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
# Optional: a multi-turn prompt's conversation as JSON [{"role", "content"}, ...]; null when the
# prompt is one user turn.
PROMPT_MESSAGES = "prompt_messages"


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
    """Rows of a JSONL or parquet file, a saved dataset (or DatasetDict) folder, or a hub name."""
    import datasets

    path = Path(source)
    if path.suffix in (".jsonl", ".json"):
        return datasets.load_dataset("json", data_files=str(path), split="train")
    if path.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(path), split="train")
    if path.is_dir() and (path / "dataset_info.json").exists():
        return datasets.load_from_disk(str(path))
    if path.is_dir() and (path / "dataset_dict.json").exists():
        saved = datasets.load_from_disk(str(path))
        if split not in saved:
            raise PreferenceDataError(f"{source}: no split {split!r} (has {sorted(saved)})")
        return saved[split]
    return datasets.load_dataset(source, split=split)  # a hub name, or a folder of data files


CHOICES = {0: 0, 1: 1, "0": 0, "1": 1, "a": 0, "b": 1, "A": 0, "B": 1}


def pair_id_of(prompt: str, response_a: str, response_b: str) -> str:
    """The pair's id, the same whichever response comes first."""
    return text_id(prompt, *sorted((response_a, response_b)))


def message_text(value: Any) -> Any:
    """A chat (a list of {role, content} messages) as one text: a lone message's content, else
    each turn on its own line as "role: content". Anything else is returned as it is."""
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and "content" in m for m in value
    ):
        return value
    if len(value) == 1:
        return value[0]["content"]
    return "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in value)


def conversation(value: Any) -> str | None:
    """A prompt of several chat turns as JSON [{"role", "content"}, ...] (what `prompt_tokens`
    templates turn by turn); None for a plain text or a single turn."""
    if message_text(value) is value or len(value) < 2:
        return None
    return json.dumps([{"role": m.get("role", "user"), "content": m["content"]} for m in value])


def trl_texts(record: dict[str, Any], columns) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of a TRL preference row, each a text or chat messages; without
    a prompt column the prompt is the conversation before the last message of `chosen` (TRL's
    implicit prompt)."""
    chosen, rejected = record[columns.chosen], record[columns.rejected]
    if columns.prompt in record:
        return record[columns.prompt], chosen, rejected
    if not isinstance(chosen, list) or not isinstance(rejected, list) or not chosen:
        raise KeyError(columns.prompt)
    return (chosen[:-1] if len(chosen) > 1 else None), chosen[-1:], rejected[-1:]


def record_texts(record: dict[str, Any], config: TextSourceConfig) -> tuple[dict[str, Any], Any]:
    """({prompt, response_a, response_b, user}, choice) of one row in either format. In TRL's
    format the two responses are put in the order of their texts, so `choice` says which one
    was chosen and does not always point at the first."""
    columns = config.columns
    if config.format == "pairs":
        prompt = record[columns.prompt]
        texts = {
            "prompt": message_text(prompt),
            "response_a": message_text(record[columns.response_a]),
            "response_b": message_text(record[columns.response_b]),
            "user": record[columns.user],
        }
        return {**texts, PROMPT_MESSAGES: conversation(prompt)}, record[columns.choice]
    prompt, chosen, rejected = trl_texts(record, columns)
    user = record[columns.user]
    messages = conversation(prompt)
    prompt, chosen, rejected = map(message_text, (prompt, chosen, rejected))
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        texts = {"prompt": prompt, "response_a": chosen, "response_b": rejected, "user": user}
        return {**texts, PROMPT_MESSAGES: messages}, 0
    first, second = sorted((chosen, rejected))
    texts = {"prompt": prompt, "response_a": first, "response_b": second, "user": user}
    return {**texts, PROMPT_MESSAGES: messages}, 0 if first == chosen else 1


def load_text_pairs(config: TextSourceConfig) -> list[dict[str, Any]]:
    """Rows in the text preference format from any source, mapped by `config.columns`."""
    columns = config.columns
    bad = BadRows(config.source)
    seen: set[tuple[str, str]] = set()
    id_of_content: dict[str, str] = {}
    rows = []
    for row_number, record in enumerate(load_records(config.source, config.split)):
        bad.total += 1
        try:
            texts, choice = record_texts(record, config)
        except KeyError as e:
            raise PreferenceDataError(
                f"{config.source}: no column {e.args[0]!r} (data.records.columns maps the fields "
                f"to the source's columns, format {config.format!r}; found {sorted(record)})"
            ) from None
        empty = [
            f
            for f, t in texts.items()
            if f != PROMPT_MESSAGES and (not isinstance(t, str) or not t.strip())
        ]
        if empty:
            bad.skip(row_number, f"missing or empty {empty[0]}")
            continue
        if choice not in CHOICES:
            bad.skip(row_number, f"choice {choice!r} is not 0/1 or a/b")
            continue
        if texts["response_a"] == texts["response_b"]:
            bad.skip(row_number, "two identical responses")
            continue
        content = pair_id_of(texts["prompt"], texts["response_a"], texts["response_b"])
        pair_id = str(record[columns.pair_id]) if columns.pair_id else content
        if id_of_content.setdefault(content, pair_id) != pair_id:
            bad.skip(row_number, "the same pair as another pair id (in either order)")
            continue
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
    with atomic_path(path) as tmp:
        pq.write_table(text_table(rows), tmp)


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
    """Every text present and not blank, choices 0 or 1, two different responses, each (user,
    pair) once, and one pair (prompt and responses, in either order) under one id."""
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
    first_row: dict[str, tuple[int, str]] = {}
    pairs = zip(
        columns["prompt"],
        columns["response_a"],
        columns["response_b"],
        columns["pair_id"],
        strict=True,
    )
    for row, (prompt, a, b, pair_id) in enumerate(pairs):
        if a == b:
            raise PreferenceDataError(
                f"{source}: row {row}, columns 'response_a'/'response_b': the same text twice"
            )
        earlier, earlier_id = first_row.setdefault(pair_id_of(prompt, a, b), (row, pair_id))
        if earlier_id != pair_id:
            raise PreferenceDataError(
                f"{source}: rows {earlier} and {row} hold the same pair (prompt and responses, "
                f"in either order) under two pair ids, {earlier_id!r} and {pair_id!r}"
            )
    for row, value in enumerate(columns.get(PROMPT_MESSAGES, [])):
        if value is not None and not valid_conversation(value):
            raise PreferenceDataError(
                f"{source}: row {row}, column {PROMPT_MESSAGES!r}: expected null or a JSON list "
                'of two or more {"role": ..., "content": ...} messages with text'
            )
    check_labels(columns["pair_id"], columns["user"], source)


def valid_conversation(value: Any) -> bool:
    try:
        messages = json.loads(value)
    except (TypeError, ValueError):
        return False
    return (
        isinstance(messages, list)
        and len(messages) >= 2
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            and m["content"].strip()
            for m in messages
        )
    )


TEXT_SCHEMA = pa.schema(
    [(c, pa.int8() if c == "choice" else pa.string()) for c in (*TEXT_COLUMNS, PROMPT_MESSAGES)]
)


def text_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (a missing `prompt_messages` is null) as a table in the text preference format."""
    return pa.Table.from_pylist(
        [{c: r.get(c) for c in TEXT_SCHEMA.names} for r in rows], schema=TEXT_SCHEMA
    )


def check_text_splits(
    tables: dict[str, pa.Table], source: str, names: dict[str, str]
) -> dict[str, pa.Table]:
    """Each split checked (`check_text_table`, errors naming `names[split]`) and no prompt in
    two splits."""
    for split, table in tables.items():
        check_text_table(table, names[split])
    prompts = {s: set(t.column("prompt_id").to_pylist()) for s, t in tables.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = prompts[a] & prompts[b]
        if shared:
            raise PreferenceDataError(
                f"{source}: {len(shared)} prompt(s) in both {a} and {b} (e.g. {min(shared)}); "
                "text data is split by prompt"
            )
    return tables


def read_text_splits(folder: str | Path) -> dict[str, pa.Table]:
    """train/val/test.parquet in the text preference format; a missing column, a bad row or a
    prompt in two splits is an error that names the file."""
    tables, names = {}, {}
    for split in SPLITS:
        path = Path(folder) / f"{split}.parquet"
        names[split] = str(path)
        if not path.exists():
            raise PreferenceDataError(f"{path}: not found (a text data folder holds {SPLITS})")
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise PreferenceDataError(f"{path}: not a readable parquet file: {e}") from e
        missing = [c for c in TEXT_COLUMNS if c not in table.column_names]
        if missing:
            raise PreferenceDataError(f"{path}: missing column(s) {missing}")
        optional = [PROMPT_MESSAGES] if PROMPT_MESSAGES in table.column_names else []
        tables[split] = table.select([*TEXT_COLUMNS, *optional])
    return check_text_splits(tables, str(folder), names)
