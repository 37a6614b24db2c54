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


def reap() -> None:
    """Reap every exited process that is ours: the bwraps we started and their orphans."""
    with _lock:
        owned = list(_owned)
    for pid in owned:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            with _lock:
                _owned.discard(pid)
    for pid in _children():
        if pid not in owned and _is_orphaned_sandbox_zombie(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

