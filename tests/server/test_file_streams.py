"""Whole files as raw HTTP streams (``/sessions/{id}/files``; our SDK's ``upload_stream``/``download_stream``
and bytes ``write``/``read``), and the official SDK's pre-signed path on top of the host-side copy:
sha256-checked round trips, symlinks planted by the sandbox, a full disk, bad input, concurrency."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess

MIB = 1024 * 1024


def sh(session: Any, command: str) -> str:
    result = session.command.execute(command, timeout_ms=60_000)
    assert result.success and result.exit_code == 0, (result.stdout, result.stderr, result.error_message)
    return str(result.stdout)


def files_url(server: ServerProcess, session_id: str, path: str, **extra: str) -> str:
    return f"{server.endpoint}/sessions/{session_id}/files?" + urllib.parse.urlencode({"path": path, **extra})


def auth(server: ServerProcess) -> dict[str, str]:
    return {"authorization": f"Bearer {server.api_key}"}


@pytest.fixture
def http_session(server: ServerProcess) -> Any:
    from agbox import AGB, CreateSessionParams

    client = AGB(api_key=server.api_key, endpoint=server.endpoint)
    made = client.create(CreateSessionParams(image_id="agb-code-space-1"))
    assert made.success, made.error_message
    yield made.session
    made.session.delete()
    client.close()


def test_large_round_trip_with_progress(make_session: Any, tmp_path: Path) -> None:
    session = make_session()
    source = tmp_path / "big.bin"
    with open(source, "wb") as out:
        for _ in range(96):
            out.write(os.urandom(MIB))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    seen: list[tuple[int, int | None]] = []
    up = session.file.upload_stream(str(source), "/home/user/data/big.bin", progress=lambda d, t: seen.append((d, t)))
    assert up.success, up.error_message
    assert up.bytes_sent == 96 * MIB and seen[-1] == (96 * MIB, 96 * MIB)
    # The sandbox sees the file as its own user's, with the same bytes.
    assert sh(session, "stat -c '%U %s' /home/user/data/big.bin; sha256sum /home/user/data/big.bin") == \
        f"user {96 * MIB}\n{digest}  /home/user/data/big.bin\n"
    got: list[tuple[int, int | None]] = []
    down = session.file.download_stream("/home/user/data/big.bin", str(tmp_path / "back.bin"),
                                        progress=lambda d, t: got.append((d, t)))
    assert down.success and down.bytes_received == 96 * MIB, down.error_message
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).hexdigest() == digest
    assert got[-1] == (96 * MIB, 96 * MIB) and not (tmp_path / "back.bin.part").exists()

    # File objects both ways, append mode, and the bytes forms of write/read.
    assert session.file.upload_stream(io.BytesIO(b"tail"), "/home/user/data/big.bin", mode="append").success
    sink = io.BytesIO()
    assert session.file.download_stream("/home/user/data/big.bin", sink).success
    assert len(sink.getvalue()) == 96 * MIB + 4 and sink.getvalue().endswith(b"tail")
    assert session.file.write("/tmp/b.bin", b"\x00\xff" * 1000).success
    read = session.file.read("/tmp/b.bin", format="bytes")
    assert read.success and read.content == b"\x00\xff" * 1000


def test_official_sdk_presigned_path(official_session: Any, tmp_path: Path) -> None:
    data = os.urandom(24 * MIB)
    (tmp_path / "in.bin").write_bytes(data)
    up = official_session.file.upload(str(tmp_path / "in.bin"), "/tmp/file_transfer/in.bin", poll_interval=0.1)
    assert up.success, up.error_message
    listing = official_session.command.execute("sha256sum /tmp/file_transfer/in.bin", timeout_ms=30_000)
    assert listing.output.split()[0] == hashlib.sha256(data).hexdigest()
    down = official_session.file.download("/tmp/file_transfer/in.bin", str(tmp_path / "out.bin"), poll_interval=0.1)
    assert down.success, down.error_message
    assert (tmp_path / "out.bin").read_bytes() == data


def test_sandbox_symlinks_never_reach_host_files(server: ServerProcess, http_session: Any, tmp_path: Path) -> None:
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (host_dir / "secret").write_text("host secret")
    os.chmod(tmp_path, 0o755)
    session = http_session
    sh(session, f"ln -s {host_dir}/secret /tmp/abs; ln -s ../../../../../..{host_dir}/secret /tmp/rel; "
                f"ln -s {host_dir} /tmp/dir; ln -s /proc/1/root /tmp/magic; ln -s /proc/self/cwd /tmp/self")
    for link in ("/tmp/abs", "/tmp/rel", "/tmp/dir/secret"):
        read = session.file.read(link, format="bytes")
        assert not read.success and "No such file or directory" in read.error_message, (link, read)
    for path in ("/tmp/magic/etc/hostname", "/proc/1/root/etc/hostname"):
        refused = session.file.read(path, format="bytes")
        assert not refused.success and refused.error_message, path
    assert not session.file.read("/proc/1/environ", format="bytes").success

    # Writes through a symlinked directory: dangling inside the sandbox = refused; once the sandbox
    # has its own directory of that name, they land there, never in the host directory.
    refused_write = session.file.write("/tmp/dir/planted", b"x")
    assert not refused_write.success and "No such file or directory" in refused_write.error_message
    sh(session, f"mkdir -p {host_dir}")
    assert session.file.write("/tmp/dir/planted", b"x").success
    assert sorted(os.listdir(host_dir)) == ["secret"]
    assert sh(session, f"cat {host_dir}/planted") == "x"
    assert not session.file.write("/tmp/magic/tmp/evil", b"x").success
    # Overwriting a symlink replaces the link, not the file it names.
    assert session.file.write("/tmp/abs", b"new").success
    assert (host_dir / "secret").read_text() == "host secret"
    assert sh(session, "test ! -L /tmp/abs && cat /tmp/abs") == "new"

    # The official SDK's download syncs the directory out of the sandbox: links there are skipped.
    sh(session, f"mkdir -p /tmp/out && ln -s {host_dir}/secret /tmp/out/link && ln -s /proc/1/root /tmp/out/root "
                "&& echo ok > /tmp/out/real")
    down = session.file.download("/tmp/out/real", str(tmp_path / "real"))
    assert down.success and (tmp_path / "real").read_text() == "ok\n"
    assert not session.file.download("/tmp/out/link", str(tmp_path / "link")).success


def test_full_disk_fails_precisely_and_keeps_the_old_file(server: ServerProcess, http_session: Any) -> None:
    session = http_session
    assert session.file.write("/tmp/keep.bin", b"old contents").success
    free = int(sh(session, "df -B1 --output=avail / | tail -1"))
    sh(session, f"fallocate -l {free - 16 * MIB} /home/user/filler")
    big = os.urandom(48 * MIB)
    result = session.file.write("/tmp/keep.bin", big)
    assert not result.success
    assert "disk is full" in result.error_message and "2048 MiB" in result.error_message, result.error_message
    assert sh(session, "cat /tmp/keep.bin") == "old contents"
    assert sh(session, "ls -A /tmp") == "keep.bin\n"  # no half-written temporary file left behind
    appended = session.file.upload_stream(io.BytesIO(big), "/tmp/keep.bin", mode="append")
    assert not appended.success and "disk is full" in appended.error_message
    assert sh(session, "cat /tmp/keep.bin") == "old contents"
    # Space again: the same write succeeds.
    sh(session, "rm /home/user/filler")
    assert session.file.write("/tmp/keep.bin", big).success
    # A new version that fits only in the old one's place (not next to it) is written in place.
    free = int(sh(session, "df -B1 --output=avail / | tail -1"))
    sh(session, f"fallocate -l {free - 16 * MIB} /home/user/filler")
    other = os.urandom(48 * MIB)
    assert session.file.write("/tmp/keep.bin", other).success
    assert sh(session, "sha256sum /tmp/keep.bin").split()[0] == hashlib.sha256(other).hexdigest()
    sh(session, "rm /home/user/filler")

    # A body declared far beyond any disk is refused before it is read.
    connection = http.client.HTTPConnection(server.endpoint.split("//")[1])
    target = files_url(server, session.session_id, "/tmp/huge").split(server.endpoint)[1]
    connection.putrequest("PUT", target)
    for key, value in {**auth(server), "content-length": str(64 * 1024 ** 3)}.items():
        connection.putheader(key, value)
    connection.endheaders()
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 413 and body["code"] == "LimitExceeded" and "nothing was written" in body["message"]


def test_bad_requests_get_precise_errors(server: ServerProcess, http_session: Any) -> None:
    session = http_session
    sid = session.session_id
    cases = [
        ("GET", files_url(server, "s-unknown", "/tmp/x"), auth(server), 404, "InvalidMcpSession.NotFound"),
        ("GET", files_url(server, sid, "/tmp/x"), {}, 401, "InvalidApiKey"),
        ("PUT", files_url(server, sid, "/tmp/x"), {}, 401, "InvalidApiKey"),
        ("GET", files_url(server, sid, "/tmp/x"), {"authorization": "Bearer nope"}, 401, "InvalidApiKey"),
        ("GET", f"{server.endpoint}/sessions/{sid}/files", auth(server), 400, "InvalidParameter"),
        ("GET", files_url(server, sid, "/tmp/\x00x"), auth(server), 400, "InvalidParameter"),
        ("GET", files_url(server, sid, "/" + "a" * 5000), auth(server), 400, "InvalidParameter"),
        ("GET", files_url(server, sid, "/tmp"), auth(server), 400, "InvalidParameter"),
        ("GET", files_url(server, sid, "/dev/zero"), auth(server), 400, "InvalidParameter"),
        ("GET", files_url(server, sid, "/tmp/missing"), auth(server), 404, "NotFound"),
        ("PUT", files_url(server, sid, "/tmp/x", mode="sideways"), auth(server), 400, "InvalidParameter"),
        ("PUT", files_url(server, sid, "/tmp"), auth(server), 400, "InvalidParameter"),
        ("PUT", files_url(server, sid, "/usr/bin/evil"), auth(server), 400, "InvalidParameter"),
        ("DELETE", files_url(server, sid, "/tmp/x"), auth(server), 405, "MethodNotAllowed"),
    ]
    for method, url, headers, status, code in cases:
        response = httpx.request(method, url, headers=headers, content=b"data" if method == "PUT" else None)
        assert (response.status_code, response.json()["code"]) == (status, code), (method, url, response.text)
        assert response.json()["message"]
    session.delete()
    ended = httpx.get(files_url(server, sid, "/tmp/x"), headers=auth(server))
    assert ended.status_code == 404 and ended.json()["code"] == "InvalidMcpSession.NotFound"
    gone = session.file.upload_stream(io.BytesIO(b"x"), "/tmp/x")
    assert not gone.success and "not found" in gone.error_message


def test_concurrent_transfers(make_session: Any) -> None:
    sessions = [make_session(), make_session()]
    blobs = {f"/tmp/c{i}.bin": os.urandom(8 * MIB + i) for i in range(6)}
    errors: list[str] = []

    def worker(index: int, path: str, data: bytes) -> None:
        session = sessions[index % 2]
        for _ in range(2):
            if not session.file.write(path, data).success:
                errors.append(f"write {path}")
            read = session.file.read(path, format="bytes")
            if not read.success or hashlib.sha256(read.content).digest() != hashlib.sha256(data).digest():
                errors.append(f"read {path}: {read.error_message}")

    threads = [threading.Thread(target=worker, args=(i, path, data)) for i, (path, data) in enumerate(blobs.items())]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads) and errors == []
    for index, session in enumerate(sessions):
        names = sh(session, "ls /tmp").split()
        assert names == sorted(p.rsplit("/", 1)[1] for i, p in enumerate(blobs) if i % 2 == index)


def test_context_sync_through_planted_symlinks_stays_in_the_sandbox(server: ServerProcess, tmp_path: Path) -> None:
    from agbox import AGB, CreateSessionParams
    from agbox.client.context_sync import ContextSync, SyncPolicy

    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (host_dir / "secret").write_text("host secret")
    os.chmod(tmp_path, 0o755)
    with AGB(api_key=server.api_key, endpoint=server.endpoint) as agb:
        ctx = agb.context.create(f"ctx-{os.urandom(4).hex()}").context
        made = agb.create(CreateSessionParams(image_id="agb-code-space-1",
                                              context_syncs=[ContextSync(ctx.id, "/home/user/work", SyncPolicy())]))
        assert made.success, made.error_message
        try:
            _planted_links(agb, made.session, ctx.id, host_dir)
        finally:
            made.session.delete()


def _planted_links(agb: Any, session: Any, context_id: str, host_dir: Path) -> None:
    ctx_id = context_id
    # Out of the sandbox: a link to a host file and a magic link are not context files.
    sh(session, f"ln -s {host_dir}/secret /home/user/work/link && ln -s /proc/1/root /home/user/work/root && "
                "mkdir -p /home/user/work/d && echo real > /home/user/work/d/f.txt")
    assert session.context.sync_blocking(ctx_id, "/home/user/work", "upload").success
    top = agb.context.list_files(ctx_id, "/home/user/work", page_size=100)
    assert [e.file_path for e in top.entries] == ["/home/user/work/d"]
    listed = agb.context.list_files(ctx_id, "/home/user/work/d", page_size=100)
    assert [e.file_path for e in listed.entries] == ["/home/user/work/d/f.txt"]
    # Into the sandbox: the mount replaced by a link to a host directory; files land in the sandbox or nowhere.
    sh(session, f"rm -rf /home/user/work && ln -s {host_dir} /home/user/work")
    session.context.sync_blocking(ctx_id, "/home/user/work", "download")
    assert sorted(os.listdir(host_dir)) == ["secret"] and (host_dir / "secret").read_text() == "host secret"
