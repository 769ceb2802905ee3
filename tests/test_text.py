import json
import re

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


@pytest.mark.parametrize(
    "row,column,value,message",
    [
        (2, "choice", 2, "row 2, column 'choice': expected 0 (a) or 1 (b), found 2"),
        (1, "choice", -1, "row 1, column 'choice': expected 0 (a) or 1 (b), found -1"),
        (3, "prompt", None, "row 3, column 'prompt': missing or empty text"),
        (0, "response_b", "   ", "row 0, column 'response_b': missing or empty text"),
    ],
)
def test_a_bad_text_row_names_its_file_row_and_column(tmp_path, row, column, value, message):
    text_splits(tmp_path)
    path = tmp_path / "val.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[row][column] = value
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(PreferenceDataError, match=re.escape(f"{path}: {message}")):
        read_text_splits(tmp_path)


def test_a_pair_labelled_twice_by_one_user_empty_and_truncated_splits_are_errors(tmp_path):
    text_splits(tmp_path)
    path = tmp_path / "train.parquet"
    rows = pq.read_table(path).to_pylist()
    pq.write_table(pa.Table.from_pylist(rows + rows[1:2]), path)
    with pytest.raises(
        PreferenceDataError, match=r"row 4: user 'u0' labels pair .* again \(first at row 1\)"
    ):
        read_text_splits(tmp_path)
    pq.write_table(pa.Table.from_pylist(rows[:0], schema=pq.read_schema(path)), path)
    with pytest.raises(PreferenceDataError, match="no rows"):
        read_text_splits(tmp_path)
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(PreferenceDataError, match=f"{path}: not a readable parquet file"):
        read_text_splits(tmp_path)
