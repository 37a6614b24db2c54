"""Link service pieces that need no sandbox (ports, protocols, hosts, secrets, admission, the relay's
socket channel over real loopback TCP), and the embedded platform's shutdown closing its link listeners."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from agbox.errors import InvalidRequestError
from agbox.services.http1 import Head, parse_head
from agbox.services.links import Link, link_secret, parse_port, parse_protocol, url_host
from tests.conftest import wait_for


def test_ports() -> None:
    assert parse_port(None, 30100, 30199) == 30100  # the default link
    assert parse_port("", 30100, 30199) == 30100
    assert parse_port("30199", 30100, 30199) == 30199
    for bad in ("30099", 30200, "80", "-1"):
        with pytest.raises(InvalidRequestError, match="outside the link port range 30100-30199"):
            parse_port(bad, 30100, 30199)
    with pytest.raises(InvalidRequestError, match="must be an integer"):
        parse_port("http", 30100, 30199)


def test_protocols() -> None:
    assert parse_protocol(None, False) == "http"
    assert parse_protocol("WS", False) == "ws"
    assert parse_protocol("https", True) == "https"
    with pytest.raises(InvalidRequestError, match="no TLS configured"):
        parse_protocol("wss", False)
    with pytest.raises(InvalidRequestError, match="protocolType must be one of"):
        parse_protocol("ftp", True)


def test_hosts_follow_public_url() -> None:
    assert url_host(None, "127.0.0.1") == "127.0.0.1"
    assert url_host(None, "0.0.0.0") == "127.0.0.1"
    assert url_host("https://agbox.example.com/base", "0.0.0.0") == "agbox.example.com"
    assert url_host("http://[::1]:8390", "127.0.0.1") == "[::1]"


def test_secrets_are_per_session_and_port() -> None:
    one = link_secret("tok", "session-a", 30100)
    assert one == link_secret("tok", "session-a", 30100)
    assert one != link_secret("tok", "session-a", 30101)
    assert one != link_secret("tok", "session-b", 30100)
    assert "tok" not in one


def _head(target: bytes, cookie: bytes | None = None) -> Head:
    raw = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + (b"Cookie: " + cookie + b"\r\n" if cookie else b"") + b"\r\n"
    return parse_head(raw, request=True)


def test_admission_rewrites_target_and_strips_link_cookies() -> None:
    link = Link(service=None, session_id="s", port=30100, secret="abc", listen_port=4000)  # type: ignore[arg-type]
    head = _head(b"/_agbox/abc/static/x.js?v=1", b"app=1; agbox_link_9=zzz")
    assert link._admit(head) == (0, "", True)
    assert head.first[1] == b"/static/x.js?v=1"
    assert head.get(b"cookie") == b"app=1"
    head = _head(b"/_agbox/abc?x=1")
    assert link._admit(head)[0] == 0 and head.first[1] == b"/?x=1"
    head = _head(b"/page", b"agbox_link_4000=abc")
    assert link._admit(head) == (0, "", False) and head.get(b"cookie") is None
    assert link._admit(_head(b"/page"))[0] == 401
    assert link._admit(_head(b"/page", b"agbox_link_4000=nope"))[0] == 403
    assert link._admit(_head(b"/_agbox/nope/page"))[0] == 403


def test_embedded_close_shuts_link_listeners(tmp_path: Path) -> None:
    from agbox import AGB, CreateSessionParams

    agb = AGB(data_dir=tmp_path / "data")
    closed = False
    try:
        session = agb.create(CreateSessionParams(image_id="agb-code-space-1")).session
        started = session.command.execute("nohup python3 -m http.server 30100 >/tmp/h.log 2>&1 &", timeout_ms=10_000)
        assert started.success, started.error_message
        url: Any = session.get_link(port=30100).data

        def ok() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(url, timeout=5).status_code == 200
            return False

        wait_for(ok, 20, interval_s=0.05, what="the embedded link to answer")
        port = int(url.split(":")[2].split("/")[0])
        agb.close()
        closed = True
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        if not closed:
            agb.close()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    return near, far


def test_channel_moves_exactly_a_body_and_leaves_what_follows() -> None:
    """Channel.copy_to over real loopback TCP: a body larger than the pipe goes through splice with
    SO_RCVLOWAT batching, buffered bytes first, and not one byte of what follows it is taken."""
    import asyncio
    import hashlib

    from agbox.services.http1 import PIPE_SIZE, Channel

    body = hashlib.sha256(b"x").digest() * ((3 * PIPE_SIZE + 12345) // 32)
    after = b"GET /next HTTP/1.1\r\n\r\n"

    async def main() -> None:
        src_writer, src_reader = _tcp_pair()
        dst_writer, dst_reader = _tcp_pair()
        source, sink = Channel(src_reader), Channel(dst_writer)
        loop = asyncio.get_running_loop()
        received = bytearray()

        def write_all() -> None:
            src_writer.sendall(b"HEAD\r\n\r\n" + body + after)

        def read_all() -> None:
            while len(received) < len(body):
                received.extend(dst_reader.recv(1 << 20))

        try:
            writing = loop.run_in_executor(None, write_all)
            reading = loop.run_in_executor(None, read_all)
            assert await source.read_until(b"\r\n\r\n", 1024) == b"HEAD\r\n\r\n"
            await source.copy_to(sink, len(body))
            await asyncio.wait_for(asyncio.gather(writing, reading), 30)
            assert bytes(received) == body and sink.sent == len(body)
            assert await source.read_until(b"\r\n\r\n", 1024) == after  # what follows stays
            # An idle connection: alive while open and quiet, not once the peer closed it.
            assert source.idle_alive()
            src_writer.close()
            await asyncio.wait_for(source.readable(), 10)
            assert not source.idle_alive()
        finally:
            for closing in (source, sink):
                closing.close()
            for sock in (src_writer, dst_reader):
                sock.close()

    asyncio.run(main())


def test_channel_switches_between_small_pieces_and_splice_until_the_end() -> None:
    """copy_to(None): small messages, then a bulk burst, then small again, then the end (a WebSocket)."""
    import asyncio

    from agbox.services.http1 import RECV_SIZE, Channel

    pieces = [b"hello", bytes(range(256)) * (4 * RECV_SIZE // 256), b"bye"]

    async def main() -> None:
        src_writer, src_reader = _tcp_pair()
        dst_writer, dst_reader = _tcp_pair()
        source, sink = Channel(src_reader), Channel(dst_writer)
        loop = asyncio.get_running_loop()

        def read_n(n: int) -> bytes:
            got = bytearray()
            while len(got) < n:
                data = dst_reader.recv(n - len(got))
                assert data, "the sink ended early"
                got.extend(data)
            return bytes(got)

        try:
            pump = asyncio.create_task(source.pipe_to(sink))
            for piece in pieces:
                await loop.run_in_executor(None, src_writer.sendall, piece)
                assert await loop.run_in_executor(None, read_n, len(piece)) == piece
            src_writer.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(pump, 10)
            assert await loop.run_in_executor(None, dst_reader.recv, 1) == b""  # the end passed on
        finally:
            for closing in (source, sink):
                closing.close()
            for sock in (src_writer, dst_reader):
                sock.close()

    asyncio.run(main())
