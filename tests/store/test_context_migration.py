"""A data dir (or PostgreSQL database) made before contexts used AGB's key space, where keys were
relative to the mount, is migrated at start: keys become absolute sandbox paths, once, in one
transaction, and nothing else changes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from agbox.store.contexts import SCHEMA, ContextStore, SqliteContextStore
from agbox.store.postgres import MIGRATIONS, PostgresContextStore, PostgresDatabase

Execute = Callable[[str, tuple[Any, ...]], None]


def _old_rows(execute: Execute) -> None:
    """What the old key space left: files keyed relative to their mount, bindings with relative bases."""
    for context_id, kind in (("SdkCtx-mounted", ""), ("SdkCtx-unknown", ""), ("SdkCtx-transfer", "file_transfer"),
                             ("SdkCtx-twice", "")):
        execute("INSERT INTO contexts (id, owner, name, state, kind, created_at, last_used_at) "
                "VALUES (?, 'k', ?, 'available', ?, 1, 1)", (context_id, context_id, kind))
    for context_id, key in (("SdkCtx-mounted", "a/b.txt"), ("SdkCtx-mounted", "top.txt"),
                            ("SdkCtx-unknown", "x/y.bin"), ("SdkCtx-transfer", "tmp/file_transfer/in.bin"),
                            ("SdkCtx-twice", "z.txt")):
        execute("INSERT INTO context_files (context_id, path, blob, size, created_at, modified_at) "
                "VALUES (?, ?, ?, 3, 1, 1)", (context_id, key, "blob-" + key.replace("/", "-")))
    for session_id, context_id, mount, base, internal in (
            ("session-1", "SdkCtx-mounted", "/home/user/data", {"a/b.txt": "blob-a-b.txt"}, 0),
            ("session-1", "SdkCtx-transfer", "/", {"tmp/file_transfer/in.bin": "b"}, 1),
            ("session-2", "SdkCtx-twice", "/home/user/one", {}, 0),
            ("session-3", "SdkCtx-twice", "/home/user/two", {}, 0)):
        execute("INSERT INTO context_bindings (session_id, context_id, path, policy, internal, base) "
                "VALUES (?, ?, ?, '{}', ?, ?)", (session_id, context_id, mount, internal, json.dumps(base)))


def _assert_migrated(store: ContextStore) -> None:
    assert [(f.path, f.blob) for f in store.files("SdkCtx-mounted")] == [
        ("/home/user/data/a/b.txt", "blob-a-b.txt"), ("/home/user/data/top.txt", "blob-top.txt")]
    # No binding says where these came from: they go under "/", keeping their layout.
    assert [f.path for f in store.files("SdkCtx-unknown")] == ["/x/y.bin"]
    assert [f.path for f in store.files("SdkCtx-transfer")] == ["/tmp/file_transfer/in.bin"]
    # Bound at two different paths: ambiguous, so under "/" as well.
    assert [f.path for f in store.files("SdkCtx-twice")] == ["/z.txt"]
    bases = {b.context_id: b.base for b in store.bindings("session-1")}
    assert bases == {"SdkCtx-mounted": {"/home/user/data/a/b.txt": "blob-a-b.txt"},
                     "SdkCtx-transfer": {"/tmp/file_transfer/in.bin": "b"}}
    # Listing by the mount path finds them (the key space the service and AGB use).
    assert [f.path for f in store.files("SdkCtx-mounted", "/home/user/data/a")] == ["/home/user/data/a/b.txt"]


def test_sqlite_old_relative_keys_become_absolute_sandbox_paths(tmp_path: Path) -> None:
    db = tmp_path / "agbox.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA)
        conn.execute("DROP TABLE context_meta")  # an old database has no context_meta table
        _old_rows(lambda sql, params: conn.execute(sql, params) and None)
    store = SqliteContextStore(db)
    try:
        _assert_migrated(store)
    finally:
        store.close()

    # Once migrated, never again: a key written later is left exactly as it is.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE context_files SET path = 'left/alone' WHERE context_id = 'SdkCtx-unknown'")
    again = SqliteContextStore(db)
    try:
        assert [f.path for f in again.files("SdkCtx-unknown")] == ["left/alone"]
    finally:
        again.close()


def test_postgres_old_relative_keys_become_absolute_sandbox_paths(postgres: Any) -> None:
    url = postgres.new_database()
    with psycopg.connect(url, autocommit=True) as conn:  # the database as schema version 1 left it
        conn.execute("CREATE TABLE agbox_schema (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                     "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        version, name, sql = MIGRATIONS[0]
        conn.execute(sql)  # type: ignore[arg-type]
        conn.execute("INSERT INTO agbox_schema (version, name) VALUES (%s, %s)", (version, name))
        _old_rows(lambda sql, params: conn.execute(sql.replace("?", "%s"), params) and None)  # type: ignore[arg-type]
    db = PostgresDatabase(url)
    try:
        assert db.exec("SELECT max(version) FROM agbox_schema")[0][0] >= 2
        _assert_migrated(PostgresContextStore(db))
        assert db.exec("SELECT value FROM context_meta WHERE name = 'key_space'") == [("absolute-sandbox-paths",)]
    finally:
        db.close()


def test_a_new_sqlite_data_dir_is_marked_migrated(tmp_path: Path) -> None:
    store = SqliteContextStore(tmp_path / "agbox.db")
    store.close()
    with sqlite3.connect(tmp_path / "agbox.db") as conn:
        assert conn.execute("SELECT value FROM context_meta WHERE name = 'key_space'").fetchall() == \
            [("absolute-sandbox-paths",)]
