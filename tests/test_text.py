import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from npalign.config import TextColumns, TextSourceConfig
from npalign.data.preferences import PreferenceDataError
from npalign.data.text import load_text_pairs, read_text_splits, write_text_pairs


def records(n=20):
    return [
        {
            "q": f"prompt {i}",
            "first": f"short {i}",
            "second": f"a longer answer {i}",
            "rater": f"u{i % 2}",
            "pick": "b" if i % 3 else "a",
        }
        for i in range(n)
    ]


MAPPING = TextColumns(
    prompt="q", response_a="first", response_b="second", user="rater", choice="pick"
)


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_mapped_columns_from_jsonl_and_parquet(tmp_path, suffix):
    path = tmp_path / f"prefs.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records()))
    else:
        pq.write_table(pa.Table.from_pylist(records()), path)
    rows = load_text_pairs(TextSourceConfig(source=str(path), columns=MAPPING))
    assert len(rows) == 20
    assert rows[0]["prompt"] == "prompt 0" and rows[0]["choice"] == 0 and rows[1]["choice"] == 1
    assert rows[0]["user_type"] == "u0"
    assert len({r["pair_id"] for r in rows}) == 20
    write_text_pairs(rows, tmp_path / "out.parquet")
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 20


def test_bad_rows_skipped_then_too_many_is_an_error(tmp_path, caplog):
    rows = records()
    rows[2]["first"] = ""
    rows[5]["pick"] = "maybe"
    rows[7] = dict(rows[6])  # the same pair for the same user again
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = load_text_pairs(TextSourceConfig(source=str(path), columns=MAPPING, max_bad_fraction=0.2))
    assert len(out) == 17
    assert "skipped 3 of 20 rows" in caplog.text
    assert "missing or empty response_a (first at row 2)" in caplog.text
    with pytest.raises(PreferenceDataError, match="3 of 20 rows are bad"):
        load_text_pairs(TextSourceConfig(source=str(path), columns=MAPPING, max_bad_fraction=0.1))


def test_unmapped_column_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records(3)))
    with pytest.raises(PreferenceDataError, match="no column 'prompt'"):
        load_text_pairs(TextSourceConfig(source=str(path)))


def text_splits(folder, leak=False):
    for split in ("train", "val", "test"):
        rows = [
            {
                "prompt": f"{split} prompt {i}",
                "response_a": "short",
                "response_b": "a longer answer",
                "user": "u0",
                "pick": i % 2,
            }
            for i in range(4)
        ]
        if leak and split == "test":
            rows[0]["prompt"] = "train prompt 0"
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}-source.parquet")
        mapping = TextColumns(choice="pick")
        source = TextSourceConfig(source=str(folder / f"{split}-source.parquet"), columns=mapping)
        write_text_pairs(load_text_pairs(source), folder / f"{split}.parquet")


def test_text_splits_are_checked_for_prompts_in_two_splits(tmp_path):
    text_splits(tmp_path)
    assert read_text_splits(tmp_path)["test"].num_rows == 4
    text_splits(tmp_path, leak=True)
    with pytest.raises(PreferenceDataError, match="1 prompt.* in both train and test"):
        read_text_splits(tmp_path)
    pq.write_table(
        pq.read_table(tmp_path / "val.parquet").drop_columns(["prompt"]), tmp_path / "val.parquet"
    )
    with pytest.raises(PreferenceDataError, match="val.parquet: missing column.*prompt"):
        read_text_splits(tmp_path)
