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


def quiet_official_sdk() -> None:
    """The official SDK logs every call at INFO to stderr; the figures are taken at ERROR level."""
    from agb.logger import AGBLogger

    AGBLogger.set_level(os.environ.get("AGB_LOG_LEVEL", "ERROR"))


def _tti(create: Any, execute: Any, delete: Any, n: int, warmup: int,
         bwrap: Any) -> tuple[list[float], list[float], list[float], list[float]]:
    """(create→first result, create part, first-command part, interleaved bare bwrap) latencies."""
    total, creates, firsts, base = [], [], [], []
    for i in range(warmup + n):
        start = time.perf_counter()
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
    return total, creates, firsts, base


def _created(result: Any) -> Any:
    if not result.success:
        raise RuntimeError(f"create failed: {result.error_message}")
    return result.session


def _note(creates: list[float], firsts: list[float]) -> str:
    return (f"create part p50 {B.percentile(creates, 50) * 1000:.1f} ms + first command p50 "
            f"{B.percentile(firsts, 50) * 1000:.1f} ms")


def run(quick: bool) -> list[dict[str, Any]]:
    from agbox import AGB, CreateSessionParams

    n = B.samples(quick, 50, 10)
    warmup = 2
    rows: list[dict[str, Any]] = []
    B.say("baseline: bare bwrap")
    rows.append(B.row(FAMILY, B.BWRAP_NAME, B.measure_bwrap_true(max(n, 30)), key="tti.bwrap"))

    def add(name: str, key: str, measured: tuple[list[float], list[float], list[float], list[float]]) -> None:
        total, creates, firsts, base = measured
        rows.append(B.row(FAMILY, name, total, key=key, baseline=B.BWRAP_NAME + " (interleaved)", baseline_s=base,
                          note=_note(creates, firsts)))

    with B.bwrap_true() as bwrap, B.server("agbox-bench-tti-") as srv:
        B.say(f"official SDK over HTTP (n={n})")
        quiet_official_sdk()
        from agb.session_params import CreateSessionParams as OfficialParams

        official = srv.official()
        add("create -> first shell result, official SDK over HTTP", "tti.official_http",
            _tti(lambda: _created(official.create(OfficialParams(image_id=B.IMAGE))),
                 lambda s: s.command.execute("true"), official.delete, n, warmup, bwrap))
        B.say(f"our SDK over HTTP (n={n})")
        ours = srv.sdk()
        try:
            add("create -> first shell result, our SDK over HTTP", "tti.sdk_http",
                _tti(lambda: _created(ours.create(CreateSessionParams(image_id=B.IMAGE))),
                     lambda s: s.command.execute("true"), lambda s: s.delete(), n, warmup, bwrap))
        finally:
            ours.close()

    B.say(f"our SDK embedded (n={n})")
    with B.bwrap_true() as bwrap, B.temp_root("agbox-bench-tti-emb-") as root:
        agb = AGB(data_dir=root / "data")
        try:
            add("create -> first shell result, our SDK embedded", "tti.embedded",
                _tti(lambda: _created(agb.create(CreateSessionParams(image_id=B.IMAGE))),
                     lambda s: s.command.execute("true"), lambda s: s.delete(), n, warmup, bwrap))
        finally:
            agb.close()
    return rows
