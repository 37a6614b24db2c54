"""A data dir made before contexts used AGB's key space (keys relative to the mount) is migrated at
start: keys become absolute sandbox paths, once, in one transaction, and nothing else changes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from agbox.store.contexts import SCHEMA, SqliteContextStore


def _old_data_dir(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA)
        conn.execute("DROP TABLE context_meta")  # an old database has no context_meta table
        contexts = [("SdkCtx-mounted", "user"), ("SdkCtx-unknown", "user"), ("SdkCtx-transfer", "file_transfer"),
                    ("SdkCtx-twice", "user")]
        for context_id, kind in contexts:
            conn.execute("INSERT INTO contexts (id, owner, name, state, kind, created_at, last_used_at) "
                         "VALUES (?, 'k', ?, 'available', ?, 1, 1)", (context_id, context_id, "" if kind == "user"
                                                                          else kind))
        files = [("SdkCtx-mounted", "a/b.txt"), ("SdkCtx-mounted", "top.txt"), ("SdkCtx-unknown", "x/y.bin"),
                 ("SdkCtx-transfer", "tmp/file_transfer/in.bin"), ("SdkCtx-twice", "z.txt")]
        for context_id, key in files:
            conn.execute("INSERT INTO context_files (context_id, path, blob, size, created_at, modified_at) "
                         "VALUES (?, ?, ?, 3, 1, 1)", (context_id, key, "blob-" + key.replace("/", "-")))
        bindings = [("session-1", "SdkCtx-mounted", "/home/user/data", {"a/b.txt": "blob-a-b.txt"}, 0),
                    ("session-1", "SdkCtx-transfer", "/", {"tmp/file_transfer/in.bin": "b"}, 1),
                    ("session-2", "SdkCtx-twice", "/home/user/one", {}, 0),
                    ("session-3", "SdkCtx-twice", "/home/user/two", {}, 0)]
        for session_id, context_id, mount, base, internal in bindings:
            conn.execute("INSERT INTO context_bindings (session_id, context_id, path, policy, internal, base) "
                         "VALUES (?, ?, ?, '{}', ?, ?)", (session_id, context_id, mount, internal, json.dumps(base)))


def test_old_relative_keys_become_absolute_sandbox_paths(tmp_path: Path) -> None:
    db = tmp_path / "agbox.db"
    _old_data_dir(db)
    store = SqliteContextStore(db)
    try:
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


def test_a_new_data_dir_is_marked_migrated(tmp_path: Path) -> None:
    store = SqliteContextStore(tmp_path / "agbox.db")
    store.close()
    with sqlite3.connect(tmp_path / "agbox.db") as conn:
        assert conn.execute("SELECT value FROM context_meta WHERE name = 'key_space'").fetchall() == \
            [("absolute-sandbox-paths",)]
