"""Context records: contexts, their file manifests, session bindings and sync task status.

A context's content is a manifest (path -> content-addressed blob) kept in the database; the bytes
live in a blob store (services/context_files.py). Changing a context is one database transaction
over its manifest, so a reader sees the old or the new version, never a mix, and a process killed
half-way leaves the previous version as it was.

Keys are absolute sandbox paths (``/home/user/data/a.txt``), AGB's key space. Data dirs made before
that kept keys relative to the mount; ``migrate_key_space`` rewrites them once, at start (see there).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agbox.store.base import SqlDatabase, placeholders
from agbox.store.sqlite import SqliteDatabase

log = logging.getLogger(__name__)

# Recorded in context_meta once the files and bindings use absolute sandbox paths as keys.
KEY_SPACE = "absolute-sandbox-paths"

SCHEMA = """
CREATE TABLE IF NOT EXISTS context_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS contexts (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL,
    expires_at REAL,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS contexts_owner_name ON contexts (owner, name);
CREATE TABLE IF NOT EXISTS context_files (
    context_id TEXT NOT NULL,
    path TEXT NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    modified_at REAL NOT NULL,
    expires_at REAL,
    PRIMARY KEY (context_id, path)
);
CREATE TABLE IF NOT EXISTS context_bindings (
    session_id TEXT NOT NULL,
    context_id TEXT NOT NULL,
    path TEXT NOT NULL,
    policy TEXT NOT NULL,
    internal INTEGER NOT NULL DEFAULT 0,
    base TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (session_id, context_id, path)
);
CREATE TABLE IF NOT EXISTS context_tasks (
    session_id TEXT NOT NULL,
    context_id TEXT NOT NULL,
    path TEXT NOT NULL,
    task_type TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    start_time INTEGER NOT NULL,
    finish_time INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, context_id, path, task_type)
);
"""


@dataclasses.dataclass
class ContextRecord:
    id: str
    owner: str
    name: str
    state: str
    kind: str
    created_at: float
    last_used_at: float
    expires_at: float | None = None
    version: int = 0


@dataclasses.dataclass
class FileRecord:
    path: str
    blob: str
    size: int
    created_at: float
    modified_at: float
    expires_at: float | None = None


@dataclasses.dataclass
class Binding:
    session_id: str
    context_id: str
    path: str
    policy: dict[str, Any]
    internal: bool = False
    # path -> blob of the files this session last exchanged with the context (for 3-way merges).
    base: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TaskRecord:
    session_id: str
    context_id: str
    path: str
    task_type: str
    status: str
    error: str
    start_time: int
    finish_time: int


class ContextStore(abc.ABC):
    @abc.abstractmethod
    def close(self) -> None: ...

    # contexts
    @abc.abstractmethod
    def add_context(self, record: ContextRecord) -> None: ...

    @abc.abstractmethod
    def get_context(self, context_id: str) -> ContextRecord | None: ...

    @abc.abstractmethod
    def context_by_name(self, owner: str, name: str) -> ContextRecord | None: ...

    @abc.abstractmethod
    def contexts(self, owner: str | None = None, kind: str | None = "") -> list[ContextRecord]: ...

    @abc.abstractmethod
    def update_context(self, context_id: str, **fields: Any) -> None: ...

    @abc.abstractmethod
    def delete_context(self, context_id: str) -> None:
        """The context, its manifest, bindings and tasks, in one transaction."""

    # manifests
    @abc.abstractmethod
    def files(self, context_id: str, prefix: str = "") -> list[FileRecord]: ...

    @abc.abstractmethod
    def commit(self, context_id: str, upserts: Iterable[FileRecord], deletes: Iterable[str], *,
               clear: bool = False, when: float, expires_at: float | None = None) -> int:
        """Apply a change set atomically; returns the new version."""

    @abc.abstractmethod
    def referenced_blobs(self) -> set[str]: ...

    @abc.abstractmethod
    def expire_files(self, now: float) -> int: ...

    # bindings and tasks
    @abc.abstractmethod
    def put_binding(self, binding: Binding) -> None: ...

    @abc.abstractmethod
    def bindings(self, session_id: str) -> list[Binding]: ...

    @abc.abstractmethod
    def delete_bindings(self, session_id: str) -> None:
        """Forget a session: its bindings and its task status."""

    @abc.abstractmethod
    def put_task(self, task: TaskRecord) -> None: ...

    @abc.abstractmethod
    def tasks(self, session_id: str) -> list[TaskRecord]: ...


CONTEXT_COLUMNS = "id, owner, name, state, kind, created_at, last_used_at, expires_at, version"
FILE_COLUMNS = "path, blob, size, created_at, modified_at, expires_at"
BINDING_COLUMNS = "session_id, context_id, path, policy, internal, base"
TASK_COLUMNS = "session_id, context_id, path, task_type, status, error, start_time, finish_time"


class SqlContextStore(SqlDatabase, ContextStore):
    """Contexts in SQL. Backends add manifest queries and commits (prefix matching, row locks) and
    upserts; ``ROW_ORDER`` is the column that orders bindings and tasks as they were last written."""

    ROW_ORDER = "rowid"

    # ---- contexts

    def add_context(self, record: ContextRecord) -> None:
        self._query(f"INSERT INTO contexts ({CONTEXT_COLUMNS}) VALUES ({placeholders(9)})",
                    tuple(dataclasses.astuple(record)))

    def get_context(self, context_id: str) -> ContextRecord | None:
        rows = self._query(f"SELECT {CONTEXT_COLUMNS} FROM contexts WHERE id = ?", (context_id,))
        return ContextRecord(*rows[0]) if rows else None

    def context_by_name(self, owner: str, name: str) -> ContextRecord | None:
        rows = self._query(f"SELECT {CONTEXT_COLUMNS} FROM contexts WHERE owner = ? AND name = ?", (owner, name))
        return ContextRecord(*rows[0]) if rows else None

    def contexts(self, owner: str | None = None, kind: str | None = "") -> list[ContextRecord]:
        sql = f"SELECT {CONTEXT_COLUMNS} FROM contexts WHERE 1=1"
        params: list[Any] = []
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        sql += " ORDER BY created_at, id"
        return [ContextRecord(*row) for row in self._query(sql, tuple(params))]

    def update_context(self, context_id: str, **fields: Any) -> None:
        allowed = {"name", "state", "last_used_at", "expires_at"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"cannot update {sorted(set(fields) - allowed)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._query(f"UPDATE contexts SET {assignments} WHERE id = ?", (*fields.values(), context_id))

    def delete_context(self, context_id: str) -> None:
        self._batch([(f"DELETE FROM {table} WHERE {column} = ?", (context_id,))
                     for table, column in (("context_files", "context_id"), ("context_bindings", "context_id"),
                                           ("context_tasks", "context_id"), ("contexts", "id"))])

    # ---- manifests

    def referenced_blobs(self) -> set[str]:
        return {row[0] for row in self._query("SELECT DISTINCT blob FROM context_files")}

    def expire_files(self, now: float) -> int:
        return self._count("DELETE FROM context_files WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))

    # ---- bindings and tasks

    def bindings(self, session_id: str) -> list[Binding]:
        rows = self._query(f"SELECT {BINDING_COLUMNS} FROM context_bindings WHERE session_id = ? "
                           f"ORDER BY {self.ROW_ORDER}", (session_id,))
        return [Binding(sid, cid, path, json.loads(policy), bool(internal), json.loads(base))
                for sid, cid, path, policy, internal, base in rows]

    def delete_bindings(self, session_id: str) -> None:
        self._batch([("DELETE FROM context_bindings WHERE session_id = ?", (session_id,)),
                     ("DELETE FROM context_tasks WHERE session_id = ?", (session_id,))])

    def tasks(self, session_id: str) -> list[TaskRecord]:
        rows = self._query(f"SELECT {TASK_COLUMNS} FROM context_tasks WHERE session_id = ? "
                           f"ORDER BY start_time, {self.ROW_ORDER}", (session_id,))
        return [TaskRecord(*row) for row in rows]


class SqliteContextStore(SqliteDatabase, SqlContextStore):
    """Uses the platform's SQLite file (its own connection; WAL lets both share it)."""

    def __init__(self, path: Path) -> None:
        # FULL: a committed manifest survives power loss as well as a killed process.
        super().__init__(path, SCHEMA, synchronous="FULL")
        self.migrate_key_space()

    def migrate_key_space(self) -> None:
        """Turn mount-relative keys (``a/b.txt``) into absolute sandbox paths, in one transaction.

        A file's old key says nothing about the mount it came from; the bindings still in the
        database do (a session's bindings outlive a crash). A context bound at exactly one path gets
        its keys under that path (the internal file_transfer context is bound at ``/``, so its keys
        become exact); any other context gets them under ``/`` (reachable with a mapping policy of
        ``/``), and the log names it. Bindings' bases move under their own mount path.
        """
        with self._transaction():
            done = self._db.execute("SELECT value FROM context_meta WHERE name = 'key_space'").fetchall()
            if done and done[0][0] == KEY_SPACE:
                return
            mounts: dict[str, set[str]] = {}
            for context_id, mount in self._db.execute("SELECT context_id, path FROM context_bindings"):
                mounts.setdefault(context_id, set()).add(mount)
            moved = self._db.execute("SELECT context_id, path FROM context_files WHERE substr(path, 1, 1) != '/'"
                                     ).fetchall()
            unplaced: set[str] = set()
            for context_id, key in moved:
                known = mounts.get(context_id, set())
                root = next(iter(known)) if len(known) == 1 else "/"
                if root == "/" and known != {"/"}:
                    unplaced.add(context_id)
                self._db.execute("UPDATE context_files SET path = ? WHERE context_id = ? AND path = ?",
                                 (_absolute(root, key), context_id, key))
            for session_id, context_id, mount, base in self._db.execute(
                    "SELECT session_id, context_id, path, base FROM context_bindings").fetchall():
                rebased = {k if k.startswith("/") else _absolute(mount, k): v for k, v in json.loads(base).items()}
                self._db.execute("UPDATE context_bindings SET base = ? WHERE session_id = ? AND context_id = ? "
                                 "AND path = ?", (json.dumps(rebased), session_id, context_id, mount))
            self._db.execute("INSERT OR REPLACE INTO context_meta (name, value) VALUES ('key_space', ?)",
                             (KEY_SPACE,))
        if moved:
            log.warning("contexts: %d file keys moved to absolute sandbox paths", len(moved))
        for context_id in sorted(unplaced):
            log.warning("context %s: the mount its files came from is unknown; they are now under / "
                        "(a mapping policy with path / shows them at any mount)", context_id)

    # ---- manifests

    def files(self, context_id: str, prefix: str = "") -> list[FileRecord]:
        if prefix.rstrip("/"):
            rows = self._query(f"SELECT {FILE_COLUMNS} FROM context_files WHERE context_id = ? AND "
                              "(path = ? OR substr(path, 1, ?) = ?) ORDER BY path",
                              (context_id, prefix.rstrip("/"), len(prefix.rstrip("/")) + 1,
                               prefix.rstrip("/") + "/"))
        else:
            rows = self._query(f"SELECT {FILE_COLUMNS} FROM context_files WHERE context_id = ? ORDER BY path",
                              (context_id,))
        return [FileRecord(*row) for row in rows]

    def commit(self, context_id: str, upserts: Iterable[FileRecord], deletes: Iterable[str], *,
               clear: bool = False, when: float, expires_at: float | None = None) -> int:
        with self._transaction():
            if clear:
                self._db.execute("DELETE FROM context_files WHERE context_id = ?", (context_id,))
            for path in deletes:
                self._db.execute("DELETE FROM context_files WHERE context_id = ? AND path = ?", (context_id, path))
            for f in upserts:
                self._db.execute(
                    "INSERT INTO context_files (context_id, path, blob, size, created_at, modified_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (context_id, path) DO UPDATE SET "
                    "blob = excluded.blob, size = excluded.size, modified_at = excluded.modified_at, "
                    "expires_at = excluded.expires_at",
                    (context_id, f.path, f.blob, f.size, f.created_at, f.modified_at, f.expires_at))
            self._db.execute("UPDATE contexts SET version = version + 1, last_used_at = ? WHERE id = ?",
                             (when, context_id))
            if expires_at is not None:
                self._db.execute("UPDATE contexts SET expires_at = ? WHERE id = ?", (expires_at, context_id))
            rows = self._db.execute("SELECT version FROM contexts WHERE id = ?", (context_id,)).fetchall()
        return int(rows[0][0]) if rows else 0

    # ---- bindings and tasks

    def put_binding(self, binding: Binding) -> None:
        self._query("INSERT OR REPLACE INTO context_bindings (session_id, context_id, path, policy, internal, base) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   (binding.session_id, binding.context_id, binding.path, json.dumps(binding.policy),
                    int(binding.internal), json.dumps(binding.base)))

    def put_task(self, task: TaskRecord) -> None:
        self._query("INSERT OR REPLACE INTO context_tasks (session_id, context_id, path, task_type, status, error, "
                   "start_time, finish_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", tuple(dataclasses.astuple(task)))


def _absolute(root: str, relative: str) -> str:
    return root.rstrip("/") + "/" + relative.lstrip("/")
