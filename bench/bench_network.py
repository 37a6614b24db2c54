"""Network: what a sandbox network costs at create, and how fast a session's traffic is.

Everything runs against the stand-in internet of ``tests/standin_internet.py`` (a namespace of our own
on a veth, documentation-range addresses); nothing leaves the machine. Two embedded platforms in this
process, one with networking and one without (``network=False``), so each create with a network is
followed by one without, interleaved, under the same load:

- ``create_cold``: create with the warm pool off (every create starts a sandbox; the network is made
  in the start path) vs the same without networking;
- ``create_pooled``: create with the warm pool on (a hand-over) vs the same without networking;
- ``first_http``: create, then the session's first HTTP 200 from the stand-in (curl inside), vs
  create then the same curl reading a local file (curl's own start, ~20-40 ms, is in both);
- ``throughput_down`` / ``throughput_up``: 512 MB over one TCP connection from/to the stand-in,
  measured by the same Python client inside a session and on the host (baseline), Gbit/s;
- ``rtt``: 64-byte TCP echo round trips on one connection (n=2000), session vs host.

``def run(quick: bool) -> list[dict]`` is what ``bench/run.py`` calls.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib as B

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import standin_internet as world  # noqa: E402

FAMILY = "network"
PACE_S = 0.15  # between pooled creates, so the pool has refilled

CLIENT = r"""
import json, socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = socket.create_connection((host, port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if mode == "down":
    buffer, total, start = bytearray(4 << 20), 0, time.perf_counter()
    while n := sock.recv_into(buffer):
        total += n
    print(json.dumps({"bytes": total, "s": time.perf_counter() - start}))
elif mode == "up":
    chunk, total, start = b"\0" * (4 << 20), int(sys.argv[4]), time.perf_counter()
    for _ in range(total // len(chunk)):
        sock.sendall(chunk)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(16)
    print(json.dumps({"bytes": total, "s": time.perf_counter() - start}))
else:
    times, payload = [], b"x" * 64
    for i in range(int(sys.argv[4]) + 50):
        start = time.perf_counter()
        sock.sendall(payload)
        got = 0
        while got < 64:
            got += len(sock.recv(64 - got))
        if i >= 50:
            times.append(time.perf_counter() - start)
    print(json.dumps({"times": times}))
"""


def _settings(data_dir: Path, network: bool, pool: int) -> Any:
    from agbox.settings import Settings

    return Settings.from_env(environ={}, data_dir=data_dir, warm_pool_size=pool, prewarm_images=(),
                             network=network, network_dns=(world.DNS_ADDRESS,), network_internet=True,
                             network_pool="10.209.0.0/16")


def _timing(owner: Any, name: str, into: list[float]) -> None:
    """Wrap the coroutine method ``owner.name`` so each call's duration lands in ``into``."""
    original = getattr(owner, name)

    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    setattr(owner, name, timed)


PHASES: dict[str, list[float]] = {"namespace": [], "configure": []}


async def _creates(root: Path, pool: int, n: int, pace_s: float) -> tuple[list[float], list[float]]:
    """Interleaved service creates: (with network, without), each released right after (not timed)."""
    from agbox.services.platform import Platform

    with_net = Platform(_settings(root / f"net-{pool}", True, pool))
    without = Platform(_settings(root / f"nonet-{pool}", False, pool))
    await with_net.start()
    await without.start()
    if not pool:
        network = with_net.runtime.network  # type: ignore[attr-defined]
        _timing(network, "create_namespace", PHASES["namespace"])
        _timing(network, "configure", PHASES["configure"])
    out: dict[bool, list[float]] = {True: [], False: []}
    try:
        for i in range(n + 3):
            for platform in (with_net, without):
                if pool:
                    await platform.runtime.prewarm(platform.sessions.spec_for(platform.images.get("agb-code-space-1"), ""))
                    await asyncio.sleep(pace_s)
                start = time.perf_counter()
                record = await platform.sessions.create("bench", "agb-code-space-1")
                elapsed = time.perf_counter() - start
                await platform.sessions.release("bench", record.id)
                if i >= 3:
                    out[platform is with_net].append(elapsed)
    finally:
        await with_net.close()
        await without.close()
    return out[True], out[False]


async def _first_http(root: Path, n: int) -> tuple[list[float], list[float]]:
    """Create (pool on) then the first HTTP 200 inside, vs create then curl on a local file."""
    from agbox.services.platform import Platform

    platform = Platform(_settings(root / "first", True, 1))
    await platform.start()
    http: list[float] = []
    first: list[float] = []
    curl = f"curl -s -o /dev/null -w '%{{http_code}}' http://{world.WEB_ADDRESS}/"
    try:
        for i in range(n + 3):
            local = "curl -s -o /dev/null file:///etc/hostname"
            for command, out in ((curl, http), (local, first)):
                await platform.runtime.prewarm(platform.sessions.spec_for(platform.images.get("agb-code-space-1"), ""))
                await asyncio.sleep(PACE_S)
                start = time.perf_counter()
                record = await platform.sessions.create("bench", "agb-code-space-1")
                handle = platform.sessions.handles[record.id]
                result = await platform.runtime.call(handle, "shell", {"command": command, "timeout_ms": 10000},
                                                     timeout_s=15)
                elapsed = time.perf_counter() - start
                if command == curl and "200" not in json.dumps(result):
                    raise RuntimeError(f"first HTTP request failed: {result}")
                await platform.sessions.release("bench", record.id)
                if i >= 3:
                    out.append(elapsed)
    finally:
        await platform.close()
    return http, first


async def _traffic(root: Path, quick: bool) -> dict[str, Any]:
    """The client script inside one session and on the host: down, up (bytes/s) and echo round trips."""
    from agbox.services.platform import Platform

    platform = Platform(_settings(root / "traffic", True, 0))
    await platform.start()
    rounds = 500 if quick else 2000
    upload = world.STREAM_BYTES // (4 if quick else 1)
    cases = {"down": (world.SOURCE_PORT, ""), "up": (world.SINK_PORT, str(upload)), "rtt": (world.ECHO_PORT, str(rounds))}
    results: dict[str, Any] = {}
    try:
        record = await platform.sessions.create("bench", "agb-code-space-1")
        handle = platform.sessions.handles[record.id]
        await platform.runtime.call(handle, "fs_write", {"path": "/tmp/client.py", "content": CLIENT}, timeout_s=10)
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
            script.write(CLIENT)
        for mode, (port, extra) in cases.items():
            argv = f"{mode} {world.WEB_ADDRESS} {port} {extra}".strip()
            inside = await platform.runtime.call(handle, "shell", {"command": f"python3 /tmp/client.py {argv}",
                                                                   "timeout_ms": 120000}, timeout_s=130)
            host = subprocess.run(["/usr/bin/python3", script.name, *argv.split()], capture_output=True, text=True,
                                  check=True, timeout=120).stdout
            results[mode] = (json.loads(_stdout(inside)), json.loads(host))
        Path(script.name).unlink()
    finally:
        await platform.close()
    return results


def _stdout(result: Any) -> str:
    if isinstance(result, dict):
        return str(result.get("stdout") or result.get("output") or "")
    return str(result)


def run(quick: bool) -> list[dict[str, Any]]:
    n = B.samples(quick, 40, 10)
    rows: list[dict[str, Any]] = []
    with world.standin_internet(), tempfile.TemporaryDirectory(prefix="agbox-bench-net-") as tmp:
        root = Path(tmp)
        cold, cold_base = asyncio.run(_creates(root, 0, n, 0.0))
        rows.append(B.row(FAMILY, "create, warm pool off, with network", cold, key="network.create_cold",
                          baseline="same, networking off (interleaved)", baseline_s=cold_base))
        rows.append(B.row(FAMILY, "network phase 1 on the create path: namespace (unshare)", PHASES["namespace"],
                          key="network.phase_namespace", note="bwrap no longer makes a network namespace itself"))
        rows.append(B.row(FAMILY, "network phase 2: veth, addresses, route, rules, resolver (while the agent starts)",
                          PHASES["configure"], key="network.phase_configure",
                          note="concurrent with the sandbox start; the create waits for it only if it ends later"))
        pooled, pooled_base = asyncio.run(_creates(root, 1, n, PACE_S))
        rows.append(B.row(FAMILY, "create, warm pool on, with network", pooled, key="network.create_pooled",
                          baseline="same, networking off (interleaved)", baseline_s=pooled_base))
        http, first = asyncio.run(_first_http(root, max(n // 2, 5)))
        rows.append(B.row(FAMILY, "create -> first HTTP 200 from the stand-in (curl inside)", http,
                          key="network.first_http", baseline="create -> curl file:///etc/hostname inside (interleaved)",
                          baseline_s=first))
        traffic = asyncio.run(_traffic(root, quick))
        for mode, label in (("down", "download"), ("up", "upload")):
            inside, host = traffic[mode]
            rows.append(B.row(FAMILY, f"TCP {label} session <-> stand-in, one connection",
                              key=f"network.throughput_{mode}", value=inside["bytes"] * 8 / inside["s"] / 1e9,
                              baseline="same client on the host", baseline_value=host["bytes"] * 8 / host["s"] / 1e9,
                              unit="Gbit/s", higher_is_better=True))
        inside, host = traffic["rtt"]
        rows.append(B.row(FAMILY, "64-byte TCP echo round trip, session -> stand-in", inside["times"],
                          key="network.rtt", baseline="same from the host", baseline_s=host["times"]))
    return rows


if __name__ == "__main__":
    for r in run("--quick" in sys.argv):
        print(r)
