"""The bulk file port (services/bulk_listener.py): signed URLs from ``GET /sessions/{id}/files/url``,
bodies moved with splice/sendfile. Round trips checked by sha256, every way a URL can be wrong
refused precisely, sandbox symlinks still never leading out, ended sessions 404."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agbox.services.url_signing import sign
from tests.conftest import ServerProcess, start_server, wait_for

MIB = 1024 * 1024


def sh(session: Any, command: str) -> str:
    result = session.command.execute(command, timeout_ms=60_000)
    assert result.success and result.exit_code == 0, (result.stdout, result.stderr, result.error_message)
    return str(result.stdout)


def signed_url(server: ServerProcess, session_id: str, path: str, method: str, **extra: str) -> str:
    response = httpx.get(f"{server.endpoint}/sessions/{session_id}/files/url",
                         params={"path": path, "method": method, **extra},
                         headers={"authorization": f"Bearer {server.api_key}"})
    assert response.status_code == 200, response.text
    url = response.json()["data"]["url"]
    assert isinstance(url, str) and response.json()["data"]["expireTime"] > time.time()
    return url


def request(url: str, method: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            ) -> tuple[int, bytes]:
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        connection.request(method, parsed.path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def refused(url: str, method: str, status: int, code: str, words: str, body: bytes | None = None) -> None:
    got, raw = request(url, method, body)
    answer = json.loads(raw)
    assert (got, answer["code"], answer["success"]) == (status, code, False), (url, raw)
    assert words in answer["message"], answer


@pytest.fixture
def make_session(server: ServerProcess) -> Iterator[Callable[[], Any]]:
    """Sessions of ``server`` made with our SDK over HTTP; all deleted at teardown."""
    from agbox import AGB, CreateSessionParams

    client = AGB(api_key=server.api_key, endpoint=server.endpoint)
    made: list[Any] = []

    def make() -> Any:
        result = client.create(CreateSessionParams(image_id="agb-code-space-1"))
        assert result.success, result.error_message
        made.append(result.session)
        return result.session

    try:
        yield make
    finally:
        for session in made:
            session.delete()
        client.close()


@pytest.fixture
def session(make_session: Callable[[], Any]) -> Any:
    return make_session()


def test_signed_round_trip_on_the_bulk_port(server: ServerProcess, session: Any, tmp_path: Path) -> None:
    data = os.urandom(64 * MIB)
    digest = hashlib.sha256(data).hexdigest()
    put = signed_url(server, session.session_id, "/home/user/up/big.bin", "PUT")
    # A port of its own, and no API key needed with the URL.
    assert urllib.parse.urlsplit(put).port != server.port
    status, raw = request(put, "PUT", data)
    assert status == 200, raw
    assert json.loads(raw)["data"] == {"path": "/home/user/up/big.bin", "size": 64 * MIB}
    assert sh(session, "stat -c '%U %s' /home/user/up/big.bin; sha256sum /home/user/up/big.bin") == \
        f"user {64 * MIB}\n{digest}  /home/user/up/big.bin\n"
    status, back = request(signed_url(server, session.session_id, "up/big.bin", "GET"), "GET")
    assert status == 200 and hashlib.sha256(back).hexdigest() == digest
    # Append through a URL signed for it; an empty body makes an empty file.
    status, raw = request(signed_url(server, session.session_id, "up/big.bin", "PUT", mode="append"), "PUT", b"tail")
    assert status == 200 and json.loads(raw)["data"]["size"] == 64 * MIB + 4
    assert request(signed_url(server, session.session_id, "/tmp/empty", "PUT"), "PUT", b"")[0] == 200
    assert sh(session, "stat -c %s /tmp/empty") == "0\n"
    # Our SDK takes the same way (it asks for a signed URL first).
    out = tmp_path / "back.bin"
    assert session.file.download_stream("/home/user/up/big.bin", str(out)).success
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data + b"tail").hexdigest()
    # Into open files: spliced after what the handle already buffered, or (append mode) written.
    for mode in ("wb", "ab"):
        with open(tmp_path / f"into-{mode}", mode) as handle:
            handle.write(b"prefix")
            got = session.file.download_stream("/home/user/up/big.bin", handle)
            assert got.success and got.bytes_received == 64 * MIB + 4, got.error_message
            handle.write(b"suffix")
        whole = (tmp_path / f"into-{mode}").read_bytes()
        assert whole[:6] == b"prefix" and whole[-6:] == b"suffix"
        assert hashlib.sha256(whole[6:-6]).hexdigest() == hashlib.sha256(data + b"tail").hexdigest()


def _tamper(url: str, **changes: Any) -> str:
    """The URL with its claims changed and the old signature kept."""
    head, _, token = url.rpartition("/")
    body, _, signature = token.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).decode().rstrip("=")
    return f"{head}/{forged}.{signature}"


def _resign(server: ServerProcess, url: str, **changes: Any) -> str:
    """The URL with its claims changed and signed with the server's own secret (as if the server had)."""
    secret = (server.data_dir / "contexts" / "url-secret").read_bytes()
    head, _, token = url.rpartition("/")
    body = token.partition(".")[0]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    return f"{head}/{sign(secret, claims)}"


