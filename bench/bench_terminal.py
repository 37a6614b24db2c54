"""Terminal keystroke echo through the PTY WebSocket, next to the shell tool's round trip.

Against ``agbox serve``, one live session. A terminal runs ``stty raw -echo; exec cat`` (so the echo is
``cat`` writing the byte back, not the terminal driver), opened on ``{base}/pty/{session}`` with the
session token. One sample: send one byte as a binary frame, wait for the binary frame that carries it
back. Interleaved sample by sample with the ``shell`` tool running ``true`` through ``POST /mcp``
(raw httpx, keep-alive), the round trip an agent pays per command, and with a 1-byte echo over a plain
loopback TCP socket to a thread of this process (the transport's floor).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any

import benchlib as B

FAMILY = "terminal"
READY = b"ECHO-READY"


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):  # the bench closed the socket
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                while data := conn.recv(64):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, name="bench-echo", daemon=True)
    thread.start()
    return listener, thread


def run(quick: bool) -> list[dict[str, Any]]:
    from websockets.sync.client import connect

    from agbox import CreateSessionParams

    n = B.samples(quick, 300, 40)
    echo: list[float] = []
    tool: list[float] = []
    tcp: list[float] = []
    listener, echo_thread = _echo_server()
    with B.server("agbox-bench-terminal-") as srv, srv.http() as http:
        sdk = srv.sdk()
        session = None
        try:
            created = sdk.create(CreateSessionParams(image_id=B.IMAGE))
            if not created.success:
                raise RuntimeError(f"create failed: {created.error_message}")
            session = created.session
            url = f"ws{srv.endpoint[4:]}/pty/{session.session_id}"
            with connect(url, additional_headers={"X-Access-Token": session.token}, max_size=None) as ws, \
                    socket.create_connection(listener.getsockname()) as client:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                ws.send(json.dumps({"cmd": ["sh", "-c", f"stty raw -echo; printf {READY.decode()}; exec cat"],
                                    "cols": 80, "rows": 24}))
                seen = bytearray()
                deadline = time.monotonic() + 30
                while READY not in seen:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the terminal never got ready: {bytes(seen)[-200:]!r}")
                    frame = ws.recv(timeout=30)
                    if isinstance(frame, bytes):
                        seen.extend(frame)

                def keystroke(byte: bytes) -> float:
                    start = time.perf_counter()
                    ws.send(byte)
                    got = bytearray()
                    while byte not in got:
                        frame = ws.recv(timeout=10)
                        if isinstance(frame, bytes):
                            got.extend(frame)
                    return time.perf_counter() - start

                def shell_true() -> float:
                    start = time.perf_counter()
                    B.mcp_shell(http, srv.endpoint, session.session_id)
                    return time.perf_counter() - start

                def tcp_echo() -> float:
                    start = time.perf_counter()
                    client.sendall(b"x")
                    if client.recv(8) != b"x":
                        raise RuntimeError("loopback echo returned something else")
                    return time.perf_counter() - start

                B.say(f"keystroke echo through the PTY WebSocket vs shell tool round trip ({n} samples, interleaved)")
                letters = b"abcdefghijklmnopqrstuvwxyz"
                for i in range(n + 5):
                    key = letters[i % len(letters):i % len(letters) + 1]
                    sample = (keystroke(key), shell_true(), tcp_echo())
                    if i >= 5:
                        echo.append(sample[0])
                        tool.append(sample[1])
                        tcp.append(sample[2])
                        time.sleep(0.003)
        finally:
            if session is not None:
                session.delete()
            sdk.close()
            listener.close()
            echo_thread.join(5)

    return [
        B.row(FAMILY, "keystroke echo through the PTY WebSocket (raw cat)", echo, key="terminal.echo",
              baseline="shell tool `true`, POST /mcp (interleaved)", baseline_s=tool,
              note="one byte out as a binary frame, until the frame carrying it back; the path: WebSocket -> "
                   "server -> agent (pty_input) -> pty -> cat -> pty -> agent -> server -> WebSocket"),
        B.row(FAMILY, "shell tool round trip `true` (POST /mcp)", tool, key="terminal.shell_tool",
              baseline="1-byte echo over loopback TCP, a thread of this process (interleaved)", baseline_s=tcp),
    ]
