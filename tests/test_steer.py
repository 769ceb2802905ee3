"""The steer task: scorers, tone, labelling by user type, the cached build split by prompt."""

import numpy as np
import pytest
from pydantic import ValidationError

from npalign.config import SteerConfig, SteerType
from npalign.data.steer import (
    build_steer,
    casual,
    formal,
    formality_score,
    length_score,
    load_stories,
    preference,
    steer_rows,
)
from npalign.data.text import read_text_splits


def test_scorers_rank_hand_written_examples():
    short = "The council approved the budget."
    long = "The council approved the budget on Tuesday after a long debate about road funding."
    assert length_score(short) < length_score(long)
    formal_text = (
        "According to the report, the minister has not commented. Furthermore, it is unclear."
    )
    casual_text = "Okay so, the minister hasn't said anything. Pretty wild, right?"
    neutral = "The minister has not commented."
    assert formality_score(formal_text) > formality_score(neutral) > formality_score(casual_text)
    assert formality_score("Hey, it's gonna rain lol!") < 0 < formality_score(formal_text)


def test_preference_follows_attribute_direction_and_margin():
    concise = SteerType(name="concise", attribute="length", prefers="lower", margin=2)
    detailed = SteerType(name="detailed", attribute="length", prefers="higher", margin=2)
    a, b = "one two three", "one two three four five six"
    assert preference(concise, a, b) == 0 and preference(detailed, a, b) == 1
    assert preference(concise, a, "one two three four") is None  # within the margin: a tie


def test_tone_moves_formality_on_every_story():
    rng = np.random.default_rng(0)
    stories = load_stories()
    assert len(stories) == 300
    for story in stories:
        body = " ".join(story[1:3])
        assert formality_score(formal(body, rng)) > formality_score(casual(body, rng))


def test_types_disagree_on_at_least_half_of_the_pairs():
    rows, stats = steer_rows(SteerConfig(conflicting_only=False))
    assert stats["disagreement"] >= 0.5
    assert stats["pairs"] >= 3000
    choice = {(r["pair_id"], r["user"]): r["choice"] for r in rows}
    pairs = {r["pair_id"] for r in rows}
    opposite = sum(choice[p, "concise"] != choice[p, "detailed"] for p in pairs)
    assert opposite / len(pairs) >= 0.5
    # The preferred answer is on either side about equally often: position carries no signal.
    assert 0.4 < np.mean([r["choice"] for r in rows]) < 0.6


def test_build_is_cached_and_split_by_prompt():
    config = SteerConfig(stories=40, pairs_per_prompt=4)
    folder = build_steer(config)
    stamp = (folder / "train.parquet").stat().st_mtime_ns
    assert build_steer(config) == folder
    assert (folder / "train.parquet").stat().st_mtime_ns == stamp  # reused, not rebuilt
    tables = read_text_splits(folder)  # raises if a prompt were in two splits
    assert sum(t.num_rows for t in tables.values()) > 0
    assert build_steer(SteerConfig(stories=40, pairs_per_prompt=5)) != folder


def test_simulated_users_hold_their_own_types_choices_on_other_prompts():
    from npalign.data.steer import SCORERS, simulated_users

    test = read_text_splits(build_steer(SteerConfig()))["test"]
    prompt, users = simulated_users(test, context_pairs=4, seed=0)
    assert set(users) == {"concise", "detailed"}
    for user_type, choices in users.items():
        assert len(choices) == 4 and all(c["prompt"] != prompt for c in choices)
        shorter = [
            SCORERS["length"](c["chosen"]) < SCORERS["length"](c["rejected"]) for c in choices
        ]
        assert all(shorter) if user_type == "concise" else not any(shorter)


def test_the_prompt_template_is_the_configs_and_must_hold_the_lead():
    rows, _ = steer_rows(SteerConfig(stories=5, prompt="Briefly: {lead}"))
    leads = {story[0] for story in load_stories()[:5]}
    assert rows and {r["prompt"] for r in rows} <= {f"Briefly: {lead}" for lead in leads}
    with pytest.raises(ValidationError, match="prompt"):
        SteerConfig(prompt="What happened?")


def test_the_whole_task_labels_each_pair_once_per_user():
    """The corpus repeats stories; the task must not repeat their pairs (a repeated label could
    sit in an episode's context and its targets at once). read_text_splits checks it."""
    for config in (SteerConfig(), SteerConfig(max_sentences=3, pairs_per_prompt=8)):
        tables = read_text_splits(build_steer(config))
        assert sum(t.num_rows for t in tables.values()) > 1000
