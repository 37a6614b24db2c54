"""The store interface, and the SQL both backends share. SQLite (store/sqlite.py) and PostgreSQL
(store/postgres.py) implement it; each overrides only the statements where the dialects differ
(upserts, row locks)."""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable
from typing import Any

from agbox.models import ApiKeyRecord, SessionRecord, SessionStatus


class Store(abc.ABC):
    @abc.abstractmethod
    def close(self) -> None: ...

    # ---- API keys
    @abc.abstractmethod
    def add_key(self, record: ApiKeyRecord) -> None: ...

    @abc.abstractmethod
    def key_by_hash(self, key_hash: str) -> ApiKeyRecord | None: ...

    @abc.abstractmethod
    def list_keys(self) -> list[ApiKeyRecord]: ...

    @abc.abstractmethod
    def revoke_key(self, key_id: str, when: float) -> bool: ...

    @abc.abstractmethod
    def key_by_id(self, key_id: str) -> ApiKeyRecord | None: ...

    @abc.abstractmethod
    def set_key_limits(self, key_id: str, limits: dict[str, float]) -> bool:
        """Replace the key's limit overrides; False if there is no such key."""

    # ---- sessions
    @abc.abstractmethod
    def put_session(self, record: SessionRecord) -> None:
        """Insert or replace the whole record."""

    @abc.abstractmethod
    def get_session(self, session_id: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    def sessions(self, owner: str | None = None, statuses: Iterable[SessionStatus] | None = None) -> list[SessionRecord]:
        """Sessions ordered by creation time (oldest first)."""

    def session_images(self, statuses: Iterable[SessionStatus]) -> list[tuple[str, str]]:
        """(owner, image id) of each session in ``statuses``: what a create's limit checks need, without
        decoding whole records (stores override it with a narrow query)."""
        return [(r.owner, r.image_id) for r in self.sessions(statuses=statuses)]

    @abc.abstractmethod
    def touch_session(self, session_id: str, when: float) -> None: ...

    @abc.abstractmethod
    def set_status(self, session_id: str, status: SessionStatus, when: float | None = None, reason: str = "") -> None: ...

    @abc.abstractmethod
    def set_labels(self, session_id: str, labels: dict[str, str]) -> None: ...

    @abc.abstractmethod
    def claim_release(self, session_id: str, reason: str = "") -> bool:
        """Move an active session to DELETING with its finish reason (so calls in the meantime can say
        why it ended); True for the one caller (of any replica) that did it."""


class SqlDatabase(abc.ABC):
    """How the shared statements reach a database. They are written with ``?`` placeholders;
    a backend whose driver wants another style translates them in ``_query``/``_count``."""

    @abc.abstractmethod
    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; the rows it returns (none for a statement without a result)."""

    @abc.abstractmethod
    def _count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Run one statement; how many rows it changed."""

    @abc.abstractmethod
    def _batch(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Run statements in one transaction: all take effect or none."""


def placeholders(count: int) -> str:
    return ", ".join("?" * count)


KEY_COLUMNS = "id, name, key_hash, prefix, created_at, revoked_at, limits"
SESSION_COLUMNS = ("id, owner, image_id, status, labels, created_at, last_active_at, idle_timeout_s, expires_at, "
                   "token, node, handle, policy_id, finished_at, finish_reason")


def key_from_row(row: tuple[Any, ...]) -> ApiKeyRecord:
    key_id, name, key_hash, prefix, created, revoked, limits = row
    return ApiKeyRecord(key_id, name, key_hash, prefix, created, revoked, json.loads(limits or "{}"))


def session_from_row(row: tuple[Any, ...]) -> SessionRecord:
    (sid, owner, image_id, status, labels, created, active, idle, expires, token, node, handle, policy,
     finished, reason) = row
    return SessionRecord(sid, owner, image_id, SessionStatus(status), json.loads(labels), created, active, idle,
                         expires, token, node, json.loads(handle), policy, finished, reason)


class SqlStore(SqlDatabase, Store):
    """Keys and sessions in SQL; ``touch_session`` and ``claim_release`` are the backends' own."""

    # ---- API keys

    def add_key(self, record: ApiKeyRecord) -> None:
        self._query(f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ({placeholders(7)})",
                    (record.id, record.name, record.key_hash, record.prefix, record.created_at, record.revoked_at,
                     json.dumps(record.limits)))

    def key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        rows = self._query(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,))
        return key_from_row(rows[0]) if rows else None

    def key_by_id(self, key_id: str) -> ApiKeyRecord | None:
        rows = self._query(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
        return key_from_row(rows[0]) if rows else None

    def list_keys(self) -> list[ApiKeyRecord]:
        return [key_from_row(row) for row in self._query(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at")]

    def set_key_limits(self, key_id: str, limits: dict[str, float]) -> bool:
        return self._count("UPDATE api_keys SET limits = ? WHERE id = ?", (json.dumps(limits), key_id)) > 0

    def revoke_key(self, key_id: str, when: float) -> bool:
        return self._count("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                           (when, key_id)) > 0

    # ---- sessions

    def put_session(self, record: SessionRecord) -> None:
        updates = ", ".join(f"{c} = excluded.{c}" for c in SESSION_COLUMNS.replace(" ", "").split(",")[1:])
        self._query(f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({placeholders(15)}) "
                    f"ON CONFLICT (id) DO UPDATE SET {updates}", (
                        record.id, record.owner, record.image_id, record.status.value, json.dumps(record.labels),
                        record.created_at, record.last_active_at, record.idle_timeout_s, record.expires_at,
                        record.token, record.node, json.dumps(record.handle), record.policy_id, record.finished_at,
                        record.finish_reason))

    def get_session(self, session_id: str) -> SessionRecord | None:
        rows = self._query(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,))
        return session_from_row(rows[0]) if rows else None

    def sessions(self, owner: str | None = None, statuses: Iterable[SessionStatus] | None = None) -> list[SessionRecord]:
        sql = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE 1=1"
        params: list[Any] = []
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        if statuses is not None:
            values = [s.value for s in statuses]
            sql += f" AND status IN ({placeholders(len(values))})" if values else " AND 1=0"
            params.extend(values)
        sql += " ORDER BY created_at, id"
        return [session_from_row(row) for row in self._query(sql, tuple(params))]

    def session_images(self, statuses: Iterable[SessionStatus]) -> list[tuple[str, str]]:
        values = [s.value for s in statuses]
        if not values:
            return []
        rows = self._query(f"SELECT owner, image_id FROM sessions WHERE status IN ({placeholders(len(values))})",
                           tuple(values))
        return [(owner, image_id) for owner, image_id in rows]

    def set_status(self, session_id: str, status: SessionStatus, when: float | None = None, reason: str = "") -> None:
        if status is SessionStatus.FINISH:
            self._query("UPDATE sessions SET status = ?, finished_at = ?, finish_reason = ? WHERE id = ?",
                        (status.value, when, reason, session_id))
        else:
            self._query("UPDATE sessions SET status = ? WHERE id = ?", (status.value, session_id))

    def set_labels(self, session_id: str, labels: dict[str, str]) -> None:
        self._query("UPDATE sessions SET labels = ? WHERE id = ?", (json.dumps(labels), session_id))
