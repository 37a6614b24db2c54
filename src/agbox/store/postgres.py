"""PostgreSQL store: the same ``Store`` and ``ContextStore`` interfaces as SQLite, for several
control-plane replicas sharing one database.

- One ``psycopg_pool.ConnectionPool`` per process (``PostgresDatabase``), shared by the session
  store and the context store; every call borrows a connection for one statement or one
  transaction. Connections are checked when borrowed, so a database restart costs the calls that
  were in flight, not the process.
- The schema is a numbered list of migrations (``MIGRATIONS``) that mirrors the SQLite tables
  column for column (tests/store compares both); they run once, under an advisory lock, so
  replicas starting together do not race.
- Where replicas must not both act, row locks decide: a session is claimed for release with
  ``FOR UPDATE SKIP LOCKED`` (one replica wins, the others skip it), and a context commit locks
  its context row, so two replicas committing to one context serialise and get distinct versions.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from agbox.errors import AgboxError
from agbox.models import ACTIVE_STATUSES, SessionStatus
from agbox.store.base import SqlDatabase, SqlStore
from agbox.store.contexts import FILE_COLUMNS, Binding, FileRecord, SqlContextStore, TaskRecord

# Any fixed 64-bit number: the advisory lock that serialises schema migrations across replicas.
_MIGRATION_LOCK = 0x616762_6F78_0001

# (version, what it does, SQL). Append only; never edit a released step. A change to the SQLite
# schema (store/sqlite.py, store/contexts.py) needs its step here (tests compare the columns).
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "api keys, sessions, contexts", """
CREATE SEQUENCE agbox_row_seq;
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    image_id TEXT NOT NULL,
    status TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_active_at DOUBLE PRECISION NOT NULL,
    idle_timeout_s BIGINT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    token TEXT NOT NULL,
    node TEXT NOT NULL,
    handle TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    finished_at DOUBLE PRECISION,
    finish_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sessions_owner_status ON sessions (owner, status, created_at);
