"""The paper's UltraFeedback splits: users judging by different attributes, conflicting pairs only.

From `openbmb/UltraFeedback` (hub or local files), read into the rated-responses recipe
(`rated.py`): for every prompt, all pairs of its completions; for each attribute (HH:
helpfulness, honesty; HHT: + truthfulness) the user of that type prefers the completion with the
higher fine-grained rating. A pair is kept only when every attribute has a strict preference
(ties dropped) and the attributes do not all agree. Split 80/10/10 by prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from npalign.data.rated import RatedPrompt, rated_pairs
from npalign.data.text import BadRows, split_by_prompt, write_text_pairs

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


def rated_prompts(
    records: Iterable[dict[str, Any]], attributes: tuple[str, ...], bad: BadRows
) -> Iterator[RatedPrompt]:
    """UltraFeedback rows (an instruction and its rated completions) as rated prompts."""
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
        yield RatedPrompt(row_number, prompt, texts, ratings)


def conflicting_pairs(
    records: Iterable[dict[str, Any]], attributes: tuple[str, ...], bad: BadRows
) -> list[dict[str, Any]]:
    """One output row per (kept pair, attribute user): the rated-responses recipe with strict
    preferences (margin 0) on conflicting pairs only."""
    prompts = rated_prompts(records, attributes, bad)
    return rated_pairs(prompts, list(attributes), margin=0.0, conflicting_only=True, bad=bad)


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
