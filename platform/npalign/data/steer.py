"""The embedded default text task, "steer": user types that judge answers by a measurable attribute.

Built offline from the Lee news corpus (300 Australian news stories) that the `gensim` package
ships with its tests. Each story gives one prompt, by default "What happened in this news story?
<its first sentence>" (`SteerConfig.prompt`), and responses made of the next k sentences
(k = 1..max_sentences), each in a formal and a casual tone. A user type prefers the response
whose attribute score — `length` (words) or `formality` (formal minus casual markers per
sentence) — is higher or lower by more than a margin. The same scorers score *generated* text
later, so a policy's steering is measured with the very function that labelled its training data.

The text pairs are cached under $NPALIGN_CACHE/steer/<hash of the config>, so a rerun is instant.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from npalign.config import SteerConfig, SteerType
from npalign.data.text import pair_id_of, split_by_prompt, text_id, write_text_pairs
from npalign.files import cache_dir, write_json

log = logging.getLogger(__name__)

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
# Bumped when the way responses are composed changes, so old caches are not reused.
VERSION = 3


def corpus_path() -> Path:
    """The Lee background corpus inside the installed gensim package (found without importing
    gensim, whose own dependencies are not needed)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the steer task reads its stories from the gensim package: "
            "pip install --no-deps gensim==4.4.0 (make setup does this)"
        )
    return Path(spec.origin).parent / "test" / "test_data" / "lee_background.cor"


def load_stories() -> list[list[str]]:
    """Each story as a list of sentences."""
    lines = corpus_path().read_text(encoding="utf-8").splitlines()
    return [SENTENCE_END.split(line.strip()) for line in lines if line.strip()]


# --- scorers: each maps any text (a composed or a generated response) to a number -------------

WORD = re.compile(r"[A-Za-z0-9']+")
CONTRACTIONS = re.compile(r"\b\w+(n't|'re|'m|'ll|'ve)\b|\b(it|that|there|what|he|she)'s\b", re.I)
CASUAL_MARKERS = re.compile(
    r"\b(so basically|okay|ok|honestly|yeah|wild|crazy|stuff|huh|gonna|wanna|kinda|lol|hey|"
    r"cool|awesome|pretty much|like,)\b|!",
    re.I,
)
FORMAL_MARKERS = re.compile(
    r"\b(according to|it has been reported|it was reported|in summary|furthermore|moreover|"
    r"therefore|consequently|additionally|in addition|further details)\b",
    re.I,
)


def length_score(text: str) -> float:
    """Number of words."""
    return float(len(WORD.findall(text)))


def formality_score(text: str) -> float:
    """(formal markers − casual markers and contractions) per sentence: > 0 formal, < 0 casual."""
    sentences = max(1, len([s for s in SENTENCE_END.split(text.strip()) if s]))
    casual = len(CASUAL_MARKERS.findall(text)) + len(CONTRACTIONS.findall(text))
    formal = len(FORMAL_MARKERS.findall(text))
    return (formal - casual) / sentences


SCORERS = {"length": length_score, "formality": formality_score}


def preference(user_type: SteerType, a: str, b: str) -> int | None:
    """0 if the type prefers `a`, 1 if `b`, None for a tie (difference within the margin)."""
    scorer = SCORERS[user_type.attribute]
    diff = scorer(b) - scorer(a)
    if user_type.prefers == "lower":
        diff = -diff
    if abs(diff) <= user_type.margin:
        return None
    return int(diff > 0)


# --- tone: the same content said formally or casually -----------------------------------------

