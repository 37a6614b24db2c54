"""Per-sandbox cgroups, written with the standard library.

Detects the layout at start: cgroup v1 controllers (with a v2 ``unified`` tree used only to
kill and to track) as on this machine, or a pure v2 hierarchy. Sandbox groups live below the
group of the current process in each hierarchy (so delegation works), under a parent named
after the data dir, so two agbox instances never touch each other's sandboxes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import time
from collections.abc import Callable
from pathlib import Path

from agbox.errors import SandboxError
from agbox.runtime.base import LimitEvents

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")


def _self_paths() -> dict[str, str]:
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            paths["unified"] = path
        for name in controllers.split(","):
            if name:
                paths[name] = path
    return paths


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


@dataclasses.dataclass(frozen=True)
class CgroupSet:
    """The directories of one sandbox's cgroup in every hierarchy in use."""

    dirs: dict[str, str]
    version: int

    def dir(self, controller: str) -> Path | None:
        value = self.dirs.get(controller)
        return Path(value) if value else None

    def procs_files(self) -> list[str]:
        return [str(Path(d) / "cgroup.procs") for d in self.dirs.values()]


class CgroupManager:
    def __init__(self, parent_name: str) -> None:
        self.parent_name = parent_name
        self.version = 2 if (ROOT / "cgroup.controllers").exists() else 1
        self_paths = _self_paths()
        self.parents: dict[str, Path] = {}
        if self.version == 1:
            for controller in V1_CONTROLLERS:
                base = ROOT / controller
                if not base.is_dir():
                    raise SandboxError(f"cgroup v1 controller {controller} is not mounted at {base}")
                self.parents[controller] = base / self_paths.get(controller, "/").lstrip("/") / parent_name
            unified = ROOT / "unified"
            if unified.is_dir():
                self.parents["unified"] = unified / self_paths.get("unified", "/").lstrip("/") / parent_name
        else:
            self.parents["unified"] = ROOT / self_paths.get("unified", "/").lstrip("/") / parent_name

    def prepare(self) -> None:
        for controller, parent in self.parents.items():
            parent.mkdir(parents=True, exist_ok=True)
            if self.version == 2 and controller == "unified":
                # Enable the controllers for our children, walking down from the root.
                wanted = "+memory +cpu +pids"
                for level in [*reversed(parent.parents), parent]:
                    if level == ROOT.parent or not str(level).startswith(str(ROOT)) or level == parent:
                        continue
                    with contextlib.suppress(OSError):
                        _write(level / "cgroup.subtree_control", wanted)
                with contextlib.suppress(OSError):
                    _write(parent / "cgroup.subtree_control", wanted)

    def remove_parents(self) -> None:
        """At a clean stop: remove our (then empty) parent groups, so nothing of ours stays in /sys/fs/cgroup."""
        for parent in self.parents.values():
            with contextlib.suppress(OSError):
                os.rmdir(parent)

    def leftovers(self) -> list[str]:
        """Names of sandbox groups that exist under our parent (from an earlier process)."""
        names: set[str] = set()
        for parent in self.parents.values():
            if parent.is_dir():
                names.update(entry.name for entry in os.scandir(parent) if entry.is_dir())
        return sorted(names)

    def group_for(self, name: str) -> CgroupSet:
        return CgroupSet({c: str(p / name) for c, p in self.parents.items()}, self.version)

    def create(self, name: str, memory_bytes: int, cpus: float, pids: int) -> CgroupSet:
        group = self.group_for(name)
        for directory in group.dirs.values():
            os.makedirs(directory, exist_ok=True)
        period = 100_000
        quota = max(int(cpus * period), 1000)
        if self.version == 1:
            memory = group.dir("memory")
            assert memory is not None
            _write(memory / "memory.limit_in_bytes", str(memory_bytes))
            with contextlib.suppress(OSError):
                _write(memory / "memory.memsw.limit_in_bytes", str(memory_bytes))
            cpu = group.dir("cpu")
            assert cpu is not None
            _write(cpu / "cpu.cfs_period_us", str(period))
            _write(cpu / "cpu.cfs_quota_us", str(quota))
            pid_dir = group.dir("pids")
            assert pid_dir is not None
            _write(pid_dir / "pids.max", str(pids))
        else:
            unified = group.dir("unified")
            assert unified is not None
            _write(unified / "memory.max", str(memory_bytes))
            with contextlib.suppress(OSError):
                _write(unified / "memory.swap.max", "0")
            _write(unified / "cpu.max", f"{quota} {period}")
            _write(unified / "pids.max", str(pids))
        return group

    @staticmethod
    def kill(group: CgroupSet) -> None:
        """cgroup.kill where the kernel has it, and SIGKILL to every member of every hierarchy too: a
        process that is still joining (in some hierarchies, not yet in the unified one) dies as well."""
        unified = group.dir("unified")
        if unified is not None and (unified / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(unified / "cgroup.kill", "1")
        for procs in group.procs_files():
            with contextlib.suppress(OSError):
                for pid in Path(procs).read_text().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), 9)

    @staticmethod
    def members(group: CgroupSet) -> int:
        """Live (non-zombie) processes in the group; zombies of other parents are not ours to reap."""
        pids: set[str] = set()
        for procs in group.procs_files():
            with contextlib.suppress(OSError):
                pids.update(Path(procs).read_text().split())
        live = 0
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2] != "Z":
                live += 1
        return live

    @staticmethod
    def remove(group: CgroupSet) -> bool:
        ok = True
        for directory in group.dirs.values():
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError:
                ok = False
        return ok

    # ---- figures -------------------------------------------------------------------------------

    @staticmethod
    def _read_int(path: Path | None, default: int = 0) -> int:
        if path is None:
            return default
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return default

    def cpu_usage_ns(self, group: CgroupSet) -> int:
        if self.version == 1:
            cpuacct = group.dir("cpuacct")
            return self._read_int(cpuacct / "cpuacct.usage" if cpuacct else None)
        unified = group.dir("unified")
        if unified is None:
            return 0
        with contextlib.suppress(OSError):
            for line in (unified / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) * 1000
        return 0

    def memory_used(self, group: CgroupSet) -> int:
        if self.version == 1:
            memory = group.dir("memory")
            return self._read_int(memory / "memory.usage_in_bytes" if memory else None)
        unified = group.dir("unified")
        return self._read_int(unified / "memory.current" if unified else None)

    @staticmethod
    def _read_field(path: Path | None, key: str) -> int:
        """The value of ``key`` in a flat keyed file (``memory.events``, ``pids.events``, ...)."""
        if path is None:
            return 0
        with contextlib.suppress(OSError, ValueError):
            for line in path.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
        return 0

    def limit_events(self, group: CgroupSet) -> LimitEvents:
        if self.version == 1:
            memory, pid_dir = group.dir("memory"), group.dir("pids")
            oom_file = memory / "memory.oom_control" if memory else None
        else:
            memory = pid_dir = group.dir("unified")
            oom_file = memory / "memory.events" if memory else None
        return LimitEvents(oom_kills=self._read_field(oom_file, "oom_kill"),
                           pids_max=self._read_field(pid_dir / "pids.events" if pid_dir else None, "max"))

    def pids_current(self, group: CgroupSet) -> int:
        directory = group.dir("pids") if self.version == 1 else group.dir("unified")
        return self._read_int(directory / "pids.current" if directory else None)

    def wait_empty(self, group: CgroupSet, timeout_s: float, reap: Callable[[], None]) -> bool:
        """Until no live process is left in the group (bounded). Woken by the kernel where the unified
        hierarchy has ``cgroup.events`` (its ``populated`` line changes with a POLLPRI), so a teardown
        costs no CPU while the sandbox's processes die; polled every millisecond otherwise."""
        deadline = time.monotonic() + timeout_s
        unified = group.dir("unified")
        try:
            events = os.open(unified / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC) if unified is not None else -1
        except OSError:
            events = -1
        try:
            poller = select.poll()
            if events >= 0:
                poller.register(events, select.POLLPRI)
            while True:
                reap()
                populated = events >= 0 and b"populated 1" in os.pread(events, 4096, 0)
                # A process that was still joining may sit only in the v1 hierarchies: count them all.
                if not populated and self.members(group) == 0:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if populated and events >= 0:
                    poller.poll(min(remaining, 0.1) * 1000)
                else:
                    time.sleep(0.001)
        finally:
            if events >= 0:
                os.close(events)
