"""Disk: each sandbox's disk-backed writable layer (``runtime/disk.py``: an ext4 image on a loop device,
mounted in the sandbox's own mount namespace).

- Throughput of a 1 GiB file inside a default code space (1 GiB memory, 2 GiB disk): ``dd`` write with
  ``conv=fsync``, then a cold read (after the host dropped its clean page cache) and a warm read, each next
  to the same ``dd`` on a file of the host filesystem that holds the data dir, in the same run.
- What a layer costs: ``DiskLayers.prepare`` alone (template copy, loop attach, mount in a new mount
  namespace), and ``LocalRuntime.create`` with the warm pool off (every create prepares a layer and starts
  a sandbox) and on (a hand-over: the layer was made with the pooled sandbox), each interleaved with the
  bare ``bwrap ... /bin/true`` baseline.
- Idle sandboxes (200; quick 20), runtime level: the host's mount table before and after (the layers are
  never in it), attached loop devices, and the kernel memory each layer adds (``Slab`` + ``KernelStack``
  + ``PageTables`` of /proc/meminfo, per sandbox; the machine is shared, so this is indicative).

Run alone: ``python bench/bench_disk.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B

FAMILY = "disk"
MIB = 1024 * 1024
PACE_S = 0.5  # spacing of creates with the warm pool on, so that it has refilled (a start can take 200 ms under load)
_DD_SECONDS = re.compile(r"copied, ([0-9.]+) s")


def _dd_rate(output: str, size: int) -> float:
    """MB/s from dd's summary line."""
    found = _DD_SECONDS.search(output)
    if found is None:
        raise RuntimeError(f"dd said: {output[-300:]}")
    return size / float(found.group(1)) / 1e6


def _drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1")


def _commands(path: str, size: int) -> dict[str, str]:
    count = size // MIB
    return {"write": f"dd if=/dev/zero of={path} bs=1M count={count} conv=fsync 2>&1",
            "read": f"dd if={path} of=/dev/null bs=1M 2>&1"}


async def _throughput(runtime: Any, host_dir: Path, size: int, repeats: int) -> list[dict[str, Any]]:
    from agbox.runtime.base import Limits, SandboxSpec

    handle = await runtime.create(SandboxSpec("bench-disk", "agb-code-space-1", Limits()))
    inside = _commands("/tmp/bench.bin", size)
    outside = _commands(str(host_dir / "bench.bin"), size)
    best: dict[str, list[float]] = {}

    async def sandbox_dd(command: str) -> float:
        result = await runtime.call(handle, "shell", {"command": command, "timeout_ms": 600_000}, timeout_s=700)
        if result["exit_code"] != 0:
            raise RuntimeError(f"dd in the sandbox failed: {result['stdout'][-300:]}")
        return _dd_rate(str(result["stdout"]), size)

    def host_dd(command: str) -> float:
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
        return _dd_rate(done.stdout, size)

    try:
        for _ in range(repeats):
            for phase in ("write", "cold read", "warm read"):
                if phase == "cold read":
                    _drop_page_cache()
                kind = "write" if phase == "write" else "read"
                host = host_dd(outside[kind])
                if phase == "cold read":
                    _drop_page_cache()
                session = await sandbox_dd(inside[kind])
                pair = best.setdefault(phase, [0.0, 0.0])
                pair[0], pair[1] = max(pair[0], session), max(pair[1], host)
    finally:
        await runtime.destroy(handle)
        (host_dir / "bench.bin").unlink(missing_ok=True)
    label = f"{size // MIB} MiB" if size < 1024 * MIB else f"{size // (1024 * MIB)} GiB"
    return [B.row(FAMILY, f"{phase} of a {label} file in a default code space (dd, best of {repeats})",
                  key=f"disk.{phase.replace(' ', '_')}", unit="MB/s", value=session, higher_is_better=True,
                  baseline="the same dd on the host filesystem of the data dir", baseline_value=host,
                  note="dd bs=1M; write with conv=fsync; cold: after echo 1 > /proc/sys/vm/drop_caches")
            for phase, (session, host) in best.items()]


async def _layer_cost(runtime: Any, n: int, bwrap: Any) -> list[dict[str, Any]]:
    layer_s: list[float] = []
    base_s: list[float] = []
    for i in range(n + 3):
        start = time.perf_counter()
        layer = await runtime.disks.make(2048 * MIB, 200_001)
        elapsed = time.perf_counter() - start
        layer.release()
        await asyncio.sleep(0.003)
        start = time.perf_counter()
        bwrap()
        if i >= 3:
            layer_s.append(elapsed)
            base_s.append(time.perf_counter() - start)
    return [B.row(FAMILY, "disk layer alone: copy the template, attach a loop device, mount in a new mount namespace "
                  "(2 GiB)", layer_s, key="disk.layer_prepare", baseline=f"{B.BWRAP_NAME} (interleaved)",
                  baseline_s=base_s)]


