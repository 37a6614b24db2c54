"""Shared helpers of the benchmark families: statistics, rows, baselines, a real `agbox serve`.

A family is a module ``bench/bench_<family>.py`` with ``def run(quick: bool) -> list[dict]``. Sizes
that the command line can change (samples, durations, the density cap) are read from ``OPTIONS``,
which ``bench/run.py`` fills before calling the families; a family called on its own (a test)
gets the defaults or whatever the caller put there.

Every latency here is wall clock from ``time.perf_counter()``; percentiles are linear
interpolations between the closest ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
IMAGE = "agb-code-space-1"
API_KEY = "bench-key-0123456789abcdef"
BWRAP = shutil.which("bwrap") or "/usr/bin/bwrap"


@dataclasses.dataclass
class Options:
    """Sizes of a run; ``None`` means: the family's default for full or quick mode."""

    samples: int | None = None          # samples per latency row
    duration_s: float | None = None     # sustained create rate: how long
    concurrency: int = 50               # the concurrent-create burst
    workers: int = 8                    # client threads of the sustained create rate
    density_cap: int | None = None      # the most idle sessions the density ramp tries
    density_step: int = 50              # sessions added per ramp step
    verbose: bool = True


OPTIONS = Options()


def samples(quick: bool, full: int, fast: int) -> int:
    return OPTIONS.samples if OPTIONS.samples else (fast if quick else full)


def say(message: str) -> None:
    if OPTIONS.verbose:
        print(f"  .. {message}", flush=True)


# ---- statistics and rows ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def stats_ms(samples_s: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": percentile(samples_s, 50) * 1000, "p95_ms": percentile(samples_s, 95) * 1000,
            "p99_ms": percentile(samples_s, 99) * 1000, "n": len(samples_s)}


def row(family: str, name: str, samples_s: Sequence[float] | None = None, *, key: str = "",
        baseline: str | None = None, baseline_s: Sequence[float] | None = None, unit: str | None = None,
        value: float | None = None, baseline_value: float | None = None, note: str = "",
        higher_is_better: bool = False, **extra: Any) -> dict[str, Any]:
    """One result: latency percentiles of ``samples_s`` and/or a single ``value``, next to its baseline.

    ``ratio`` is p50 / baseline p50 for latencies and value / baseline value for single figures.
    """
    out: dict[str, Any] = {"family": family, "name": name, "key": key or name, "note": note}
    if samples_s:
        out.update(stats_ms(samples_s))
    if baseline is not None:
        out["baseline"] = baseline
    if baseline_s:
        out["baseline_p50_ms"] = percentile(baseline_s, 50) * 1000
    if unit is not None:
        out["unit"] = unit
    if value is not None:
        out["value"] = value
    if baseline_value is not None:
        out["baseline_value"] = baseline_value
    if "p50_ms" in out and out.get("baseline_p50_ms"):
        out["ratio"] = out["p50_ms"] / out["baseline_p50_ms"]
        out["delta_ms"] = out["p50_ms"] - out["baseline_p50_ms"]
    elif value is not None and baseline_value:
        out["ratio"] = value / baseline_value
    out["higher_is_better"] = higher_is_better
    out.update(extra)
    return out


def time_calls(fn: Callable[[], Any], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def paired(measure: Callable[[], float], baseline: Callable[[], Any], n: int, warmup: int = 3,
           settle_s: float = 0.003, pace_s: float = 0.0) -> tuple[list[float], list[float]]:
    """Alternate ``measure`` (returns its own elapsed seconds, so it may leave teardown out) with a timed
    ``baseline`` call, so both see the same machine load: (samples, baseline samples). A short pause
    after ``measure`` lets its asynchronous tail (agent reaping, server bookkeeping) finish, so that the
    baseline does not absorb it. ``pace_s``: start one iteration at most every ``pace_s`` seconds."""
    out: list[float] = []
    base: list[float] = []
    for i in range(warmup + n):
        began = time.perf_counter()
        elapsed = measure()
        time.sleep(settle_s)
        start = time.perf_counter()
        baseline()
        base_elapsed = time.perf_counter() - start
        if i >= warmup:
            out.append(elapsed)
            base.append(base_elapsed)
        time.sleep(max(pace_s - (time.perf_counter() - began), 0.0))
    return out, base


def timed(fn: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return run


# ---- baselines ----------------------------------------------------------------------------------


def bwrap_typical(home: str, command: Sequence[str] = ("/bin/true",)) -> list[str]:
    """The typical sandbox command of machine-measurements §1 (host /usr and /etc, all namespaces)."""
    return [BWRAP, "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--ro-bind", "/etc", "/etc",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", home, "/home/user",
            "--chdir", "/home/user", "--setenv", "HOME", "/home/user", "--hostname", "sandbox",
            "--unshare-all", "--die-with-parent", "--new-session", *command]


BWRAP_NAME = "bare bwrap ... /bin/true"
SUBPROCESS_NAME = 'subprocess.run(["true"])'


def _run_ok(argv: Sequence[str], **kwargs: Any) -> None:
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-300:]}")