CREATE INDEX sessions_status ON sessions (status);
CREATE TABLE contexts (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    last_used_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    version BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX contexts_owner_name ON contexts (owner, name);
CREATE TABLE context_files (
    context_id TEXT NOT NULL,
    path TEXT NOT NULL,
    blob TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    modified_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    PRIMARY KEY (context_id, path)
);
CREATE TABLE context_bindings (
    session_id TEXT NOT NULL,
    context_id TEXT NOT NULL,
    path TEXT NOT NULL,
    policy TEXT NOT NULL,
    internal BIGINT NOT NULL DEFAULT 0,
    base TEXT NOT NULL DEFAULT '{}',
    seq BIGINT NOT NULL DEFAULT nextval('agbox_row_seq'),
    PRIMARY KEY (session_id, context_id, path)
);
CREATE TABLE context_tasks (
    session_id TEXT NOT NULL,
    context_id TEXT NOT NULL,
    path TEXT NOT NULL,
    task_type TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    start_time BIGINT NOT NULL,
    finish_time BIGINT NOT NULL DEFAULT 0,
    seq BIGINT NOT NULL DEFAULT nextval('agbox_row_seq'),
    PRIMARY KEY (session_id, context_id, path, task_type)
);
"""),
    # The same rewrite as SqliteContextStore.migrate_key_space (store/contexts.py): a context bound at
    # exactly one known path gets its keys under it, any other under "/"; bases move under their mount.
    (2, "context keys are absolute sandbox paths", """
CREATE TABLE context_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
UPDATE context_files AS f
SET path = CASE WHEN m.mounts = 1 THEN rtrim(m.mount, '/') ELSE '' END || '/' || f.path
FROM (SELECT owned.context_id, count(DISTINCT b.path) AS mounts, min(b.path) AS mount
      FROM (SELECT DISTINCT context_id FROM context_files) AS owned
      LEFT JOIN context_bindings AS b ON b.context_id = owned.context_id
      GROUP BY owned.context_id) AS m
WHERE f.context_id = m.context_id AND left(f.path, 1) <> '/';
UPDATE context_bindings SET base = (
    SELECT coalesce(jsonb_object_agg(CASE WHEN left(e.key, 1) = '/' THEN e.key
                                          ELSE rtrim(context_bindings.path, '/') || '/' || e.key END, e.value),
                    '{}'::jsonb)::text
    FROM jsonb_each(context_bindings.base::jsonb) AS e)
WHERE base <> '{}';
INSERT INTO context_meta (name, value) VALUES ('key_space', 'absolute-sandbox-paths');
"""),
    (3, "per-key limit overrides", """
ALTER TABLE api_keys ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
"""),
)

# Columns that exist only here: SQLite orders by its implicit rowid, which a REPLACE renews; ``seq``
# is that rowid, renewed on every upsert.
POSTGRES_ONLY_COLUMNS = {"seq"}


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class PostgresDatabase:
    """The connection pool of one process, shared by its session and context stores."""

    def __init__(self, url: str, min_size: int = 1, max_size: int = 8, timeout_s: float = 5.0) -> None:
        self.url = url
        # One direct connection first: an unreachable or misconfigured server is a clear error at
        # once (the pool would keep retrying), and the migrations run on it.
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout_s))) as conn:
                self._migrate(conn)
        except psycopg.Error as exc:
            raise AgboxError(f"cannot reach PostgreSQL at {_redacted(url)}: {exc}") from exc
        # timeout_s bounds how long a call waits for a connection while the server is away.
        self.pool = ConnectionPool(url, min_size=min_size, max_size=max_size, timeout=timeout_s, open=True,
                                   kwargs={"autocommit": True}, check=ConnectionPool.check_connection,
                                   reconnect_timeout=0, max_lifetime=3600, name="agbox")

    def close(self) -> None:
        self.pool.close()

    def migrate(self) -> int:
        """Apply the missing migrations; returns the schema version."""
        with self.pool.connection() as conn:
            return self._migrate(conn)

    @staticmethod
    def _migrate(conn: psycopg.Connection[Any]) -> int:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute("CREATE TABLE IF NOT EXISTS agbox_schema (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            cur.execute("SELECT coalesce(max(version), 0) FROM agbox_schema")
            row = cur.fetchone()
            current = int(row[0]) if row else 0
            for version, name, sql in MIGRATIONS:
                if version > current:
                    cur.execute(sql)  # type: ignore[arg-type]
                    cur.execute("INSERT INTO agbox_schema (version, name) VALUES (%s, %s)", (version, name))
                    current = version
            return current

    def exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.pool.connection() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def exec_count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        with self.pool.connection() as conn:
            return conn.execute(sql, params).rowcount

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur


def _redacted(url: str) -> str:
    """The URL without its password (for error messages)."""
    scheme, _, rest = url.partition("://")
    if "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def _dialect(sql: str) -> str:
    """The shared statements' ``?`` placeholders as psycopg's ``%s`` (no shared statement has a
    literal ``?`` or ``%``)."""
    return sql.replace("?", "%s")


class PostgresStatements(SqlDatabase):
    """The shared statements (store/base.py, store/contexts.py) run on the process's pool."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.db.exec(_dialect(sql), params)

    def _count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return self.db.exec_count(_dialect(sql), params)

    def _batch(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        with self.db.transaction() as cur:
            for sql, params in statements:
                cur.execute(_dialect(sql), params)  # type: ignore[arg-type]


class PostgresStore(PostgresStatements, SqlStore):
    @classmethod
    def connect(cls, url: str) -> PostgresStore:
        return cls(PostgresDatabase(url))

    def close(self) -> None:
        self.db.close()

    def touch_session(self, session_id: str, when: float) -> None:
        # GREATEST: replicas' clocks and calls interleave; activity never moves backwards.
        self.db.exec("UPDATE sessions SET last_active_at = GREATEST(last_active_at, %s) WHERE id = %s",
                     (when, session_id))

    def claim_release(self, session_id: str, reason: str = "") -> bool:
        # SKIP LOCKED: a replica claiming the same session right now holds the row; this one backs off
        # at once instead of waiting to find it already claimed.
        rows = self.db.exec(
            "WITH mine AS (SELECT id FROM sessions WHERE id = %s AND status = ANY(%s) FOR UPDATE SKIP LOCKED) "
            "UPDATE sessions SET status = %s, finish_reason = %s FROM mine WHERE sessions.id = mine.id "
            "RETURNING sessions.id",
            (session_id, [s.value for s in ACTIVE_STATUSES], SessionStatus.DELETING.value, reason))
        return bool(rows)


class PostgresContextStore(PostgresStatements, SqlContextStore):
    """Context manifests in the same database (and pool) as the sessions."""

    ROW_ORDER = "seq"

    def close(self) -> None:
        """The pool belongs to the session store, which closes it."""

    # ---- manifests

    def files(self, context_id: str, prefix: str = "") -> list[FileRecord]:
        scope = prefix.rstrip("/")
        if prefix:
            rows = self.db.exec(f"SELECT {FILE_COLUMNS} FROM context_files WHERE context_id = %s AND "
                                "(path = %s OR left(path, %s) = %s) ORDER BY path COLLATE \"C\"",
                                (context_id, scope, len(scope) + 1, scope + "/"))
        else:
            rows = self.db.exec(f"SELECT {FILE_COLUMNS} FROM context_files WHERE context_id = %s "
                                "ORDER BY path COLLATE \"C\"", (context_id,))
        return [FileRecord(*row) for row in rows]

    def commit(self, context_id: str, upserts: Iterable[FileRecord], deletes: Iterable[str], *,
               clear: bool = False, when: float, expires_at: float | None = None) -> int:
        with self.db.transaction() as cur:
            # The context row lock orders commits to one context across replicas.
            cur.execute("SELECT version FROM contexts WHERE id = %s FOR UPDATE", (context_id,))
            if clear:
                cur.execute("DELETE FROM context_files WHERE context_id = %s", (context_id,))
            doomed = list(deletes)
            if doomed:
                cur.execute("DELETE FROM context_files WHERE context_id = %s AND path = ANY(%s)", (context_id, doomed))
            rows = [(context_id, f.path, f.blob, f.size, f.created_at, f.modified_at, f.expires_at) for f in upserts]
            if rows:
                cur.executemany(
                    "INSERT INTO context_files (context_id, path, blob, size, created_at, modified_at, expires_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (context_id, path) DO UPDATE SET "
                    "blob = excluded.blob, size = excluded.size, modified_at = excluded.modified_at, "
                    "expires_at = excluded.expires_at", rows)
            cur.execute("UPDATE contexts SET version = version + 1, last_used_at = %s, "
                        "expires_at = COALESCE(%s, expires_at) WHERE id = %s RETURNING version",
                        (when, expires_at, context_id))
            row = cur.fetchone()
        return int(row[0]) if row else 0

    # ---- bindings and tasks

    def put_binding(self, binding: Binding) -> None:
        self.db.exec("INSERT INTO context_bindings (session_id, context_id, path, policy, internal, base) "
                     "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (session_id, context_id, path) DO UPDATE SET "
                     "policy = excluded.policy, internal = excluded.internal, base = excluded.base, "
                     "seq = nextval('agbox_row_seq')",
                     (binding.session_id, binding.context_id, binding.path, json.dumps(binding.policy),
                      int(binding.internal), json.dumps(binding.base)))

    def put_task(self, task: TaskRecord) -> None:
        self.db.exec("INSERT INTO context_tasks (session_id, context_id, path, task_type, status, error, start_time, "
                     "finish_time) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                     "ON CONFLICT (session_id, context_id, path, task_type) DO UPDATE SET status = excluded.status, "
                     "error = excluded.error, start_time = excluded.start_time, finish_time = excluded.finish_time, "
                     "seq = nextval('agbox_row_seq')", tuple(dataclasses.astuple(task)))
