"""Contexts with our SDK (over HTTP and embedded) and the service behind it: sync between sessions,
concurrent syncs, white lists, archive mode, extract policy, expiry, symlinks planted by a sandbox."""

from __future__ import annotations

import concurrent.futures
import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agbox import AGB, CreateSessionParams
from agbox.client.context_sync import (
    BWList,
    ContextSync,
    ExtractPolicy,
    Lifecycle,
    MappingPolicy,
    RecyclePolicy,
    SyncPolicy,
    UploadMode,
    UploadPolicy,
    WhiteList,
)
from agbox.services.contexts import ContextService


def sh(session: Any, command: str) -> str:
    result = session.command.execute(command, timeout_ms=60000)
    assert result.success, result.error_message
    return str(result.stdout)


@pytest.fixture
def local(embedded_dir: Path) -> AGB:
    return AGB(data_dir=embedded_dir)


@pytest.fixture
def service(local: AGB) -> ContextService:
    svc = local._backend.platform.platform.contexts  # type: ignore[attr-defined]
    assert isinstance(svc, ContextService)
    return svc


@pytest.fixture
def sessions(local: AGB) -> Iterator[Any]:
    made: list[Any] = []

    def make(*syncs: ContextSync) -> Any:
        result = local.create(CreateSessionParams(image_id="agb-code-space-1", context_syncs=list(syncs)))
        assert result.success, result.error_message
        made.append(result.session)
        return result.session

    yield make
    for session in made:
        session.delete()


def new_context(client: AGB) -> Any:
    result = client.context.create(f"ctx-{os.urandom(4).hex()}")
    assert result.success, result.error_message
    return result.context


def files_of(client: AGB, context_id: str, folder: str = "") -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in client.context.list_files(context_id, folder, page_size=1000).entries:
        if entry.file_type == "folder":
            out.update(files_of(client, context_id, entry.file_path))
        else:
            out[entry.file_path] = int(entry.size or 0)
    return out


def test_sync_between_sessions_and_file_transfer(agb: AGB, make_session: Any, tmp_path: Path) -> None:
    ctx = new_context(agb)
    sync = ContextSync(ctx.id, "/home/user/work", SyncPolicy())
    a = make_session(context_syncs=[sync])
    sh(a, "mkdir -p /home/user/work/d && head -c 100000 /dev/urandom > /home/user/work/d/blob && echo x > "
          "/home/user/work/x.txt")
    digest = sh(a, "cd /home/user/work && sha256sum d/blob x.txt")
    assert a.delete(sync_context=True).success
    assert files_of(agb, ctx.id) == {"/home/user/work/d/blob": 100000, "/home/user/work/x.txt": 2}

    b = make_session(context_syncs=[sync])
    assert sh(b, "cd /home/user/work && sha256sum d/blob x.txt") == digest
    info = b.context.info()
    assert [(i.status, i.task_type, i.path) for i in info.context_status_data] == \
        [("Success", "download", "/home/user/work")]

    local_file = tmp_path / "in.bin"
    local_file.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    up = b.file_transfer.upload(str(local_file), "/home/user/up/in.bin")
    assert up.success, up.error_message
    sh(b, "cp /home/user/up/in.bin /home/user/up/out.bin")
    down = b.file_transfer.download("/home/user/up/out.bin", str(tmp_path / "out.bin"))
    assert down.success, down.error_message
    assert (tmp_path / "out.bin").read_bytes() == local_file.read_bytes()

    assert agb.context.clear(ctx.id, timeout=10).status == "available"
    assert files_of(agb, ctx.id) == {}
    assert agb.context.delete(ctx).success
    assert not agb.context.get(context_id=ctx.id).success


def test_concurrent_syncs_last_writer_wins_per_file(local: AGB, sessions: Any) -> None:
    ctx = new_context(local)
    seed = local.context.get_file_upload_url(ctx.id, "/home/user/c/shared.txt")
    assert httpx.put(seed.url, content=b"seed").status_code == 200
    sync = ContextSync(ctx.id, "/home/user/c", SyncPolicy())
    a, b = sessions(sync), sessions(sync)
    sh(a, "cd /home/user/c && head -c 2000000 /dev/zero | tr '\\0' A > shared.txt && echo a > only_a.txt")
    sh(b, "cd /home/user/c && head -c 2000000 /dev/zero | tr '\\0' B > shared.txt && echo b > only_b.txt")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: s.context.sync_blocking(), [a, b]))
    assert all(r.success for r in results), results
    assert set(files_of(local, ctx.id)) == {"/home/user/c/shared.txt", "/home/user/c/only_a.txt",
                                         "/home/user/c/only_b.txt"}
    shared = httpx.get(local.context.get_file_download_url(ctx.id, "/home/user/c/shared.txt").url).content
    assert shared in (b"A" * 2000000, b"B" * 2000000)  # one whole version, never a mix

    # Sequential: the later sync wins for the file both changed; A's unchanged files are kept.
    sh(a, "echo from-a > /home/user/c/shared.txt")
    assert a.context.sync_blocking().success
    sh(b, "echo from-b > /home/user/c/shared.txt")
    assert b.context.sync_blocking().success
    assert httpx.get(local.context.get_file_download_url(ctx.id, "/home/user/c/shared.txt").url).content == \
        b"from-b\n"
    # B never changed only_a.txt, so B's sync did not touch it.
    assert "/home/user/c/only_a.txt" in files_of(local, ctx.id)


