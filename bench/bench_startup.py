"""Where a create's time goes: the pieces of a sandbox start, each timed on its own in this run.

- bare bwrap (typical command) as root, and as agbox runs it: a fresh unprivileged host uid, its own user
  namespace (uid 1000 inside), agbox's seccomp filter, ``--disable-userns``;
- ``python3 -I -S -c pass`` bare and inside bwrap as agbox runs it (interpreter start-up);
- bwrap + the agbox agent until its ready line, from a precompiled read-only copy (as the
  local runtime binds it) and with precompiled ``.pyc`` files;
- bwrap + a ``/bin/sh`` stand-in that prints a ready line (what a lighter agent could cost);
- a disk layer made and dropped (the sandbox root) and a cgroup set create + remove (agbox's CgroupManager).

Baseline: the typical bare ``bwrap ... /bin/true`` as root, interleaved (and ``subprocess.run(["true"])`` for
it). CPU per call comes from a cgroup the measured processes join (cpuacct), or from the thread's CPU time
for the in-process pieces.
"""

from __future__ import annotations

import compileall
import contextlib
import os
import random
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import benchlib as B

FAMILY = "startup_breakdown"
AGENT_MOUNT = "/opt/agbox/agent"
UNPRIV_UID = 200_000 + random.randrange(1_000_000)
SANDBOX_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/user", "LANG": "C.UTF-8",
               "PYTHONUNBUFFERED": "1"}


class CpuMeter:
    """A cgroup of its own (agbox's CgroupManager, all controllers) that measured processes join before
    exec: its cpuacct usage is the CPU of everything they ran, however deep the process tree (bwrap's
    nested children are not all reaped into getrusage's RUSAGE_CHILDREN)."""

    def __init__(self) -> None:
        from agbox.runtime.cgroups import CgroupManager

        self.manager = CgroupManager(f"agbox-bench-{secrets.token_hex(4)}")
        self.manager.prepare()
        self.group = self.manager.create("meter", 8 << 30, float(os.cpu_count() or 1), 8192)

    def usage_s(self) -> float:
        return self.manager.cpu_usage_ns(self.group) / 1e9

    def preexec(self, unpriv: bool) -> Callable[[], None]:
        paths = self.group.procs_files()

        def enter() -> None:
            for path in paths:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)
            if unpriv:
                os.setgroups([])
                os.setresgid(UNPRIV_UID, UNPRIV_UID, UNPRIV_UID)
                os.setresuid(UNPRIV_UID, UNPRIV_UID, UNPRIV_UID)

        return enter

    def close(self) -> None:
        self.manager.kill(self.group)
        self.manager.wait_empty(self.group, 5.0, lambda: None)
        self.manager.remove(self.group)
        for parent in self.manager.parents.values():
            with contextlib.suppress(OSError):
                os.rmdir(parent)


Spawn = Callable[[], tuple[list[str], list[int]]]


def _sandboxed(home: str, command: list[str], agent_dir: Path | None = None, unpriv: bool = False) -> Spawn:
    """A maker of (argv, fds to pass) for one sandbox start. ``unpriv`` mirrors how the local runtime starts
    bwrap: as a fresh unprivileged uid, with its own user namespace (uid 1000 inside), the agbox seccomp
    filter on a pipe, and ``--disable-userns``."""
    from agbox.runtime import seccomp

    program = seccomp.build_filter() if unpriv else None

    def make() -> tuple[list[str], list[int]]:
        argv = B.bwrap_typical(home, [])
        fds: list[int] = []
        if agent_dir is not None:
            argv += ["--ro-bind", str(agent_dir), AGENT_MOUNT]
        if unpriv:
            argv += ["--unshare-user", "--uid", "1000", "--gid", "1000", "--disable-userns"]
            if program is not None:
                read, write = os.pipe()
                os.write(write, program)
                os.close(write)
                fds.append(read)
                argv += ["--seccomp", str(read)]
        return argv + command, fds

    return make


def _run(make: Spawn, preexec: Callable[[], None]) -> Callable[[], float]:
    """Run one sandbox to completion (timed)."""

    def once() -> float:
        argv, fds = make()
        try:
            start = time.perf_counter()
            B._run_ok(argv, preexec_fn=preexec, pass_fds=fds)
            return time.perf_counter() - start
        finally:
            for fd in fds:
                os.close(fd)

    return once


def _ready(make: Spawn, preexec: Callable[[], None]) -> Callable[[], float]:
    """Start a sandbox and time until its first output line; ending it afterwards is not timed."""

    def once() -> float:
        argv, fds = make()
        try:
            start = time.perf_counter()
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=SANDBOX_ENV, preexec_fn=preexec, pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - start
        _, err = proc.communicate(b"", timeout=30)  # closing stdin ends the agent and the stand-in
        if not line:
            raise RuntimeError(f"no ready line from {argv[-1]}: {err.decode(errors='replace')[-300:]}")
        return elapsed

    return once


