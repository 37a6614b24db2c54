"""A stand-in internet for network tests and benchmarks, built from nothing but this machine's kernel.

A network namespace of our own, joined to the host by a veth, holding documentation-range addresses
(203.0.113.0/24 and 198.51.100.0/24 as "public", 10.99.0.10 as "private", 169.254.169.254 as
"metadata"), with one process serving HTTP on port 80 of all of them and DNS on 203.0.113.53 for a few
test names. The host routes those ranges into it, so traffic to them never leaves the machine. Used as a
context manager: everything (routes, veth, namespace, the server process) goes away on exit, also when
the body fails.

Run as a script (inside the namespace) it is the server itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST_ADDRESS = "203.0.113.1"
WEB_ADDRESS = "203.0.113.10"
OTHER_ADDRESS = "203.0.113.11"
DNS_ADDRESS = "203.0.113.53"
PUBLIC2_ADDRESS = "198.51.100.10"
PRIVATE_ADDRESS = "10.99.0.10"
METADATA_ADDRESS = "169.254.169.254"
NAMES = {
    "www.agbox.test": WEB_ADDRESS,
    "other.agbox.test": OTHER_ADDRESS,
    "pub2.agbox.test": PUBLIC2_ADDRESS,
    "private.agbox.test": PRIVATE_ADDRESS,
}
BIG_BYTES = 10 * 1024 * 1024
# For benchmarks: TCP ports that send STREAM_BYTES and close, read until EOF, or echo.
SOURCE_PORT, SINK_PORT, ECHO_PORT = 9000, 9001, 9002
STREAM_BYTES = 512 * 1024 * 1024
ROUTED = ("198.51.100.0/24", "10.99.0.0/24", f"{METADATA_ADDRESS}/32")


# ---- the server side (runs inside the namespace) ------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/big"):
            body = b"x" * BIG_BYTES
        else:
            body = f"stand-in {self.server.server_address[0]} host={self.headers.get('Host')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def _dns_answer(query: bytes) -> bytes | None:
    if len(query) < 12:
        return None
    qid, flags = struct.unpack_from("!HH", query)
    offset, labels = 12, []
    while offset < len(query) and query[offset]:
        length = query[offset]
        labels.append(query[offset + 1:offset + 1 + length].decode(errors="replace"))
        offset += 1 + length
    offset += 1
    qtype = struct.unpack_from("!H", query, offset)[0]
    question = query[12:offset + 4]
    address = NAMES.get(".".join(labels).lower())
    if address is None:
        return struct.pack("!HHHHHH", qid, 0x8183 | (flags & 0x0100), 1, 0, 0, 0) + question
    if qtype != 1:
        return struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, 0, 0, 0) + question
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    return struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, 1, 0, 0) + question + record


def _serve_dns(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(4096)
        answer = _dns_answer(data)
        if answer:
            sock.sendto(answer, peer)


def _serve_tcp(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    def run(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(OSError):
                handle(conn)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=run, args=(conn,), daemon=True).start()


def _source(conn: socket.socket) -> None:
    chunk = b"\0" * (4 * 1024 * 1024)
    for _ in range(STREAM_BYTES // len(chunk)):
        conn.sendall(chunk)


def _sink(conn: socket.socket) -> None:
    buffer = bytearray(4 * 1024 * 1024)
    while conn.recv_into(buffer):
        pass
    conn.sendall(b"done")


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def serve() -> None:
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind((DNS_ADDRESS, 53))
    threading.Thread(target=_serve_dns, args=(dns,), daemon=True).start()
    for port, handler in ((SOURCE_PORT, _source), (SINK_PORT, _sink), (ECHO_PORT, _echo)):
        listener = socket.create_server(("0.0.0.0", port), backlog=64)
        threading.Thread(target=_serve_tcp, args=(listener, handler), daemon=True).start()
    httpd = ThreadingHTTPServer(("0.0.0.0", 80), _Handler)
    print("ready", flush=True)
    httpd.serve_forever()


# ---- the host side --------------------------------------------------------------------------------


def _ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    subprocess.run([*prefix, *args], check=True, capture_output=True)


@dataclass
class StandinInternet:
    netns: str
    host_ifname: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def standin_internet() -> Iterator[StandinInternet]:
    tag = f"{os.getpid() % 100000:05d}"
    netns, host_if = f"standin-{tag}", f"sti{tag}"  # not "agb*": that prefix is the sandboxes'
    process: subprocess.Popen[bytes] | None = None
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", "wan0", "netns", netns)
        _ip("addr", "add", f"{HOST_ADDRESS}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("link", "set", "lo", "up", netns=netns)
        _ip("addr", "add", f"{WEB_ADDRESS}/24", "dev", "wan0", netns=netns)
        for address in (OTHER_ADDRESS, DNS_ADDRESS, PUBLIC2_ADDRESS, PRIVATE_ADDRESS, METADATA_ADDRESS):
            _ip("addr", "add", f"{address}/32", "dev", "lo", netns=netns)
        _ip("link", "set", "wan0", "up", netns=netns)
        for network in ROUTED:
            _ip("route", "add", network, "via", WEB_ADDRESS, "dev", host_if)
        process = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, __file__],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError("the stand-in internet's server did not start")
        deadline = time.monotonic() + 5
        while Path(f"/sys/class/net/{host_if}/operstate").read_text().strip() != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the stand-in internet's link did not come up")
            time.sleep(0.01)
        yield StandinInternet(netns, host_if, process)
    finally:
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


if __name__ == "__main__":
    serve()
