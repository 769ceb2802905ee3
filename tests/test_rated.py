"""Rated responses → pairs with a user type per attribute: ties within the margin and pairs the
attributes agree on are dropped, bad rows are counted and named."""

import json

import pytest
from pydantic import ValidationError

from npalign.config import DataConfig, TextSourceConfig
from npalign.data.preferences import PreferenceDataError
from npalign.registry import DATA_SOURCES


def rated_rows():
    """Twenty prompts, three responses each, rated on helpfulness and honesty."""
    rows = []
    for p in range(20):
        scores = [(5, 1), (1, 5), (4.5, 0.5)]  # 0-1 and 1-2 conflict; 0-2 agree within margin
        for r, (helpful, honest) in enumerate(scores):
            rows.append(
                {
                    "prompt": f"q{p}",
                    "response": f"answer {r} to {p}",
                    "helpful": helpful,
                    "honest": honest,
                }
            )
    return rows


def load(tmp_path, rows, **records):
    path = tmp_path / "rated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"format": "rated", "attributes": ["helpful", "honest"], "margin": 1.0, **records}
    data = DataConfig(source="records", path=str(path), records=settings)
    return DATA_SOURCES["records"].load(data)


def test_each_attribute_is_a_user_type_on_the_pairs_they_disagree_on(tmp_path):
    splits = load(tmp_path, rated_rows())
    rows = [r for t in splits.values() for r in t.to_pylist()]
    # per prompt: pair (0, 1) disagrees clearly; (0, 2) is within the margin on both; (1, 2)
    # disagrees (helpful 1 → 4.5, honest 5 → 0.5)
    assert len(rows) == 20 * 2 * 2 and {r["user"] for r in rows} == {"helpful", "honest"}
    for row in rows:
        preferred = row["response_b"] if row["choice"] else row["response_a"]
        other = row["response_a"] if row["choice"] else row["response_b"]
        scores = {f"answer {i}": s for i, s in enumerate([(5, 1), (1, 5), (4.5, 0.5)])}
        column = 0 if row["user"] == "helpful" else 1
        assert scores[preferred.split(" to")[0]][column] > scores[other.split(" to")[0]][column]
    agreeing = load(tmp_path, rated_rows(), conflicting_only=False)
    assert sum(t.num_rows for t in agreeing.values()) == 20 * 2 * 2  # (0, 2) is still a tie


def test_bad_scores_are_counted_and_a_missing_column_is_named(tmp_path):
    rows = rated_rows()
    rows[3]["helpful"] = "lots"
    with pytest.raises(
        PreferenceDataError, match="1 of 60 rows are bad .* a score is not a number"
    ):
        load(tmp_path, rows, max_bad_fraction=0.0)
    assert load(tmp_path, rows, max_bad_fraction=0.05)  # skipped and counted
    with pytest.raises(PreferenceDataError, match="no column 'truthful'"):
        load(tmp_path, rated_rows(), attributes=["helpful", "truthful"])
    with pytest.raises(ValidationError, match="two or more score columns"):
        TextSourceConfig(format="rated", attributes=["helpful"])