def _agent_copy(target: Path, compiled: bool) -> Path:
    from agbox.runtime.local import AGENT_DIR

    shutil.copytree(AGENT_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
    if compiled:
        compileall.compile_dir(str(target), quiet=1, legacy=False)
    for path in [target, *target.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return target


@contextlib.contextmanager
def _cgroup_cycle() -> Iterator[Callable[[], float]]:
    from agbox.runtime.cgroups import CgroupManager

    manager = CgroupManager(f"agbox-bench-{secrets.token_hex(4)}")
    manager.prepare()

    def once() -> float:
        start = time.perf_counter()
        group = manager.create(f"session-{secrets.token_hex(10)}", 1 << 30, 1.0, 512)
        manager.remove(group)
        return time.perf_counter() - start

    try:
        yield once
    finally:
        for parent in manager.parents.values():
            with contextlib.suppress(OSError):
                os.rmdir(parent)


@contextlib.contextmanager
def _cgroup_set() -> Iterator[list[str]]:
    """A sandbox-like cgroup set (every hierarchy the runtime uses); yields its cgroup.procs paths."""
    from agbox.runtime.cgroups import CgroupManager

    manager = CgroupManager(f"agbox-bench-{secrets.token_hex(4)}")
    manager.prepare()
    group = manager.create(f"session-{secrets.token_hex(10)}", 1 << 30, 1.0, 512)
    try:
        yield group.procs_files()
    finally:
        manager.kill(group)
        manager.wait_empty(group, 5.0, lambda: None)
        manager.remove(group)
        for parent in manager.parents.values():
            with contextlib.suppress(OSError):
                os.rmdir(parent)


@contextlib.contextmanager
def _disk_cycle(root: Path) -> Iterator[Callable[[], tuple[float, float]]]:
    """A sandbox root as the local runtime makes it (runtime/disk.py: sparse copy of a formatted image,
    loop device, mount in a new mount namespace), then dropped: yields a call returning (wall s, CPU s of
    the thread that did it; the kernel's share of loop and ext4 set-up and teardown is not in it)."""
    import concurrent.futures

    from agbox.runtime.disk import DiskLayers, private_fs_context

    layers = DiskLayers(root / "disks", root / "layer")
    layers.start()
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, initializer=private_fs_context)

    def cycle() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.thread_time()
        layers.prepare(2 << 30, UNPRIV_UID).release()
        return time.perf_counter() - start, time.thread_time() - cpu

    worker.submit(cycle).result()  # the template image is formatted once
    try:
        yield lambda: worker.submit(cycle).result()
    finally:
        worker.shutdown()
        layers.close()


def run(quick: bool) -> list[dict[str, Any]]:
    n = B.samples(quick, 60, 15)
    rows: list[dict[str, Any]] = []
    with B.temp_root("agbox-bench-startup-") as root:
        home = root / "home"
        home.mkdir()
        os.chown(home, UNPRIV_UID, UNPRIV_UID)
        plain_agent = _agent_copy(root / "agent-src", compiled=False)
        compiled_agent = _agent_copy(root / "agent-pyc", compiled=True)
        os.chmod(root, 0o755)

        B.say(f"baselines (n={n})")
        meter = CpuMeter()
        try:
            rows.extend(_measure_all(n, home, plain_agent, compiled_agent, root, meter))
        finally:
            meter.close()
    return rows


def _drop() -> None:
    os.setgroups([])
    os.setresgid(UNPRIV_UID, UNPRIV_UID, UNPRIV_UID)
    os.setresuid(UNPRIV_UID, UNPRIV_UID, UNPRIV_UID)


Factory = Callable[[Callable[[], None] | None], Callable[[], float]]


def _measure_all(n: int, home: Path, plain_agent: Path, compiled_agent: Path, root: Path,
                 meter: CpuMeter) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    n_cpu = min(n, 20)
    sub = B.measure_subprocess_true(n)
    bwrap_argv = B.bwrap_typical(str(home))
    root_name = B.BWRAP_NAME + " (root)"
    rows.append(B.row(FAMILY, B.SUBPROCESS_NAME, sub, key="startup.subprocess"))

    def add(name: str, key: str, make: Factory, unpriv: bool, note: str = "",
            baseline: Callable[[], Any] | None = None, baseline_name: str = root_name + " (interleaved)") -> None:
        """Time ``make(preexec)()`` (it returns its own elapsed seconds) interleaved with ``baseline`` (the root bare
        bwrap); then, in a second pass, the CPU of a call, with the processes in the meter cgroup (joining it
        needs a preexec_fn, which costs a fork instead of a vfork: kept out of the timed pass)."""
        plain = make(_drop if unpriv else None)
        measured, base = B.paired(plain, baseline or (lambda: B._run_ok(bwrap_argv)), n)
        metered = make(meter.preexec(unpriv))
        cpu = []
        for _ in range(n_cpu):
            before = meter.usage_s()
            metered()
            cpu.append(meter.usage_s() - before)
        cpu_ms = B.percentile(cpu, 50) * 1000
        text = f"CPU p50 {cpu_ms:.1f} ms per call (cgroup cpuacct, {n_cpu} calls)"
        rows.append(B.row(FAMILY, name, measured, key=key, baseline=baseline_name, baseline_s=base,
                          note=f"{note}; {text}" if note else text, cpu_ms=cpu_ms))

    def add_in_process(name: str, key: str, fn: Callable[[], float]) -> None:
        cpu: list[float] = []

        def with_cpu() -> float:
            before = time.thread_time()
            elapsed = fn()
            cpu.append(time.thread_time() - before)
            return elapsed

        measured, base = B.paired(with_cpu, lambda: B._run_ok(bwrap_argv), n)
        cpu_ms = B.percentile(cpu[-n:], 50) * 1000
        rows.append(B.row(FAMILY, name, measured, key=key, baseline=root_name + " (interleaved)", baseline_s=base,
                          note=f"CPU p50 {cpu_ms:.1f} ms per call (thread time)", cpu_ms=cpu_ms))

    def command(argv: list[str]) -> Factory:
        return lambda pre: B.timed(lambda: B._run_ok(argv, preexec_fn=pre))

    add(root_name, "startup.bwrap", command(bwrap_argv), False, baseline=B.subprocess_true,
        baseline_name=B.SUBPROCESS_NAME + " (interleaved)")

    B.say("spawning the way agbox does, bwrap as agbox runs it, python start-up")
    with _cgroup_set() as procs:
        def join_and_drop() -> None:
            for path in procs:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)
            _drop()

        add('subprocess.run(["true"]) with a preexec_fn that joins a cgroup set and drops to a fresh uid',
            "startup.preexec",
            lambda pre: B.timed(lambda: B._run_ok(["true"], preexec_fn=join_and_drop if pre is _drop else pre)), True,
            baseline=B.subprocess_true, baseline_name=B.SUBPROCESS_NAME + " (interleaved)",
            note="how the local runtime used to spawn bwrap (it now execs sh + setpriv instead): a preexec_fn makes "
                 "Python fork the whole parent instead of vfork-ing (the CPU figure is the child's only)")
    add("bwrap ... /bin/true as agbox runs it (fresh uid, user ns, seccomp, --disable-userns)",
        "startup.bwrap_unpriv", lambda pre: _run(_sandboxed(str(home), ["/bin/true"], unpriv=True), pre), True)
    add("/usr/bin/python3 -I -S -c pass (no sandbox)", "startup.python",
        command(["/usr/bin/python3", "-I", "-S", "-c", "pass"]), False)
    add("bwrap (as agbox runs it) + python3 -I -S -c pass", "startup.python_bwrap",
        lambda pre: _run(_sandboxed(str(home), ["/usr/bin/python3", "-I", "-S", "-c", "pass"], unpriv=True), pre),
        True)

    B.say("bwrap + agent until its ready line (source only, and precompiled)")
    agent_cmd = ["/usr/bin/python3", "-I", "-S", f"{AGENT_MOUNT}/main.py"]
    add("bwrap (as agbox runs it) + agbox agent until ready line, precompiled .pyc (as agbox binds it)",
        "startup.agent", lambda pre: _ready(_sandboxed(str(home), agent_cmd, compiled_agent, unpriv=True), pre), True,
        note="the local runtime compiles its copy of the agent once when it builds the base; op modules load on "
             "first use")
    add("bwrap (as agbox runs it) + agbox agent until ready line, from source (no .pyc)", "startup.agent_pyc",
        lambda pre: _ready(_sandboxed(str(home), agent_cmd, plain_agent, unpriv=True), pre), True)
    add("bwrap (as agbox runs it) + /bin/sh stand-in agent until ready line", "startup.sh_agent",
        lambda pre: _ready(_sandboxed(str(home), ["/bin/sh", "-c", "echo ready; read line"], unpriv=True), pre),
        True, note="what a lighter (shell or compiled) agent would cost to become ready")

    B.say("disk layer and cgroups")
    with _disk_cycle(root) as disk_cycle:
        disk_cpu: list[float] = []

        def disk_once() -> float:
            elapsed, cpu = disk_cycle()
            disk_cpu.append(cpu)
            return elapsed

        measured, base = B.paired(disk_once, lambda: B._run_ok(bwrap_argv), n)
        cpu_ms = B.percentile(disk_cpu[-n:], 50) * 1000
        rows.append(B.row(FAMILY, "disk layer (the sandbox root: sparse image copy, loop device, ext4 mount in a "
                          "new mount namespace) made and dropped", measured, key="startup.disk",
                          baseline=root_name + " (interleaved)", baseline_s=base,
                          note=f"CPU p50 {cpu_ms:.1f} ms per call (thread time)", cpu_ms=cpu_ms))
    with _cgroup_cycle() as cycle:
        add_in_process("cgroup set create (limits written) + remove, agbox CgroupManager", "startup.cgroup", cycle)
    return rows
