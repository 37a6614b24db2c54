"""Thin ctypes wrappers for the few syscalls the standard library lacks (mount, setns)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

MNT_DETACH = 2
CLONE_NEWNET = 0x40000000


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def is_mountpoint(path: str) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")
