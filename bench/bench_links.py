"""Links: a request through ``get_link`` next to the same request on a direct loopback connection.

One ``agbox serve`` process (the relay runs in its own process, as in a deployment, so it does not
share this client's interpreter lock), one session running ``tests/server/link_app.py`` on port 30101
inside the sandbox, and the same app started on the host on a free loopback port (the baseline,
measured in the same run, interleaved with the link). Figures:

- ``http_keepalive``: GET /ping on one kept-alive connection (raw socket client, so the client adds
  next to nothing);
- ``http_new_connection``: connect + GET /ping + close (through a link this includes the setns
  connect inside the sandbox's network namespace);
- ``websocket_echo``: a 32-byte WebSocket message round trip;
- ``download`` / ``upload``: N MB (200 MB and 1 GiB full, 32 MB quick) through the link vs direct,
  MB/s (median of 3 interleaved rounds), with the sha256 of the bytes checked on the far side; the
  note gives the CPU time the server process spent relaying per GiB (from /proc/PID/stat).

``def run(quick: bool) -> list[dict]`` is what ``bench/run.py`` calls; ``python bench/bench_links.py
[--quick]`` prints the rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import benchlib as B

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "tests" / "server" / "link_app.py"
FAMILY = "links"
BASELINE = "direct loopback"
MB = 1024 * 1024


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency_row(name: str, link_s: list[float], direct_s: list[float], note: str = "") -> dict[str, Any]:
    p50, base = percentile(link_s, 50) * 1000, percentile(direct_s, 50) * 1000
    return {"family": FAMILY, "name": name, "key": f"{FAMILY}.{name}", "note": note,
            "p50_ms": p50, "p95_ms": percentile(link_s, 95) * 1000, "p99_ms": percentile(link_s, 99) * 1000,
            "n": len(link_s), "baseline": BASELINE, "baseline_p50_ms": base,
            "ratio": p50 / base if base else None, "delta_ms": p50 - base}


def throughput_row(name: str, link_mbs: float, direct_mbs: float, note: str = "") -> dict[str, Any]:
    return {"family": FAMILY, "name": name, "key": f"{FAMILY}.{name}", "note": note, "value": link_mbs,
            "unit": "MB/s", "baseline": BASELINE, "baseline_value": direct_mbs,
            "ratio": link_mbs / direct_mbs if direct_mbs else None, "higher_is_better": True}


# ---- a raw HTTP/1.1 client (so the client's own overhead stays out of the figures) ------------------


class Target:
    """host, port and path prefix of one way to the app (a link, or the app directly)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.prefix = parts.path.rstrip("/")

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def request(self, method: str, path: str, body_len: int = 0, close: bool = False) -> bytes:
        headers = f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body_len or method in ("POST", "PUT"):
            headers += f"Content-Length: {body_len}\r\n"
        if close:
            headers += "Connection: close\r\n"
        return (headers + "\r\n").encode()