EXPAND = {"n't": " not", "'re": " are", "'m": " am", "'ll": " will", "'ve": " have"}
CONTRACT = [
    (r"\bdo not\b", "don't"),
    (r"\bdoes not\b", "doesn't"),
    (r"\bdid not\b", "didn't"),
    (r"\bis not\b", "isn't"),
    (r"\bare not\b", "aren't"),
    (r"\bwas not\b", "wasn't"),
    (r"\bwere not\b", "weren't"),
    (r"\bhas not\b", "hasn't"),
    (r"\bhave not\b", "haven't"),
    (r"\bwill not\b", "won't"),
    (r"\bcannot\b", "can't"),
    (r"\bit is\b", "it's"),
    (r"\bthat is\b", "that's"),
    (r"\bthey are\b", "they're"),
    (r"\bwe are\b", "we're"),
    (r"\bwould not\b", "wouldn't"),
]
FORMAL_OPENERS = ("According to the report, ", "It has been reported that ", "In summary, ")
FORMAL_CLOSERS = ("", "Further details are expected to be released.")
CASUAL_OPENERS = ("So basically, ", "Okay so, ", "Honestly, ", "Yeah, so ")
CASUAL_CLOSERS = ("Pretty wild, right?", "Crazy stuff!", "Yeah, that's about it.", "Wild, huh?")
# Sentence starts that stay grammatical in lower case after an opener ("..., the government").
LOWER_STARTS = {"The", "A", "An", "This", "That", "It", "There", "In", "On", "At", "But", "And"}


def _after_opener(text: str) -> str:
    first, _, rest = text.partition(" ")
    return (first.lower() if first in LOWER_STARTS else first) + " " + rest


def formal(text: str, rng: np.random.Generator) -> str:
    for short, long in EXPAND.items():
        text = re.sub(rf"\b(\w+){short}\b", lambda m, long=long: m.group(1) + long, text)
    text = FORMAL_OPENERS[rng.integers(len(FORMAL_OPENERS))] + _after_opener(text)
    closer = FORMAL_CLOSERS[rng.integers(len(FORMAL_CLOSERS))]
    return f"{text} {closer}".strip()


def casual(text: str, rng: np.random.Generator) -> str:
    for pattern, short in CONTRACT:
        text = re.sub(pattern, short, text)
    text = CASUAL_OPENERS[rng.integers(len(CASUAL_OPENERS))] + _after_opener(text)
    return f"{text} {CASUAL_CLOSERS[rng.integers(len(CASUAL_CLOSERS))]}"


def responses(story: list[str], max_sentences: int, rng: np.random.Generator) -> list[str]:
    """The story's candidate answers: the k sentences after the lead, k = 1..max, in both tones."""
    out = []
    for k in range(1, min(max_sentences, len(story) - 1) + 1):
        body = " ".join(story[1 : 1 + k])
        out += [formal(body, rng), casual(body, rng)]
    return out


# --- the task ---------------------------------------------------------------------------------


def steer_rows(config: SteerConfig) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Text preference rows (one per pair and user type) and statistics of the labelling."""
    rng = np.random.default_rng(config.seed)
    rows: list[dict[str, Any]] = []
    labelled = conflicting = 0
    # A pair can be drawn twice: the corpus repeats a few stories, and a story's candidates can
    # repeat a text, so (a, b) and later (b, a) come up. Labelled twice, it could sit in an
    # episode's context and its targets at once. It is drawn like any other (the random stream,
    # and so every other pair, stays as it is) and then dropped; ids ignore the order.
    seen_pairs: set[str] = set()
    for story in load_stories()[: config.stories]:
        if len(story) < 3:
            continue  # a lead and at most one sentence: every answer has the same length
        prompt = config.prompt.replace("{lead}", story[0])
        candidates = responses(story, config.max_sentences, rng)
        kept = []
        for a, b in itertools.combinations(candidates, 2):
            choices = [preference(t, a, b) for t in config.types]
            if None in choices:
                continue  # a tie for some type
            labelled += 1
            conflicting += len(set(choices)) > 1
            if config.conflicting_only and len(set(choices)) == 1:
                continue
            kept.append((a, b, choices))
        picks = rng.permutation(len(kept))[: config.pairs_per_prompt]
        for i in sorted(picks):
            a, b, choices = kept[i]
            if rng.random() < 0.5:  # which side the preferred answer is on carries no signal
                a, b, choices = b, a, [1 - c for c in choices]
            pair_id = pair_id_of(prompt, a, b)
            if pair_id in seen_pairs:
                continue
            seen_pairs.add(pair_id)
            for user_type, choice in zip(config.types, choices, strict=True):
                rows.append(
                    {
                        "pair_id": pair_id,
                        "prompt_id": text_id(prompt),
                        "prompt": prompt,
                        "response_a": a,
                        "response_b": b,
                        "user": user_type.name,
                        "user_type": user_type.name,
                        "choice": choice,
                    }
                )
    stats = {
        "labelled_pairs": labelled,
        "disagreement": conflicting / max(labelled, 1),
        "pairs": len({r["pair_id"] for r in rows}),
    }
    return rows, stats


def rated_responses(config: SteerConfig) -> list[dict[str, Any]]:
    """The task's candidate answers as a rated-responses table (`data.records.format: rated`):
    one row per distinct (prompt, response), a score column per scorer (`length`, `formality`).
    An offline stand-in for data that rates several responses per prompt."""
    rng = np.random.default_rng(config.seed)
    rows, seen = [], set()
    for story in load_stories()[: config.stories]:
        if len(story) < 3:
            continue
        prompt = config.prompt.replace("{lead}", story[0])
        for response in responses(story, config.max_sentences, rng):
            if (prompt, response) not in seen:
                seen.add((prompt, response))
                scores = {name: scorer(response) for name, scorer in SCORERS.items()}
                rows.append({"prompt": prompt, "response": response, **scores})
    return rows


def steer_folder(config: SteerConfig) -> Path:
    key = text_id(json.dumps(config.model_dump(mode="json"), sort_keys=True), str(VERSION))
    return cache_dir("steer", key)


def build_steer(config: SteerConfig) -> Path:
    """The folder holding the steer task's train/val/test.parquet, built on first use."""
    folder = steer_folder(config)
    manifest = folder / "steer.json"
    if manifest.exists():
        log.info("steer task: cached in %s", folder)
        return folder
    rows, stats = steer_rows(config)
    splits = split_by_prompt(rows, config.split, config.seed)
    for split, split_rows in splits.items():
        write_text_pairs(split_rows, folder / f"{split}.parquet")
    stats["rows"] = {split: len(r) for split, r in splits.items()}
    # The manifest is written last: a folder without one is an interrupted build, redone.
    write_json(manifest, {"config": config.model_dump(mode="json"), **stats})
    log.info(
        "steer task: %d pairs, types disagree on %.0f%% of labelled pairs, written to %s",
        stats["pairs"],
        100 * stats["disagreement"],
        folder,
    )
    return folder


