"""The local runtime: one bubblewrap sandbox per session on this machine.

Each sandbox gets
- its own user, pid, net, ipc, uts, mount and cgroup namespaces (``--unshare-all``), running as an
  unprivileged host uid picked per sandbox (uid 1000 "user" inside);
- a writable root: its own ext4 filesystem sized to the disk limit (``runtime/disk.py``: a loop-mounted
  unnamed image in the data dir, mounted only in the sandbox's mount namespace), with the host's
  ``/usr`` and a sanitized ``/etc`` bound read-only over it, and the agent bound read-only at ``/opt/agbox/agent``;
- a cgroup with memory, CPU and pids limits, killed as a whole on destroy;
- its own network (``runtime/network.py``: a veth, an address, DNS and a policy), or, with networking
  off, no interface but loopback; either way links reach its ports through ``connect_port``, which
  opens the socket inside the sandbox's network namespace.

Processes are spawned from one long-lived thread, because bwrap's ``--die-with-parent`` ties the
sandbox to the thread that forked it; if this process dies, every sandbox dies with it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import secrets
import select
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agbox.errors import SandboxError
from agbox.runtime import disk, reaper, seccomp, sysutil
from agbox.runtime.base import (
    EventCallback,
    LimitEvents,
    NetworkPolicy,
    Runtime,
    SandboxHandle,
    SandboxSpec,
    SandboxStats,
)
from agbox.runtime.cgroups import CgroupManager, CgroupSet
from agbox.runtime.channel import AgentChannel
from agbox.runtime.disk import DiskLayers, Layer
from agbox.runtime.network import NetworkManager, NetworkOptions, SandboxNetwork
from agbox.runtime.rootfs import SANDBOX_GID, SANDBOX_HOME, SANDBOX_UID, SANDBOX_USER, build_base
from agbox.runtime.sandbox_files import SandboxFiles

log = logging.getLogger(__name__)

AGENT_DIR = Path(__file__).resolve().parent.parent / "agent"
AGENT_MOUNT = "/opt/agbox/agent"
UID_BASE = 200_000
UID_SPAN = 1_000_000
READY_TIMEOUT_S = 15.0
REFILL_DELAY_S = 0.05
# Warm pool under a sustained create rate: starts under way per spec at once, and the most sandboxes
# kept started per spec (each idle one holds about 6 MiB).
REFILL_PARALLEL = max(2, (os.cpu_count() or 1) + 1)
POOL_MAX = 32
DEMAND_WINDOW_S = 1.0
# A pool grown by a burst of creates goes back to ``warm_pool_size`` this long after its last create.
TRIM_AFTER_S = 5.0


class _Demand:
    """Hand-overs of one pool in the last ``DEMAND_WINDOW_S`` seconds: its create rate."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque()

    def add(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        return len(self._times) / DEMAND_WINDOW_S

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - DEMAND_WINDOW_S:
            self._times.popleft()


@dataclass
class _Sandbox:
    id: str
    spec: SandboxSpec
    uid: int
    group: CgroupSet
    bwrap_pid: int
    child_pid: int
    channel: AgentChannel
    disk_device: str
    net: SandboxNetwork | None = None


class LocalRuntime(Runtime):
    name = "local"

    def __init__(self, data_dir: Path, run_dir: Path = Path("/run/agbox"), warm_pool_size: int = 0,
                 network: NetworkOptions | None = None) -> None:
        self.data_dir = data_dir
        # Started sandboxes kept ready per spec, so a create is a hand-over instead of a start.
        self.warm_pool_size = warm_pool_size
        self._pools: dict[tuple[Any, ...], list[_Sandbox]] = {}
        self._starting: dict[tuple[Any, ...], int] = {}  # pool starts under way
        self._waiters: dict[tuple[Any, ...], collections.deque[asyncio.Future[_Sandbox]]] = {}
        self._demand: dict[tuple[Any, ...], _Demand] = {}
        self._start_time_s = 0.05  # recent wall time of a pool start (moving average)
        self._trims: dict[tuple[Any, ...], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        tag = hashlib.sha256(str(data_dir).encode()).hexdigest()[:10]
        # Sandbox roots and the read-only base live outside the (private) data dir, in a tree the
        # sandbox uids may traverse but not list: bwrap resolves them after dropping privileges.
        self.run_dir = run_dir / tag
        self.sandbox_dir = self.run_dir / "sandboxes"
        self.base_dir = self.run_dir / "base"
        # The data dir's tag too: servers sharing one PostgreSQL store each own their sandboxes.
        self.node = f"local:{socket.gethostname()}:{tag[:6]}"
        self.cgroups = CgroupManager(f"agbox-{tag}")
        self._sandboxes: dict[str, _Sandbox] = {}
        self._spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="agbox-spawner",
                                                              initializer=disk.private_fs_context)
        self.disks = DiskLayers(data_dir / "disks", self.run_dir / "layer")
        self._used_uids: set[int] = set()
        self._bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
        self._seccomp = seccomp.build_filter()
        self._setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        # None: networking is off and sandboxes have only loopback.
        self.network = NetworkManager(tag, network, run_dir) if network is not None else None
        self.offers_network = self.network is not None

    # ---- node set-up ---------------------------------------------------------------------------

    async def start(self) -> None:
        if os.geteuid() != 0:
            raise SandboxError("the local runtime needs root (namespaces, cgroups, loop devices)")
        if not os.path.exists(self._setpriv):
            raise SandboxError("setpriv (util-linux) is not installed")
        if not os.path.exists(self._bwrap):
            raise SandboxError("bubblewrap (bwrap) is not installed: run `make install` or `apt-get install bubblewrap`")
        reaper.become_subreaper()
        self.sandbox_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.run_dir.parent, self.run_dir, self.sandbox_dir):
            os.chmod(path, 0o711)
        (self.run_dir / "data_dir").write_text(str(self.data_dir))
        await asyncio.get_running_loop().run_in_executor(None, self._prepare_node)
        if self.network is not None:
            await self.network.start()

    def _prepare_node(self) -> None:
        self.cgroups.prepare()
        # Whatever an earlier process of this data dir left behind is ended now.
        for name in self.cgroups.leftovers():
            group = self.cgroups.group_for(name)
            self.cgroups.kill(group)
            self.cgroups.wait_empty(group, 5.0, reaper.reap)
            self.cgroups.remove(group)
        for entry in os.scandir(self.sandbox_dir):  # logs of sandboxes that are gone
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(entry.path)
        self.disks.start()
        build_base(self.base_dir)
        if self.network is not None:  # the resolver every sandbox has in its own namespace
            resolv = self.base_dir / "etc" / "resolv.conf"
            resolv.unlink(missing_ok=True)  # may be a copied symlink: never write through it
            resolv.write_text("nameserver 127.0.0.53\n")
        os.chmod(self.base_dir, 0o755)
        # A copy of the agent, so the sandbox uid can read it wherever agbox is installed.
        agent_copy = self.base_dir / "agent"
        shutil.rmtree(agent_copy, ignore_errors=True)
        shutil.copytree(AGENT_DIR, agent_copy, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
        # Compiled once here with the sandbox's own interpreter, so no sandbox recompiles the agent.
        subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(agent_copy)], check=False,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for directory, _dirs, files in os.walk(agent_copy):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)

    async def close(self) -> None:
        self._closing = True
        for timer in self._trims.values():
            timer.cancel()
        self._trims.clear()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(SandboxError("the server is shutting down"))
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        warm = [sandbox for pool in self._pools.values() for sandbox in pool]
        self._pools.clear()
        for sandbox in warm:
            with contextlib.suppress(Exception):
                await self._destroy_sandbox(sandbox)
        for session_id in list(self._sandboxes):
            with contextlib.suppress(Exception):
                await self.destroy(SandboxHandle(session_id, self.node, {}))
        self._spawner.shutdown(wait=False)
        self.disks.close()
        self.cgroups.remove_parents()
        if self.network is not None:
            await self.network.close()
        # The base copy and logs are ours alone (the data dir is locked): leave nothing in /run.
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # ---- create ----------------------------------------------------------------------------------

    def _allocate_uid(self) -> int:
        while True:
            uid = UID_BASE + random.randrange(UID_SPAN)
            if uid not in self._used_uids:
                self._used_uids.add(uid)
                return uid

    def _argv(self, spec: SandboxSpec, info_fd: int, seccomp_fd: int | None) -> list[str]:
        # The writable root is the sandbox's disk layer, mounted at the mount point only in the
        # namespace the launcher starts in (see runtime/disk.py), so nothing lands in the host's mount table.
        argv = [
            self._bwrap,
            "--bind", str(self.disks.mount_point), "/",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--ro-bind", str(self.base_dir / "etc"), "/etc",
            "--ro-bind", str(self.base_dir / "agent"), AGENT_MOUNT,
            # The host's font cache: without it every sandbox's first Chromium (or any fontconfig
            # user) rescans all fonts, ~2.5 s on this machine.
            "--ro-bind-try", "/var/cache/fontconfig", "/var/cache/fontconfig",
            "--dir", SANDBOX_HOME, "--perms", "1777", "--dir", "/tmp", "--perms", "1777", "--dir", "/var/tmp",
            "--dir", "/run",
        ]
        for source, target in spec.ro_binds:
            argv += ["--ro-bind", source, target]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        argv += [
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm",
            "--chdir", SANDBOX_HOME, "--hostname", spec.hostname,
            # With networking the sandbox joins the namespace it was forked in (runtime/network.py).
            "--unshare-all", *(["--share-net"] if self.network is not None else []),
            "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID),
            "--die-with-parent", "--new-session", "--disable-userns", "--info-fd", str(info_fd),
            "/usr/bin/python3", "-I", "-S", f"{AGENT_MOUNT}/main.py",
        ]
        return argv

    def _env(self, spec: SandboxSpec) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": SANDBOX_HOME, "USER": SANDBOX_USER, "LOGNAME": SANDBOX_USER, "SHELL": "/bin/bash",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "xterm", "TMPDIR": "/tmp",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(spec.env)
        return env

    def _launcher(self, group: CgroupSet, uid: int) -> list[str]:
        """argv prefix that joins the sandbox's cgroups, drops to its uid and sets the parent-death signal,
        then execs bwrap: done by small exec'd programs rather than a Python preexec_fn, so Popen can
        vfork instead of copying the whole server process for every sandbox."""
        join = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
        return ["/bin/sh", "-c", join, "agbox-launch", *group.procs_files(), "--",
                self._setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--pdeathsig=KILL", "--"]

    def _spawn(self, spec: SandboxSpec, sandbox_id: str, uid: int, group: CgroupSet,
               layer: Layer, net: SandboxNetwork | None) -> tuple[int, int, int, int]:
        """Runs on the spawner thread (fork + exec only, inside the disk layer's mount namespace and the
        sandbox's network namespace). Returns (bwrap pid, info fd, agent stdin, agent stdout). Releases
        ``layer`` in every case: once the launcher runs, its processes hold the layer."""
        info_r, info_w = os.pipe()
        seccomp_r: int | None = None
        if self._seccomp is not None:
            seccomp_r, seccomp_w = os.pipe()
            os.write(seccomp_w, self._seccomp)  # a few hundred bytes: fits the pipe buffer
            os.close(seccomp_w)
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        log_fd = os.open(str(self.sandbox_dir / f"{sandbox_id}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            with self.disks.entered(layer), (self.network.joined(net) if self.network is not None
                                             else contextlib.nullcontext()):
                proc = subprocess.Popen(
                    [*self._launcher(group, uid), *self._argv(spec, info_w, seccomp_r)],
                    stdin=in_r, stdout=out_w, stderr=log_fd, env=self._env(spec),
                    pass_fds=(info_w,) if seccomp_r is None else (info_w, seccomp_r), close_fds=True,
                )
        except BaseException:
            for fd in (info_r, in_w, out_r):
                os.close(fd)
            raise
        finally:
            layer.release()
            for fd in (info_w, in_r, out_w, log_fd):
                os.close(fd)
            if seccomp_r is not None:
                os.close(seccomp_r)
        # Popen never waits for it: the reaper owns the exit status.
        proc.returncode = 0
        reaper.own(proc.pid)
        return proc.pid, info_r, in_w, out_r

    def _await_info(self, sandbox_id: str, info_r: int) -> int:
        """Blocks (off the spawner thread) until bwrap reports the sandbox's pid; returns it."""
        data = b""
        deadline = time.monotonic() + READY_TIMEOUT_S
        poller = select.poll()  # not select(): fd numbers pass 1024 with many sessions
        poller.register(info_r, select.POLLIN)
        try:
            # bwrap writes its info JSON in pieces and closes the fd once the sandbox is set up.
            while time.monotonic() < deadline:
                events = poller.poll(max(deadline - time.monotonic(), 0) * 1000)
                chunk = os.read(info_r, 4096) if events else b""
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(info_r)
        try:
            return int(json.loads(data.decode() or "{}")["child-pid"])
        except (ValueError, KeyError) as exc:
            raise SandboxError(f"bwrap did not start the sandbox: {self._log_tail(sandbox_id)}") from exc

    def _log_tail(self, sandbox_id: str) -> str:
        with contextlib.suppress(OSError):
            return (self.sandbox_dir / f"{sandbox_id}.log").read_text()[-500:].strip() or "no output"
        return "no output"

    async def _start_sandbox(self, spec: SandboxSpec) -> _Sandbox:
        """Start one sandbox for ``spec`` (not yet bound to a session); cleans up after itself on failure."""
        loop = asyncio.get_running_loop()
        sandbox_id = "sbx-" + secrets.token_hex(8)
        uid = self._allocate_uid()
        group: CgroupSet | None = None
        channel: AgentChannel | None = None
        net: SandboxNetwork | None = None
        configured: asyncio.Future[None] | None = None
        try:
            if self.network is not None:
                # The namespace first (the sandbox is forked into it); the rest of the network is set up
                # while the sandbox starts, and the sandbox is ready only when both are.
                net = await self.network.create_namespace(spec.network)
                configured = asyncio.ensure_future(self.network.configure(net))
            layer = await self.disks.make(spec.limits.disk_bytes, uid)
            try:
                # Off the event loop: a dozen cgroupfs writes and mkdirs that stall it under load.
                group = await loop.run_in_executor(None, self.cgroups.create, sandbox_id, spec.limits.memory_bytes,
                                                   spec.limits.cpus, spec.limits.pids)
                spawned = loop.run_in_executor(self._spawner, self._spawn, spec, sandbox_id, uid, group, layer, net)
            except BaseException:
                layer.release()
                raise
            bwrap_pid, info_r, in_w, out_r = await spawned
            disk_device = layer.device
            channel = AgentChannel(in_w, out_r, sandbox_id)
            await channel.open()
            child_pid = await loop.run_in_executor(None, self._await_info, sandbox_id, info_r)
            assert channel.ready is not None
            try:
                await asyncio.wait_for(channel.ready, READY_TIMEOUT_S)
            except (TimeoutError, SandboxError) as exc:
                raise SandboxError(f"the sandbox agent did not start: {self._log_tail(sandbox_id)}") from exc
            if self.network is not None and net is not None and configured is not None:
                await configured
            return _Sandbox(sandbox_id, spec, uid, group, bwrap_pid, child_pid, channel, disk_device, net)
        except BaseException:
            if group is not None:
                await loop.run_in_executor(None, self._kill_group, group)
            else:  # a create given up while its cgroups were being made: no process is in them yet
                self.cgroups.remove(self.cgroups.group_for(sandbox_id))
            if channel is not None:
                await channel.close()
            if configured is not None:  # let it finish (never cancelled mid-way on the network thread)
                with contextlib.suppress(Exception):
                    await asyncio.shield(configured)
            if self.network is not None and net is not None:
                await self.network.destroy(net)
            self._remove_log(sandbox_id)
            self._used_uids.discard(uid)
            raise

    @staticmethod
    def _pool_key(spec: SandboxSpec) -> tuple[Any, ...]:
        return (spec.limits, tuple(sorted(spec.env.items())), spec.hostname, spec.ro_binds)

    def warm_sandboxes(self) -> int:
        return sum(len(pool) for pool in self._pools.values())

    def _take_warm(self, spec: SandboxSpec) -> _Sandbox | None:
        pool = self._pools.get(self._pool_key(spec), [])
        while pool:
            sandbox = pool.pop(0)
            if not sandbox.channel.closed.is_set():
                return sandbox
            self._background(self._destroy_sandbox(sandbox))
        return None

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def prewarm(self, spec: SandboxSpec) -> None:
        self._refill(spec)

    def pool_target(self, spec: SandboxSpec) -> int:
        """How many started sandboxes to keep for specs like this one: ``warm_pool_size`` when creates are
        rare; under a sustained rate, enough to cover the hand-overs expected while a start is under way
        (twice the rate times the recent start time), so pooled creates keep finding one."""
        if self.warm_pool_size <= 0:
            return 0
        demand = self._demand.get(self._pool_key(spec))
        if demand is None:
            return self.warm_pool_size
        expected = demand.rate(time.monotonic()) * self._start_time_s * 2
        return max(self.warm_pool_size, min(math.ceil(expected), POOL_MAX))

    def _refill(self, spec: SandboxSpec) -> None:
        """Start sandboxes for specs like this one until the pool (with the starts under way) reaches its
        target, at most ``REFILL_PARALLEL`` at a time: a sustained create rate needs several starts in
        flight (each waits for its agent most of the time), a single one refills at most ~1/start time."""
        key = self._pool_key(spec)
        if self.warm_pool_size <= 0 or self._closing:
            return
        target = self.pool_target(spec)
        pool = self._pools.setdefault(key, [])
        while (self._starting.get(key, 0) < REFILL_PARALLEL
               and len(pool) + self._starting.get(key, 0) - len(self._waiters.get(key, ())) < target):
            self._starting[key] = self._starting.get(key, 0) + 1
            # Delayed while creates are rare (see _refill_one); not under a sustained rate.
            self._background(self._refill_one(spec, key, delay=target <= self.warm_pool_size))

    async def _refill_one(self, spec: SandboxSpec, key: tuple[Any, ...], delay: bool) -> None:
        sandbox: _Sandbox | None = None
        try:
            if delay:
                # A moment after the hand-over, so the new session's first request does not compete
                # with a sandbox start for the cores.
                await asyncio.sleep(REFILL_DELAY_S)
            began = time.monotonic()
            sandbox = await self._start_sandbox(spec)
            self._start_time_s += (time.monotonic() - began - self._start_time_s) * 0.2
        except Exception as exc:
            log.exception("refilling the warm pool failed")
            waiters = self._waiters.get(key)
            if waiters:  # a create waiting for this start starts its own instead
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        finally:
            self._starting[key] -= 1
        if self._closing:
            await self._destroy_sandbox(sandbox)
            return
        waiters = self._waiters.get(key)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(sandbox)
                break
        else:
            self._pools.setdefault(key, []).append(sandbox)
        self._refill(spec)

    async def _warm_or_start(self, spec: SandboxSpec) -> _Sandbox:
        """A pooled sandbox; if the pool is empty but starts for it are under way, the next one of those
        (waiting is never slower than starting another, which would compete with them for the cores);
        else a sandbox started now."""
        key = self._pool_key(spec)
        if self.warm_pool_size > 0:
            demand = self._demand.setdefault(key, _Demand())
            demand.add(time.monotonic())
        sandbox = self._take_warm(spec)
        if sandbox is not None:
            return sandbox
        waiters = self._waiters.setdefault(key, collections.deque())
        if self._starting.get(key, 0) > len(waiters):
            waiter: asyncio.Future[_Sandbox] = asyncio.get_running_loop().create_future()
            waiters.append(waiter)
            try:
                return await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._pools.setdefault(key, []).append(waiter.result())  # handed over as we gave up
                raise
            except Exception:
                if self._closing:
                    raise
                log.info("a pooled start failed; starting a sandbox for this create")
            finally:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
        return await self._start_sandbox(spec)

    def _schedule_trim(self, key: tuple[Any, ...]) -> None:
        """(Re)arm the timer that stops sandboxes beyond ``warm_pool_size`` once creates have paused."""
        old = self._trims.pop(key, None)
        if old is not None:
            old.cancel()

        def trim() -> None:
            self._trims.pop(key, None)
            if self._starting.get(key):  # what is still starting joins the pool first
                self._schedule_trim(key)
                return
            pool = self._pools.get(key, [])
            while len(pool) > self.warm_pool_size and not self._closing:
                self._background(self._destroy_sandbox(pool.pop()))

        self._trims[key] = asyncio.get_running_loop().call_later(TRIM_AFTER_S, trim)

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        pooled = self.warm_pool_size > 0
        try:
            sandbox = await self._warm_or_start(spec)
        finally:
            if pooled:
                self._refill(spec)
                self._schedule_trim(self._pool_key(spec))
        if self.network is not None and sandbox.net is not None and spec.network is not None:
            try:  # pooled sandboxes start with the default policy: usually nothing to do here
                await self.network.apply(sandbox.net, spec.network)
            except Exception:
                await self._destroy_sandbox(sandbox)
                raise
        self._sandboxes[spec.session_id] = sandbox
        return SandboxHandle(spec.session_id, self.node, {
            "sandbox_id": sandbox.id, "uid": sandbox.uid, "bwrap_pid": sandbox.bwrap_pid,
            "child_pid": sandbox.child_pid, "cgroups": sandbox.group.dirs,
        })

    # ---- use -------------------------------------------------------------------------------------

    def _get(self, handle: SandboxHandle) -> _Sandbox:
        sandbox = self._sandboxes.get(handle.session_id)
        if sandbox is None or sandbox.channel.closed.is_set():
            raise SandboxError("the sandbox has ended")
        return sandbox

    async def call(self, handle: SandboxHandle, op: str, args: dict[str, Any], *, timeout_s: float,
                   on_event: EventCallback | None = None) -> Any:
        return await self._get(handle).channel.call(op, args, timeout_s, on_event)

    async def cancel(self, handle: SandboxHandle, request_id: int) -> None:
        await self._get(handle).channel.cancel(request_id)

    def alive(self, handle: SandboxHandle) -> bool:
        sandbox = self._sandboxes.get(handle.session_id)
        return sandbox is not None and not sandbox.channel.closed.is_set()

    async def stats(self, handle: SandboxHandle) -> SandboxStats:
        sandbox = self._get(handle)
        limits = sandbox.spec.limits
        rx = tx = 0
        if self.network is not None and sandbox.net is not None:
            rx, tx = self.network.counters(sandbox.net)
        else:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{sandbox.child_pid}/net/dev").read_text().splitlines()[2:]:
                    fields = line.split(":", 1)[1].split()
                    rx += int(fields[0])
                    tx += int(fields[8])
        # The sandbox's root (its disk layer) as its own processes see it.
        try:
            vfs = os.statvfs(f"/proc/{sandbox.child_pid}/root/")
        except OSError as exc:  # it ended a moment ago
            raise SandboxError("the sandbox has ended") from exc
        return SandboxStats(
            cpu_count=max(1, min(os.cpu_count() or 1, math.ceil(limits.cpus))),
            cpu_usage_ns=self.cgroups.cpu_usage_ns(sandbox.group),
            mem_used=self.cgroups.memory_used(sandbox.group),
            mem_total=limits.memory_bytes,
            disk_used=(vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize,
            disk_total=vfs.f_blocks * vfs.f_frsize,
            rx_bytes=rx, tx_bytes=tx,
            pids=self.cgroups.pids_current(sandbox.group),
        )

    async def set_network_policy(self, handle: SandboxHandle, policy: NetworkPolicy) -> dict[str, Any]:
        sandbox = self._get(handle)
        if self.network is None or sandbox.net is None:
            raise SandboxError("networking is off on this server")
        await self.network.apply(sandbox.net, policy)
        return sandbox.net.describe()

    def network_info(self, handle: SandboxHandle) -> dict[str, Any] | None:
        sandbox = self._sandboxes.get(handle.session_id)
        return sandbox.net.describe() if sandbox is not None and sandbox.net is not None else None

    # ---- why processes died ------------------------------------------------------------------------

    def limit_events(self, handle: SandboxHandle) -> LimitEvents:
        sandbox = self._sandboxes.get(handle.session_id)
        return self.cgroups.limit_events(sandbox.group) if sandbox is not None else LimitEvents()

    def limit_note(self, handle: SandboxHandle, since: LimitEvents) -> str | None:
        sandbox = self._sandboxes.get(handle.session_id)
        if sandbox is None:
            return None
        now = self.cgroups.limit_events(sandbox.group)
        limits = sandbox.spec.limits
        notes = []
        if now.oom_kills > since.oom_kills:
            killed = now.oom_kills - since.oom_kills
            notes.append(f"out of memory: the sandbox reached its {limits.memory_bytes >> 20} MiB memory limit "
                         f"and the kernel killed {'a process' if killed == 1 else f'{killed} processes'}")
        if now.pids_max > since.pids_max:
            notes.append(f"process limit: the sandbox reached its limit of {limits.pids} processes and threads, "
                         "so new ones could not start")
        return "; ".join(notes) or None

    async def wait_ended(self, handle: SandboxHandle, timeout_s: float) -> bool:
        sandbox = self._sandboxes.get(handle.session_id)
        if sandbox is None:
            return True
        try:
            await asyncio.wait_for(sandbox.channel.closed.wait(), timeout_s)
        except TimeoutError:
            return False
        # The agent's end reaches bwrap a moment later; its exit status says how the agent ended.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_process_exit(sandbox.bwrap_pid), timeout_s)
        return True

    def end_reason(self, handle: SandboxHandle, since: LimitEvents | None = None) -> str:
        sandbox = self._sandboxes.get(handle.session_id)
        if sandbox is None:
            return "sandbox ended"
        how = _agent_end(reaper.exit_status(sandbox.bwrap_pid))
        note = self.limit_note(handle, since or LimitEvents())
        return f"{note} ({how})" if note else how

    def files(self, handle: SandboxHandle) -> SandboxFiles:
        sandbox = self._get(handle)
        try:
            device: int | None = os.stat(sandbox.disk_device).st_rdev
        except OSError as exc:
            raise SandboxError("the sandbox has ended") from exc
        return SandboxFiles(sandbox.child_pid, sandbox.uid, sandbox.uid, sandbox.spec.limits.disk_bytes, device)

    async def connect_port(self, handle: SandboxHandle, port: int) -> socket.socket:
        sandbox = self._get(handle)
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(None, _socket_in_netns, sandbox.child_pid)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
        except OSError:
            sock.close()
            raise
        return sock

    # ---- end -------------------------------------------------------------------------------------

    def _kill_group(self, group: CgroupSet) -> None:
        self.cgroups.kill(group)
        if not self.cgroups.wait_empty(group, 10.0, reaper.reap):
            log.warning("sandbox cgroup %s did not empty in time", group.dirs)
        reaper.reap()
        self.cgroups.remove(group)

    def _discard_and_kill(self, sandbox: _Sandbox) -> None:
        self.disks.discard(sandbox.disk_device, sandbox.child_pid)
        self._kill_group(sandbox.group)

    def _remove_log(self, sandbox_id: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.sandbox_dir / f"{sandbox_id}.log")

    async def destroy(self, handle: SandboxHandle) -> None:
        sandbox = self._sandboxes.pop(handle.session_id, None)
        if sandbox is None:
            # Not ours in memory (e.g. a record from an earlier process): make sure nothing is left.
            sandbox_id = str(handle.details.get("sandbox_id") or handle.session_id)
            group = self.cgroups.group_for(sandbox_id)
            await asyncio.get_running_loop().run_in_executor(None, self._kill_group, group)
            self._remove_log(sandbox_id)
            return
        await self._destroy_sandbox(sandbox)

    async def _destroy_sandbox(self, sandbox: _Sandbox) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._discard_and_kill, sandbox)
        await sandbox.channel.close()
        if self.network is not None and sandbox.net is not None:
            await self.network.destroy(sandbox.net)
        self._remove_log(sandbox.id)
        self._used_uids.discard(sandbox.uid)
        reaper.forget(sandbox.bwrap_pid)

    async def reattach(self, handle: SandboxHandle) -> bool:
        # Local sandboxes die with the process that made them (--die-with-parent), so a restarted
        # control plane can only confirm they are gone and clean up what is left.
        if handle.session_id in self._sandboxes:
            return self.alive(handle)
        await self.destroy(handle)
        return False


def _agent_end(status: int | None) -> str:
    """How the agent ended, from bwrap's wait status (bwrap exits with 128 + N if its child got signal N)."""
    if status is None or status < 0:
        return "the sandbox's agent ended"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"the sandbox was killed by signal {-code}"
    if 128 < code <= 128 + 64:
        number = code - 128
        with contextlib.suppress(ValueError):
            return f"the sandbox's agent was killed by signal {number} ({signal.Signals(number).name})"
        return f"the sandbox's agent was killed by signal {number}"
    return f"the sandbox's agent exited with status {code}"


async def _process_exit(pid: int) -> None:
    """Return once ``pid`` (a child of ours) has exited; it is reaped and its status kept by the reaper."""
    if reaper.exit_status(pid) is not None:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    reaper.exit_status(pid)


def _socket_in_netns(pid: int) -> socket.socket:
    """Create a TCP socket inside the network namespace of ``pid`` (setns on this thread, then back)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        sysutil.setns(target, sysutil.CLONE_NEWNET)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            sysutil.setns(own, sysutil.CLONE_NEWNET)
    finally:
        os.close(own)
        os.close(target)