def measure_subprocess_true(n: int) -> list[float]:
    return time_calls(lambda: _run_ok(["true"]), n)


@contextlib.contextmanager
def bwrap_true() -> Iterator[Callable[[], None]]:
    """A callable that runs the typical bare ``bwrap ... /bin/true`` once."""
    with tempfile.TemporaryDirectory(prefix="agbox-bench-home-") as home:
        argv = bwrap_typical(home)
        yield lambda: _run_ok(argv)


def subprocess_true() -> None:
    _run_ok(["true"])


def measure_bwrap_true(n: int, home: str | None = None) -> list[float]:
    with contextlib.ExitStack() as stack:
        if home is None:
            home = stack.enter_context(tempfile.TemporaryDirectory(prefix="agbox-bench-home-"))
        argv = bwrap_typical(home)
        return time_calls(lambda: _run_ok(argv), n)


def rate_for(fn: Callable[[], Any], workers: int, duration_s: float) -> tuple[float, int, int]:
    """Calls of ``fn`` completed per second by ``workers`` threads looping for ``duration_s``.
    Returns (rate, completed, failed)."""
    deadline = time.monotonic() + duration_s
    counts = [0] * workers
    failures = [0] * workers

    def loop(index: int) -> None:
        while time.monotonic() < deadline:
            try:
                fn()
            except Exception:
                failures[index] += 1
                continue
            if time.monotonic() <= deadline:
                counts[index] += 1

    start = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + 120)
    elapsed = max(min(time.monotonic(), deadline) - start, 1e-9)
    return sum(counts) / elapsed, sum(counts), sum(failures)


# ---- temp dirs, a real server ------------------------------------------------------------------