def test_white_list_archive_mode_and_extract_policy(local: AGB, sessions: Any) -> None:
    ctx = new_context(local)
    white = SyncPolicy(bw_list=BWList([WhiteList("keep", ["keep/skip"])]))
    a = sessions(ContextSync(ctx.id, "/home/user/w", white))
    sh(a, "cd /home/user/w && mkdir -p keep/skip keep/in other && echo 1 > keep/in/f && echo 2 > keep/skip/f "
          "&& echo 3 > other/f && echo 4 > keep/g")
    assert a.context.sync_blocking().success
    assert set(files_of(local, ctx.id)) == {"/home/user/w/keep/in/f", "/home/user/w/keep/g"}

    archived = new_context(local)
    mode = SyncPolicy(upload_policy=UploadPolicy(upload_mode=UploadMode.ARCHIVE))
    b = sessions(ContextSync(archived.id, "/home/user/arch", mode))
    sh(b, "mkdir -p /home/user/arch/x && echo one > /home/user/arch/x/1 && echo two > /home/user/arch/2")
    assert b.context.sync_blocking().success
    assert list(files_of(local, archived.id)) == ["/home/user/arch/.agbox-archive.tar"]
    c = sessions(ContextSync(archived.id, "/home/user/arch", mode))
    assert sh(c, "cat /home/user/arch/x/1 /home/user/arch/2; ls -A /home/user/arch") == "one\ntwo\n2\nx\n"

    # A zip put into a context is unpacked on download, into a folder named after it, source removed.
    packed = new_context(local)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("inner/readme.txt", "zipped\n")
    url = local.context.get_file_upload_url(packed.id, "/home/user/z/pkg.zip").url
    assert httpx.put(url, content=buffer.getvalue()).status_code == 200
    d = sessions(ContextSync(packed.id, "/home/user/z", SyncPolicy(extract_policy=ExtractPolicy())))
    assert sh(d, "cat /home/user/z/pkg/inner/readme.txt; ls /home/user/z") == "zipped\npkg\n"
    e = sessions(ContextSync(packed.id, "/home/user/z", SyncPolicy(extract_policy=ExtractPolicy(extract=False))))
    assert sh(e, "ls /home/user/z") == "pkg.zip\n"


def test_recycle_lifecycle_expires_files_and_contexts(local: AGB, sessions: Any, service: ContextService) -> None:
    import time

    ctx = new_context(local)
    policy = SyncPolicy(recycle_policy=RecyclePolicy(Lifecycle.LIFECYCLE_1DAY, ["logs"]))
    a = sessions(ContextSync(ctx.id, "/home/user/r", policy))
    sh(a, "mkdir -p /home/user/r/logs && echo l > /home/user/r/logs/1 && echo k > /home/user/r/keep")
    assert a.context.sync_blocking().success
    service.sweep(time.time() + 3600)
    assert set(files_of(local, ctx.id)) == {"/home/user/r/logs/1", "/home/user/r/keep"}
    service.sweep(time.time() + 2 * 86400)
    assert set(files_of(local, ctx.id)) == {"/home/user/r/keep"}

    whole = new_context(local)
    b = sessions(ContextSync(whole.id, "/home/user/q", SyncPolicy(
        recycle_policy=RecyclePolicy(Lifecycle.LIFECYCLE_3DAYS))))
    sh(b, "echo q > /home/user/q/f")
    assert b.context.sync_blocking().success
    service.sweep(time.time() + 2 * 86400)
    assert local.context.get(context_id=whole.id).success
    service.sweep(time.time() + 4 * 86400)
    result = local.context.get(context_id=whole.id)
    assert not result.success and "not found" in result.error_message


def test_sandbox_symlinks_never_reach_host_files(local: AGB, sessions: Any, embedded_dir: Path) -> None:
    ctx = new_context(local)
    sync = ContextSync(ctx.id, "/home/user/s", SyncPolicy())
    secret = embedded_dir / "agbox.db"  # a host file the sandbox cannot see
    a = sessions(sync)
    sh(a, f"mkdir -p /home/user/s && cd /home/user/s && ln -s {secret} db && ln -s / root && "
          "ln -s /etc/passwd passwd && echo real > real.txt")
    assert a.context.sync_blocking().success
    assert files_of(local, ctx.id) == {"/home/user/s/real.txt": 5}

    # Download over a planted symlink replaces the link; the link's target is not written.
    b = sessions()
    before = secret.stat().st_mtime_ns
    assert b is not None
    c_sync = ContextSync(ctx.id, "/home/user/t", SyncPolicy(mapping_policy=MappingPolicy("/home/user/s")))
    c = sessions(c_sync)
    sh(c, "echo untouched > /home/user/target && ln -sf /home/user/target /home/user/t/real.txt")
    assert c.context.sync_blocking(ctx.id, "/home/user/t", "download").success
    assert sh(c, "cat /home/user/target; test -L /home/user/t/real.txt || cat /home/user/t/real.txt") == \
        "untouched\nreal\n"
    assert secret.stat().st_mtime_ns >= before
