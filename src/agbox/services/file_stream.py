"""Whole files into and out of a session as byte streams (no base64, no JSON in the data path).

Where the runtime gives direct access to a sandbox's files (``Runtime.files``: the local runtime),
the server reads and writes them itself, resolved safely inside the sandbox's root and as its user
(runtime/sandbox_files.py): a transfer runs at about the speed of the disk and the HTTP connection,
and the server holds at most a few chunks in memory whatever the file's size. Elsewhere (sandboxes on
Ray nodes) the same calls fall back to the agent's ``fs_read``/``fs_write`` ops in 4 MiB base64
chunks: correct and bounded, but at the old speed, and an overwrite there is not atomic.

An overwrite is all or nothing: the bytes go to a new file renamed over the old one at the end, so a
failed upload (disk full, client gone, session ended) leaves the previous file as it was.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from agbox.errors import InvalidRequestError, LimitExceededError, SandboxError, SessionNotFoundError
from agbox.models import SessionRecord
from agbox.runtime.base import SandboxHandle
from agbox.runtime.channel import AgentError
from agbox.runtime.sandbox_files import SandboxFiles, os_error, sandbox_path
from agbox.services.sessions import SessionService

CHUNK = 4 * 1024 * 1024
AGENT_CHUNK = 4 * 1024 * 1024
OP_TIMEOUT_S = 300.0
T = TypeVar("T")


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _read_some(fd: int, size: int) -> bytes:
    return os.read(fd, size)


class FileStreams:
    def __init__(self, sessions: SessionService) -> None:
        self.sessions = sessions

    def _target(self, owner: str, session_id: Any, path: Any) -> tuple[SessionRecord, SandboxHandle, str]:
        checked = sandbox_path(path)
        record = self.sessions.get(owner, session_id, touch=False)
        return record, self.sessions.handle(record), checked

    def _files(self, record: SessionRecord, handle: SandboxHandle) -> SandboxFiles | None:
        try:
            return self.sessions.runtime.files(handle)
        except SandboxError as exc:
            raise SessionNotFoundError(record.id, "its sandbox has ended") from exc

    def disk_limit(self, record: SessionRecord) -> int | None:
        """The session's disk limit in bytes (what an upload can at most take)."""
        handle = self.sessions.handle(record)
        files = self._files(record, handle)
        return files.disk_limit if files is not None else None

    # ---- out of the sandbox ----------------------------------------------------------------------

    async def open_download(self, owner: str, session_id: Any, path: Any) -> tuple[int, AsyncIterator[bytes]]:
        """(size, chunks) of a sandbox file; the chunks hold the session in use until exhausted or closed."""
        record, handle, checked = self._target(owner, session_id, path)
        files = self._files(record, handle)
        if files is None:
            return await self._agent_download(record, handle, checked)
        fd, size = await _in_thread(files.open_read, checked)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                with self.sessions.in_use(record.id):
                    left = size
                    while left > 0:
                        try:
                            data = await _in_thread(_read_some, fd, min(CHUNK, left))
                        except OSError as exc:
                            raise os_error(exc, checked) from exc
                        if not data:
                            break  # the file shrank while it was sent: the client sees a short body
                        left -= len(data)
                        yield data
            finally:
                os.close(fd)

        return size, chunks()

    async def _agent_download(self, record: SessionRecord, handle: SandboxHandle,
                              path: str) -> tuple[int, AsyncIterator[bytes]]:
        first = await self._agent(handle, path, "fs_read", {"path": path, "offset": 0, "length": AGENT_CHUNK,
                                                            "format": "binary"})
        size = int(first["size"])

        async def chunks() -> AsyncIterator[bytes]:
            with self.sessions.in_use(record.id):
                data = base64.b64decode(first["data"])
                offset = len(data)
                if data:
                    yield data
                while offset < size:
                    part = await self._agent(handle, path, "fs_read", {"path": path, "offset": offset,
                                                                       "length": min(AGENT_CHUNK, size - offset),
                                                                       "format": "binary"})
                    data = base64.b64decode(part["data"])
                    if not data:
                        break
                    offset += len(data)
                    yield data

        return size, chunks()

    async def _agent(self, handle: SandboxHandle, path: str, op: str, args: dict[str, Any]) -> Any:
        try:
            return await self.sessions.runtime.call(handle, op, args, timeout_s=OP_TIMEOUT_S)
        except AgentError as exc:
            if exc.errno is not None:
                raise os_error(OSError(exc.errno, str(exc)), path) from exc
            raise InvalidRequestError(str(exc)) from exc

    # ---- into the sandbox ------------------------------------------------------------------------

    async def upload(self, owner: str, session_id: Any, path: Any, mode: Any, body: AsyncIterator[bytes],
                     declared: int | None = None) -> int:
        """Write the request body to a sandbox file; returns the file's size afterwards."""
        append = _append(mode)
        record, handle, checked = self._target(owner, session_id, path)
        files = self._files(record, handle)
        if files is not None and declared is not None and files.disk_limit and declared > files.disk_limit:
            raise LimitExceededError(f"{declared} bytes do not fit the session's disk "
                                     f"({files.disk_limit // (1024 * 1024)} MiB): nothing was written")
        with self.sessions.in_use(record.id):
            if files is None:
                return await self._agent_upload(handle, checked, append, body)
            writer = await _in_thread(files.create, checked, append, declared)
            pending: asyncio.Future[None] | None = None
            try:
                # Chunks are gathered (not copied) to ~4 MiB and written with one writev in a worker
                # thread while the next ones arrive.
                batch: list[bytes] = []
                gathered = 0
                async for chunk in body:
                    batch.append(chunk)
                    gathered += len(chunk)
                    if gathered >= CHUNK:
                        if pending is not None:
                            await pending
                        pending = asyncio.ensure_future(_in_thread(writer.write_all, batch))
                        batch, gathered = [], 0
                if pending is not None:
                    await pending
                if batch:
                    await _in_thread(writer.write_all, batch)
                return await _in_thread(writer.commit)
            except BaseException:
                if pending is not None and not pending.done():
                    with contextlib.suppress(BaseException):
                        await asyncio.shield(pending)
                await _in_thread(writer.abort)
                raise

    async def _agent_upload(self, handle: SandboxHandle, path: str, append: bool,
                            body: AsyncIterator[bytes]) -> int:
        batch = bytearray()
        first = True
        size = 0

        async def flush() -> None:
            nonlocal first, size
            result = await self._agent(handle, path, "fs_write", {
                "path": path, "content": base64.b64encode(batch).decode("ascii"), "format": "binary",
                "mode": "append" if append or not first else "overwrite"})
            size = int(result.get("size", 0))
            first = False

        async for chunk in body:
            batch += chunk
            if len(batch) >= AGENT_CHUNK:
                await flush()
                batch = bytearray()
        if batch or first:
            await flush()
        return size


def _append(mode: Any) -> bool:
    if mode in (None, "", "overwrite"):
        return False
    if mode == "append":
        return True
    raise InvalidRequestError(f"Invalid write mode: {mode}. Must be 'overwrite' or 'append'.")

