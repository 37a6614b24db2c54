"""SQLite store: one file in the data dir, WAL mode, used from the platform's event-loop thread."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agbox.models import ACTIVE_STATUSES, ApiKeyRecord, SessionRecord, SessionStatus
from agbox.store.base import Store

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

_SESSION_COLUMNS = ("id, owner, image_id, status, labels, created_at, last_active_at, idle_timeout_s, expires_at, "
                    "token, node, handle, policy_id, finished_at, finish_reason")


class SqliteDatabase:
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

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()


_KEY_COLUMNS = "id, name, key_hash, prefix, created_at, revoked_at, limits"


def _key(row: tuple[Any, ...]) -> ApiKeyRecord:
    key_id, name, key_hash, prefix, created, revoked, limits = row
    return ApiKeyRecord(key_id, name, key_hash, prefix, created, revoked, json.loads(limits or "{}"))


class SqliteStore(SqliteDatabase, Store):
    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)
        columns = {row[1] for row in self._exec("PRAGMA table_info(api_keys)")}
        if "limits" not in columns:  # a data dir from before per-key limits
            self._exec("ALTER TABLE api_keys ADD COLUMN limits TEXT NOT NULL DEFAULT '{}'")

    # ---- API keys

    def add_key(self, record: ApiKeyRecord) -> None:
        self._exec(f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (record.id, record.name, record.key_hash, record.prefix, record.created_at, record.revoked_at,
                    json.dumps(record.limits)))

    def key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        rows = self._exec(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,))
        return _key(rows[0]) if rows else None

    def key_by_id(self, key_id: str) -> ApiKeyRecord | None:
        rows = self._exec(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
        return _key(rows[0]) if rows else None

    def list_keys(self) -> list[ApiKeyRecord]:
        rows = self._exec(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at")
        return [_key(row) for row in rows]

    def set_key_limits(self, key_id: str, limits: dict[str, float]) -> bool:
        with self._lock:
            cursor = self._db.execute("UPDATE api_keys SET limits = ? WHERE id = ?", (json.dumps(limits), key_id))
            return cursor.rowcount > 0

    def revoke_key(self, key_id: str, when: float) -> bool:
        with self._lock:
            cursor = self._db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                      (when, key_id))
            return cursor.rowcount > 0

    # ---- sessions

    @staticmethod
    def _row(row: tuple[Any, ...]) -> SessionRecord:
        (sid, owner, image_id, status, labels, created, active, idle, expires, token, node, handle, policy,
         finished, reason) = row
        return SessionRecord(sid, owner, image_id, SessionStatus(status), json.loads(labels), created, active, idle,
                             expires, token, node, json.loads(handle), policy, finished, reason)

    def put_session(self, record: SessionRecord) -> None:
        self._exec(f"INSERT OR REPLACE INTO sessions ({_SESSION_COLUMNS}) VALUES ({', '.join('?' * 15)})", (
            record.id, record.owner, record.image_id, record.status.value, json.dumps(record.labels),
            record.created_at, record.last_active_at, record.idle_timeout_s, record.expires_at, record.token,
            record.node, json.dumps(record.handle), record.policy_id, record.finished_at, record.finish_reason))

    def get_session(self, session_id: str) -> SessionRecord | None:
        rows = self._exec(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,))
        return self._row(rows[0]) if rows else None

    def sessions(self, owner: str | None = None, statuses: Iterable[SessionStatus] | None = None) -> list[SessionRecord]:
        sql = f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE 1=1"
        params: list[Any] = []
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        if statuses is not None:
            values = [s.value for s in statuses]
            sql += f" AND status IN ({', '.join('?' * len(values))})"
            params.extend(values)
        sql += " ORDER BY created_at, id"
        return [self._row(row) for row in self._exec(sql, tuple(params))]

    def session_images(self, statuses: Iterable[SessionStatus]) -> list[tuple[str, str]]:
        values = [s.value for s in statuses]
        rows = self._exec(f"SELECT owner, image_id FROM sessions WHERE status IN ({', '.join('?' * len(values))})",
                          tuple(values))
        return [(owner, image_id) for owner, image_id in rows]

    def touch_session(self, session_id: str, when: float) -> None:
        self._exec("UPDATE sessions SET last_active_at = ? WHERE id = ?", (when, session_id))

    def set_status(self, session_id: str, status: SessionStatus, when: float | None = None, reason: str = "") -> None:
        if status is SessionStatus.FINISH:
            self._exec("UPDATE sessions SET status = ?, finished_at = ?, finish_reason = ? WHERE id = ?",
                       (status.value, when, reason, session_id))
        else:
            self._exec("UPDATE sessions SET status = ? WHERE id = ?", (status.value, session_id))

    def set_labels(self, session_id: str, labels: dict[str, str]) -> None:
        self._exec("UPDATE sessions SET labels = ? WHERE id = ?", (json.dumps(labels), session_id))

    def claim_release(self, session_id: str, reason: str = "") -> bool:
        active = [s.value for s in ACTIVE_STATUSES]
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE sessions SET status = ?, finish_reason = ? WHERE id = ? "
                f"AND status IN ({', '.join('?' * len(active))})",
                (SessionStatus.DELETING.value, reason, session_id, *active))
            return cursor.rowcount > 0