@contextlib.contextmanager
def temp_root(prefix: str) -> Iterator[Path]:
    """A scratch dir that sandbox uids can traverse (0711), removed at the end with any mount in it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o711)
    try:
        yield path
    finally:
        unmount_below(path)
        for child in path.iterdir():
            remove_run_dir(child)
        shutil.rmtree(path, ignore_errors=True)


RUN_ROOT = Path("/run/agbox")


def remove_run_dir(data_dir: Path) -> None:
    """The local runtime keeps sandbox roots and a base copy of /etc in /run/agbox/<tag of the data dir>
    and leaves them there when it closes; remove ours."""
    resolved = str(data_dir.resolve())
    run_dir = RUN_ROOT / hashlib.sha256(resolved.encode()).hexdigest()[:10]
    with contextlib.suppress(OSError):
        if (run_dir / "data_dir").read_text().strip() != resolved:
            return
        unmount_below(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


def unmount_below(path: Path) -> int:
    """Lazily unmount whatever is still mounted under ``path`` (left by a crash); returns how many."""
    prefix = str(path.resolve()) + "/"
    targets = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point.startswith(prefix):
                targets.append(mount_point)
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return len(targets)


def sweep_run_dirs(prefix: str = "/tmp/agbox-bench-") -> int:
    """Remove /run/agbox trees left by benchmark data dirs that no longer exist (any family's); returns how many."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(RUN_ROOT):
            with contextlib.suppress(OSError):
                data_dir = Path(entry.path, "data_dir").read_text().strip()
                if data_dir.startswith(prefix) and not os.path.exists(data_dir):
                    unmount_below(Path(entry.path))
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
    return removed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_warm_pool() -> int:
    """The platform's default warm-pool size (started sandboxes kept ready per image); 0 if it has none."""
    from agbox.settings import Settings

    field = Settings.__dataclass_fields__.get("warm_pool_size")
    return int(field.default) if field is not None and isinstance(field.default, int) else 0


@contextlib.contextmanager
def env_set(**values: str) -> Iterator[None]:
    """Set environment variables for a block (the embedded platform reads its settings from the environment)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Server:
    """``agbox serve`` as a subprocess on a free port with a temp data dir."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.warm_pool = int((env or {}).get("AGBOX_WARM_POOL", default_warm_pool()))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.api_key = API_KEY
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        full_env = {**os.environ, "AGBOX_API_KEY": API_KEY, **(env or {})}
        for name in ("AGB_ENDPOINT", "AGBOX_DATA_DIR"):
            full_env.pop(name, None)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agbox", "serve", "--port", str(self.port), "--data-dir", str(data_dir),
                 "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=full_env)
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"agbox serve exited early: {self.log()[-800:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.endpoint}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("agbox serve did not answer /health within 60 s")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def sdk(self) -> Any:
        from agbox import AGB

        return AGB(api_key=self.api_key, endpoint=self.endpoint, timeout_ms=120_000)

    def official(self) -> Any:
        from agb import AGB as OfficialAGB
        from agb.config import Config

        return OfficialAGB(api_key=self.api_key, cfg=Config(endpoint=self.endpoint, timeout_ms=60000))

    def http(self) -> httpx.Client:
        return httpx.Client(timeout=120, headers={"authorization": f"Bearer {self.api_key}"})

    def stop(self, timeout_s: float = 180.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        return int(self.process.returncode or 0)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def server(prefix: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    with temp_root(prefix) as root, Server(root / "data", env) as srv:
        yield srv


def release_async(client: httpx.Client, endpoint: str, session_id: str) -> bool:
    body = client.post(f"{endpoint}/mcp/releaseSessionAsync", json={"sessionId": session_id}).json()
    return bool(body.get("success"))


def mcp_shell(client: httpx.Client, endpoint: str, session_id: str, command: str = "true") -> dict[str, Any]:
    """One ``shell`` call through ``POST /mcp`` (the AGB wire's callMcpTool)."""
    import json

    body = client.post(f"{endpoint}/mcp", json={"sessionId": session_id, "name": "shell",
                                                "args": json.dumps({"command": command, "timeout_ms": 5000})}).json()
    if not body.get("success") or (body.get("data") or {}).get("isError"):
        raise RuntimeError(f"shell via /mcp failed: {str(body)[:300]}")
    return body


# ---- kernel figures ------------------------------------------------------------------------------

def runtime_tag(data_dir: Path) -> str:
    """The local runtime names its cgroup parent ``agbox-<tag>`` after the (resolved) data dir."""
    return hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:10]


def sandbox_pids(data_dir: Path) -> dict[str, list[int]]:
    """Processes per sandbox of the agbox instance using ``data_dir``, found from the kernel: each sandbox
    has a cgroup ``agbox-<tag>/<sandbox name>`` and /proc/<pid>/cgroup names it (pooled, not yet handed
    over sandboxes included)."""
    pattern = re.compile(rf"/agbox-{runtime_tag(data_dir)}/([^/\n]+)")
    found: dict[str, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cgroup") as handle:
                text = handle.read()
        except OSError:
            continue
        match = pattern.search(text)
        if match:
            found.setdefault(match.group(1), []).append(int(entry.name))
    return found


def proc_state(pid: int) -> tuple[str, int, str]:
    """(state letter, parent pid, command name) of a process, ("?", 0, "?") if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?", 0, "?"
    comm = stat[stat.find("(") + 1:stat.rfind(")")]
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[0], int(fields[1]), comm


def live_sandbox_pids(data_dir: Path) -> tuple[dict[str, list[int]], list[int]]:
    """(live processes per sandbox, zombie processes) of the agbox instance using ``data_dir``."""
    live: dict[str, list[int]] = {}
    zombies = []
    for name, pids in sandbox_pids(data_dir).items():
        for pid in pids:
            state = proc_state(pid)[0]
            if state == "Z":
                zombies.append(pid)
            elif state != "?":
                live.setdefault(name, []).append(pid)
    return live, zombies


def describe(pids: list[int]) -> str:
    out = []
    for pid in pids[:5]:
        state, ppid, comm = proc_state(pid)
        parent = proc_state(ppid)[2] if ppid else "?"
        out.append(f"{comm}[{pid}] state {state}, parent {parent}[{ppid}]")
    return "; ".join(out) + (f" (+{len(pids) - 5} more)" if len(pids) > 5 else "")


def wait_sandboxes(data_dir: Path, at_most: int, timeout_s: float) -> tuple[list[int], list[int]]:
    """Poll the kernel until at most ``at_most`` sandboxes of this instance have live processes (the warm
    pool's) and no zombie is left (bounded); zombies left alone for 3 s are reported rather than waited for.
    Returns (live processes of the sandboxes beyond ``at_most``, zombies)."""
    deadline = time.monotonic() + timeout_s
    zombie_since: float | None = None
    while True:
        live, zombies = live_sandbox_pids(data_dir)
        now = time.monotonic()
        done = len(live) <= at_most
        if done and not zombies:
            return [], []
        if done:
            zombie_since = zombie_since or now
            if now - zombie_since > 3:
                return [], zombies
        if now > deadline:
            extra = sorted(live.values(), key=len)[: max(len(live) - at_most, 0)]
            return [pid for pids in extra for pid in pids], zombies
        time.sleep(0.2)


def pss_kib(pid: int) -> int:
    """Proportional set size of one process from /proc/<pid>/smaps_rollup (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    out = [pid]
    index = 0
    while index < len(out):
        current = out[index]
        index += 1
        with contextlib.suppress(OSError, ValueError):
            for task in os.scandir(f"/proc/{current}/task"):
                with open(f"{task.path}/children") as handle:
                    out.extend(int(p) for p in handle.read().split())
    return out


def meminfo_kib() -> dict[str, int]:
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        values[name] = int(rest.split()[0])
    return values


def offered_rate(fn: Callable[[], Any], rate: float, duration_s: float, warmup_s: float,
                 workers: int, max_lag_s: float = 30.0) -> tuple[list[float], int, float, int]:
    """Open-loop load: calls of ``fn`` scheduled ``1 / rate`` apart (from ``workers`` threads), warm-up
    first. Each latency runs from the call's scheduled time, so time spent queued behind slow calls
    counts (no coordinated omission). A call that could not even start within ``max_lag_s`` of its time
    is dropped (the target fell that far behind; this bounds the run). Returns (latencies after the
    warm-up, failures, achieved rate: calls after the warm-up completed per second of their schedule,
    calls dropped)."""
    interval = 1.0 / rate
    total = int((warmup_s + duration_s) * rate)
    first_measured = int(warmup_s * rate)
    latencies: list[float] = []
    ends: list[float] = []
    failures = [0]
    dropped = [0]
    lock = threading.Lock()
    start = time.perf_counter() + 0.2

    def one(index: int) -> None:
        scheduled = start + index * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif -delay > max_lag_s:
            with lock:
                dropped[0] += 1
                if index >= first_measured:  # counted at the lag it had reached (a lower bound)
                    latencies.append(-delay)
            return
        try:
            fn()
        except Exception:
            with lock:
                failures[0] += 1
            return
        done = time.perf_counter()
        if index >= first_measured:
            with lock:
                latencies.append(done - scheduled)
                ends.append(done)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(total)))
    began = start + first_measured * interval
    elapsed = max((max(ends) if ends else began) - began, duration_s)
    return latencies, failures[0], len(ends) / elapsed, dropped[0]


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of this process's threads (schedstat: nanoseconds on a CPU), summed by thread name
    without its number (ThreadPoolExecutor's ``prefix_N``)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            on_cpu_ns = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        name = names.get(int(tid), "other").rsplit("_", 1)[0]
        out[name] = out.get(name, 0.0) + on_cpu_ns / 1e9
    return out


def kernel_threads_cpu_s() -> float:
    """CPU seconds of the kernel's own threads (kworkers, softirq, RCU: the children of kthreadd), where
    namespace, loop-device and cgroup teardown run; machine-wide, so other work on the host counts too."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == "2" or pid == "2":
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