def other_prompt_rows(rows: dict[str, list], user_type: str) -> np.ndarray:
    """Rows of a split (as a dict of columns) that `user_type` labelled, on prompts other than
    the split's first: the one the demo's users are asked about."""
    prompt_ids = np.asarray(rows["prompt_id"])
    return np.flatnonzero(
        (np.asarray(rows["user_type"]) == user_type) & (prompt_ids != prompt_ids[0])
    )


def question_pool(
    split: pa.Table, user_type: str, size: int, seed: int
) -> tuple[list[dict[str, str]], list[int]]:
    """`size` pairs of `split` that `user_type` labelled, on prompts other than the split's
    first (the one `simulated_users` asks about), as questions {prompt, response_a, response_b},
    and that type's answers (1: b)."""
    rows = split.to_pydict()
    pool = other_prompt_rows(rows, user_type)
    picked = np.random.default_rng(seed).choice(pool, size=min(size, len(pool)), replace=False)
    questions = [
        {k: rows[k][row] for k in ("prompt", "response_a", "response_b")} for row in picked
    ]
    return questions, [int(rows["choice"][row]) for row in picked]


def simulated_users(
    split: pa.Table, context_pairs: int, seed: int
) -> tuple[str, dict[str, list[dict[str, str]]]]:
    """A prompt of `split` (a text preference table) and, for one user of each type,
    `context_pairs` of that type's choices on the split's other prompts, as text:
    (prompt, {type: [{prompt, chosen, rejected}]})."""
    rows = split.to_pydict()
    prompt_ids = np.asarray(rows["prompt_id"])
    prompt_row = int(np.flatnonzero(prompt_ids == prompt_ids[0])[0])
    rng = np.random.default_rng(seed)
    users = {}
    for user_type in sorted(set(rows["user_type"])):
        pool = other_prompt_rows(rows, user_type)
        choices = []
        for row in rng.choice(pool, size=context_pairs, replace=False):
            a, b = rows["response_a"][row], rows["response_b"][row]
            chosen, rejected = (b, a) if rows["choice"][row] else (a, b)
            choices.append({"prompt": rows["prompt"][row], "chosen": chosen, "rejected": rejected})
        users[user_type] = choices
    return rows["prompt"][prompt_row], users