async def _creates(runtime: Any, n: int, bwrap: Any, pace_s: float, label: str, key: str) -> dict[str, Any]:
    from agbox.runtime.base import Limits, SandboxSpec

    created: list[float] = []
    base_s: list[float] = []
    for i in range(n + 3):
        began = time.perf_counter()
        handle = await runtime.create(SandboxSpec(f"bench-{i}", "agb-code-space-1", Limits()))
        elapsed = time.perf_counter() - began
        await runtime.destroy(handle)
        await asyncio.sleep(0.003)
        start = time.perf_counter()
        bwrap()
        if i >= 3:
            created.append(elapsed)
            base_s.append(time.perf_counter() - start)
        await asyncio.sleep(max(pace_s - (time.perf_counter() - began), 0.0))
    return B.row(FAMILY, label, created, key=key, baseline=f"{B.BWRAP_NAME} (interleaved)", baseline_s=base_s)


def _kernel_kib() -> int:
    info = B.meminfo_kib()
    return info["Slab"] + info["KernelStack"] + info["PageTables"]


async def _idle(runtime: Any, count: int) -> list[dict[str, Any]]:
    from agbox.runtime.base import Limits, SandboxSpec

    mounts_before = len(Path("/proc/self/mountinfo").read_text().splitlines())
    kernel_before = _kernel_kib()
    handles = []
    try:
        for i in range(count):
            handles.append(await runtime.create(SandboxSpec(f"idle-{i}", "agb-code-space-1", Limits())))
        await asyncio.sleep(1.0)
        mounts_after = len(Path("/proc/self/mountinfo").read_text().splitlines())
        loops = len(runtime.disks.leftover_devices())
        kernel_per = (_kernel_kib() - kernel_before) / count / 1024
    finally:
        for handle in handles:
            await runtime.destroy(handle)
    return [
        B.row(FAMILY, f"host mount table with {count} idle sandboxes (entries)", key="disk.host_mounts",
              unit="mounts", value=mounts_after, baseline="before they were created", baseline_value=mounts_before),
        B.row(FAMILY, f"loop devices attached for {count} idle sandboxes", key="disk.loops", unit="devices",
              value=loops, note="one per sandbox; detached by the kernel when the sandbox ends"),
        B.row(FAMILY, f"kernel memory per idle sandbox ({count}; Slab + KernelStack + PageTables delta / n)",
              key="disk.kernel_per_sandbox", unit="MiB", value=kernel_per,
              note="whole sandbox (namespaces, agent, layer); other work on the machine adds noise"),
    ]


async def _run(root: Path, quick: bool) -> list[dict[str, Any]]:
    from agbox.runtime.local import LocalRuntime

    rows: list[dict[str, Any]] = []
    host_dir = root / "host"
    host_dir.mkdir()
    n = B.samples(quick, 30, 8)
    with B.bwrap_true() as bwrap:
        runtime = LocalRuntime(root / "cold")
        await runtime.start()
        try:
            B.say("disk throughput, 1 GiB in a session vs the host")
            size = 256 * MIB if quick else 1024 * MIB
            rows += await _throughput(runtime, host_dir, size, 1 if quick else 2)
            B.say("disk layer cost")
            rows += await _layer_cost(runtime, n, bwrap)
            rows.append(await _creates(runtime, n, bwrap, 0.0, "create, LocalRuntime.create, warm pool off "
                                       "(prepares a layer and starts a sandbox)", "disk.create_cold"))
            B.say("idle sandboxes with layers")
            rows += await _idle(runtime, 20 if quick else 200)
        finally:
            await runtime.close()
        runtime = LocalRuntime(root / "warm", warm_pool_size=2)
        await runtime.start()
        try:
            rows.append(await _creates(runtime, n, bwrap, PACE_S, "create, LocalRuntime.create, warm pool on "
                                       "(hand-over: the layer came with the pooled sandbox)", "disk.create_warm"))
        finally:
            await runtime.close()
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    with B.temp_root("/tmp/agbox-bench-disk-") as root:
        return asyncio.run(_run(root, quick))


if __name__ == "__main__":
    for result in run("--quick" in sys.argv):
        print(result)
