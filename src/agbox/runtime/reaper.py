"""Child-process bookkeeping for a process that hosts sandboxes.

The runtime makes its process a child subreaper, so sandbox processes orphaned by a dying bwrap
come back to us instead of to PID 1 (which here reaps only about once a second, leaving zombies
counted in the cgroup). We reap only what is ours, never ``waitpid(-1)``: in embedded mode the
process belongs to the caller, whose own children must stay theirs to wait for.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import os
import threading

PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_lock = threading.Lock()
_owned: set[int] = set()
# Wait statuses of owned processes reaped so far, until the runtime asks for them (``exit_status``) or
# forgets them (``forget``); so the status of a sandbox that ended on its own tells why it ended.
_statuses: dict[int, int] = {}


def become_subreaper() -> None:
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def own(pid: int) -> None:
    with _lock:
        _owned.add(pid)


def _children() -> list[int]:
    pids: list[int] = []
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with contextlib.suppress(OSError):
            with open(path) as handle:
                pids.extend(int(p) for p in handle.read().split())
    return pids


def _is_orphaned_sandbox_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return False
    comm = stat[stat.find("(") + 1 : stat.rfind(")")]
    state = stat[stat.rfind(")") + 2 : stat.rfind(")") + 3]
    return state == "Z" and comm == "bwrap"


def _reap_owned(pid: int) -> None:
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        done, status = pid, -1  # reaped elsewhere: status unknown
    if done:
        with _lock:
            if pid in _owned:
                _owned.discard(pid)
                _statuses[pid] = status


def exit_status(pid: int) -> int | None:
    """The wait status of an owned process that has exited (-1 if unknown), or None while it runs."""
    with _lock:
        running = pid in _owned
    if running:
        _reap_owned(pid)
    with _lock:
        return _statuses.get(pid)


def forget(pid: int) -> None:
    with _lock:
        _statuses.pop(pid, None)


def reap() -> None:
    """Reap every exited process that is ours: the bwraps we started and their orphans."""
    with _lock:
        owned = list(_owned)
    for pid in owned:
        _reap_owned(pid)
    for pid in _children():
        if pid not in owned and _is_orphaned_sandbox_zombie(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

