"""Rated responses → preference pairs with one user type per attribute.

Data that rates several responses per prompt on named attributes (UltraFeedback's fine-grained
ratings are one instance; any table of per-response attribute scores is another) holds users
who judge by different attributes: for every pair of a prompt's responses, the user of an
attribute prefers the response that scores higher on it by more than `margin`. A pair is kept
when every attribute prefers one side (a difference within the margin is a tie, and the pair is
dropped) and, with `conflicting_only`, when the attributes do not all agree: on such pairs a
context-blind model cannot beat ~50 % averaged over the types.

A rated table has one row per (prompt, response) with a score column per attribute
(`data.records.format: rated`); rows of a prompt need not be adjacent.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from npalign.data.text import BadRows, pair_id_of, text_id


@dataclass
class RatedPrompt:
    row: int  # the source row where this prompt starts (for messages)
    prompt: str
    responses: list[str]
    scores: list[list[float | None]]  # per response, per attribute; None = not rated


def rated_pairs(
    prompts: Iterable[RatedPrompt],
    attributes: list[str],
    margin: float,
    conflicting_only: bool,
    bad: BadRows,
) -> list[dict[str, Any]]:
    """One text preference row per (kept pair, attribute user); the user and its type are the
    attribute's name."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in prompts:
        duplicated = False
        for i, j in itertools.combinations(range(len(item.responses)), 2):
            a, b = item.responses[i], item.responses[j]
            if not a or not b or a == b:
                continue
            s_a, s_b = item.scores[i], item.scores[j]
            if None in s_a or None in s_b:
                continue
            if any(abs(y - x) <= margin for x, y in zip(s_a, s_b, strict=True)):
                continue  # an attribute without a clear preference: a tie, dropped
            choices = [int(y > x) for x, y in zip(s_a, s_b, strict=True)]  # 1: b preferred
            if conflicting_only and len(set(choices)) == 1:
                continue  # every attribute agrees
            pair_id = pair_id_of(item.prompt, a, b)
            if pair_id in seen:
                duplicated = True
                continue
            seen.add(pair_id)
            for attribute, choice in zip(attributes, choices, strict=True):
                rows.append(
                    {
                        "pair_id": pair_id,
                        "prompt_id": text_id(item.prompt),
                        "prompt": item.prompt,
                        "response_a": a,
                        "response_b": b,
                        "user": attribute,
                        "user_type": attribute,
                        "choice": choice,
                    }
                )
        if duplicated:
            bad.skip(item.row, "pair already seen in an earlier row")
    return rows


def score(value: Any) -> float | None:
    """A rating as a float; None when absent, "N/A" or NaN; ValueError when not a number."""
    if value in (None, "", "N/A"):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def rated_table_prompts(
    records: Iterable[dict[str, Any]],
    prompt: str,
    response: str,
    attributes: list[str],
    bad: BadRows,
) -> list[RatedPrompt]:
    """Rows of (prompt, response, a score per attribute) grouped by prompt, in first-seen order;
    a row without texts or with a score that is not a number is skipped and counted."""
    grouped: dict[str, RatedPrompt] = {}
    for row_number, record in enumerate(records):
        bad.total += 1
        try:
            texts = (record[prompt], record[response])
            scores = [score(record[a]) for a in attributes]
        except KeyError as e:
            raise KeyError(e.args[0]) from None
        except (TypeError, ValueError):
            bad.skip(row_number, "a score is not a number")
            continue
        if not all(isinstance(t, str) and t.strip() for t in texts):
            bad.skip(row_number, "missing or empty prompt or response")
            continue
        item = grouped.setdefault(texts[0], RatedPrompt(row_number, texts[0], [], []))
        item.responses.append(texts[1])
        item.scores.append(scores)
    return list(grouped.values())
