"""UltraFeedback HH/HHT splits, on a small fixture in the dataset's own schema (no hub here)."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from npalign.data.preferences import PreferenceDataError
from npalign.data.text import load_records
from npalign.data.ultrafeedback import build_ultrafeedback


def completion(text, helpfulness, honesty, truthfulness=3):
    def rating(value):
        return {"Rating": str(value), "Rationale": "..."}

    return {
        "model": "m",
        "response": text,
        "annotations": {
            "helpfulness": rating(helpfulness),
            "honesty": rating(honesty),
            "truthfulness": rating(truthfulness),
            "instruction_following": rating(3),
        },
    }


def fixture_records(prompts: int = 40):
    records = []
    for p in range(prompts):
        records.append(
            {
                "source": "fixture",
                "instruction": f"question {p}?",
                "completions": [
                    completion(f"answer {p}.0", 5, 2, 4),  # helpful, less honest
                    completion(f"answer {p}.1", 3, 4, 2),  # honest, less helpful
                    completion(f"answer {p}.2", 3, 5, 1),  # ties with .1 on helpfulness
                    completion(f"answer {p}.3", 1, 1, 5),  # worse on both than .0 and .1
                ],
            }
        )
    return records


def write_jsonl(records, path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_hh_keeps_only_conflicting_pairs_without_ties(tmp_path):
    source = write_jsonl(fixture_records(), tmp_path / "uf.jsonl")
    counts = build_ultrafeedback(load_records(str(source)), "hh", tmp_path / "hh")
    rows = [
        r
        for split in ("train", "val", "test")
        for r in pq.read_table(tmp_path / "hh" / f"{split}.parquet").to_pylist()
    ]
    assert sum(counts.values()) == len(rows) > 0
    by_pair = {}
    for r in rows:
        by_pair.setdefault(r["pair_id"], {})[r["user"]] = r
    for users in by_pair.values():
        assert set(users) == {"helpfulness", "honesty"}
        assert users["helpfulness"]["choice"] != users["honesty"]["choice"]
    answers = {(r["response_a"][-1], r["response_b"][-1]) for r in rows}
    # per prompt: (.0,.1) and (.0,.2) conflict; (.1,.2) ties on helpfulness; .3 loses on both
    assert answers == {("0", "1"), ("0", "2")}


def test_splits_are_by_prompt(tmp_path):
    source = write_jsonl(fixture_records(50), tmp_path / "uf.jsonl")
    build_ultrafeedback(load_records(str(source)), "hht", tmp_path / "hht")
    prompts = {
        split: set(pq.read_table(tmp_path / "hht" / f"{split}.parquet")["prompt_id"].to_pylist())
        for split in ("train", "val", "test")
    }
    assert not prompts["train"] & prompts["val"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["val"] & prompts["test"]
    assert len(prompts["train"]) == 40 and len(prompts["val"]) == 5


def test_hht_types_do_not_all_agree(tmp_path):
    source = write_jsonl(fixture_records(), tmp_path / "uf.jsonl")
    build_ultrafeedback(load_records(str(source)), "hht", tmp_path / "hht")
    rows = pq.read_table(tmp_path / "hht" / "train.parquet").to_pylist()
    by_pair = {}
    for r in rows:
        by_pair.setdefault(r["pair_id"], {})[r["user"]] = r["choice"]
    assert by_pair and all(len(set(c.values())) == 2 for c in by_pair.values())
    assert all(len(c) == 3 for c in by_pair.values())


def test_bad_rows_are_skipped_and_counted(tmp_path, caplog):
    records = fixture_records(40)
    records[3]["instruction"] = ""
    records[7]["completions"][0]["annotations"]["honesty"]["Rating"] = "9"
    records[9] = records[8]  # the same prompt and completions twice
    source = write_jsonl(records, tmp_path / "uf.jsonl")
    build_ultrafeedback(load_records(str(source)), "hh", tmp_path / "hh", max_bad_fraction=0.1)
    assert "skipped 3 of 40 rows" in caplog.text
    assert "pair already seen in an earlier row (first at row 9)" in caplog.text
    assert "empty instruction (first at row 3)" in caplog.text
    assert "rating outside 1–5 (first at row 7)" in caplog.text


def test_too_many_bad_rows_is_one_error_and_writes_nothing(tmp_path):
    records = fixture_records(10)
    for r in records[:3]:
        r["completions"] = r["completions"][:1]
    source = write_jsonl(records, tmp_path / "uf.jsonl")
    with pytest.raises(PreferenceDataError, match=r"3 of 10 rows are bad .*fewer than two"):
        build_ultrafeedback(load_records(str(source)), "hh", tmp_path / "hh")
    assert not (tmp_path / "hh").exists()


def test_build_job(tmp_path, capsys):
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("build", root / "jobs/build_ultrafeedback.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    source = write_jsonl(fixture_records(20), tmp_path / "uf.jsonl")
    assert job.main(["--source", str(source), "--variant", "hh", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "test.parquet").exists()
    records = fixture_records(4)
    records[0]["instruction"] = None
    bad = write_jsonl(records, tmp_path / "bad.jsonl")
    assert job.main(["--source", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "1 of 4 rows are bad" in capsys.readouterr().err
