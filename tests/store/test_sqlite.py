"""The SQLite store on a real file: round trips, filters, persistence across reopen."""

from __future__ import annotations

import time
from pathlib import Path

from agbox.models import ApiKeyRecord, SessionRecord, SessionStatus
from agbox.store.sqlite import SqliteStore


def record(sid: str, owner: str = "key-a", status: SessionStatus = SessionStatus.RUNNING) -> SessionRecord:
    now = time.time()
    return SessionRecord(id=sid, owner=owner, image_id="agb-code-space-1", status=status, labels={"a": "1"},
                         created_at=now, last_active_at=now, idle_timeout_s=300, expires_at=now + 1800, token="t",
                         node="local:x", handle={"uid": 200001})


def test_sessions_round_trip_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agbox.db"
    store = SqliteStore(path)
    store.put_session(record("s1"))
    store.put_session(record("s2", owner="key-b"))
    store.put_session(record("s3", status=SessionStatus.FINISH))
    store.set_labels("s1", {"x": "y"})
    store.set_status("s2", SessionStatus.FINISH, 5.0, "done")
    store.close()

    reopened = SqliteStore(path)
    got = reopened.get_session("s1")
    assert got is not None and got.labels == {"x": "y"} and got.handle == {"uid": 200001}
    assert [r.id for r in reopened.sessions(owner="key-a")] == ["s1", "s3"]
    assert [r.id for r in reopened.sessions(statuses=[SessionStatus.RUNNING])] == ["s1"]
    finished = reopened.get_session("s2")
    assert finished is not None and finished.finish_reason == "done" and finished.finished_at == 5.0
    assert path.stat().st_mode & 0o777 == 0o600
    reopened.close()


def test_keys_are_stored_hashed_and_revocable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "agbox.db")
    store.add_key(ApiKeyRecord("key-1", "ci", "abc123", "agbox_abc", 1.0))
    found = store.key_by_hash("abc123")
    assert found is not None and found.revoked_at is None
    assert store.revoke_key("key-1", 2.0) and not store.revoke_key("key-1", 3.0)
    revoked = store.key_by_hash("abc123")
    assert revoked is not None and revoked.revoked_at == 2.0
    assert (tmp_path / "agbox.db").read_bytes().find(b"agbox_secret") == -1
    store.close()
