"""libnftables through ctypes: run nft commands in-process (an ``nft`` exec costs ~3 ms, this ~0.3 ms).

A context opens its netlink socket when it is made, so a context made while the thread is inside a
network namespace keeps acting on that namespace after the thread leaves it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import resource
import threading

from agbox.runtime import sysutil

LIBRARY = "libnftables.so.1"
CLONE_FILES = 0x00000400


class NftError(RuntimeError):
    pass


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(LIBRARY)
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    return lib


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def library() -> ctypes.CDLL:
    """The loaded library; raises OSError with the loader's message when it is missing."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = _load()
        return _lib


class Nft:
    """One libnftables context (not thread-safe: callers serialize use of one context)."""

    def __init__(self) -> None:
        self._lib = library()
        ctx = self._lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("nft_ctx_new failed")
        self._ctx: int | None = ctx
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        self._lock = threading.Lock()

    def run(self, commands: str) -> str:
        with self._lock:
            if self._ctx is None:
                raise NftError("nft context is closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
            output = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
            if rc != 0:
                error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace").strip()
                raise NftError(error or f"nft failed ({rc})")
            return output

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


class NftWorker:
    """Runs nft commands in the host's or a sandbox's network namespace, on one thread of its own.

    libnftables waits for netlink replies with select(), which aborts the process for a socket fd
    above 1023; a server with hundreds of sessions has more fds than that. So this thread gets a private
    fd table (``unshare(CLONE_FILES)``, then closes its copies of everything), and every context is
    made there, used, and freed: their fds stay in the single digits whatever the server holds.
    """

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="agbox-nft",
                                                           initializer=self._isolate)
        self._host: Nft | None = None
        self._own_netns = -1

    def _isolate(self) -> None:
        sysutil.unshare(CLONE_FILES)
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self._own_netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def _run(self, netns_fd: int | None, commands: str) -> str:
        if netns_fd is None:
            if self._host is None:
                self._host = Nft()
            return self._host.run(commands)
        # The fd is in the shared table; open the namespace again through the process's fd directory.
        target = os.open(f"/proc/{os.getpid()}/fd/{netns_fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            sysutil.setns(target, sysutil.CLONE_NEWNET)
            try:
                ctx = Nft()  # bound to the namespace it was made in
            finally:
                sysutil.setns(self._own_netns, sysutil.CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            return ctx.run(commands)
        finally:
            ctx.close()

    def run(self, netns_fd: int | None, commands: str) -> str:
        """Blocking; ``netns_fd`` None = the host's namespace."""
        return self._pool.submit(self._run, netns_fd, commands).result()

    async def arun(self, netns_fd: int | None, commands: str) -> str:
        # Waited for on a thread of the shared fd table: completing an asyncio future from the nft
        # thread would write to the loop's wake-up fd, a number that means nothing in its private table.
        return await asyncio.get_running_loop().run_in_executor(None, self.run, netns_fd, commands)

    def close(self) -> None:
        def close_host() -> None:
            if self._host is not None:
                self._host.close()
                self._host = None

        with contextlib.suppress(RuntimeError):
            self._pool.submit(close_host).result()
        self._pool.shutdown(wait=True)
