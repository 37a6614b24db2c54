"""Time to interactive: create a session, then the first ``shell`` result (``true``), end to end.

Through HTTP with the official SDK (``agb``: create, then ``session.command.execute``, which takes the
LinkUrl route), through HTTP with our SDK, and embedded with our SDK. Baseline: the bare
``bwrap ... /bin/true`` (a sandbox that runs one command and is gone), measured in the same run.
"""

from __future__ import annotations

import os
import time
from typing import Any

import benchlib as B

FAMILY = "time_to_interactive"
PACE_S = 0.15  # with the warm pool on, start an iteration at most this often (the pool refills in ~50 ms)


def quiet_official_sdk() -> None:
    """The official SDK logs every call at INFO to stderr; the figures are taken at ERROR level."""
    from agb.logger import AGBLogger

    AGBLogger.set_level(os.environ.get("AGB_LOG_LEVEL", "ERROR"))


def _tti(create: Any, execute: Any, delete: Any, n: int, warmup: int, bwrap: Any,
         pace_s: float = 0.0) -> tuple[list[float], list[float], list[float], list[float]]:
    """(create→first result, create part, first-command part, interleaved bare bwrap) latencies; one
    iteration at most every ``pace_s`` seconds (so a warm pool has refilled)."""
    total, creates, firsts, base = [], [], [], []
    time.sleep(pace_s)
    for i in range(warmup + n):
        began = start = time.perf_counter()
        session = create()
        created = time.perf_counter()
        result = execute(session)
        done = time.perf_counter()
        delete(session)
        if not result.success:
            raise RuntimeError(f"first command failed: {result.error_message or result}")
        base_elapsed = B.timed(bwrap)()
        if i >= warmup:
            total.append(done - start)
            creates.append(created - start)
            firsts.append(done - created)
            base.append(base_elapsed)
        time.sleep(max(pace_s - (time.perf_counter() - began), 0.0))
    return total, creates, firsts, base


def _created(result: Any) -> Any:
    if not result.success:
        raise RuntimeError(f"create failed: {result.error_message}")
    return result.session


def _note(creates: list[float], firsts: list[float]) -> str:
    return (f"create part p50 {B.percentile(creates, 50) * 1000:.1f} ms + first command p50 "
            f"{B.percentile(firsts, 50) * 1000:.1f} ms")


def _first_commands(agb: Any, n: int, rows: list[dict[str, Any]]) -> None:
    """Why the first command after a warm create is slower than later ones: the same session's first
    command issued at once (while the pool refills in the server) or 100 ms later, and its second one."""
    from agbox import CreateSessionParams

    B.say(f"first commands after a warm create, our SDK over HTTP (n={n})")
    samples: dict[str, list[float]] = {"now": [], "later": [], "second": []}
    base: dict[str, list[float]] = {"now": [], "later": [], "second": []}

    def run_cmd(session: Any, kind: str) -> None:
        start = time.perf_counter()
        result = session.command.execute("true")
        samples[kind].append(time.perf_counter() - start)
        if not result.success:
            raise RuntimeError(result.error_message)
        time.sleep(0.003)
        base[kind].append(B.timed(B.subprocess_true)())

    time.sleep(PACE_S)
    for i in range(2 * n):
        began = time.perf_counter()
        session = _created(agb.create(CreateSessionParams(image_id=B.IMAGE)))
        if i % 2:
            time.sleep(0.1)
            run_cmd(session, "later")
        else:
            run_cmd(session, "now")
            run_cmd(session, "second")
        session.delete()
        time.sleep(max(PACE_S + 0.1 - (time.perf_counter() - began), 0.0))
    labels = {"now": ("first shell result right after a warm create (pool refilling in the server)", "tti.first_now"),
              "later": ("first shell result 100 ms after a warm create (refill done)", "tti.first_later"),
              "second": ("second shell result, right after the first", "tti.second")}
    for kind, (name, key) in labels.items():
        rows.append(B.row(FAMILY, name + ", our SDK over HTTP", samples[kind], key=key,
                          baseline=B.SUBPROCESS_NAME + " (interleaved)", baseline_s=base[kind]))


def run(quick: bool) -> list[dict[str, Any]]:
    from agbox import AGB, CreateSessionParams

    n = B.samples(quick, 50, 10)
    warmup = 2
    pool = B.default_warm_pool()
    pace = PACE_S if pool else 0.0
    warm = f"warm pool on (default {pool}; creates {PACE_S * 1000:.0f} ms apart)" if pool else "no warm pool"
    cold = "warm pool off"
    rows: list[dict[str, Any]] = []
    B.say("baseline: bare bwrap")
    rows.append(B.row(FAMILY, B.BWRAP_NAME, B.measure_bwrap_true(max(n, 30)), key="tti.bwrap"))

    def add(name: str, key: str, measured: tuple[list[float], list[float], list[float], list[float]]) -> None:
        total, creates, firsts, base = measured
        rows.append(B.row(FAMILY, name, total, key=key, baseline=B.BWRAP_NAME + " (interleaved)", baseline_s=base,
                          note=_note(creates, firsts)))

    quiet_official_sdk()
    from agb.session_params import CreateSessionParams as OfficialParams

    def official_run(srv: B.Server, label: str, key: str, pace_s: float) -> None:
        B.say(f"official SDK over HTTP, {label} (n={n})")
        official = srv.official()
        add(f"create -> first shell result, official SDK over HTTP, {label}", key,
            _tti(lambda: _created(official.create(OfficialParams(image_id=B.IMAGE))),
                 lambda s: s.command.execute("true"), official.delete, n, warmup, bwrap, pace_s))

    def embedded_run(label: str, key: str, env: dict[str, str], pace_s: float) -> None:
        B.say(f"our SDK embedded, {label} (n={n})")
        with B.temp_root("agbox-bench-tti-emb-") as root, B.env_set(**env):
            agb = AGB(data_dir=root / "data")
            try:
                add(f"create -> first shell result, our SDK embedded, {label}", key,
                    _tti(lambda: _created(agb.create(CreateSessionParams(image_id=B.IMAGE))),
                         lambda s: s.command.execute("true"), lambda s: s.delete(), n, warmup, bwrap, pace_s))
            finally:
                agb.close()

    with B.bwrap_true() as bwrap:
        with B.server("agbox-bench-tti-") as srv:
            official_run(srv, warm, "tti.official_http", pace)
            B.say(f"our SDK over HTTP (n={n})")
            ours = srv.sdk()
            try:
                add(f"create -> first shell result, our SDK over HTTP, {warm}", "tti.sdk_http",
                    _tti(lambda: _created(ours.create(CreateSessionParams(image_id=B.IMAGE))),
                         lambda s: s.command.execute("true"), lambda s: s.delete(), n, warmup, bwrap, pace))
                if pool:
                    _first_commands(ours, min(n, 30), rows)
            finally:
                ours.close()
        embedded_run(warm, "tti.embedded", {}, pace)
        if pool:
            with B.server("agbox-bench-tti-cold-", {"AGBOX_WARM_POOL": "0"}) as srv:
                official_run(srv, cold, "tti.official_http_cold", 0.0)
            embedded_run(cold, "tti.embedded_cold", {"AGBOX_WARM_POOL": "0"}, 0.0)
    return rows
