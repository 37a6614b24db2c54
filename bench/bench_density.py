"""Density: memory per idle session, from the kernel, and the most idle sessions alive at once while a
``shell`` call still answers within 100 ms.

Against a real ``agbox serve`` (idle release and lifetime pushed out of the way), sessions are added in
steps (``--density-step``, 50) by four client threads. After each step:
- 20 ``shell true`` calls through ``POST /mcp`` on random live sessions: the step passes while their
  p50 is <= 100 ms (p95 is reported too);
- every process of every session is found from the kernel (``/proc/<pid>/cgroup`` names the session's
  cgroup) and its PSS read from ``/proc/<pid>/smaps_rollup``; also the sessions' memory cgroups'
  ``memory.usage_in_bytes`` (kernel-accounted, includes kernel memory and tmpfs pages), the host's
  ``MemAvailable`` and the server process's own PSS.
The ramp stops at the cap (``--density-cap``: 2000 = the server's default ``max_sessions``; at about
7 MiB each that is about 14 GiB of this 24 GiB machine), when the 100 ms rule fails, when a create
fails, or when MemAvailable would fall under a guard (a quarter of RAM, at least 4 GiB) kept for
everything else on the machine. Every session is released at the end, and the server stopped, also
on failure.

Baselines in the same run: the PSS of a bare ``bwrap ... sleep`` sandbox and of bwrap running an idle
``python3 -I -S`` (what the agent costs beyond a bare interpreter), and ``subprocess.run(["true"])``.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import benchlib as B

FAMILY = "density"
MIB_KIB = 1024
CREATE_THREADS = 4


def _bare_pss_mib(count: int, command: list[str]) -> float:
    """Mean PSS (MiB) of ``count`` idle bare bwrap sandboxes running ``command``."""
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="agbox-bench-home-") as home:
        try:
            for _ in range(count):
                procs.append(subprocess.Popen(B.bwrap_typical(home, command), stdin=subprocess.PIPE,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)
            total = sum(B.pss_kib(pid) for proc in procs for pid in B.descendants(proc.pid))
        finally:
            for proc in procs:
                with contextlib.suppress(Exception):
                    proc.kill()
            for proc in procs:
                with contextlib.suppress(Exception):
                    proc.wait(10)
    return total / max(count, 1) / MIB_KIB


def _memory_cgroup_usage(pid: int) -> tuple[str, int] | None:
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                usage = Path(f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes").read_text()
                return path, int(usage)
            if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
                return path, int(Path(f"/sys/fs/cgroup{path}/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None


def _measure(data_dir: Path) -> dict[str, float]:
    """Per-sandbox figures over every sandbox of the server (its sessions and its warm pool)."""
    found = B.sandbox_pids(data_dir)
    pss = 0
    cgroups: dict[str, int] = {}
    processes = 0
    for pids in found.values():
        for pid in pids:
            processes += 1
            pss += B.pss_kib(pid)
            usage = _memory_cgroup_usage(pid)
            if usage is not None:
                cgroups[usage[0]] = usage[1]
    sessions = max(len(found), 1)
    return {"sandboxes_seen": len(found), "processes": processes, "pss_mib": pss / sessions / MIB_KIB,
            "cgroup_mib": sum(cgroups.values()) / max(len(cgroups), 1) / (1 << 20)}


def _host_mounts() -> int:
    with open("/proc/self/mountinfo") as handle:
        return sum(1 for _ in handle)


def _probe(client: Any, endpoint: str, ids: list[str], count: int) -> list[float]:
    out = []
    for _ in range(count):
        sid = random.choice(ids)
        start = time.perf_counter()
        B.mcp_shell(client, endpoint, sid)
        out.append(time.perf_counter() - start)
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    opts = B.OPTIONS
    cap = opts.density_cap or (100 if quick else 2000)
    step = max(1, min(opts.density_step, cap))
    probes = 10 if quick else 20
    bare_count = 10 if quick else 20
    mem = B.meminfo_kib()
    guard_kib = max(4 * 1024 * 1024, mem["MemTotal"] // 4)
    rows: list[dict[str, Any]] = []

    B.say(f"baselines: {bare_count} bare bwrap sandboxes idle (sleep), then idle python3")
    bare_pss = _bare_pss_mib(bare_count, ["/bin/sleep", "infinity"])
    python_pss = _bare_pss_mib(bare_count, ["/usr/bin/python3", "-I", "-S", "-c", "import sys; sys.stdin.read()"])
    sub = B.measure_subprocess_true(50)

    series: list[dict[str, Any]] = []
    ids: list[str] = []
    lock = threading.Lock()
    stop_reason = f"reached the cap of {cap} sessions"
    best = 0
    last_probe: list[float] = []
    first_creates: list[float] = []
    last_creates: list[float] = []
    release_s = 0.0
    leftovers = -1
    live_left: list[int] = []
    zombies_left: list[int] = []
    zombie_text = live_text = ""
    env = {"AGBOX_MAX_SESSIONS": str(cap + 100), "AGBOX_MAX_LIFETIME": "86400",
           "AGBOX_DEFAULT_IDLE_TIMEOUT": "86400"}
    data_dir = Path("/nonexistent")
    with B.bwrap_true() as bwrap, B.server("agbox-bench-density-", env) as srv:
        data_dir = srv.data_dir
        clients = [srv.sdk() for _ in range(CREATE_THREADS)]
        http = srv.http()
        server_pss0 = B.pss_kib(srv.pid)
        avail0 = B.meminfo_kib()["MemAvailable"]
        try:
            from agbox import CreateSessionParams

            def create_some(agb: Any, count: int) -> list[float]:
                out = []
                for _ in range(count):
                    start = time.perf_counter()
                    result = agb.create(CreateSessionParams(image_id=B.IMAGE, idle_release_timeout=86400))
                    if not result.success:
                        raise RuntimeError(f"create failed at {len(ids)} sessions: {result.error_message}")
                    out.append(time.perf_counter() - start)
                    with lock:
                        ids.append(result.session.session_id)
                return out

            ramp_start = time.monotonic()
            with ThreadPoolExecutor(CREATE_THREADS) as pool:
                while len(ids) < cap:
                    available = B.meminfo_kib()["MemAvailable"]
                    per_session_kib = (avail0 - available) / max(len(ids), 1) if ids else 10 * MIB_KIB
                    if available - per_session_kib * step < guard_kib:
                        stop_reason = (f"memory guard: MemAvailable {available / MIB_KIB / 1024:.1f} GiB would fall "
                                       f"under {guard_kib / MIB_KIB / 1024:.1f} GiB with {step} more sessions")
                        break
                    want = min(step, cap - len(ids))
                    shares = [want // CREATE_THREADS + (1 if i < want % CREATE_THREADS else 0)
                              for i in range(CREATE_THREADS)]
                    try:
                        creates = [t for part in pool.map(create_some, clients, shares) for t in part]
                    except Exception as exc:
                        stop_reason = f"{type(exc).__name__}: {exc}"[:300]
                        break
                    if not first_creates:
                        first_creates = creates
                    last_creates = creates
                    time.sleep(1.0)  # let the lifecycle sweep run at this size
                    probe = _probe(http, srv.endpoint, ids, probes)
                    bare = B.time_calls(bwrap, 5 if quick else 10, warmup=1)
                    figures = _measure(srv.data_dir)
                    point = {"sessions": len(ids), "create_p50_ms": B.percentile(creates, 50) * 1000,
                             "shell_p50_ms": B.percentile(probe, 50) * 1000,
                             "shell_p95_ms": B.percentile(probe, 95) * 1000,
                             "bwrap_p50_ms": B.percentile(bare, 50) * 1000, "host_mounts": _host_mounts(),
                             "mem_available_gib": B.meminfo_kib()["MemAvailable"] / MIB_KIB / 1024,
                             "server_pss_mib": B.pss_kib(srv.pid) / MIB_KIB,
                             "elapsed_s": time.monotonic() - ramp_start, **figures}
                    series.append(point)
                    B.say(f"{len(ids)} sessions: shell p50 {point['shell_p50_ms']:.1f} ms p95 "
                          f"{point['shell_p95_ms']:.1f} ms, create p50 {point['create_p50_ms']:.0f} ms, "
                          f"PSS {figures['pss_mib']:.2f} MiB/session, MemAvailable "
                          f"{point['mem_available_gib']:.1f} GiB")
                    if point["shell_p50_ms"] > 100:
                        stop_reason = f"shell p50 {point['shell_p50_ms']:.0f} ms > 100 ms at {len(ids)} sessions"
                        break
                    best = len(ids)
                    last_probe = probe
        finally:
            B.say(f"releasing {len(ids)} sessions")
            start = time.monotonic()

            def release(sid: str) -> None:
                with contextlib.suppress(Exception):
                    B.release_async(http, srv.endpoint, sid)

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(release, ids))
            live_left, zombies_left = B.wait_sandboxes(srv.data_dir, srv.warm_pool, 300)
            zombie_text, live_text = B.describe(zombies_left), B.describe(live_left)
            release_s = time.monotonic() - start
            http.close()
            for agb in clients:
                agb.close()
    live_after, zombies_after = B.live_sandbox_pids(data_dir)
    leftovers = sum(len(p) for p in live_after.values())

    last = series[-1] if series else {}
    passing = [p for p in series if p["sessions"] <= best] or series
    at_best = passing[-1] if passing else {}
    cleanup = f"released {len(ids)} sessions in {release_s:.1f} s; {leftovers} live sandbox processes left"
    if zombies_left:
        cleanup += (f"; while the server ran, {len(zombies_left)} zombie(s) of released sessions stayed unreaped: "
                    f"{zombie_text}")
    if live_left:
        cleanup += f"; {len(live_left)} live process(es) outlived the release: {live_text}"
    if zombies_after:
        cleanup += f"; {len(zombies_after)} zombie(s) after the server stopped"
    if at_best:
        server_growth_kib = (at_best["server_pss_mib"] * MIB_KIB - server_pss0) / max(at_best["sessions"], 1)
        rows.append(B.row(FAMILY, f"PSS per idle session at {at_best['sessions']} sessions (kernel smaps_rollup)",
                          key="density.pss", unit="MiB", value=at_best["pss_mib"],
                          baseline="bare bwrap sandbox running sleep, PSS MiB", baseline_value=bare_pss,
                          note=f"{at_best['processes']} processes in {at_best['sandboxes_seen']} sandbox cgroups "
                               f"({at_best['sessions']} sessions + the warm pool)"))
        rows.append(B.row(FAMILY, "PSS of bwrap + idle python3 -I -S (reference: bare interpreter)",
                          key="density.pss_python", unit="MiB", value=python_pss,
                          baseline="bare bwrap sandbox running sleep, PSS MiB", baseline_value=bare_pss))
        rows.append(B.row(FAMILY, "memory cgroup usage per idle session (memory.usage_in_bytes)",
                          key="density.cgroup", unit="MiB", value=at_best["cgroup_mib"],
                          baseline="PSS per session (this run)", baseline_value=at_best["pss_mib"],
                          note="kernel-accounted: includes kernel memory, page cache and tmpfs pages of the sandbox"))
        rows.append(B.row(FAMILY, "host MemAvailable drop per idle session", key="density.memavail", unit="MiB",
                          value=(avail0 / MIB_KIB - at_best["mem_available_gib"] * 1024) / at_best["sessions"],
                          baseline="PSS per session (this run)", baseline_value=at_best["pss_mib"],
                          note="everything the machine spends per session: processes, kernel, server side; "
                               "noisy because other work shares the machine"))
        rows.append(B.row(FAMILY, "server (agbox serve) PSS growth per session", key="density.server", unit="KiB",
                          value=server_growth_kib))
    bound = avail0 / MIB_KIB / at_best["pss_mib"] if at_best and at_best.get("pss_mib") else None
    rows.append(B.row(FAMILY, "most idle sessions alive with shell p50 <= 100 ms", key="density.max_sessions",
                      unit="sessions", value=float(best), baseline="memory bound: MemAvailable at start / PSS each",
                      baseline_value=bound, note=f"stopped: {stop_reason}; {cleanup}", higher_is_better=True,
                      series=series))
    if last_probe:
        rows.append(B.row(FAMILY, f"shell true via POST /mcp with {best} sessions alive", last_probe,
                          key="density.shell", baseline=B.SUBPROCESS_NAME, baseline_s=sub))
    if len(series) >= 2:
        first, final = series[0], series[-1]
        rows.append(B.row(FAMILY, f"bare bwrap /bin/true with {final['sessions']} sessions alive",
                          key="density.bwrap_last", unit="ms", value=final["bwrap_p50_ms"],
                          baseline=f"the same with {first['sessions']} sessions alive", baseline_value=first["bwrap_p50_ms"],
                          note=f"host mount table: {first['host_mounts']} -> {final['host_mounts']} entries "
                               "(sandbox roots are made inside each sandbox's own mount namespace)"))
    if first_creates and last_creates:
        rows.append(B.row(FAMILY, f"create over HTTP with {last.get('sessions', 0)} sessions alive (last step)",
                          last_creates, key="density.create_last", baseline="create in the first step",
                          baseline_s=first_creates, note=f"{CREATE_THREADS} client threads creating at once"))
    if leftovers:
        print(f"!! {leftovers} sandbox processes were left after the density run", flush=True)
    return rows


def plot(rows: list[dict[str, Any]], path: Path, plt: Any) -> None:
    series = next((r.get("series") for r in rows if r.get("series")), None)
    if not series:
        return
    n = [p["sessions"] for p in series]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    axes[0].plot(n, [p["shell_p50_ms"] for p in series], marker="o", label="shell p50")
    axes[0].plot(n, [p["shell_p95_ms"] for p in series], marker=".", label="shell p95")
    axes[0].axhline(100, color="red", linestyle="--", label="100 ms rule")
    axes[0].set_ylabel("ms (POST /mcp, true)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("density: idle sessions alive vs responsiveness and memory")
    axes[1].plot(n, [p["create_p50_ms"] for p in series], marker="o", color="#55a868", label="create p50 in step")
    if all("bwrap_p50_ms" in p for p in series):
        axes[1].plot(n, [p["bwrap_p50_ms"] for p in series], marker=".", color="#dd8452",
                     label="bare bwrap /bin/true p50 (host mounts grow with sessions)")
    axes[1].set_ylabel("ms")
    axes[1].legend(fontsize=8)
    axes[2].plot(n, [p["pss_mib"] for p in series], marker="o", color="#8172b3", label="PSS per session (MiB)")
    axes[2].plot(n, [p["cgroup_mib"] for p in series], marker=".", color="#937860", label="cgroup usage per session")
    axes[2].axhline(10, color="red", linestyle="--", label="10 MiB target")
    axes[2].set_ylabel("MiB")
    axes[2].set_ylim(bottom=0)
    axes[2].set_xlabel("idle sessions alive")
    ax2 = axes[2].twinx()
    ax2.plot(n, [p["mem_available_gib"] for p in series], color="#c44e52", alpha=0.6, label="MemAvailable (GiB)")
    ax2.set_ylabel("GiB available")
    lines = axes[2].get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    axes[2].legend(lines[0] + more[0], lines[1] + more[1], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
