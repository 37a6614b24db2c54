"""Browser: a session's Chromium next to the same Chromium started by hand on the host.

One ``agbox serve``; every sample uses a fresh browser-image session (created outside the timing).
Baseline, in the same run and interleaved: Chromium started directly on the host with the very
command line agbox builds (``agbox.services.chromium.chromium_command``), a fresh profile each time.
Figures:

- ``init_to_cdp``: ``/browser/init`` → ``getCdpLink`` → first CDP answer (``Browser.getVersion``) over the
  link, vs host start → "DevTools listening" → first answer on a direct WebSocket;
- ``reinit``: init after ``stopChrome`` in the same session (profile and font caches warm);
- ``cdp_round_trip``: ``Browser.getVersion`` on an open CDP link vs on a direct WebSocket;
- ``first_page``: Playwright ``connect_over_cdp`` → new page → a local page loaded (``data:`` URL);
- ``idle_pss``: PSS of the whole browser session (sandbox, agent and Chromium) idle on about:blank, vs
  the host Chromium's process tree.

``def run(quick: bool) -> list[dict]`` is what ``bench/run.py`` calls; ``python bench/bench_browser.py
[--quick]`` prints the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import benchlib as B
from websockets.sync.client import ClientConnection, connect

FAMILY = "browser"
BASELINE = "Chromium started by hand on the host (same flags)"
LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")
PAGE = "data:text/html,<title>bench</title><h1>hello</h1>"


def version(ws: ClientConnection, message_id: int = 1) -> None:
    ws.send(json.dumps({"id": message_id, "method": "Browser.getVersion"}))
    while json.loads(ws.recv(timeout=30)).get("id") != message_id:
        pass


@contextlib.contextmanager
def host_chromium() -> Iterator[tuple[str, subprocess.Popen[bytes], float]]:
    """Chromium on the host with agbox's command line and a fresh profile: (ws URL, process, seconds to ready)."""
    from agbox.services.chromium import chromium_command, parse_option

    profile = tempfile.mkdtemp(prefix="agbox-bench-chromium-")
    argv = chromium_command(parse_option("{}"), profile_dir=profile).argv
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        url = ""
        for line in proc.stderr:
            match = LISTENING.search(line)
            if match:
                url = match.group(1).decode()
                break
        if not url:
            raise RuntimeError("host Chromium did not open DevTools")
        with connect(url, open_timeout=30) as ws:
            version(ws)
        ready = time.perf_counter() - start
        yield url, proc, ready
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def browser_sandbox_pss_mib(data_dir: Path) -> float:
    """PSS of the sandbox whose processes include a Chromium (there is one browser session at a time)."""
    for pids in B.sandbox_pids(data_dir).values():
        if any(B.proc_state(pid)[2] == "chromium" for pid in pids):
            return sum(B.pss_kib(pid) for pid in pids) / 1024
    raise RuntimeError("no sandbox runs a Chromium")


def host_pss_mib(pid: int) -> float:
    return sum(B.pss_kib(p) for p in B.descendants(pid)) / 1024


async def first_page(url: str) -> float:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        start = time.perf_counter()
        browser = await playwright.chromium.connect_over_cdp(url)
        page = await browser.contexts[0].new_page()
        await page.goto(PAGE)
        assert await page.title() == "bench"
        elapsed = time.perf_counter() - start
        await browser.close()
        return elapsed


def run(quick: bool) -> list[dict[str, Any]]:
    from agbox import CreateSessionParams
    from agbox.client.browser import BrowserOption

    n = B.samples(quick, 10, 3)
    rows: list[dict[str, Any]] = []
    with B.server("agbox-bench-browser-") as srv:
        agb = srv.sdk()
        init_s: list[float] = []
        reinit_s: list[float] = []
        host_s: list[float] = []
        first_s: list[float] = []
        host_first_s: list[float] = []
        pss: list[float] = []
        host_pss: list[float] = []
        for i in range(n + 1):  # the first round warms the page cache (Chromium is ~300 MB)
            session = agb.create(CreateSessionParams(image_id="agb-browser-use-1")).session
            try:
                start = time.perf_counter()
                if not session.browser.initialize(BrowserOption()):
                    raise RuntimeError(f"browser init failed: {session.browser.last_error}")
                with connect(session.browser.get_endpoint_url(), open_timeout=30) as ws:
                    version(ws)
                    ready = time.perf_counter() - start
                    if i == n:  # last round: CDP round trips on the open link
                        link_rt = B.time_calls(lambda ws=ws: version(ws, 7), B.samples(quick, 200, 30))
                first = asyncio.run(first_page(session.browser.get_endpoint_url()))
                if i == n:
                    pss.append(browser_sandbox_pss_mib(srv.data_dir))
                session.browser.destroy()
                session.browser._initialized = False
                start = time.perf_counter()
                if not session.browser.initialize(BrowserOption()):
                    raise RuntimeError(f"browser re-init failed: {session.browser.last_error}")
                again = time.perf_counter() - start
            finally:
                session.delete()
            with host_chromium() as (url, proc, host_ready):
                host_first = asyncio.run(first_page(url))
                if i == n:
                    with connect(url, open_timeout=30) as ws:
                        host_rt = B.time_calls(lambda ws=ws: version(ws, 7), B.samples(quick, 200, 30))
                    host_pss.append(host_pss_mib(proc.pid))
            if i == 0:
                continue
            init_s.append(ready)
            reinit_s.append(again)
            host_s.append(host_ready)
            first_s.append(first)
            host_first_s.append(host_first)
        rows.append(B.row(FAMILY, "init to CDP ready (fresh session)", init_s, key="browser.init_to_cdp",
                          baseline=BASELINE, baseline_s=host_s,
                          note="/browser/init, getCdpLink, first Browser.getVersion over the CDP link"))
        rows.append(B.row(FAMILY, "re-init after stopChrome", reinit_s, key="browser.reinit", baseline=BASELINE,
                          baseline_s=host_s, note="same session: profile exists"))
        rows.append(B.row(FAMILY, "CDP round trip (Browser.getVersion)", link_rt, key="browser.cdp_round_trip",
                          baseline="direct WebSocket to a host Chromium", baseline_s=host_rt))
        rows.append(B.row(FAMILY, "Playwright connect to first page loaded", first_s, key="browser.first_page",
                          baseline=BASELINE, baseline_s=host_first_s, note="connect_over_cdp, new_page, goto data: URL"))
        rows.append(B.row(FAMILY, "idle browser session PSS", unit="MiB", value=pss[0], baseline=BASELINE,
                          baseline_value=host_pss[0], key="browser.idle_pss",
                          note="sandbox + agent + Chromium on about:blank after one page"))
    return rows


if __name__ == "__main__":
    for r in run("--quick" in sys.argv):
        print(json.dumps(r))
