"""The serving user stores, the embedded SQLite file and a real PostgreSQL server: choices as
embeddings, shared, durable, capped, idempotent, and gone after delete."""

import threading

import numpy as np
import pytest

from npalign.stores.base import open_store
from npalign.stores.sqlite import SQLiteUserStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """Where a fresh store lives: a file, or a new database on the session's server."""
    if request.param == "sqlite":
        return str(tmp_path / "users.db")
    return request.getfixturevalue("postgres_url")


def test_choices_accumulate_and_survive_a_new_store_object(store_url):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    store = open_store(store_url)
    first = store.add_choices("alice", a[:2], b[:2])
    assert first.chosen.shape == (2, 4)
    second = store.add_choices("alice", a[2:], b[2:])
    assert second.version > first.version and second.updated >= first.updated

    reopened = open_store(store_url).get("alice")  # e.g. a restarted replica
    np.testing.assert_array_equal(reopened.chosen, a)
    np.testing.assert_array_equal(reopened.rejected, b)
    assert reopened.version == second.version
    assert store.get("bob") is None


def test_bad_choices_are_refused_and_change_nothing(store_url):
    store = open_store(store_url)
    before = store.add_choices("alice", np.ones((1, 4)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="dimension 4"):
        store.add_choices("alice", np.ones((1, 5)), np.zeros((1, 5)))
    with pytest.raises(ValueError, match="same"):
        store.add_choices("alice", np.ones((2, 4)), np.zeros((1, 4)))
    state = store.get("alice")
    assert state.version == before.version and len(state.chosen) == 1


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


def test_versions_never_repeat_across_delete_and_create_again(store_url):
    """A replica caches z by version: a user deleted and created again must not match it."""
    store = open_store(store_url)
    first = store.add_choices("erin", np.ones((1, 4)), np.zeros((1, 4)))
    store.add_choices("frank", np.ones((1, 4)), np.zeros((1, 4)))
    assert store.delete("erin")
    again = store.add_choices("erin", np.ones((1, 4)), np.zeros((1, 4)))
    assert again.version > first.version and len(again.chosen) == 1


def test_a_user_keeps_only_the_latest_choices(store_url):
    store = open_store(store_url, max_choices=3)
    for i in range(5):
        store.add_choices("gina", np.full((1, 2), i), np.zeros((1, 2)))
    state = store.add_choices("gina", np.full((2, 2), 5), np.zeros((2, 2)))
    assert state.chosen[:, 0].tolist() == [4, 5, 5]


def test_a_retried_post_with_the_same_request_id_adds_nothing(store_url):
    store = open_store(store_url)
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

    from npalign.stores.base import EraseIncomplete

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


def test_replicas_sharing_a_store_see_each_others_writes_and_deletes(store_url):
    """Two store objects stand for two replicas (for PostgreSQL, on any node): one's write and
    delete are what the other reads next, and concurrent posts to one user lose nothing."""
    first, second = open_store(store_url), open_store(store_url)

    def post(store, i):
        store.add_choices("kim", np.full((1, 4), i), np.zeros((1, 4)), request_id=f"r{i}")

    threads = [threading.Thread(target=post, args=((first, second)[i % 2], i)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    post(second, 3)  # a retry through the other replica
    seen = second.get("kim")
    assert sorted(seen.chosen[:, 0].tolist()) == list(range(8))
    assert first.get("kim").version == seen.version
    assert first.delete("kim") and second.get("kim") is None and not second.delete("kim")


def test_a_store_url_names_its_backend():
    from npalign.registry import USER_STORES

    assert {"sqlite", "postgresql"} <= set(USER_STORES.names())
    with pytest.raises(KeyError, match="unknown user store 'redis'"):
        open_store("redis://127.0.0.1/0")


def test_a_user_keeps_only_their_latest_request_ids(store_url, monkeypatch):
    import npalign.stores.postgres
    import npalign.stores.sqlite

    for module in (npalign.stores.sqlite, npalign.stores.postgres):
        monkeypatch.setattr(module, "REQUEST_IDS_KEPT", 3)
    store = open_store(store_url)
    for i in range(5):
        store.add_choices("lou", np.full((1, 2), i), np.zeros((1, 2)), request_id=f"r{i}")
    assert len(store.add_choices("lou", np.ones((1, 2)), np.zeros((1, 2)), "r4").chosen) == 5
    # r0 is forgotten: a retry that late counts as a new post
    assert len(store.add_choices("lou", np.ones((1, 2)), np.zeros((1, 2)), "r0").chosen) == 6


def test_the_postgres_store_reconnects_after_the_server_drops_it(postgres_url):
    import psycopg

    store = open_store(postgres_url)
    store.add_choices("mo", np.ones((1, 4)), np.zeros((1, 4)))
    backend = store._connection().info.backend_pid
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
    assert len(store.get("mo").chosen) == 1  # on a new connection
    retried = store.add_choices("mo", np.ones((1, 4)), np.zeros((1, 4)), request_id="x")
    assert len(retried.chosen) == 2
