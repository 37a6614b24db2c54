"""Session create: sequential (platform direct, runtime only, our SDK embedded and over HTTP), a burst of
concurrent creates over HTTP, and the create rate sustained for a while.

Baselines, measured here in the same run: the typical bare ``bwrap ... /bin/true`` of
machine-measurements §1 and a plain ``subprocess.run(["true"])``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import benchlib as B

FAMILY = "create"
OFFERED_RATE = 100.0  # creates/s of the open-loop run (issue 16's target)
PACE_S = 0.15  # spacing of sequential creates with the warm pool on, so it has refilled (a start is ~50 ms)


def settings_for(data_dir: Path, pool: int | None) -> Any:
    """Platform settings for a temp data dir; ``pool`` sets the warm pool (None: the platform's default)."""
    from agbox.settings import Settings

    extra: dict[str, Any] = {}
    if pool is not None and "warm_pool_size" in Settings.__dataclass_fields__:
        extra["warm_pool_size"] = pool
    return Settings.from_env(environ={}, data_dir=data_dir, **extra)


async def _platform_direct(data_dir: Path, n: int, warmup: int, bwrap: Any, pool: int | None,
                           pace_s: float = 0.0) -> dict[str, list[float]]:
    """Creates via SessionService (each followed by a release and one interleaved bare bwrap, not timed).

    With the warm pool off (``pool=0``) every create starts a sandbox, and the run also records where the
    time goes: the runtime create inside the service create, the spawner thread's share, the CPU inside the
    sandbox's cgroup (cpuacct, spawn until idle) and in this process (the control plane), and then creates
    through ``LocalRuntime.create`` alone. With the pool on, creates are spaced ``pace_s`` apart so that
    the pool has refilled: the hand-over path."""
    from agbox.runtime.base import SandboxSpec
    from agbox.runtime.cgroups import CgroupSet
    from agbox.services.platform import Platform

    platform = Platform(settings_for(data_dir, pool))
    await platform.start()
    out: dict[str, Any] = {k: [] for k in ("service", "service_base", "runtime", "runtime_base",
                                                   "sandbox_cpu", "control_cpu", "spawn", "overhead")}
    runtime = platform.runtime
    cold = pool == 0
    spawns: list[float] = []
    inner: list[float] = []
    create = runtime.create
    if cold:
        spawn = runtime._spawn  # type: ignore[attr-defined]

        def timed_spawn(*args: Any) -> Any:
            # Runs on the runtime's single spawner thread: vfork/exec of the launcher and bwrap.
            start = time.perf_counter()
            try:
                return spawn(*args)
            finally:
                spawns.append(time.perf_counter() - start)

        async def timed_create(spec: Any) -> Any:
            start = time.perf_counter()
            try:
                return await create(spec)
            finally:
                inner.append(time.perf_counter() - start)

        runtime._spawn = timed_spawn  # type: ignore[attr-defined]  # instrument this instance only
        runtime.create = timed_create  # type: ignore[method-assign]
    threads_before: dict[str, float] = {}
    kernel_before = 0.0
    try:
        record, _ = platform.keys.create("bench")
        await asyncio.sleep(pace_s)
        for i in range(warmup + n):
            if i == warmup:
                threads_before, kernel_before = B.thread_cpu_s(), B.kernel_threads_cpu_s()
            began = time.perf_counter()
            cpu0 = time.process_time()
            start = time.perf_counter()
            session = await platform.sessions.create(record.id, B.IMAGE)
            elapsed = time.perf_counter() - start
            control_cpu = time.process_time() - cpu0
            group = CgroupSet(dict(session.handle["cgroups"]), runtime.cgroups.version)
            await asyncio.sleep(0.05)  # let the agent settle idle, then read what its start cost
            sandbox_cpu = runtime.cgroups.cpu_usage_ns(group) / 1e9
            await platform.sessions.release(record.id, session.id)
            base = B.timed(bwrap)()
            if i >= warmup:
                out["service"].append(elapsed)
                out["service_base"].append(base)
                out["control_cpu"].append(control_cpu)
                out["sandbox_cpu"].append(sandbox_cpu)
                if cold:
                    out["overhead"].append(elapsed - inner[-1])
                    out["spawn"].append(spawns[-1])
            await asyncio.sleep(max(pace_s - (time.perf_counter() - began), 0))
        await asyncio.sleep(0.2)  # the last release's teardown
        threads_after, kernel_after = B.thread_cpu_s(), B.kernel_threads_cpu_s()
        # CPU per create+release cycle by thread of this process (the bench's own baseline bwrap runs are
        # children, not threads, so they do not count here), and in the kernel's threads.
        out["thread_cpu"] = {name: (threads_after[name] - threads_before.get(name, 0.0)) / n
                             for name in threads_after}
        out["kernel_cpu"] = (kernel_after - kernel_before) / n
        if cold:
            image = platform.images.get(B.IMAGE)
            for i in range(warmup + n):
                spec = SandboxSpec(session_id="session-" + secrets.token_hex(10), image_id=image.id,
                                   limits=image.limits, env=dict(image.env))
                start = time.perf_counter()
                handle = await create(spec)
                elapsed = time.perf_counter() - start
                await runtime.destroy(handle)
                base = B.timed(bwrap)()
                if i >= warmup:
                    out["runtime"].append(elapsed)
                    out["runtime_base"].append(base)
    finally:
        await platform.close()
    return out


def _sdk_create(agb: Any) -> float:
    """One create (timed) and its delete (not timed)."""
    from agbox import CreateSessionParams

    start = time.perf_counter()
    result = agb.create(CreateSessionParams(image_id=B.IMAGE))
    elapsed = time.perf_counter() - start
    if not result.success:
        raise RuntimeError(f"create failed: {result.error_message}")
    result.session.delete()
    return elapsed


def _burst(srv: B.Server, concurrency: int, rounds: int) -> tuple[list[float], list[float]]:
    """``concurrency`` creates started at once over HTTP, ``rounds`` times: (per-create latencies, batch walls)."""
    from agbox import CreateSessionParams

    clients = [srv.sdk() for _ in range(concurrency)]
    latencies: list[float] = []
    walls: list[float] = []
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            for _ in range(rounds):
                barrier = threading.Barrier(concurrency)

                def one(agb: Any, barrier: threading.Barrier = barrier) -> tuple[float, Any]:
                    barrier.wait(30)
                    start = time.perf_counter()
                    result = agb.create(CreateSessionParams(image_id=B.IMAGE))
                    return time.perf_counter() - start, result

                start = time.perf_counter()
                results = list(pool.map(one, clients))
                walls.append(time.perf_counter() - start)
                failed = [r.error_message for _, r in results if not r.success]
                list(pool.map(lambda r: r[1].session.delete() if r[1].success else None, results))
                if failed:
                    raise RuntimeError(f"{len(failed)} of {concurrency} concurrent creates failed: {failed[0]}")
                latencies.extend(elapsed for elapsed, _ in results)
    finally:
        for agb in clients:
            agb.close()
    return latencies, walls


def _bwrap_burst(concurrency: int, rounds: int) -> tuple[list[float], list[float]]:
    out: list[float] = []
    walls: list[float] = []
    with tempfile.TemporaryDirectory(prefix="agbox-bench-home-") as home, ThreadPoolExecutor(concurrency) as pool:
        argv = B.bwrap_typical(home)
        for _ in range(rounds):
            barrier = threading.Barrier(concurrency)

            def one(_: int, barrier: threading.Barrier = barrier) -> float:
                barrier.wait(30)
                start = time.perf_counter()
                B._run_ok(argv)
                return time.perf_counter() - start

            start = time.perf_counter()
            out.extend(pool.map(one, range(concurrency)))
            walls.append(time.perf_counter() - start)
    return out, walls


def _sustained(srv: B.Server, workers: int, duration_s: float,
               made: list[str]) -> tuple[float, int, int, list[float]]:
    """Creates per second over HTTP by ``workers`` client threads, each looping create + async release."""
    from agbox import CreateSessionParams

    local = threading.local()
    latencies: list[float] = []
    clients: list[Any] = []
    lock = threading.Lock()

    def once() -> None:
        if not hasattr(local, "agb"):
            local.agb, local.http = srv.sdk(), srv.http()
            with lock:
                clients.extend([local.agb, local.http])
        start = time.perf_counter()
        result = local.agb.create(CreateSessionParams(image_id=B.IMAGE))
        elapsed = time.perf_counter() - start
        if not result.success:
            raise RuntimeError(result.error_message)
        latencies.append(elapsed)
        made.append(result.session.session_id)
        B.release_async(local.http, srv.endpoint, result.session.session_id)

    try:
        rate, done, failed = B.rate_for(once, workers, duration_s)
    finally:
        for client in clients:
            client.close()
    return rate, done, failed, latencies


def _offered(srv: B.Server, rate: float, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Creates offered at ``rate`` per second over HTTP (our SDK, one client per thread), each followed by
    an async release (not timed): latencies from each create's scheduled time, the achieved rate, and the
    CPU the server, this client and the kernel's threads spent per create."""
    from agbox import CreateSessionParams

    local = threading.local()
    clients: list[Any] = []
    lock = threading.Lock()
    created = [0]

    def once() -> None:
        if not hasattr(local, "agb"):
            local.agb, local.http = srv.sdk(), srv.http()
            with lock:
                clients.extend([local.agb, local.http])
        result = local.agb.create(CreateSessionParams(image_id=B.IMAGE))
        if not result.success:
            raise RuntimeError(result.error_message)
        B.release_async(local.http, srv.endpoint, result.session.session_id)
        with lock:
            created[0] += 1

    workers = max(16, int(rate * 0.3))  # enough threads for 300 ms of creates in flight
    server0, client0, kernel0 = _server_cpu_s(srv.pid), time.process_time(), B.kernel_threads_cpu_s()
    load0 = B.loadavg()
    try:
        latencies, failed, achieved, dropped = B.offered_rate(once, rate, duration_s, warmup_s, workers)
    finally:
        for client in clients:
            client.close()
    total = max(created[0], 1)  # creates made, warm-up included (CPU is per create actually made)
    return {"latencies": latencies, "failed": failed, "rate": achieved, "dropped": dropped,
            "server_cpu_ms": (_server_cpu_s(srv.pid) - server0) / total * 1000,
            "client_cpu_ms": (time.process_time() - client0) / total * 1000,
            "kernel_cpu_ms": (B.kernel_threads_cpu_s() - kernel0) / total * 1000,
            "load": f"{load0} -> {B.loadavg()}"}


def _bwrap_offered(rate: float, duration_s: float) -> list[float]:
    """The same open-loop schedule for bare ``bwrap ... /bin/true`` runs: how this machine keeps up now."""
    with tempfile.TemporaryDirectory(prefix="agbox-bench-home-") as home:
        argv = B.bwrap_typical(home)
        latencies, _, _, _ = B.offered_rate(lambda: B._run_ok(argv), rate, duration_s, 1.0, 16)
    return latencies


def _server_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def run(quick: bool) -> list[dict[str, Any]]:
    opts = B.OPTIONS
    n = B.samples(quick, 100, 15)
    warmup = 3
    duration = opts.duration_s or (5.0 if quick else 30.0)
    rounds = 1 if quick else 3
    rows: list[dict[str, Any]] = []
    interleaved = B.BWRAP_NAME + " (interleaved)"

    B.say("baselines: bare bwrap and subprocess")
    sub = B.measure_subprocess_true(max(n, 30))
    bwrap_samples = B.measure_bwrap_true(max(n, 30))
    rows.append(B.row(FAMILY, B.SUBPROCESS_NAME, sub, key="create.subprocess"))
    rows.append(B.row(FAMILY, B.BWRAP_NAME, bwrap_samples, key="create.bwrap", baseline=B.SUBPROCESS_NAME,
                      baseline_s=sub))

    def vs_bwrap(name: str, pair: tuple[list[float], list[float]], key: str, note: str = "") -> dict[str, Any]:
        return B.row(FAMILY, name, pair[0], key=key, baseline=interleaved, baseline_s=pair[1], note=note)

    pool = B.default_warm_pool()
    warm_label = f"warm pool on (default: {pool} started sandboxes per image; creates {PACE_S * 1000:.0f} ms apart)"
    cold_label = "warm pool off (every create starts a sandbox)" if pool else "no warm pool"
    cold_suffix = "_cold" if pool else ""
    with B.bwrap_true() as bwrap:
        B.say(f"sequential creates, platform direct and runtime only, pool off (n={n})")
        with B.temp_root("agbox-bench-create-") as root:
            direct = asyncio.run(_platform_direct(root / "data", n, warmup, bwrap, pool=0))
        rows.append(vs_bwrap(f"create, platform direct (SessionService.create), {cold_label}",
                             (direct["service"], direct["service_base"]), "create.platform" + cold_suffix))
        rows.append(vs_bwrap("create, LocalRuntime.create only (no store, no service), pool off",
                             (direct["runtime"], direct["runtime_base"]), "create.runtime"))
        sandbox_cpu = B.percentile(direct["sandbox_cpu"], 50) * 1000
        control_cpu = B.percentile(direct["control_cpu"], 50) * 1000
        cores = os.cpu_count() or 1
        rows.append(B.row(FAMILY, "CPU per create inside the sandbox cgroup (cpuacct: bwrap set-up + agent start)",
                          key="create.sandbox_cpu", unit="CPU ms", value=sandbox_cpu))
        rows.append(B.row(FAMILY, "CPU per create in the control plane (process_time of the platform process)",
                          key="create.control_cpu", unit="CPU ms", value=control_cpu))
        rows.append(B.row(FAMILY, "service overhead per create (SessionService.create minus its runtime.create)",
                          direct["overhead"], key="create.overhead", baseline=interleaved,
                          baseline_s=direct["service_base"],
                          note="store writes, checks, the session record: what a hand-over from a pool leaves"))
        # Where the CPU of one cold create + release goes (pool off; per create, averaged over the run).
        threads = direct["thread_cpu"]
        parts = [("agbox-spawner", "spawner thread: vfork+exec of the launcher (sh, setpriv) and bwrap"),
                 ("agbox-disk", "disk thread: the sandbox's ext4 layer (sparse copy, loop device, mount)"),
                 ("agbox-net", "network thread: namespace, veth, addresses, route (rtnetlink)"),
                 ("agbox-nft", "nft thread: the sandbox's rules and the host set (libnftables)"),
                 ("asyncio", "default executor: waiting for bwrap's info, teardown (cgroup kill, wait, rmdir)"),
                 ("MainThread", "event loop: service, store, agent channel, HTTP-less create and release")]
        for thread, what in parts:
            rows.append(B.row(FAMILY, f"CPU per cold create+release, {what}", key=f"create.cpu.{thread}",
                              unit="CPU ms", value=threads.get(thread, 0.0) * 1000))
        others = sum(v for k, v in threads.items() if k not in dict(parts))
        rows.append(B.row(FAMILY, "CPU per cold create+release, other threads of the platform process",
                          key="create.cpu.other", unit="CPU ms", value=others * 1000))
        rows.append(B.row(FAMILY, "CPU per cold create+release, kernel threads (netns/loop/cgroup teardown; "
                          "machine-wide)", key="create.cpu.kernel", unit="CPU ms", value=direct["kernel_cpu"] * 1000,
                          note="kworkers, softirq and RCU threads of the whole host: other work on it counts too"))
        spawn_ms = B.percentile(direct["spawn"], 50) * 1000
        rows.append(B.row(FAMILY, "spawner thread time per sandbox start (vfork+exec of the launcher and bwrap)",
                          direct["spawn"], key="create.spawn", baseline=interleaved,
                          baseline_s=direct["service_base"],
                          note=f"the local runtime spawns from ONE thread, so sandboxes cannot start faster than "
                               f"{1000 / spawn_ms:.0f}/s however many creates run at once"))
        rows.append(B.row(FAMILY, f"CPU-bound ceiling on {cores} cores: {cores} s / CPU per sandbox start",
                          key="create.cpu_ceiling", unit="creates/s", value=cores * 1000 / (sandbox_cpu + control_cpu),
                          note="what a sustained rate could reach with every core doing nothing but sandbox starts",
                          higher_is_better=True))
        if pool:
            B.say(f"sequential creates, platform direct, warm pool on (n={n})")
            with B.temp_root("agbox-bench-create-") as root:
                warm = asyncio.run(_platform_direct(root / "data", n, warmup, bwrap, pool=None, pace_s=PACE_S))
            rows.append(vs_bwrap(f"create, platform direct (SessionService.create), {warm_label}",
                                 (warm["service"], warm["service_base"]), "create.platform"))

        from agbox import AGB

        def embedded(label: str, key: str, env: dict[str, str], pace: float) -> None:
            B.say(f"sequential creates, our SDK embedded, {label} (n={n})")
            with B.temp_root("agbox-bench-create-") as root, B.env_set(**env):
                agb = AGB(data_dir=root / "data")
                try:
                    time.sleep(pace)
                    measured = B.paired(lambda: _sdk_create(agb), bwrap, n, warmup, pace_s=pace)
                finally:
                    agb.close()
            rows.append(vs_bwrap(f"create, our SDK embedded (AGB(data_dir=...)), {label}", measured, key))

        if pool:
            embedded(warm_label, "create.sdk_embedded", {}, PACE_S)
        embedded(cold_label, "create.sdk_embedded" + cold_suffix, {"AGBOX_WARM_POOL": "0"}, 0.0)

        if pool:
            with B.server("agbox-bench-create-cold-", {"AGBOX_WARM_POOL": "0"}) as cold_srv:
                B.say(f"sequential creates, our SDK over HTTP, {cold_label} (n={n})")
                agb = cold_srv.sdk()
                try:
                    measured = B.paired(lambda: _sdk_create(agb), bwrap, n, warmup)
                finally:
                    agb.close()
                rows.append(vs_bwrap(f"create, our SDK over HTTP (agbox serve), {cold_label}", measured,
                                     "create.sdk_http_cold"))

        with B.server("agbox-bench-create-http-") as srv:
            label = warm_label if pool else cold_label
            B.say(f"sequential creates, our SDK over HTTP, {label} (n={n})")
            agb = srv.sdk()
            try:
                time.sleep(PACE_S if pool else 0)
                http = B.paired(lambda: _sdk_create(agb), bwrap, n, warmup, pace_s=PACE_S if pool else 0.0)
            finally:
                agb.close()
            rows.append(vs_bwrap(f"create, our SDK over HTTP (agbox serve), {label}", http, "create.sdk_http"))

            conc = opts.concurrency
            B.say(f"{conc} concurrent creates over HTTP x {rounds}")
            bwrap_burst, bwrap_walls = _bwrap_burst(conc, rounds)
            burst, walls = _burst(srv, conc, rounds)
            rows.append(B.row(FAMILY, f"create, {conc} concurrent over HTTP (latency of each; default settings)", burst,
                              key="create.concurrent", baseline=f"{conc} concurrent bare bwrap /bin/true",
                              baseline_s=bwrap_burst,
                              note=f"{rounds} round(s); batch of {conc} done in p50 {B.percentile(walls, 50):.2f} s"))
            rows.append(B.row(FAMILY, f"burst: {conc} concurrent creates, creates/s", key="create.burst_rate",
                              unit="creates/s", value=conc / B.percentile(walls, 50),
                              baseline=f"{conc} concurrent bare bwrap, launches/s",
                              baseline_value=conc / B.percentile(bwrap_walls, 50), higher_is_better=True))

            workers = opts.workers
            B.say(f"sustained create rate over HTTP: {workers} workers for {duration:g} s")
            made: list[str] = []
            cpu0 = _server_cpu_s(srv.pid)
            rate, done, failed, lat = _sustained(srv, workers, duration, made)
            server_cpu = _server_cpu_s(srv.pid) - cpu0
            B.wait_sandboxes(srv.data_dir, srv.warm_pool, 120)
            with tempfile.TemporaryDirectory(prefix="agbox-bench-home-") as home:
                argv = B.bwrap_typical(home)
                base_rate, _, _ = B.rate_for(lambda: B._run_ok(argv), workers, min(duration, 10.0))
            note = f"{done} creates in {duration:g} s by {workers} client threads (create, then release)"
            if failed:
                note += f"; {failed} failed"
            if lat:
                note += f"; create latency under load p50 {B.percentile(lat, 50) * 1000:.0f} ms"
            if done:
                note += f"; server process CPU {server_cpu / len(made) * 1000:.1f} ms per create"
            rows.append(B.row(FAMILY, f"sustained creates/s for {duration:g} s over HTTP", key="create.sustained",
                              unit="creates/s", value=rate,
                              baseline=f"bare bwrap /bin/true launches/s ({workers} threads)",
                              baseline_value=base_rate, note=note, higher_is_better=True))

        rate = OFFERED_RATE
        offered_s = opts.duration_s or (10.0 if quick else 60.0)
        B.say(f"{rate:g} creates/s offered over HTTP for {offered_s:g} s, default settings (pool on)")
        bwrap_before = _bwrap_offered(rate, 5.0)
        with B.server("agbox-bench-create-offered-") as srv:
            offered = _offered(srv, rate, offered_s, 3.0)
            B.wait_sandboxes(srv.data_dir, srv.warm_pool, 120)
        bwrap_lat = bwrap_before + _bwrap_offered(rate, 5.0)
        lat = offered["latencies"]
        note = (f"{len(lat)} creates measured after a 3 s warm-up, each released right after; latency from its "
                f"scheduled time; load average {offered['load']}; CPU per create: server process (with its "
                f"sandboxes, reaped) {offered['server_cpu_ms']:.1f} ms, this client (our SDK) "
                f"{offered['client_cpu_ms']:.1f} ms, kernel threads {offered['kernel_cpu_ms']:.1f} ms")
        if offered["failed"]:
            note += f"; {offered['failed']} failed"
        if offered["dropped"]:
            note += f"; {offered['dropped']} never sent (the server was more than 30 s behind their schedule)"
        rows.append(B.row(FAMILY, f"{rate:g} creates/s offered for {offered_s:g} s over HTTP, pool on: latency",
                          lat, key="create.offered",
                          baseline=f"bare bwrap /bin/true at {rate:g}/s offered (before and after)",
                          baseline_s=bwrap_lat, note=note))
        rows.append(B.row(FAMILY, f"{rate:g} creates/s offered for {offered_s:g} s over HTTP, pool on: achieved rate",
                          key="create.offered_rate", unit="creates/s", value=offered["rate"], higher_is_better=True,
                          note=f"creates completed per second of their schedule; {offered['failed']} failed"))
    return rows
