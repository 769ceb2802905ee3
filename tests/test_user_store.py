"""The serving user store: choices as embeddings, shared, durable, and gone after delete."""

import numpy as np
import pytest

from npalign.user_store import SQLiteUserStore


def test_choices_accumulate_and_survive_a_new_store_object(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    store = SQLiteUserStore(tmp_path / "users.db")
    first = store.add_choices("alice", a[:2], b[:2])
    assert first.version == 1 and first.chosen.shape == (2, 4)
    second = store.add_choices("alice", a[2:], b[2:])
    assert second.version == 2 and second.updated >= first.updated

    reopened = SQLiteUserStore(tmp_path / "users.db").get("alice")  # e.g. a restarted replica
    np.testing.assert_array_equal(reopened.chosen, a)
    np.testing.assert_array_equal(reopened.rejected, b)
    assert reopened.version == 2
    assert store.get("bob") is None


def test_bad_choices_are_refused_and_change_nothing(tmp_path):
    store = SQLiteUserStore(tmp_path / "users.db")
    store.add_choices("alice", np.ones((1, 4)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="dimension 4"):
        store.add_choices("alice", np.ones((1, 5)), np.zeros((1, 5)))
    with pytest.raises(ValueError, match="same"):
        store.add_choices("alice", np.ones((2, 4)), np.zeros((1, 4)))
    state = store.get("alice")
    assert state.version == 1 and len(state.chosen) == 1


def test_delete_leaves_nothing_of_the_user_in_the_files(tmp_path):
    store = SQLiteUserStore(tmp_path / "users.db")
    secret = np.full((2, 8), 1234.5678, np.float32)  # a byte pattern easy to search for
    store.add_choices("carol", secret, -secret)
    store.add_choices("dave", np.ones((1, 8)), np.zeros((1, 8)))
    assert store.delete("carol") and not store.delete("carol")
    assert store.get("carol") is None and store.get("dave") is not None
    files = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret[0].tobytes()[:16] not in files
    assert (-secret[0]).tobytes()[:16] not in files
    assert b"carol" not in files


def test_versions_never_repeat_across_delete_and_create_again(tmp_path):
    """A replica caches z by version: a user deleted and created again must not match it."""
    store = SQLiteUserStore(tmp_path / "users.db")
    first = store.add_choices("erin", np.ones((1, 4)), np.zeros((1, 4)))
    store.add_choices("frank", np.ones((1, 4)), np.zeros((1, 4)))
    assert store.delete("erin")
    again = store.add_choices("erin", np.ones((1, 4)), np.zeros((1, 4)))
    assert again.version > first.version and len(again.chosen) == 1


def test_a_user_keeps_only_the_latest_choices(tmp_path):
    store = SQLiteUserStore(tmp_path / "users.db", max_choices=3)
    for i in range(5):
        store.add_choices("gina", np.full((1, 2), i), np.zeros((1, 2)))
    state = store.add_choices("gina", np.full((2, 2), 5), np.zeros((2, 2)))
    assert state.chosen[:, 0].tolist() == [4, 5, 5]


def test_a_retried_post_with_the_same_request_id_adds_nothing(tmp_path):
    store = SQLiteUserStore(tmp_path / "users.db")
    first = store.add_choices("hana", np.ones((2, 4)), np.zeros((2, 4)), request_id="r1")
    retry = store.add_choices("hana", np.ones((2, 4)), np.zeros((2, 4)), request_id="r1")
    assert retry.version == first.version and len(retry.chosen) == 2
    other = store.add_choices("hana", np.ones((1, 4)), np.zeros((1, 4)), request_id="r2")
    assert len(other.chosen) == 3
    assert store.add_choices("ivan", np.ones((1, 4)), np.zeros((1, 4)), request_id="r1")


def test_a_delete_that_cannot_empty_the_log_says_so(tmp_path):
    """A reader holding a snapshot keeps the WAL checkpoint from finishing: the delete must
    report it, and a second delete once the reader is gone erases everything."""
    import sqlite3

    from npalign.user_store import EraseIncomplete

    store = SQLiteUserStore(tmp_path / "users.db")
    secret = np.full((1, 8), 4321.5, np.float32)
    store.add_choices("jude", secret, -secret)
    reader = sqlite3.connect(tmp_path / "users.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM choices").fetchall()  # holds its snapshot open
    with pytest.raises(EraseIncomplete, match="delete again"):
        store.delete("jude")
    reader.execute("COMMIT")
    reader.close()
    assert not store.delete("jude")  # gone already; this time the log is emptied
    files = b"".join(p.read_bytes() for p in tmp_path.glob("users.db*"))
    assert secret.tobytes() not in files
