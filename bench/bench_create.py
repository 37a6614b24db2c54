"""Session create: sequential (platform direct, runtime only, our SDK embedded and over HTTP), a burst of
concurrent creates over HTTP, and the create rate sustained for a while.

Baselines, measured here in the same run: the typical bare ``bwrap ... /bin/true`` of
machine-measurements §1 and a plain ``subprocess.run(["true"])``.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import benchlib as B

FAMILY = "create"


async def _platform_direct(data_dir: Path, n: int, warmup: int) -> tuple[list[float], list[float]]:
    """(create via SessionService, create via LocalRuntime only) latencies, each followed by a release."""
    from agbox.runtime.base import SandboxSpec
    from agbox.services.platform import Platform
    from agbox.settings import Settings

    platform = Platform(Settings.from_env(environ={}, data_dir=data_dir))
    await platform.start()
    service: list[float] = []
    runtime: list[float] = []
    try:
        record, _ = platform.keys.create("bench")
        for i in range(warmup + n):
            start = time.perf_counter()
            session = await platform.sessions.create(record.id, B.IMAGE)
            elapsed = time.perf_counter() - start
            await platform.sessions.release(record.id, session.id)
            if i >= warmup:
                service.append(elapsed)
        image = platform.images.get(B.IMAGE)
        for i in range(warmup + n):
            spec = SandboxSpec(session_id="session-" + secrets.token_hex(10), image_id=image.id, limits=image.limits,
                               env=dict(image.env))
            start = time.perf_counter()
            handle = await platform.runtime.create(spec)
            elapsed = time.perf_counter() - start
            await platform.runtime.destroy(handle)
            if i >= warmup:
                runtime.append(elapsed)
    finally:
        await platform.close()
    return service, runtime


def _sdk_sequential(agb: Any, n: int, warmup: int) -> list[float]:
    from agbox import CreateSessionParams

    out = []
    for i in range(warmup + n):
        start = time.perf_counter()
        result = agb.create(CreateSessionParams(image_id=B.IMAGE))
        elapsed = time.perf_counter() - start
        if not result.success:
            raise RuntimeError(f"create failed: {result.error_message}")
        result.session.delete()
        if i >= warmup:
            out.append(elapsed)
    return out


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


def run(quick: bool) -> list[dict[str, Any]]:
    opts = B.OPTIONS
    n = B.samples(quick, 100, 15)
    warmup = 3
    duration = opts.duration_s or (5.0 if quick else 30.0)
    rounds = 1 if quick else 3
    rows: list[dict[str, Any]] = []

    B.say("baselines: bare bwrap and subprocess")
    sub = B.measure_subprocess_true(max(n, 30))
    bwrap = B.measure_bwrap_true(max(n, 30))
    rows.append(B.row(FAMILY, B.SUBPROCESS_NAME, sub, key="create.subprocess"))
    rows.append(B.row(FAMILY, B.BWRAP_NAME, bwrap, key="create.bwrap", baseline=B.SUBPROCESS_NAME, baseline_s=sub))

    def vs_bwrap(name: str, samples_s: list[float], key: str, note: str = "") -> dict[str, Any]:
        return B.row(FAMILY, name, samples_s, key=key, baseline=B.BWRAP_NAME, baseline_s=bwrap, note=note)

    B.say(f"sequential creates, platform direct and runtime only (n={n})")
    with B.temp_root("agbox-bench-create-") as root:
        service, runtime = asyncio.run(_platform_direct(root / "data", n, warmup))
    rows.append(vs_bwrap("create, platform direct (SessionService.create, embedded)", service, "create.platform"))
    rows.append(vs_bwrap("create, LocalRuntime.create only (no store, no service)", runtime, "create.runtime"))

    B.say(f"sequential creates, our SDK embedded (n={n})")
    from agbox import AGB

    with B.temp_root("agbox-bench-create-") as root:
        agb = AGB(data_dir=root / "data")
        try:
            embedded = _sdk_sequential(agb, n, warmup)
        finally:
            agb.close()
    rows.append(vs_bwrap("create, our SDK embedded (AGB(data_dir=...))", embedded, "create.sdk_embedded"))

    with B.server("agbox-bench-create-http-") as srv:
        B.say(f"sequential creates, our SDK over HTTP (n={n})")
        agb = srv.sdk()
        try:
            http = _sdk_sequential(agb, n, warmup)
        finally:
            agb.close()
        rows.append(vs_bwrap("create, our SDK over HTTP (agbox serve)", http, "create.sdk_http"))

        conc = opts.concurrency
        B.say(f"{conc} concurrent creates over HTTP x {rounds}")
        bwrap_burst, bwrap_walls = _bwrap_burst(conc, rounds)
        burst, walls = _burst(srv, conc, rounds)
        rows.append(B.row(FAMILY, f"create, {conc} concurrent over HTTP (latency of each)", burst,
                          key="create.concurrent", baseline=f"{conc} concurrent bare bwrap /bin/true",
                          baseline_s=bwrap_burst,
                          note=f"{rounds} round(s); batch of {conc} done in p50 {B.percentile(walls, 50):.2f} s"))
        burst_rate = conc / B.percentile(walls, 50)
        rows.append(B.row(FAMILY, f"burst: {conc} concurrent creates, creates/s", key="create.burst_rate",
                          unit="creates/s", value=burst_rate, baseline=f"{conc} concurrent bare bwrap, launches/s",
                          baseline_value=conc / B.percentile(bwrap_walls, 50),
                          higher_is_better=True))

        workers = opts.workers
        B.say(f"sustained create rate over HTTP: {workers} workers for {duration:g} s")
        made: list[str] = []
        rate, done, failed, lat = _sustained(srv, workers, duration, made)
        B.wait_sessions_gone(set(made), 120)
        with tempfile.TemporaryDirectory(prefix="agbox-bench-home-") as home:
            argv = B.bwrap_typical(home)
            base_rate, _, _ = B.rate_for(lambda: B._run_ok(argv), workers, min(duration, 10.0))
        note = f"{done} creates in {duration:g} s by {workers} client threads (create, then async release)"
        if failed:
            note += f"; {failed} failed"
        if lat:
            note += f"; create latency under load p50 {B.percentile(lat, 50) * 1000:.0f} ms"
        rows.append(B.row(FAMILY, f"sustained creates/s for {duration:g} s over HTTP", key="create.sustained",
                          unit="creates/s", value=rate, baseline=f"bare bwrap /bin/true launches/s ({workers} threads)",
                          baseline_value=base_rate, note=note, higher_is_better=True))
    return rows
