"""The CLI on a real data dir: keys create/list/revoke; a revoked key is refused by the service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agbox.services.keys import KeyService
from agbox.store.sqlite import SqliteStore


def agbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agbox", *args], capture_output=True, text=True, timeout=60)


def test_keys_lifecycle(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    made = agbox("keys", "create", "--name", "ci", "--data-dir", data)
    assert made.returncode == 0, made.stderr
    key_id, key = made.stdout.strip().split("\t")
    listed = agbox("keys", "list", "--data-dir", data)
    assert key_id in listed.stdout and "active" in listed.stdout and key not in listed.stdout

    store = SqliteStore(tmp_path / "data" / "agbox.db")
    assert KeyService(store).authenticate(key) == key_id
    store.close()

    assert agbox("keys", "revoke", key_id, "--data-dir", data).returncode == 0
    assert "revoked" in agbox("keys", "list", "--data-dir", data).stdout
    assert agbox("keys", "revoke", key_id, "--data-dir", data).returncode == 1
    store = SqliteStore(tmp_path / "data" / "agbox.db")
    try:
        KeyService(store).authenticate(key)
        raise AssertionError("a revoked key was accepted")
    except Exception as exc:
        assert "revoked" in str(exc)
    store.close()


def test_sessions_list_on_an_empty_data_dir(tmp_path: Path) -> None:
    result = agbox("sessions", "list", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0 and result.stdout == ""
