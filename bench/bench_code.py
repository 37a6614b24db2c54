"""run_code's Python: what the IPython shell costs at a session's first run, and a warm run.

- In a session (``agbox serve`` with the warm pool off, so the one live sandbox is the session's; our SDK over
  HTTP): the first ``run_code`` after create (``1 + 1``; it starts the session's IPython worker) and a warm
  ``run_code`` in a session that already ran Python. Baseline, interleaved: ``python3 -c "1 + 1"`` on the host
  (a bare interpreter start, what a fresh process per call would cost at least).
- The session's memory (PSS of all its processes) before any Python and after the first run: an idle session
  that never runs Python has no worker.
- JavaScript in the same warm session: the first ``run_code`` (starts the Node.js REPL worker; one sample,
  next to ``node -e``) and a warm one.
- The worker alone, on the host (no sandbox, no agent): start until the first cell's answer, a warm cell, and
  its PSS, next to the hand-written worker it replaced (``code_worker.py`` of commit ``HANDWRITTEN_COMMIT``,
  read with ``git show``), interleaved. Both speak the same JSON-lines protocol.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib as B

FAMILY = "code"
PYTHON = "/usr/bin/python3"
WORKER = B.REPO / "src" / "agbox" / "agent" / "code_worker.py"
HANDWRITTEN_COMMIT = "d60b694"  # the last commit whose code_worker.py had its own display plumbing
BARE_NAME = 'python3 -c "1 + 1" (host, interleaved)'


def bare_python() -> None:
    subprocess.run([PYTHON, "-c", "1 + 1"], check=True)


class HostWorker:
    """A code worker process outside any sandbox, driven like ops_code drives it."""

    def __init__(self, path: Path, scratch: Path) -> None:
        req_r, self.req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        env = {**os.environ, "MPLCONFIGDIR": str(scratch / "mpl"), "IPYTHONDIR": str(scratch / "ipython")}
        self.started = time.perf_counter()
        self.process = subprocess.Popen([PYTHON, "-u", str(path), str(req_r), str(resp_w)], pass_fds=(req_r, resp_w),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
        os.close(req_r)
        os.close(resp_w)
        self.responses = os.fdopen(resp_r, "rb")
        self.count = 0

    def cell(self, code: str) -> float:
        """Run one cell; seconds until its answer."""
        self.count += 1
        start = time.perf_counter()
        os.write(self.req_w, json.dumps({"code": code, "count": self.count}).encode() + b"\n")
        while True:
            line = self.responses.readline()
            if not line:
                raise RuntimeError(f"the worker {self.process.args[2]} exited")
            message = json.loads(line)
            if message.get("type") == "done":
                if message.get("error"):
                    raise RuntimeError(f"cell failed: {message['error']}")
                return time.perf_counter() - start

    def close(self) -> float:
        """End the worker (it exits at the end of its requests); its CPU seconds (user + system)."""
        os.close(self.req_w)
        self.responses.close()
        deadline = time.monotonic() + 10
        while True:
            pid, _, usage = os.wait4(self.process.pid, os.WNOHANG)
            if pid:
                self.process.returncode = 0
                return float(usage.ru_utime + usage.ru_stime)
            if time.monotonic() > deadline:
                self.process.kill()
            time.sleep(0.005)


def _first_cell(path: Path, scratch: Path, cpu: list[float]) -> float:
    worker = HostWorker(path, scratch)
    try:
        worker.cell("1 + 1")
        return time.perf_counter() - worker.started
    finally:
        cpu.append(worker.close())


def _host_rows(n: int, warm_n: int, rows: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory(prefix="agbox-bench-code-") as tmp:
        scratch = Path(tmp)
        old_path = scratch / "handwritten_code_worker.py"
        new_cpu: list[float] = []
        old_cpu: list[float] = []
        shown = subprocess.run(["git", "-C", str(B.REPO), "show", f"{HANDWRITTEN_COMMIT}:src/agbox/agent/code_worker.py"],
                               capture_output=True)
        if shown.returncode == 0:
            old_path.write_bytes(shown.stdout)
            old_name = f"hand-written worker of {HANDWRITTEN_COMMIT} (interleaved)"
            old_first: Any = lambda: _first_cell(old_path, scratch, old_cpu)  # noqa: E731
        else:
            old_name = BARE_NAME + f"; the {HANDWRITTEN_COMMIT} worker is not in this checkout's history"
            old_first = B.timed(bare_python)
        B.say(f"host: worker start + first cell, IPython vs {old_name} (n={n})")
        first, first_base = B.paired(lambda: _first_cell(WORKER, scratch, new_cpu), old_first, n, warmup=1)
        note = f"CPU (user + system) per worker start + cell, median: IPython {B.percentile(new_cpu, 50) * 1000:.0f} ms"
        if old_cpu:
            note += f", hand-written {B.percentile(old_cpu, 50) * 1000:.0f} ms"
        rows.append(B.row(FAMILY, "IPython worker on the host: start + first cell `1 + 1`", first,
                          key="code.worker_first", baseline=old_name, baseline_s=first_base,
                          note=note + " (wall clock is mostly waiting for a core on a loaded machine)"))

        B.say(f"host: warm cell and PSS (n={warm_n})")
        new = HostWorker(WORKER, scratch)
        old = HostWorker(old_path, scratch) if shown.returncode == 0 else None
        try:
            if old is not None:
                warm, warm_base = B.paired(lambda: new.cell("1 + 1"), lambda: old.cell("1 + 1"), warm_n)
                rows.append(B.row(FAMILY, "IPython worker on the host: warm cell `1 + 1`", warm, key="code.worker_warm",
                                  baseline=old_name, baseline_s=warm_base))
            else:
                rows.append(B.row(FAMILY, "IPython worker on the host: warm cell `1 + 1`",
                                  [new.cell("1 + 1") for _ in range(warm_n)], key="code.worker_warm"))
            new_pss = B.pss_kib(new.process.pid) / 1024
            old_pss = B.pss_kib(old.process.pid) / 1024 if old is not None else None
            rows.append(B.row(FAMILY, "IPython worker on the host: PSS after one cell", key="code.worker_pss",
                              unit="MiB", value=new_pss, baseline=old_name if old is not None else None,
                              baseline_value=old_pss))
        finally:
            new.close()
            if old is not None:
                old.close()


def _session_pss_mib(data_dir: Path) -> float:
    live, _ = B.live_sandbox_pids(data_dir)
    if len(live) != 1:
        raise RuntimeError(f"expected the session's sandbox alone, found {len(live)} sandboxes")
    return sum(B.pss_kib(pid) for pids in live.values() for pid in pids) / 1024


def _session_rows(n: int, warm_n: int, rows: list[dict[str, Any]]) -> None:
    from agbox import CreateSessionParams

    with B.server("agbox-bench-code-", env={"AGBOX_WARM_POOL": "0"}) as srv:
        agb = srv.sdk()
        pss_before: list[float] = []
        pss_after: list[float] = []

        def first_run() -> float:
            created = agb.create(CreateSessionParams(image_id=B.IMAGE))
            if not created.success:
                raise RuntimeError(f"create failed: {created.error_message}")
            session = created.session
            try:
                pss_before.append(_session_pss_mib(srv.data_dir))
                start = time.perf_counter()
                result = session.code.run("1 + 1", "python")
                elapsed = time.perf_counter() - start
                if not result.success or result.result != "2":
                    raise RuntimeError(f"first run_code failed: {result.error_message or result}")
                pss_after.append(_session_pss_mib(srv.data_dir))
                return elapsed
            finally:
                session.delete()
                B.wait_sandboxes(srv.data_dir, 0, 30)

        B.say(f"session: first run_code after create (n={n})")
        first, first_base = B.paired(first_run, bare_python, n, warmup=1)
        rows.append(B.row(FAMILY, "first run_code `1 + 1` after create (starts IPython), our SDK over HTTP", first,
                          key="code.first_run", baseline=BARE_NAME, baseline_s=first_base))
        rows.append(B.row(FAMILY, "session PSS before any Python (agent only)", key="code.pss_idle", unit="MiB",
                          value=B.percentile(pss_before, 50), note=f"median of {len(pss_before)} sessions"))
        rows.append(B.row(FAMILY, "session PSS after the first run_code (agent + IPython worker)",
                          key="code.pss_python", unit="MiB", value=B.percentile(pss_after, 50),
                          baseline="the same session before any Python", baseline_value=B.percentile(pss_before, 50),
                          note=f"median of {len(pss_after)} sessions"))

        B.say(f"session: warm run_code (n={warm_n})")
        created = agb.create(CreateSessionParams(image_id=B.IMAGE))
        if not created.success:
            raise RuntimeError(f"create failed: {created.error_message}")
        session = created.session
        try:
            def warm_run() -> None:
                result = session.code.run("1 + 1", "python")
                if not result.success:
                    raise RuntimeError(f"run_code failed: {result.error_message}")

            warm, warm_base = B.paired(B.timed(warm_run), bare_python, warm_n)
            rows.append(B.row(FAMILY, "warm run_code `1 + 1`, our SDK over HTTP", warm, key="code.warm_run",
                              baseline=BARE_NAME, baseline_s=warm_base))

            B.say("session: first and warm JavaScript run_code")
            start = time.perf_counter()
            first_js = session.code.run("1 + 1", "javascript")
            first_js_s = time.perf_counter() - start
            if not first_js.success or first_js.result != "2":
                raise RuntimeError(f"JavaScript run_code failed: {first_js.error_message or first_js}")
            node_s = B.timed(lambda: subprocess.run(["node", "-e", "1 + 1"], check=True))()
            rows.append(B.row(FAMILY, "first JavaScript run_code `1 + 1` in a session (starts the Node.js REPL)",
                              [first_js_s], key="code.js_first", baseline='node -e "1 + 1" (host)',
                              baseline_s=[node_s], note="one sample per bench run"))

            def warm_js() -> None:
                result = session.code.run("1 + 1", "javascript")
                if not result.success:
                    raise RuntimeError(f"run_code failed: {result.error_message}")

            js_warm, js_base = B.paired(B.timed(warm_js), bare_python, warm_n)
            rows.append(B.row(FAMILY, "warm JavaScript run_code `1 + 1`, our SDK over HTTP", js_warm,
                              key="code.js_warm", baseline=BARE_NAME, baseline_s=js_base))
        finally:
            session.delete()
        agb.close()


def run(quick: bool) -> list[dict[str, Any]]:
    n = B.samples(quick, 20, 4)
    warm_n = B.samples(quick, 200, 20)
    rows: list[dict[str, Any]] = []
    _session_rows(n, warm_n, rows)
    _host_rows(n, warm_n, rows)
    return rows