def read_response(sock: socket.socket, buf: bytearray, sink: Callable[[bytes], None] | None = None) -> bytes:
    """Read one Content-Length response from ``sock`` (``buf`` holds bytes already read); body unless sunk."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the response head")
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {head[:200]!r}")
    buf.clear()
    body = bytearray()
    chunk = rest[:length]
    buf += rest[length:]
    left = length - len(chunk)
    (sink or body.extend)(chunk)
    while left > 0:
        data = sock.recv(min(left, 1 << 20))
        if not data:
            raise ConnectionError("closed in the body")
        left -= len(data)
        (sink or body.extend)(data)
    return bytes(body)


def time_keepalive(target: Target, n: int) -> list[float]:
    out = []
    with target.connect() as sock:
        buf = bytearray()
        request = target.request("GET", "/ping")
        for _ in range(n):
            start = time.perf_counter()
            sock.sendall(request)
            assert read_response(sock, buf) == b"pong"
            out.append(time.perf_counter() - start)
    return out


def time_new_connection(target: Target, n: int) -> list[float]:
    out = []
    request = target.request("GET", "/ping", close=True)
    for _ in range(n):
        start = time.perf_counter()
        with target.connect() as sock:
            sock.sendall(request)
            assert read_response(sock, bytearray()) == b"pong"
        out.append(time.perf_counter() - start)
    return out


def download(target: Target, size: int) -> tuple[float, str]:
    digest = hashlib.sha256()
    with target.connect() as sock:
        start = time.perf_counter()
        sock.sendall(target.request("GET", f"/bytes?n={size}"))
        read_response(sock, bytearray(), sink=lambda b: None)
        seconds = time.perf_counter() - start
        # The sha256 check runs once more, outside the timing, so hashing does not cap the figure.
        sock.sendall(target.request("GET", f"/bytes?n={size}"))
        read_response(sock, bytearray(), sink=digest.update)
    return size / MB / seconds, digest.hexdigest()


def upload(target: Target, payload: bytes) -> tuple[float, dict[str, Any]]:
    view = memoryview(payload)
    with target.connect() as sock:
        start = time.perf_counter()
        sock.sendall(target.request("POST", "/upload", len(payload)))
        for offset in range(0, len(payload), MB):
            sock.sendall(view[offset:offset + MB])
        answer = json.loads(read_response(sock, bytearray()))
        seconds = time.perf_counter() - start
    return len(payload) / MB / seconds, answer


def time_websocket(url: str, n: int) -> list[float]:
    from websockets.sync.client import connect

    out = []
    message = "x" * 32
    with connect(url, open_timeout=10) as ws:
        for _ in range(n):
            start = time.perf_counter()
            ws.send(message)
            assert ws.recv(timeout=10) == message
            out.append(time.perf_counter() - start)
    return out


def pattern_sha(n: int) -> str:
    block = hashlib.sha256(b"agbox").digest() * (1 << 15)
    digest = hashlib.sha256()
    while n > 0:
        piece = block[:min(n, len(block))]
        digest.update(piece)
        n -= len(piece)
    return digest.hexdigest()


# ---- set-up ---------------------------------------------------------------------------------------


def wait_ping(target: Target, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            time_new_connection(target, 1)
            return
        except (OSError, RuntimeError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def host_app() -> Iterator[Target]:
    """The same app on the host, on a free loopback port: the baseline."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(["/usr/bin/python3", str(APP), str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        target = Target(f"http://127.0.0.1:{port}/")
        wait_ping(target)
        yield target
    finally:
        proc.terminate()
        proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process's threads so far, in nanosecond resolution (schedstat; /proc/PID/stat
    counts 10 ms ticks, too coarse for a hundred requests)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


@contextlib.contextmanager
def sandbox_app() -> Iterator[tuple[str, int]]:
    """A session of an ``agbox serve`` running the app on 30101; yields (its link URL, server pid)."""
    from agbox import AGB, CreateSessionParams

    with B.server("agbox-bench-links-") as srv:
        pid = srv.pid
        agb = AGB(api_key=srv.api_key, endpoint=srv.endpoint)
        result = agb.create(CreateSessionParams(image_id="agb-code-space-1"))
        if not result.success:
            raise RuntimeError(f"create failed: {result.error_message}")
        session = result.session
        try:
            command = ("cat > /tmp/link_app.py <<'AGBOX_EOF'\n" + APP.read_text() + "\nAGBOX_EOF\n"
                       "nohup python3 /tmp/link_app.py 30101 >/tmp/app.log 2>&1 &\n")
            started = session.command.execute(command, timeout_ms=10_000)
            if not started.success:
                raise RuntimeError(f"could not start the app: {started.error_message}")
            got = session.get_link(port=30101)
            if not got.success:
                raise RuntimeError(f"get_link failed: {got.error_message}")
            wait_ping(Target(got.data))
            yield got.data, pid
        finally:
            session.delete()


ROUNDS = 3


