"""Thin ctypes wrappers for the few syscalls the standard library lacks (setns, unshare, mount)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
CLONE_FS = 0x00000200

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOATIME = 0x400
MS_REC = 0x4000
MS_PRIVATE = 0x40000


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def c(value: str | None) -> bytes | None:
        return value.encode() if value is not None else None

    _check(_libc.mount(c(source), c(target), c(fstype), flags, c(data)), f"mount {target}")
