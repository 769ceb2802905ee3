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


def test_one_pair_under_two_ids_or_with_one_text_twice_is_an_error(tmp_path):
    text_splits(tmp_path)
    path = tmp_path / "val.parquet"
    rows = pq.read_table(path).to_pylist()
    copy = {**rows[1], "pair_id": "another-id", "user": "u9"}  # and the responses swapped:
    copy["response_a"], copy["response_b"] = rows[1]["response_b"], rows[1]["response_a"]
    pq.write_table(pa.Table.from_pylist(rows + [copy]), path)
    with pytest.raises(
        PreferenceDataError,
        match=re.escape(f"{path}: rows 1 and 4 hold the same pair (prompt and responses, in "),
    ):
        read_text_splits(tmp_path)
    rows[2]["response_b"] = rows[2]["response_a"]
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(PreferenceDataError, match=re.escape(f"{path}: row 2, columns")):
        read_text_splits(tmp_path)


def trl_rows():
    """TRL's format with a user column: plain strings, chat messages, and an implicit prompt."""
    rows = []
    for i in range(12):
        short, long = f"Rain {i}.", f"Heavy rain fell across the state on day {i}."
        user = f"u{i % 2}"
        chosen, rejected = (short, long) if user == "u0" else (long, short)
        rows.append({"prompt": f"News {i}?", "chosen": chosen, "rejected": rejected, "user": user})
    rows[1] = {
        "prompt": [{"role": "user", "content": "News 1?"}],
        "chosen": [{"role": "assistant", "content": rows[1]["chosen"]}],
        "rejected": [{"role": "assistant", "content": rows[1]["rejected"]}],
        "user": "u1",
    }
    return rows


def test_trl_preference_rows_with_a_user_column(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = trl_rows()
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, rows[0]]))
    config = TextSourceConfig(source=str(path), format="trl", max_bad_fraction=0.1)
    out = load_text_pairs(config)
    assert len(out) == 12  # the repeated row is the same pair for the same user: skipped
    for row, source in zip(out, rows, strict=True):
        chosen = row["response_b"] if row["choice"] else row["response_a"]
        given = source["chosen"]
        assert chosen == (given if isinstance(given, str) else given[0]["content"])
    assert out[1]["prompt"] == "News 1?"  # a lone chat message is its content
    assert {r["choice"] for r in out} == {0, 1}  # the chosen response is not always first


def test_a_pairs_id_does_not_depend_on_which_response_comes_first(tmp_path):
    from npalign.data.text import pair_id_of

    assert pair_id_of("p", "x", "y") == pair_id_of("p", "y", "x")
    rows = records(2)
    rows[1] = {**rows[0], "first": rows[0]["second"], "second": rows[0]["first"], "pick": "b"}
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TextSourceConfig(source=str(path), columns=MAPPING, max_bad_fraction=0.5)
    (kept,) = load_text_pairs(config)  # the swapped copy is the same pair for the same user
    assert kept["response_a"] == "short 0"


def load_conversation(tmp_path, turns):
    """One TRL row without a prompt column: the conversation `turns`, then two answers."""
    row = {
        "chosen": [*turns, {"role": "assistant", "content": "Rain."}],
        "rejected": [*turns, {"role": "assistant", "content": "Heavy rain fell today."}],
        "user": "u0",
    }
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (out,) = load_text_pairs(TextSourceConfig(source=str(path), format="trl"))
    return out


def test_trl_conversations_without_a_prompt_column(tmp_path):
    out = load_conversation(tmp_path, [{"role": "user", "content": "Any news?"}])
    assert out["prompt"] == "Any news?" and {out["response_a"], out["response_b"]} == {
        "Rain.",
        "Heavy rain fell today.",
    }


def test_a_multi_turn_prompt_keeps_its_turns_and_a_bad_conversation_is_named(tmp_path):
    turns = [
        {"role": "user", "content": "Any news?"},
        {"role": "assistant", "content": "Some."},
        {"role": "user", "content": "Tell me."},
    ]
    out = load_conversation(tmp_path, turns)
    assert json.loads(out["prompt_messages"]) == turns
    assert out["prompt"] == "user: Any news?\nassistant: Some.\nuser: Tell me."  # for the embedder

    for split in ("train", "val", "test"):
        rows = records(3)
        rows = [{**r, "prompt": f"{split} {r['q']}"} for r in rows]
        write_text_pairs(
            [
                {
                    "pair_id": f"{split}{i}",
                    "prompt_id": r["prompt"],
                    "prompt": r["prompt"],
                    "response_a": r["first"],
                    "response_b": r["second"],
                    "user": r["rater"],
                    "user_type": r["rater"],
                    "choice": 1,
                    "prompt_messages": '[{"role": "user"}]' if split == "val" and i == 2 else None,
                }
                for i, r in enumerate(rows)
            ],
            tmp_path / f"{split}.parquet",
        )
    with pytest.raises(
        PreferenceDataError, match=re.escape("val.parquet: row 2, column 'prompt_messages'")
    ):
        read_text_splits(tmp_path)


def test_the_records_source_reads_a_saved_dataset_dict_and_splits_by_prompt(tmp_path):
    import datasets

    from npalign.config import DataConfig
    from npalign.registry import DATA_SOURCES

    plain = [r for r in trl_rows() if isinstance(r["prompt"], str)]
    dataset = datasets.DatasetDict({"train": datasets.Dataset.from_list(plain)})
    dataset.save_to_disk(str(tmp_path / "saved"))
    data = DataConfig(
        source="records",
        path=str(tmp_path / "saved"),
        records={"format": "trl", "split_fractions": (0.5, 0.25, 0.25)},
    )
    splits = DATA_SOURCES["records"].load(data)
    prompts = {s: set(t.column("prompt").to_pylist()) for s, t in splits.items()}
    assert sum(len(p) for p in prompts.values()) == 11
    assert not prompts["train"] & prompts["test"] and all(prompts.values())


def test_a_validation_split_too_small_to_choose_on_is_an_error_naming_the_file(tmp_path):
    from npalign.config import DataConfig
    from npalign.data.sources import source_splits

    path = tmp_path / "prefs.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in trl_rows() if isinstance(r["prompt"], str))
    )
    data = DataConfig(source="records", path=str(path), records={"format": "trl"})
    with pytest.raises(PreferenceDataError, match=r"prefs.jsonl.*val split has \d+ labelled pairs"):
        source_splits(data)
    data = data.model_copy(update={"min_val_pairs": 1})
    assert len(source_splits(data)["val"]) >= 1
