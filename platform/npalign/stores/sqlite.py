"""The embedded user store: one SQLite file (WAL, so readers never block the writer; replicas
on one node share it). It keeps the promises of `base.py`; on top, `secure_delete` overwrites a
deleted user's bytes and a WAL checkpoint follows each delete, so after `delete` nothing of theirs
is left in the file; when a concurrent reader keeps the checkpoint from finishing, `delete` says
so (`EraseIncomplete`) instead of returning as if it had.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np

from npalign.registry import USER_STORES
from npalign.stores.base import (
    REQUEST_IDS_KEPT,
    EraseIncomplete,
    UserState,
    check_dimension,
    checked_choices,
    existing,
    stacked,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY, dim INTEGER NOT NULL, version INTEGER NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS choices (
    user_id TEXT NOT NULL, seq INTEGER NOT NULL, chosen BLOB NOT NULL, rejected BLOB NOT NULL,
    PRIMARY KEY (user_id, seq));
CREATE TABLE IF NOT EXISTS requests (
    user_id TEXT NOT NULL, request_id TEXT NOT NULL, PRIMARY KEY (user_id, request_id));
CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER);
INSERT OR IGNORE INTO counter VALUES (0, 0);
"""
CHECKPOINT_TRIES = 20  # readers hold a snapshot for milliseconds: retry the checkpoint briefly


@USER_STORES.register("sqlite")
class SQLiteUserStore:
    """A UserStore in one SQLite file (a path or `sqlite:///path`); a connection per call, so
    threads and processes share it safely."""

    def __init__(self, path: str | Path, max_choices: int = 256):
        self.path = Path(str(path).removeprefix("sqlite://"))
        self.max_choices = max_choices
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA secure_delete=ON")
        return db

    def add_choices(
        self,
        user_id: str,
        chosen: np.ndarray,
        rejected: np.ndarray,
        request_id: str | None = None,
    ) -> UserState:
        chosen, rejected = checked_choices(chosen, rejected)
        now = time.time()
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")  # one writer at a time: seq numbers stay unique
            if (
                request_id is not None
                and db.execute(
                    "SELECT 1 FROM requests WHERE user_id = ? AND request_id = ?",
                    (user_id, request_id),
                ).fetchone()
            ):
                db.execute("ROLLBACK")
                return existing(self, user_id)
            row = db.execute(
                "SELECT dim, version FROM users WHERE user_id = ?", (user_id,)
            ).fetchone()
            check_dimension(user_id, row[0] if row else None, chosen.shape[1])
            start = db.execute(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM choices WHERE user_id = ?", (user_id,)
            ).fetchone()[0]
            db.executemany(
                "INSERT INTO choices VALUES (?, ?, ?, ?)",
                [
                    (user_id, start + i, c.tobytes(), r.tobytes())
                    for i, (c, r) in enumerate(zip(chosen, rejected, strict=True))
                ],
            )
            # Only the latest max_choices are kept.
            db.execute(
                "DELETE FROM choices WHERE user_id = ? AND seq < ?",
                (user_id, start + len(chosen) - self.max_choices),
            )
            if request_id is not None:
                db.execute("INSERT INTO requests VALUES (?, ?)", (user_id, request_id))
                db.execute(  # rowids grow with each insert: the oldest ids go first
                    "DELETE FROM requests WHERE user_id = ? AND rowid NOT IN (SELECT rowid FROM "
                    "requests WHERE user_id = ? ORDER BY rowid DESC LIMIT ?)",
                    (user_id, user_id, REQUEST_IDS_KEPT),
                )
            db.execute("UPDATE counter SET value = value + 1")
            version = db.execute("SELECT value FROM counter").fetchone()[0]
            if row:
                db.execute(
                    "UPDATE users SET version = ?, updated = ? WHERE user_id = ?",
                    (version, now, user_id),
                )
            else:
                db.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                    (user_id, chosen.shape[1], version, now, now),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()
        return existing(self, user_id)

    def get(self, user_id: str) -> UserState | None:
        db = self._connect()
        try:
            db.execute("BEGIN")  # one snapshot for both reads: the user row and their choices
            user = db.execute(
                "SELECT dim, version, updated FROM users WHERE user_id = ?", (user_id,)
            ).fetchone()
            if user is None:
                return None
            rows = db.execute(
                "SELECT chosen, rejected FROM choices WHERE user_id = ? ORDER BY seq", (user_id,)
            ).fetchall()
        finally:
            db.close()  # ends the read transaction
        dim, version, updated = user
        chosen, rejected = stacked([r[0] for r in rows], dim), stacked([r[1] for r in rows], dim)
        return UserState(user_id, chosen, rejected, updated, version)

    def delete(self, user_id: str) -> bool:
        """True if the user existed. Raises EraseIncomplete when their rows are deleted but the
        write-ahead log could not be emptied (a reader held it for every try): call again."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM choices WHERE user_id = ?", (user_id,))
            db.execute("DELETE FROM requests WHERE user_id = ?", (user_id,))
            found = db.execute("DELETE FROM users WHERE user_id = ?", (user_id,)).rowcount > 0
            db.execute("COMMIT")
            # Move the change from the write-ahead log into the (zeroed) pages and empty the log:
            # (busy, log pages, checkpointed pages); busy 1 means a reader kept it from finishing.
            # The checkpoint waits on readers through the busy handler: a short wait a try.
            db.execute("PRAGMA busy_timeout = 50")
            for _ in range(CHECKPOINT_TRIES):
                busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return found
                time.sleep(0.05)
        finally:
            db.close()
        raise EraseIncomplete(
            f"user {user_id!r} is deleted, but a concurrent reader kept their bytes in "
            f"{self.path.name}-wal: delete again to erase them"
        )
