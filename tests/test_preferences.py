import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from npalign.data.preferences import (
    PairTable,
    PreferenceDataError,
    read_pairs,
    read_splits,
    write_pairs,
)


def small_table(rows: int = 6, dim: int = 3, prefix: str = "p") -> PairTable:
    rng = np.random.default_rng(0)
    return PairTable(
        pair_id=np.array([f"{prefix}{i}" for i in range(rows)], dtype=object),
        prompt_id=np.array([f"x{i}" for i in range(rows)], dtype=object),
        features_a=rng.normal(size=(rows, dim)).astype(np.float32),
        features_b=rng.normal(size=(rows, dim)).astype(np.float32),
        user=np.array(["u0", "u1"] * (rows // 2), dtype=object),
        user_type=np.array(["t0", "t1"] * (rows // 2), dtype=object),
        choice=np.array([0, 1] * (rows // 2), dtype=np.int8),
    )


def test_round_trip(tmp_path):
    table = small_table()
    write_pairs(table, tmp_path / "t.parquet")
    back = read_pairs(tmp_path / "t.parquet")
    np.testing.assert_array_equal(back.features_a, table.features_a)
    np.testing.assert_array_equal(back.choice, table.choice)
    assert list(back.user) == list(table.user)
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"


def test_missing_column_names_file(tmp_path):
    arrow = small_table().to_arrow().drop_columns(["choice"])
    pq.write_table(arrow, tmp_path / "bad.parquet")
    with pytest.raises(PreferenceDataError) as e:
        read_pairs(tmp_path / "bad.parquet")
    assert "bad.parquet" in str(e.value) and "choice" in str(e.value)


def test_nan_features_name_row_and_column(tmp_path):
    table = small_table()
    table.features_b[4, 1] = np.nan
    write_pairs(table, tmp_path / "nan.parquet")
    with pytest.raises(PreferenceDataError, match=r"row 4, column 'features_b'.*NaN"):
        read_pairs(tmp_path / "nan.parquet")


def test_choice_out_of_range(tmp_path):
    arrow = small_table().to_arrow()
    arrow = arrow.set_column(6, "choice", pa.array([0, 1, 2, 0, 1, 0], pa.int8()))
    pq.write_table(arrow, tmp_path / "c.parquet")
    with pytest.raises(PreferenceDataError, match="row 2, column 'choice'"):
        read_pairs(tmp_path / "c.parquet")


def test_pair_in_two_splits_is_refused(tmp_path):
    write_pairs(small_table(prefix="a"), tmp_path / "train.parquet")
    write_pairs(small_table(prefix="b"), tmp_path / "val.parquet")
    write_pairs(small_table(prefix="a"), tmp_path / "test.parquet")
    with pytest.raises(PreferenceDataError, match="in both train and test"):
        read_splits(tmp_path)


def test_a_pair_labelled_twice_by_one_user_and_an_empty_table_are_errors(tmp_path):
    table = small_table(rows=6)
    arrow = table.to_arrow()
    twice = pa.concat_tables([arrow, arrow.slice(2, 1)])
    pq.write_table(twice, tmp_path / "twice.parquet")
    with pytest.raises(
        PreferenceDataError,
        match=r"twice.parquet: row 6: user 'u0' labels pair 'p2' again \(first at row 2\)",
    ):
        read_pairs(tmp_path / "twice.parquet")
    pq.write_table(arrow.slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(PreferenceDataError, match="empty.parquet: no rows"):
        read_pairs(tmp_path / "empty.parquet")