def test_wrong_urls_are_refused_precisely(server: ServerProcess, make_session: Any) -> None:
    mine, other = make_session(), make_session()
    sh(mine, "echo mine > /tmp/a")
    sh(other, "echo other > /tmp/a")
    get = signed_url(server, mine.session_id, "/tmp/a", "GET")
    put = signed_url(server, mine.session_id, "/tmp/a", "PUT")
    assert request(get, "GET") == (200, b"mine\n")
    base = get.rpartition("/files/")[0]

    refused(get[:-1] + ("0" if get[-1] != "0" else "1"), "GET", 403, "AccessDenied", "bad signature")
    refused(_tamper(get, s=other.session_id), "GET", 403, "AccessDenied", "bad signature")
    refused(_tamper(get, p="/tmp/b"), "GET", 403, "AccessDenied", "bad signature")
    refused(_tamper(get, e=int(time.time()) + 10 ** 6), "GET", 403, "AccessDenied", "bad signature")
    refused(get, "PUT", 403, "AccessDenied", "for GET, not PUT", b"x")
    refused(put, "GET", 403, "AccessDenied", "for PUT, not GET")
    refused(_resign(server, get, e=int(time.time()) - 1), "GET", 403, "AccessDenied", "expired")
    refused(_resign(server, get, k="context"), "GET", 403, "AccessDenied", "not for a session file")
    refused(f"{base}/files/", "GET", 403, "AccessDenied", "bad signature")
    refused(f"{base}/files/garbage", "GET", 403, "AccessDenied", "bad signature")
    refused(f"{base}/sessions/{mine.session_id}/files?path=/tmp/a", "GET", 404, "NotFound", "no such route")
    refused(get, "DELETE", 400, "InvalidParameter", "not served here")
    # A URL of another owner's key, signed by this server, still does not reach this owner's session.
    refused(_resign(server, get, o="key-of-someone-else"), "GET", 404, "InvalidMcpSession.NotFound", "not found")
    # Other files of the same session and other sessions are unchanged by all of the above.
    assert sh(mine, "cat /tmp/a") == "mine\n" and sh(other, "cat /tmp/a") == "other\n"
    assert sh(mine, "ls -A /tmp") == "a\n"  # no temporary file left by a refused upload

    # Chunked uploads work too; malformed heads and chunk framing are 400s.
    parsed = urllib.parse.urlsplit(put)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    connection.request("PUT", parsed.path, body=iter([b"chunk", b"ed\n"]), encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["data"]["size"] == 8
    connection.close()
    assert sh(mine, "cat /tmp/a") == "chunked\n"
    for head in (b"PUT / HTTP/1.1\r\nbad header line\r\n\r\n", b"GARBAGE\r\n\r\n",
                 f"PUT {parsed.path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode()):
        raw = _raw_exchange(parsed.hostname or "", parsed.port or 0, head)
        assert raw.startswith(b"HTTP/1.1 400 "), raw
    # A body declared larger than the session's disk is refused before it is read.
    raw = _raw_exchange(parsed.hostname or "", parsed.port or 0,
                        f"PUT {parsed.path} HTTP/1.1\r\nContent-Length: {64 * 1024 ** 3}\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 413 ") and b"nothing was written" in raw, raw

    # The session ends: its URLs answer 404, and no new one is signed.
    other.delete()
    gone = _resign(server, get, s=other.session_id)
    refused(gone, "GET", 404, "InvalidMcpSession.NotFound", "not found")
    asked = httpx.get(f"{server.endpoint}/sessions/{other.session_id}/files/url",
                      params={"path": "/tmp/a", "method": "GET"}, headers={"authorization": f"Bearer {server.api_key}"})
    assert asked.status_code == 404 and asked.json()["code"] == "InvalidMcpSession.NotFound"
    for params, words in (({"path": "/tmp/a", "method": "POST"}, "GET or PUT"),
                          ({"path": "/tmp/a", "method": "PUT", "mode": "sideways"}, "Invalid write mode"),
                          ({"method": "GET"}, "path is required")):
        bad = httpx.get(f"{server.endpoint}/sessions/{mine.session_id}/files/url", params=params,
                        headers={"authorization": f"Bearer {server.api_key}"})
        assert bad.status_code == 400 and words in bad.json()["message"], bad.text
    keyless = httpx.get(f"{server.endpoint}/sessions/{mine.session_id}/files/url", params={"path": "/tmp/a"})
    assert keyless.status_code == 401


def _raw_exchange(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_symlinks_planted_by_the_sandbox_stay_inside(server: ServerProcess, session: Any, tmp_path: Path) -> None:
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (host_dir / "secret").write_text("host secret")
    os.chmod(tmp_path, 0o755)
    sid = session.session_id
    sh(session, f"ln -s {host_dir}/secret /tmp/abs; ln -s ../../../../../..{host_dir}/secret /tmp/rel; "
                f"ln -s {host_dir} /tmp/dir; ln -s /proc/1/root /tmp/magic")
    for link in ("/tmp/abs", "/tmp/rel", "/tmp/dir/secret"):
        refused(signed_url(server, sid, link, "GET"), "GET", 404, "NotFound", "No such file or directory")
    for path in ("/tmp/magic/etc/hostname", "/proc/1/root/etc/hostname", "/proc/1/environ"):
        status, raw = request(signed_url(server, sid, path, "GET"), "GET")
        assert status in (400, 404) and not json.loads(raw)["success"], (path, raw)
    refused(signed_url(server, sid, "/tmp/dir/planted", "PUT"), "PUT", 404, "NotFound", "No such file or directory", b"x")
    assert sorted(os.listdir(host_dir)) == ["secret"]
    # Overwriting a symlink replaces the link, never the host file it names.
    assert request(signed_url(server, sid, "/tmp/abs", "PUT"), "PUT", b"new")[0] == 200
    assert (host_dir / "secret").read_text() == "host secret"
    assert sh(session, "test ! -L /tmp/abs && cat /tmp/abs") == "new"
    # Files the sandbox user may not write stay refused (the kernel checks as that user).
    sh(session, "mkdir /tmp/locked && chmod 555 /tmp/locked")
    refused(signed_url(server, sid, "/tmp/locked/x", "PUT"), "PUT", 400, "InvalidParameter", "permission denied",
            b"x")
    refused(signed_url(server, sid, "/usr/bin/evil", "PUT"), "PUT", 400, "InvalidParameter", "read-only", b"x")


def test_presigned_context_objects_on_the_bulk_port(server: ServerProcess, tmp_path: Path) -> None:
    from agb import AGB as OfficialAGB
    from agb.config import Config

    official = OfficialAGB(api_key=server.api_key, cfg=Config(endpoint=server.endpoint, timeout_ms=60000))
    context = official.context.create(f"bulk-{os.urandom(4).hex()}").context
    try:
        up = official.context.get_file_upload_url(context.id, "/data/big.bin")
        assert up.success and urllib.parse.urlsplit(up.url).port != server.port
        data = os.urandom(64 * MIB)
        status, raw = request(up.url, "PUT", data)
        assert status == 200, raw
        down = official.context.get_file_download_url(context.id, "/data/big.bin")
        assert urllib.parse.urlsplit(down.url).port == urllib.parse.urlsplit(up.url).port
        status, back = request(down.url, "GET")
        assert status == 200 and hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()
        # A chunked body (an SDK streaming a generator) replaces it; the listing shows the new size.
        assert httpx.put(official.context.get_file_upload_url(context.id, "/data/big.bin").url,
                         content=iter([b"v2 ", b"body"])).status_code == 200
        assert httpx.get(official.context.get_file_download_url(context.id, "/data/big.bin").url).content == b"v2 body"
        assert [e.size for e in official.context.list_files(context.id, "/data").entries] == [7]
        # Forged, cross-method and unknown objects are refused as on the main port.
        refused(up.url[:-1] + ("0" if up.url[-1] != "0" else "1"), "PUT", 403, "AccessDenied", "bad signature", b"x")
        refused(up.url, "GET", 403, "AccessDenied", "another method")
        assert official.context.delete_file(context.id, "/data/big.bin").success
        refused(down.url, "GET", 404, "InvalidContext.NotFound", "not found")
    finally:
        official.context.delete(context)


def test_port_off_falls_back_to_the_main_route(tmp_path: Path) -> None:
    from agbox import AGB, CreateSessionParams

    srv = start_server(tmp_path / "data", extra_env={"AGBOX_BULK_PORT": "-1", "AGBOX_WARM_POOL": "0"})
    client = AGB(api_key=srv.api_key, endpoint=srv.endpoint)
    try:
        made = client.create(CreateSessionParams(image_id="agb-code-space-1"))
        assert made.success, made.error_message
        session = made.session
        asked = httpx.get(f"{srv.endpoint}/sessions/{session.session_id}/files/url",
                          params={"path": "/tmp/x", "method": "PUT"}, headers={"authorization": f"Bearer {srv.api_key}"})
        assert asked.status_code == 200 and asked.json()["data"] == {"url": None, "expireTime": None}
        data = os.urandom(8 * MIB)
        source = tmp_path / "in.bin"
        source.write_bytes(data)
        assert session.file.upload_stream(str(source), "/tmp/x").success
        assert session.file.download_stream("/tmp/x", str(tmp_path / "out.bin")).success
        assert (tmp_path / "out.bin").read_bytes() == data
        session.delete()
    finally:
        client.close()
        srv.stop()


def test_client_gone_mid_upload_leaves_the_old_file(server: ServerProcess, session: Any) -> None:
    sh(session, "mkdir /tmp/cut && echo old > /tmp/cut/f")
    parsed = urllib.parse.urlsplit(signed_url(server, session.session_id, "/tmp/cut/f", "PUT"))
    with socket.create_connection((parsed.hostname or "", parsed.port or 0), timeout=30) as sock:
        sock.sendall(f"PUT {parsed.path} HTTP/1.1\r\nContent-Length: {32 * MIB}\r\n\r\n".encode())
        sock.sendall(os.urandom(8 * MIB))
        wait_for(lambda: len(sh(session, "ls -A /tmp/cut").split()) == 2, 30, what="the upload's temporary file")
    # The connection is gone with 24 MiB missing: the temporary file goes, the old contents stay.
    wait_for(lambda: sh(session, "ls -A /tmp/cut") == "f\n", 30, what="the temporary file to be removed")
    assert sh(session, "cat /tmp/cut/f") == "old\n"
