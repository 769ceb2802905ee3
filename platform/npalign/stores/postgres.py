"""The networked user store: one PostgreSQL database that every replica on any node shares, by
URL (`store: postgresql://user:password@host:5432/db`). It keeps the promises of `base.py`:
versions come from one sequence (never repeated, even across delete and re-create), writes to
one user are serialised by a transaction-scoped advisory lock, and a delete removes every row of
the user in one transaction, so at its commit every replica sees the user gone.

Erasure at rest is the database server's: the bytes of deleted rows leave its files as (auto)
VACUUM and WAL recycling reuse the space, as for any deleted row in PostgreSQL; run it on an
encrypted volume where that matters. (The embedded SQLite store overwrites them at once.)
"""

from __future__ import annotations

import threading
import time

import numpy as np

from npalign.registry import USER_STORES
from npalign.stores.base import (
    REQUEST_IDS_KEPT,
    UserState,
    check_dimension,
    checked_choices,
    existing,
    stacked,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS npalign_users (
    user_id TEXT PRIMARY KEY, dim INTEGER NOT NULL, version BIGINT NOT NULL,
    created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS npalign_choices (
    user_id TEXT NOT NULL, seq BIGINT NOT NULL, chosen BYTEA NOT NULL, rejected BYTEA NOT NULL,
    PRIMARY KEY (user_id, seq));
CREATE TABLE IF NOT EXISTS npalign_requests (
    user_id TEXT NOT NULL, request_id TEXT NOT NULL, number BIGSERIAL,
    PRIMARY KEY (user_id, request_id));
CREATE SEQUENCE IF NOT EXISTS npalign_versions;
"""
SCHEMA_LOCK = 0x6E70616C  # replicas starting together create the tables one at a time


@USER_STORES.register("postgresql")
class PostgresUserStore:
    """A UserStore in a PostgreSQL database; one connection per thread, reopened when the
    server dropped it."""

    def __init__(self, url: str, max_choices: int = 256):
        self.url = url
        self.max_choices = max_choices
        self._local = threading.local()
        db = self._connection()
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            db.execute(SCHEMA)

    def _connection(self):
        try:
            import psycopg
        except ImportError as error:
            raise ImportError(
                "the PostgreSQL user store needs psycopg: pip install 'psycopg[binary]'"
            ) from error
        db = getattr(self._local, "db", None)
        if db is None or db.closed or db.broken:
            db = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            self._local.db = db
        return db

    def _again_after_a_drop(self, call, *args):
        """`call(db, *args)`, once more on a new connection if the server dropped this thread's
        (a restart): only for calls that are safe to repeat."""
        import psycopg

        try:
            return call(self._connection(), *args)
        except psycopg.OperationalError:
            dropped = getattr(self._local, "db", None)
            if dropped is None or not dropped.broken:  # not a dropped connection: no retry
                raise
            return call(self._connection(), *args)

    def add_choices(
        self,
        user_id: str,
        chosen: np.ndarray,
        rejected: np.ndarray,
        request_id: str | None = None,
    ) -> UserState:
        chosen, rejected = checked_choices(chosen, rejected)
        if request_id is None:  # a repeat could add the choices twice
            self._add(self._connection(), user_id, chosen, rejected, None)
        else:
            self._again_after_a_drop(self._add, user_id, chosen, rejected, request_id)
        return existing(self, user_id)

    def _add(self, db, user_id, chosen, rejected, request_id: str | None) -> None:
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (user_id,))
            if request_id is None or self._first_time(db, user_id, request_id):
                self._append(db, user_id, chosen, rejected)

    @staticmethod
    def _first_time(db, user_id: str, request_id: str) -> bool:
        """Records the request id; False if it was recorded before (a retried post)."""
        inserted = db.execute(
            "INSERT INTO npalign_requests (user_id, request_id) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING",
            (user_id, request_id),
        )
        if inserted.rowcount == 0:
            return False
        db.execute(
            "DELETE FROM npalign_requests WHERE user_id = %s AND number NOT IN (SELECT number "
            "FROM npalign_requests WHERE user_id = %s ORDER BY number DESC LIMIT %s)",
            (user_id, user_id, REQUEST_IDS_KEPT),
        )
        return True

    def _append(self, db, user_id: str, chosen: np.ndarray, rejected: np.ndarray) -> None:
        row = db.execute("SELECT dim FROM npalign_users WHERE user_id = %s", (user_id,)).fetchone()
        check_dimension(user_id, row[0] if row else None, chosen.shape[1])
        start = db.execute(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM npalign_choices WHERE user_id = %s",
            (user_id,),
        ).fetchone()[0]
        with db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO npalign_choices VALUES (%s, %s, %s, %s)",
                [
                    (user_id, start + i, c.tobytes(), r.tobytes())
                    for i, (c, r) in enumerate(zip(chosen, rejected, strict=True))
                ],
            )
        # Only the latest max_choices are kept.
        db.execute(
            "DELETE FROM npalign_choices WHERE user_id = %s AND seq < %s",
            (user_id, start + len(chosen) - self.max_choices),
        )
        now = time.time()
        db.execute(
            "INSERT INTO npalign_users VALUES (%s, %s, nextval('npalign_versions'), %s, %s) "
            "ON CONFLICT (user_id) DO UPDATE "
            "SET version = EXCLUDED.version, updated = EXCLUDED.updated",
            (user_id, chosen.shape[1], now, now),
        )

    def get(self, user_id: str) -> UserState | None:
        return self._again_after_a_drop(self._get, user_id)

    def _get(self, db, user_id: str) -> UserState | None:
        # One snapshot for both reads: the user row and their choices agree.
        with db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            user = db.execute(
                "SELECT dim, version, updated FROM npalign_users WHERE user_id = %s", (user_id,)
            ).fetchone()
            if user is None:
                return None
            rows = db.execute(
                "SELECT chosen, rejected FROM npalign_choices WHERE user_id = %s ORDER BY seq",
                (user_id,),
            ).fetchall()
        dim, version, updated = user
        chosen, rejected = stacked([r[0] for r in rows], dim), stacked([r[1] for r in rows], dim)
        return UserState(user_id, chosen, rejected, updated, version)

    def delete(self, user_id: str) -> bool:
        """True if the user existed; every row of theirs is gone at the commit."""
        return self._again_after_a_drop(self._delete, user_id)

    @staticmethod
    def _delete(db, user_id: str) -> bool:
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (user_id,))
            db.execute("DELETE FROM npalign_choices WHERE user_id = %s", (user_id,))
            db.execute("DELETE FROM npalign_requests WHERE user_id = %s", (user_id,))
            found = db.execute("DELETE FROM npalign_users WHERE user_id = %s", (user_id,))
            return found.rowcount > 0


USER_STORES.register("postgres")(PostgresUserStore)  # libpq's other spelling of the scheme
