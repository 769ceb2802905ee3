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
