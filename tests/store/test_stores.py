"""Both store backends behind the same interfaces: SQLite (a file) and PostgreSQL (a real server
started for the run). Each test gets a fresh database; ``reopen`` makes a second connection to it
(a restarted process, or another control-plane replica)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agbox.models import ApiKeyRecord, SessionRecord, SessionStatus
from agbox.settings import Settings
from agbox.store.base import Store
from agbox.store.contexts import Binding, ContextRecord, ContextStore, FileRecord, TaskRecord
from agbox.store.factory import open_context_store, open_store
from agbox.store.postgres import POSTGRES_ONLY_COLUMNS, PostgresDatabase, PostgresStore
from tests.conftest import free_port, wait_for

Opener = Callable[[], tuple[Store, ContextStore]]


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    settings = Settings(data_dir=tmp_path, store_url=url)
    opened: list[tuple[Store, ContextStore]] = []

    def open_both() -> tuple[Store, ContextStore]:
        store = open_store(settings)
        pair = (store, open_context_store(settings, store))
        opened.append(pair)
        return pair

    yield open_both
    for store, contexts in opened:
        contexts.close()
        store.close()


def session(sid: str, owner: str = "key-a", status: SessionStatus = SessionStatus.RUNNING) -> SessionRecord:
    now = time.time()
    return SessionRecord(id=sid, owner=owner, image_id="agb-code-space-1", status=status, labels={"a": "1"},
                         created_at=now, last_active_at=now, idle_timeout_s=300, expires_at=now + 1800, token="t",
                         node="ray:n1", handle={"uid": 200001, "nested": {"x": [1, 2]}})


def test_sessions_round_trip_filter_and_survive_reopen(opener: Opener) -> None:
    store, _ = opener()
    store.put_session(session("s1"))
    store.put_session(session("s2", owner="key-b"))
    store.put_session(session("s3", status=SessionStatus.FINISH))
    store.set_labels("s1", {"x": "y"})
    store.set_status("s2", SessionStatus.FINISH, 5.0, "done")
    replaced = session("s3", status=SessionStatus.FINISH)
    replaced.finish_reason = "replaced"
    store.put_session(replaced)
    store.touch_session("s1", 123.0e9)

    other, _ = opener()
    got = other.get_session("s1")
    assert got is not None and got.labels == {"x": "y"} and got.handle == {"uid": 200001, "nested": {"x": [1, 2]}}
    assert got.last_active_at == 123.0e9 and isinstance(got.idle_timeout_s, int)
    assert [r.id for r in other.sessions(owner="key-a")] == ["s1", "s3"]
    assert [r.id for r in other.sessions(statuses=[SessionStatus.RUNNING])] == ["s1"]
    assert [r.id for r in other.sessions(statuses=[])] == []
    # The narrow query behind a create's limit checks agrees with the records.
    s1 = other.get_session("s1")
    assert s1 is not None
    assert other.session_images([SessionStatus.RUNNING]) == [("key-a", s1.image_id)]
    assert sorted(other.session_images([SessionStatus.RUNNING, SessionStatus.FINISH])) == sorted(
        (r.owner, r.image_id) for r in other.sessions())
    assert other.session_images([]) == []
    finished = other.get_session("s2")
    assert finished is not None and finished.finish_reason == "done" and finished.finished_at == 5.0
    assert (other.get_session("s3") or session("x")).finish_reason == "replaced"
    assert other.get_session("nope") is None


def test_keys_are_stored_hashed_and_revocable(opener: Opener) -> None:
    store, _ = opener()
    store.add_key(ApiKeyRecord("key-1", "ci", "abc123", "agbox_abc", 1.0))
    store.add_key(ApiKeyRecord("key-2", "ci", "def456", "agbox_def", 2.0))
    found = store.key_by_hash("abc123")
    assert found is not None and found.revoked_at is None and found.name == "ci"
    assert store.revoke_key("key-1", 2.0) and not store.revoke_key("key-1", 3.0) and not store.revoke_key("x", 1.0)
    revoked = store.key_by_hash("abc123")
    assert revoked is not None and revoked.revoked_at == 2.0
    assert [k.id for k in store.list_keys()] == ["key-1", "key-2"]
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        store.add_key(ApiKeyRecord("key-3", "dup", "abc123", "agbox_abc", 3.0))


def test_release_is_claimed_by_exactly_one_replica(opener: Opener) -> None:
    """Several replicas sweeping the same idle sessions: each session is released by one of them."""
    replicas = [opener()[0] for _ in range(4)]
    ids = [f"s{i}" for i in range(25)]
    for sid in ids:
        replicas[0].put_session(session(sid))
    won: list[list[str]] = [[] for _ in replicas]

    def sweep(index: int) -> None:
        for sid in ids:
            if replicas[index].claim_release(sid):
                won[index].append(sid)

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(len(replicas))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    claimed = sorted(sid for per in won for sid in per)
    assert claimed == sorted(ids)
    assert all(r.status is SessionStatus.DELETING for r in replicas[1].sessions())
    assert not replicas[2].claim_release("s0")


def test_context_manifest_commits_are_atomic_and_versioned(opener: Opener) -> None:
    _, contexts = opener()
    contexts.add_context(ContextRecord("ctx-1", "key-a", "data", "available", "", 1.0, 1.0))
    assert contexts.context_by_name("key-a", "data") is not None and contexts.context_by_name("key-b", "data") is None
    v1 = contexts.commit("ctx-1", [FileRecord("/a/x.txt", "b1", 1, 1.0, 1.0), FileRecord("/a/y.txt", "b2", 2, 1.0, 1.0),
                                   FileRecord("/ab", "b3", 3, 1.0, 1.0)], [], when=2.0)
    v2 = contexts.commit("ctx-1", [FileRecord("/a/x.txt", "b4", 4, 3.0, 3.0, expires_at=10.0)], ["/a/y.txt"], when=3.0,
                         expires_at=99.0)
    assert (v1, v2) == (1, 2)
    assert [(f.path, f.blob, f.size) for f in contexts.files("ctx-1")] == [("/a/x.txt", "b4", 4), ("/ab", "b3", 3)]
    assert [f.path for f in contexts.files("ctx-1", "/a/")] == ["/a/x.txt"]
    assert [f.path for f in contexts.files("ctx-1", "/ab")] == ["/ab"]
    record = contexts.get_context("ctx-1")
    assert record is not None and record.version == 2 and record.expires_at == 99.0 and record.last_used_at == 3.0
    assert contexts.referenced_blobs() == {"b3", "b4"}
    assert contexts.expire_files(11.0) == 1 and [f.path for f in contexts.files("ctx-1")] == ["/ab"]
    contexts.update_context("ctx-1", name="renamed", state="clearing")
    with pytest.raises(ValueError, match="version"):
        contexts.update_context("ctx-1", version=7)
    assert contexts.commit("ctx-1", [], [], clear=True, when=4.0) == 3 and contexts.files("ctx-1") == []
    assert contexts.commit("missing", [], [], when=4.0) == 0
    assert [c.name for c in contexts.contexts("key-a")] == ["renamed"]


def test_concurrent_commits_to_one_context_all_count(opener: Opener) -> None:
    """Two replicas committing to the same context: every commit gets its own version."""
    (_, first), (_, second) = opener(), opener()
    first.add_context(ContextRecord("ctx-1", "key-a", "data", "available", "", 1.0, 1.0))
    versions: list[int] = []
    lock = threading.Lock()

    def commit_many(contexts: ContextStore, tag: str) -> None:
        for i in range(20):
            version = contexts.commit("ctx-1", [FileRecord(f"/{tag}/{i}", f"blob-{tag}-{i}", i, 1.0, 1.0)], [], when=1.0)
            with lock:
                versions.append(version)

    threads = [threading.Thread(target=commit_many, args=(c, t)) for c, t in ((first, "a"), (second, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(versions) == list(range(1, 41))
    assert len(second.files("ctx-1")) == 40


def test_bindings_tasks_and_delete_context(opener: Opener) -> None:
    _, contexts = opener()
    contexts.add_context(ContextRecord("ctx-1", "key-a", "one", "available", "", 1.0, 1.0))
    contexts.add_context(ContextRecord("ctx-2", "key-a", "two", "available", "file_transfer", 2.0, 2.0))
    contexts.put_binding(Binding("s1", "ctx-1", "/home", {"p": 1}))
    contexts.put_binding(Binding("s1", "ctx-2", "/", {}, internal=True, base={"/x": "b"}))
    contexts.put_binding(Binding("s1", "ctx-1", "/home", {"p": 2}, base={"/home/f": "c"}))
    got = contexts.bindings("s1")
    # A replaced binding moves to the end (SQLite's REPLACE gives it a new rowid; PostgreSQL mirrors that).
    assert [(b.context_id, b.policy, b.internal, b.base) for b in got] == [
        ("ctx-2", {}, True, {"/x": "b"}), ("ctx-1", {"p": 2}, False, {"/home/f": "c"})]
    contexts.put_task(TaskRecord("s1", "ctx-1", "/home", "upload", "Running", "", 5, 0))
    contexts.put_task(TaskRecord("s1", "ctx-2", "/", "download", "Success", "", 4, 6))
    contexts.put_task(TaskRecord("s1", "ctx-1", "/home", "upload", "Failed", "disk full", 5, 7))
    assert [(t.context_id, t.status, t.error) for t in contexts.tasks("s1")] == [
        ("ctx-2", "Success", ""), ("ctx-1", "Failed", "disk full")]
    assert [c.id for c in contexts.contexts(kind=None)] == ["ctx-1", "ctx-2"]
    assert [c.id for c in contexts.contexts(kind="file_transfer")] == ["ctx-2"]
    contexts.commit("ctx-1", [FileRecord("/home/f", "c", 1, 1.0, 1.0)], [], when=1.0)
    contexts.delete_context("ctx-1")
    assert contexts.get_context("ctx-1") is None and contexts.files("ctx-1") == []
    assert [b.context_id for b in contexts.bindings("s1")] == ["ctx-2"]
    assert [t.context_id for t in contexts.tasks("s1")] == ["ctx-2"]
    contexts.delete_bindings("s1")
    assert contexts.bindings("s1") == [] and contexts.tasks("s1") == []


def test_postgres_schema_mirrors_sqlite(postgres: Any, tmp_path: Path) -> None:
    """Every table and column of the SQLite schema exists in the PostgreSQL migrations, and no more."""
    settings = Settings(data_dir=tmp_path)
    lite = open_store(settings)
    open_context_store(settings, lite).close()
    lite.close()
    with sqlite3.connect(tmp_path / "agbox.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        sqlite_columns = {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in tables}
    store = open_store(Settings(data_dir=tmp_path, store_url=postgres.new_database()))
    try:
        assert isinstance(store, PostgresStore)
        rows = store.db.exec("SELECT table_name, column_name FROM information_schema.columns "
                             "WHERE table_schema = 'public' AND table_name <> 'agbox_schema'")
        pg_columns: dict[str, set[str]] = {}
        for table, column in rows:
            if column not in POSTGRES_ONLY_COLUMNS:
                pg_columns.setdefault(table, set()).add(column)
        assert pg_columns == sqlite_columns
        assert store.db.migrate() == store.db.exec("SELECT max(version) FROM agbox_schema")[0][0] >= 1
    finally:
        store.close()


def test_postgres_restart_is_survived(postgres: Any) -> None:
    """The server goes away and comes back: the store's next calls work on fresh connections."""
    store = PostgresStore(PostgresDatabase(postgres.new_database(), timeout_s=1))
    try:
        store.put_session(session("s1"))
        postgres.stop("fast")
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):  # PoolTimeout is one
            store.get_session("s1")
        assert time.monotonic() - started < 5
        postgres.start()
        started = time.monotonic()
        got = wait_for(lambda: _quietly(store.get_session, "s1"), 20, what="the store to reconnect")
        print(f"reconnected after {time.monotonic() - started:.2f} s")
        assert got.id == "s1"
        store.touch_session("s1", 5e9)
        assert (store.get_session("s1") or session("x")).last_active_at == 5e9
    finally:
        store.close()


def _quietly(call: Callable[..., Any], *args: Any) -> Any:
    try:
        return call(*args)
    except Exception:
        return None


def test_unreachable_postgres_is_a_clear_error(tmp_path: Path) -> None:
    from agbox.errors import AgboxError
    url = f"postgresql://agbox:secret-pw@127.0.0.1:{free_port()}/agbox"
    with pytest.raises(AgboxError) as info:
        open_store(Settings(data_dir=tmp_path, store_url=url))
    assert "cannot reach PostgreSQL" in info.value.message and "secret-pw" not in info.value.message
    with pytest.raises(AgboxError, match="unsupported store"):
        open_store(Settings(data_dir=tmp_path, store_url="mysql://x"))
