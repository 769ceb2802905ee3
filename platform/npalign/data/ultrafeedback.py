"""The paper's UltraFeedback splits: users judging by different attributes, conflicting pairs only.

From `openbmb/UltraFeedback` (hub or local files): for every prompt, all pairs of its
completions; for each attribute (HH: helpfulness, honesty; HHT: + truthfulness) the user of that
type prefers the completion with the higher fine-grained rating. A pair is kept only when every
attribute has a strict preference (ties dropped) and the attributes do not all agree: on the kept
pairs a context-blind model cannot beat ~50% averaged over types. Split 80/10/10 by prompt.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from npalign.data.text import BadRows, pair_id_of, split_by_prompt, text_id, write_text_pairs

ATTRIBUTES = {
    "hh": ("helpfulness", "honesty"),
    "hht": ("helpfulness", "honesty", "truthfulness"),
}
RATING_RANGE = (1, 5)


def _rating(completion: dict[str, Any], attribute: str) -> int | None:
    """The completion's 1–5 rating for `attribute`; None when absent or "N/A"."""
    value = ((completion.get("annotations") or {}).get(attribute) or {}).get("Rating")
    if value in (None, "", "N/A"):
        return None
    return int(value)


def conflicting_pairs(
    records: Iterable[dict[str, Any]], attributes: tuple[str, ...], bad: BadRows
) -> list[dict[str, Any]]:
    """One output row per (kept pair, attribute user)."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row_number, record in enumerate(records):
        bad.total += 1
        prompt = (record.get("instruction") or "").strip()
        if not prompt:
            bad.skip(row_number, "empty instruction")
            continue
        completions = [c for c in record.get("completions") or [] if c]
        texts = [(c.get("response") or "").strip() for c in completions]
        if sum(bool(t) for t in texts) < 2:
            bad.skip(row_number, "fewer than two non-empty completions")
            continue
        try:
            ratings = [[_rating(c, a) for a in attributes] for c in completions]
        except (TypeError, ValueError):
            bad.skip(row_number, "rating is not a number")
            continue
        flat = [r for rs in ratings for r in rs if r is not None]
        if any(not RATING_RANGE[0] <= r <= RATING_RANGE[1] for r in flat):
            bad.skip(row_number, f"rating outside {RATING_RANGE[0]}–{RATING_RANGE[1]}")
            continue
        prompt_id = text_id(prompt)
        duplicated = False
        for i, j in itertools.combinations(range(len(completions)), 2):
            if not texts[i] or not texts[j] or texts[i] == texts[j]:
                continue
            r_i, r_j = ratings[i], ratings[j]
            if None in r_i or None in r_j or any(a == b for a, b in zip(r_i, r_j, strict=True)):
                continue  # an attribute without a strict preference: a tie, dropped
            choices = [int(b > a) for a, b in zip(r_i, r_j, strict=True)]  # 1: j preferred
            if len(set(choices)) == 1:
                continue  # every attribute agrees: not a conflicting pair
            pair_id = pair_id_of(prompt, texts[i], texts[j])
            if pair_id in seen:
                duplicated = True
                continue
            seen.add(pair_id)
            for attribute, choice in zip(attributes, choices, strict=True):
                rows.append(
                    {
                        "pair_id": pair_id,
                        "prompt_id": prompt_id,
                        "prompt": prompt,
                        "response_a": texts[i],
                        "response_b": texts[j],
                        "user": attribute,
                        "user_type": attribute,
                        "choice": choice,
                    }
                )
        if duplicated:
            bad.skip(row_number, "pair already seen in an earlier row")
    return rows


def build_ultrafeedback(
    records: Iterable[dict[str, Any]],
    variant: str,
    folder: str | Path,
    source: str = "UltraFeedback",
    seed: int = 0,
    max_bad_fraction: float = 0.05,
) -> dict[str, int]:
    """Write train/val/test.parquet of the HH or HHT split into `folder`; returns rows per split.
    Nothing is written when the source has too many bad rows."""
    bad = BadRows(source)
    rows = conflicting_pairs(records, ATTRIBUTES[variant], bad)
    bad.check(max_bad_fraction)
    splits = split_by_prompt(rows, seed=seed)
    for split, split_rows in splits.items():
        write_text_pairs(split_rows, Path(folder) / f"{split}.parquet")
    return {split: len(r) for split, r in splits.items()}
