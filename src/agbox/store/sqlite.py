"""SQLite store: one file in the data dir, WAL mode, used from the platform's event-loop thread."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agbox.models import ACTIVE_STATUSES, SessionStatus
from agbox.store.base import SqlDatabase, SqlStore, placeholders

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    limits TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    image_id TEXT NOT NULL,
    status TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_active_at REAL NOT NULL,
    idle_timeout_s INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    token TEXT NOT NULL,
    node TEXT NOT NULL,
    handle TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    finished_at REAL,
    finish_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sessions_owner_status ON sessions (owner, status, created_at);
"""

class SqliteDatabase(SqlDatabase):
    """One locked, autocommit, WAL-mode connection to the data dir's database file (0600), shared by
    the stores that live in it (sessions and keys here; contexts in ``store/contexts.py``)."""

    def __init__(self, path: Path, schema: str, synchronous: str = "NORMAL", timeout_s: float = 30) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=timeout_s)
        os.chmod(path, 0o600)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(schema)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, params).rowcount

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _batch(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        with self._transaction():
            for sql, params in statements:
                self._db.execute(sql, params)


class SqliteStore(SqliteDatabase, SqlStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)
        columns = {row[1] for row in self._query("PRAGMA table_info(api_keys)")}
        if "limits" not in columns:  # a data dir from before per-key limits
            self._query("ALTER TABLE api_keys ADD COLUMN limits TEXT NOT NULL DEFAULT '{}'")

    def touch_session(self, session_id: str, when: float) -> None:
        self._query("UPDATE sessions SET last_active_at = ? WHERE id = ?", (when, session_id))

    def claim_release(self, session_id: str, reason: str = "") -> bool:
        active = [s.value for s in ACTIVE_STATUSES]
        return self._count(f"UPDATE sessions SET status = ?, finish_reason = ? WHERE id = ? "
                           f"AND status IN ({placeholders(len(active))})",
                           (SessionStatus.DELETING.value, reason, session_id, *active)) > 0
