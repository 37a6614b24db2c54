"""Contexts through the unmodified official SDK against `agbox serve`: ContextService, sync between
sessions, session.context.sync/info, file.upload/download of 50 MB, and a kill -9 during an upload."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agb import AGB as OfficialAGB
from agb.config import Config
from agb.context_sync import ContextSync, SyncPolicy
from agb.session_params import CreateSessionParams as OfficialParams

from tests.conftest import ServerProcess, start_server, wait_for


def sh(session: Any, command: str) -> str:
    result = session.command.execute(command, timeout_ms=60000)
    assert result.success, result.error_message
    return str(result.output if hasattr(result, "output") else result.stdout)


def second_key(srv: ServerProcess) -> str:
    out = subprocess.run([sys.executable, "-m", "agbox", "keys", "create", "--data-dir", str(srv.data_dir),
                          "--name", "other"], check=True, capture_output=True, text=True).stdout
    return out.strip().split("\t")[1]


@pytest.fixture
def ctx(official: Any) -> Iterator[Any]:
    name = f"ctx-{os.urandom(4).hex()}"
    result = official.context.create(name)
    assert result.success, result.error_message
    yield result.context
    official.context.delete(result.context)


def test_context_service_crud_and_urls(official: Any, server: ServerProcess, ctx: Any) -> None:
    svc = official.context
    assert svc.get(name=ctx.name).context.id == ctx.id
    assert svc.get(context_id=ctx.id).context.name == ctx.name
    assert ctx.id in [c.id for c in svc.list().contexts]
    assert not svc.get(name="no-such-context-x").success
    ctx.name = ctx.name + "-renamed"
    assert svc.update(ctx).success
    assert svc.get(context_id=ctx.id).context.name == ctx.name

    up = svc.get_file_upload_url(ctx.id, "/docs/a.txt")
    assert up.success and up.url.startswith("http") and up.expire_time
    assert httpx.put(up.url, content=b"hello context").status_code == 200
    assert httpx.put(up.url[:-1] + ("0" if up.url[-1] != "0" else "1"), content=b"forged").status_code in (403, 404)
    down = svc.get_file_download_url(ctx.id, "/docs/a.txt")
    assert httpx.get(down.url).content == b"hello context"
    listing = svc.list_files(ctx.id, "/docs")
    assert [(e.file_name, e.size) for e in listing.entries] == [("a.txt", 13)] and listing.count == 1
    assert [e.file_type for e in svc.list_files(ctx.id, "").entries] == ["folder"]
    assert svc.delete_file(ctx.id, "/docs/a.txt").success
    assert svc.list_files(ctx.id, "/docs").entries == []

    # clear: clearing -> available, files gone
    assert httpx.put(svc.get_file_upload_url(ctx.id, "b.bin").url, content=b"x" * 10).status_code == 200
    cleared = svc.clear(ctx.id, timeout=10, poll_interval=0.1)
    assert cleared.success and cleared.status == "available"
    assert svc.list_files(ctx.id, "").entries == []

    # another key's context id is "not found", on every operation
    other = OfficialAGB(api_key=second_key(server), cfg=Config(endpoint=server.endpoint, timeout_ms=60000))
    assert not other.context.get(context_id=ctx.id).success
    assert "not found" in (other.context.get(context_id=ctx.id).error_message or "").lower()
    assert not other.context.get_file_download_url(ctx.id, "b.bin").success
    assert not other.context.list_files(ctx.id).success
    assert ctx.id not in [c.id for c in other.context.list().contexts]

    # delete
    doomed = svc.create(f"doomed-{os.urandom(3).hex()}").context
    assert svc.delete(doomed).success
    assert not svc.get(context_id=doomed.id).success


def test_sync_between_sessions_byte_for_byte(official: Any, ctx: Any) -> None:
    sync = ContextSync(context_id=ctx.id, path="/home/user/data", policy=SyncPolicy())
    a = official.create(OfficialParams(image_id="agb-code-space-1", context_syncs=[sync])).session
    sh(a, "mkdir -p /home/user/data/sub && head -c 300000 /dev/urandom > /home/user/data/sub/r.bin && "
          "printf 'hi\\n' > /home/user/data/t.txt && ln -s /etc/passwd /home/user/data/link")
    digest_a = sh(a, "cd /home/user/data && sha256sum sub/r.bin t.txt")
    assert official.delete(a, sync_context=True).success
    names = {e.file_name for e in official.context.list_files(ctx.id, "/home/user/data").entries}
    assert names == {"sub", "t.txt"}  # the symlink is not part of the context

    b = official.create(OfficialParams(image_id="agb-code-space-1", context_syncs=[sync])).session
    try:
        info = b.context.info()
        assert [(i.context_id, i.status, i.task_type) for i in info.context_status_data] == \
            [(ctx.id, "Success", "download")]
        assert sh(b, "cd /home/user/data && sha256sum sub/r.bin t.txt") == digest_a
        # explicit sync of a change, then status by path
        sh(b, "echo changed > /home/user/data/t.txt && rm /home/user/data/sub/r.bin")
        result = asyncio.run(b.context.sync(context_id=ctx.id, path="/home/user/data", mode="upload",
                                            retry_interval=100))
        assert result.success
        done = b.context.info(context_id=ctx.id, path="/home/user/data", task_type="upload").context_status_data
        assert [d.status for d in done] == ["Success"]
        files = {e.file_path for e in official.context.list_files(ctx.id, "/home/user/data", page_size=100).entries}
        assert files == {"/home/user/data/t.txt"}  # the delete propagated, the directory went with its only file
    finally:
        official.delete(b)


def test_file_upload_download_50mb(official_session: Any, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(50 * 1024 * 1024))
    want = hashlib.sha256(local.read_bytes()).hexdigest()
    started = time.monotonic()
    up = official_session.file.upload(str(local), "/tmp/file_transfer/big.bin", poll_interval=0.1)
    upload_s = time.monotonic() - started
    assert up.success, up.error_message
    assert sh(official_session, "sha256sum /tmp/file_transfer/big.bin").split()[0] == want

    sh(official_session, "cp /tmp/file_transfer/big.bin /tmp/file_transfer/copy.bin")
    back = tmp_path / "back.bin"
    started = time.monotonic()
    down = official_session.file.download("/tmp/file_transfer/copy.bin", str(back), poll_interval=0.1)
    download_s = time.monotonic() - started
    assert down.success, down.error_message
    assert hashlib.sha256(back.read_bytes()).hexdigest() == want
    print(f"\n50 MB upload {upload_s:.2f} s, download {download_s:.2f} s")


def test_kill_9_during_upload_keeps_previous_version(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    try:
        agb = OfficialAGB(api_key=srv.api_key, cfg=Config(endpoint=srv.endpoint, timeout_ms=60000))
        context = agb.context.create("durable").context
        v1 = os.urandom(1024 * 1024)
        assert httpx.put(agb.context.get_file_upload_url(context.id, "f.bin").url, content=v1).status_code == 200
        url = agb.context.get_file_upload_url(context.id, "f.bin").url
        half_sent = threading.Event()
        killed = threading.Event()

        def body() -> Iterator[bytes]:
            for i in range(200):
                yield b"\xab" * (1024 * 1024)
                if i == 20:
                    half_sent.set()
                    killed.wait(30)

        def put() -> None:
            try:
                httpx.put(url, content=body(), timeout=60)
            except httpx.HTTPError:
                pass

        sender = threading.Thread(target=put, daemon=True)
        sender.start()
        assert half_sent.wait(30)
        staging = srv.data_dir / "contexts" / "staging"
        wait_for(lambda: any(p.stat().st_size > 0 for p in staging.iterdir()), 10, what="a partial upload on disk")
        srv.process.send_signal(signal.SIGKILL)
        srv.process.wait(10)
        killed.set()
        sender.join(30)
    finally:
        srv.stop(signal.SIGKILL)
    srv = start_server(tmp_path / "data")
    try:
        agb = OfficialAGB(api_key=srv.api_key, cfg=Config(endpoint=srv.endpoint, timeout_ms=60000))
        download = agb.context.get_file_download_url(context.id, "f.bin")
        assert download.success, download.error_message
        assert httpx.get(download.url).content == v1
        assert list((srv.data_dir / "contexts" / "staging").iterdir()) == []
    finally:
        srv.stop()
