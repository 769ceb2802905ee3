"""Bad input to the main job: one clear error, exit code 2, and no run folder left behind."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_preferences import small_table
from test_text import text_splits

from npalign.data.preferences import write_pairs

ROOT = Path(__file__).resolve().parents[1]


def load_job(name):
    """A script of jobs/ as a module (registered, as an import would: dataclasses need it)."""
    spec = importlib.util.spec_from_file_location(f"jobs_{name}", ROOT / f"jobs/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def job_main():
    return load_job("train_reward").main


def write_splits(folder: Path, rows: int = 100) -> None:
    for split in ("train", "val", "test"):
        write_pairs(small_table(rows=rows, prefix=split), folder / f"{split}.parquet")


def run(tmp_path, *overrides):
    out = tmp_path / "runs"
    code = job_main()([f"run.output_dir={out}", *overrides])
    return code, out


def assert_failed_cleanly(code, out, capsys, *needles):
    assert code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err
    assert not out.exists(), "a failed job must not leave a run folder"


def test_unknown_config_key(tmp_path, capsys):
    code, out = run(tmp_path, "train.learning_rate=0.1")
    assert_failed_cleanly(code, out, capsys, "train.learning_rate", "Extra inputs")


def test_wrong_type(tmp_path, capsys):
    code, out = run(tmp_path, "data.num_targets=twenty")
    assert_failed_cleanly(code, out, capsys, "data.num_targets")


def test_parquet_missing_a_column(tmp_path, capsys):
    data = tmp_path / "data"
    write_splits(data)
    table = pq.read_table(data / "val.parquet").drop_columns(["features_a"])
    pq.write_table(table, data / "val.parquet")
    code, out = run(tmp_path, "data.source=parquet", f"data.path={data}")
    assert_failed_cleanly(code, out, capsys, "val.parquet", "features_a")


def test_nan_features(tmp_path, capsys):
    data = tmp_path / "data"
    write_splits(data)
    table = small_table(rows=100, prefix="test")
    table.features_a[7, 0] = np.nan
    write_pairs(table, data / "test.parquet")
    code, out = run(tmp_path, "data.source=parquet", f"data.path={data}")
    assert_failed_cleanly(code, out, capsys, "test.parquet", "row 7", "NaN")


def test_context_larger_than_a_users_pairs(tmp_path, capsys):
    data = tmp_path / "data"
    write_splits(data, rows=40)  # 20 pairs per user
    code, out = run(
        tmp_path,
        "data.source=parquet",
        f"data.path={data}",
        "data.max_context=10",
        "data.min_val_pairs=40",
    )
    assert_failed_cleanly(code, out, capsys, "user 'u0' has 20 pairs", "max_context (10)")


def test_a_validation_split_too_small_to_choose_on(tmp_path, capsys):
    data = tmp_path / "data"
    write_splits(data, rows=40)
    code, out = run(tmp_path, "data.source=parquet", f"data.path={data}")
    assert_failed_cleanly(
        code, out, capsys, f"parquet ({data})", "val split has 40 labelled pairs", "min_val_pairs"
    )


def test_text_prompt_in_two_splits(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    text_splits(data, leak=True)
    code, out = run(tmp_path, "data.source=text", f"data.path={data}")
    assert_failed_cleanly(code, out, capsys, "in both train and test")


def test_text_source_needs_a_path(tmp_path, capsys):
    code, out = run(tmp_path, "data.source=text")
    assert_failed_cleanly(code, out, capsys, "data.path is required")


@pytest.mark.parametrize("flag", ["--help"])
def test_help_explains_the_options(flag, capsys):
    with pytest.raises(SystemExit):
        job_main()([flag])
    text = capsys.readouterr().out
    assert "jobs/submit.py" in text and "--resume" in text and "key=value" in text


@pytest.mark.parametrize("name", ["train_policy", "generate"])
def test_policy_jobs_explain_themselves(name, capsys):
    with pytest.raises(SystemExit):
        load_job(name).main(["--help"])
    text = capsys.readouterr().out
    assert "--prompt" in text if name == "generate" else "policy.base" in text


def test_policy_job_refuses_synthetic_data(tmp_path, capsys):
    code = load_job("train_policy").main(
        [f"run.output_dir={tmp_path / 'runs'}", "data.source=synthetic"]
    )
    assert code == 2
    assert "data.source must be one of ['text', 'records', 'steer']" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_generate_names_the_bad_line_of_a_choices_file(tmp_path, capsys):
    choices = tmp_path / "choices.jsonl"
    choices.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p"}\n')
    with pytest.raises(ValueError, match="line 2"):
        load_job("generate").read_choices(str(choices))