def transfer_rows(via: Target, direct: Target, server_pid: int, size: int) -> list[dict[str, Any]]:
    """Download and upload rows for one size: ROUNDS rounds, link and direct interleaved, medians."""
    label = f"{size // 1024 // MB}GiB" if size >= 1024 * MB else f"{size // MB}MB"
    expected = pattern_sha(size)
    link_dl: list[float] = []
    direct_dl: list[float] = []
    relay_cpu = 0.0
    for _ in range(ROUNDS):
        cpu = cpu_seconds(server_pid)
        speed, link_sha = download(via, size)
        relay_cpu += cpu_seconds(server_pid) - cpu
        link_dl.append(speed)
        speed, direct_sha = download(direct, size)
        direct_dl.append(speed)
        if link_sha != expected or direct_sha != expected:
            raise RuntimeError("download arrived corrupted")
    # Each link download moves the body twice (timed, then hashed): CPU per GiB relayed.
    cpu_per_gib = relay_cpu / (2 * ROUNDS * size / (1024 * MB))
    rows = [throughput_row(f"download_{label}", statistics.median(link_dl), statistics.median(direct_dl),
                           f"sha256 checked; median of {ROUNDS} interleaved rounds; server CPU "
                           f"{cpu_per_gib:.2f} s per GiB relayed")]
    payload = os.urandom(size)
    digest = hashlib.sha256(payload).hexdigest()
    link_ul: list[float] = []
    direct_ul: list[float] = []
    relay_cpu = 0.0
    for _ in range(ROUNDS):
        cpu = cpu_seconds(server_pid)
        speed, answer = upload(via, payload)
        relay_cpu += cpu_seconds(server_pid) - cpu
        link_ul.append(speed)
        speed, direct_answer = upload(direct, payload)
        direct_ul.append(speed)
        if answer.get("sha256") != digest or direct_answer.get("sha256") != digest:
            raise RuntimeError("upload arrived corrupted")
    cpu_per_gib = relay_cpu / (ROUNDS * size / (1024 * MB))
    rows.append(throughput_row(f"upload_{label}", statistics.median(link_ul), statistics.median(direct_ul),
                               f"sha256 checked by the app (hashing inside the app bounds both); median of "
                               f"{ROUNDS} interleaved rounds; server CPU {cpu_per_gib:.2f} s per GiB relayed"))
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    n = 50 if quick else 500
    sizes = [32 * MB] if quick else [200 * MB, 1024 * MB]
    rows: list[dict[str, Any]] = []
    with host_app() as direct, sandbox_app() as (url, server_pid):
        via = Target(url)
        for name, fn, count in (("http_keepalive", time_keepalive, n),
                                ("http_new_connection", time_new_connection, n)):
            fn(via, 5)
            fn(direct, 5)
            link_s: list[float] = []
            direct_s: list[float] = []
            relay_cpu = 0.0
            for _ in range(5):  # interleaved in 5 slices, so load changes hit both alike
                cpu = cpu_seconds(server_pid)
                link_s += fn(via, count // 5)
                relay_cpu += cpu_seconds(server_pid) - cpu
                direct_s += fn(direct, count // 5)
            rows.append(latency_row(name, link_s, direct_s, f"GET /ping, raw socket client; server CPU "
                                    f"{relay_cpu / len(link_s) * 1e6:.0f} us per request"))
        ws_link = "ws://" + url.split("://", 1)[1] + "ws"
        ws_direct = f"ws://{direct.host}:{direct.port}/ws"
        time_websocket(ws_link, 5)
        time_websocket(ws_direct, 5)
        ws_link_s: list[float] = []
        ws_direct_s: list[float] = []
        relay_cpu = 0.0
        for _ in range(5):
            cpu = cpu_seconds(server_pid)
            ws_link_s += time_websocket(ws_link, n // 5)
            relay_cpu += cpu_seconds(server_pid) - cpu
            ws_direct_s += time_websocket(ws_direct, n // 5)
        rows.append(latency_row("websocket_echo", ws_link_s, ws_direct_s, f"32-byte message round trip; server "
                                f"CPU {relay_cpu / len(ws_link_s) * 1e6:.0f} us per message (incl. connect)"))
        for size in sizes:
            rows.extend(transfer_rows(via, direct, server_pid, size))
    return rows


def main() -> None:
    rows = run("--quick" in sys.argv)
    print("load average:", os.getloadavg())
    for r in rows:
        if "p50_ms" in r:
            print(f"{r['name']:<22} p50 {r['p50_ms']:.3f} ms  p95 {r['p95_ms']:.3f} ms  "
                  f"direct p50 {r['baseline_p50_ms']:.3f} ms  ratio {r['ratio']:.2f}x  (+{r['delta_ms']:.3f} ms)  "
                  f"[{r['note']}]")
        else:
            print(f"{r['name']:<22} {r['value']:.0f} MB/s  direct {r['baseline_value']:.0f} MB/s  "
                  f"ratio {r['ratio']:.2f}x  [{r['note']}]")


if __name__ == "__main__":
    main()
