"""Load: many concurrent clients doing a whole session's life at once, against one `agbox serve`.

Each of ``OPTIONS.concurrency`` (50) client threads loops for the run's duration (90 s; 20 s quick):
create a session → a ``shell`` call → a ``write_file`` + ``read_file`` pair → start a web server in the
sandbox and reach it through ``getLink`` (first 200 through the link) → release. Every step is timed
per operation; any failed step counts as an error (the loop goes on with a fresh session).

Baseline, measured in the same run just before: the same loop by ONE client (10 rounds), so each
row's ratio is "p50 under 50-way load / p50 alone". Targets: 0 errors, p99 create < 1 s.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import benchlib as B
import httpx

FAMILY = "load"
OPS = ("create", "shell", "files", "link", "release")
SERVE = "cd /tmp && (python3 -m http.server 30100 >/dev/null 2>&1 &)"


class Client:
    def __init__(self, endpoint: str, api_key: str) -> None:
        self.endpoint = endpoint
        self.api = httpx.Client(base_url=endpoint, headers={"authorization": f"Bearer {api_key}"}, timeout=120)
        self.web = httpx.Client(timeout=30)

    def close(self) -> None:
        self.api.close()
        self.web.close()

    def _ok(self, response: httpx.Response, what: str) -> dict[str, Any]:
        body = dict(response.json())
        if response.status_code != 200 or not body.get("success") or (body.get("data") or {}).get("isError"):
            raise RuntimeError(f"{what}: HTTP {response.status_code} {str(body)[:200]}")
        return body

    def tool(self, session_id: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        return self._ok(self.api.post("/mcp", json={"sessionId": session_id, "name": name,
                                                     "args": json.dumps(args)}), name)

    def round(self, timings: dict[str, list[float]]) -> None:
        """One session's life; appends each step's seconds to ``timings``."""
        def step(op: str, fn: Any) -> Any:
            start = time.perf_counter()
            value = fn()
            timings[op].append(time.perf_counter() - start)
            return value

        created = step("create", lambda: self._ok(self.api.post("/mcp/createSession", params={"imageId": B.IMAGE},
                                                                json={}), "create"))
        sid = created["data"]["sessionId"]
        try:
            step("shell", lambda: self.tool(sid, "shell", {"command": "echo load", "timeout_ms": 10000}))
            step("files", lambda: (self.tool(sid, "write_file", {"path": "/tmp/load.txt", "content": "x" * 1024}),
                                   self.tool(sid, "read_file", {"path": "/tmp/load.txt"})))

            def link() -> None:
                self.tool(sid, "shell", {"command": SERVE, "timeout_ms": 10000})
                url = self._ok(self.api.get("/internet/getLink", params={"sessionId": sid, "port": "30100"}),
                               "getLink")["data"]["url"]
                deadline = time.monotonic() + 30
                while self.web.get(url).status_code != 200:  # 502 until the server in the sandbox listens
                    if time.monotonic() > deadline:
                        raise RuntimeError("link did not answer 200 within 30 s")
                    time.sleep(0.02)

            step("link", link)
        finally:
            step("release", lambda: self._ok(self.api.post("/mcp/releaseSession", json={"sessionId": sid}),
                                             "release"))


def run(quick: bool) -> list[dict[str, Any]]:
    duration = B.OPTIONS.duration_s or (20.0 if quick else 90.0)
    workers = B.OPTIONS.concurrency
    rows: list[dict[str, Any]] = []
    with B.server("agbox-bench-load-") as srv:
        alone: dict[str, list[float]] = {op: [] for op in OPS}
        client = Client(srv.endpoint, srv.api_key)
        try:
            B.say("baseline: the same loop by one client (10 rounds)")
            for _ in range(2 if quick else 10):
                client.round(alone)
        finally:
            client.close()

        B.say(f"{workers} clients for {duration:.0f} s")
        loaded: dict[str, list[float]] = {op: [] for op in OPS}
        errors: list[str] = []
        lock = threading.Lock()
        # Clients are made before the clock starts (an httpx client builds an SSL context: slow under load).
        clients = [Client(srv.endpoint, srv.api_key) for _ in range(workers)]
        stop_at = time.monotonic() + duration

        def worker(mine: Client) -> None:
            try:
                while time.monotonic() < stop_at:
                    timings: dict[str, list[float]] = {op: [] for op in OPS}
                    try:
                        mine.round(timings)
                    except Exception as exc:
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    with lock:
                        for op, values in timings.items():
                            loaded[op].extend(values)
            finally:
                mine.close()

        threads = [threading.Thread(target=worker, args=(clients[i],), name=f"load-{i}") for i in range(workers)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        rounds = len(loaded["release"])
        for op in OPS:
            if loaded[op]:
                rows.append(B.row(FAMILY, f"{op} under {workers} concurrent clients", loaded[op], key=f"load.{op}",
                                  baseline="the same step, one client alone", baseline_s=alone[op] or None))
        rows.append(B.row(FAMILY, "session rounds completed", key="load.rounds", value=rounds, unit="rounds",
                          note=f"{rounds / elapsed:.1f} rounds/s over {elapsed:.0f} s", higher_is_better=True))
        rows.append(B.row(FAMILY, "errors", key="load.errors", value=len(errors), unit="errors",
                          note="; ".join(sorted(set(errors))[:3])))
        log = srv.log()
        rows.append(B.row(FAMILY, "server log tracebacks", key="load.tracebacks", value=log.count("Traceback"),
                          unit="tracebacks"))
    return rows
