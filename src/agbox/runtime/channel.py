"""The host side of the agent protocol: one pipe pair per sandbox, requests multiplexed by id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import Any

from agbox.errors import SandboxError, ToolTimeoutError
from agbox.runtime.base import EventCallback

log = logging.getLogger(__name__)
# Answers can carry large file chunks; the reader's line limit must exceed the biggest one.
MAX_LINE = 256 * 1024 * 1024


class AgentError(SandboxError):
    """An op failed inside the sandbox; ``kind`` says how (invalid, os, unknown_op, internal)."""

    def __init__(self, kind: str, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.errno = errno


class AgentChannel:
    def __init__(self, stdin_fd: int, stdout_fd: int, name: str) -> None:
        self._stdin_fd = stdin_fd
        self._stdout_fd = stdout_fd
        self.name = name
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: dict[int, EventCallback] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.ready: asyncio.Future[dict[str, Any]] | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()
        reader = asyncio.StreamReader(limit=MAX_LINE)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self._stdout_fd, "rb", 0))
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(self._stdin_fd, "wb", 0))
        self._writer = asyncio.StreamWriter(transport, protocol, None, loop)
        self._reader_task = asyncio.create_task(self._read_loop(reader), name=f"agent-reader-{self.name}")

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    log.error("agent %s sent an over-long line; closing", self.name)
                    break
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("agent %s sent a malformed line", self.name)
                    continue
                self._dispatch(message)
        finally:
            self._fail_all(SandboxError("the sandbox has ended"))
            self.closed.set()

    def _dispatch(self, message: dict[str, Any]) -> None:
        rid = message.get("id")
        if rid == 0 and self.ready is not None and not self.ready.done():
            self.ready.set_result(message.get("result") or {})
            return
        if "event" in message:
            callback = self._events.get(rid) if isinstance(rid, int) else None
            if callback is not None:
                callback(message["event"])
            return
        future = self._pending.pop(rid, None) if isinstance(rid, int) else None
        self._events.pop(rid, None) if isinstance(rid, int) else None
        if future is None or future.done():
            return
        if message.get("ok"):
            future.set_result(message.get("result"))
        else:
            error = message.get("error") or {}
            future.set_exception(AgentError(str(error.get("kind", "internal")), str(error.get("message", "agent error")),
                                            error.get("errno")))

    def _fail_all(self, exc: Exception) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(exc)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()
        self._events.clear()

    async def call(self, op: str, args: dict[str, Any], timeout_s: float, on_event: EventCallback | None = None) -> Any:
        if self.closed.is_set() or self._writer is None:
            raise SandboxError("the sandbox has ended")
        rid = self._next_id
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        if on_event is not None:
            self._events[rid] = on_event
        line = json.dumps({"id": rid, "op": op, "args": args}, separators=(",", ":")).encode() + b"\n"
        try:
            self._writer.write(line)
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._pending.pop(rid, None)
            raise SandboxError("the sandbox has ended") from exc
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            await self.cancel(rid)
            self._pending.pop(rid, None)
            self._events.pop(rid, None)
            raise ToolTimeoutError(f"{op} did not finish within {timeout_s:g} s") from None
        except asyncio.CancelledError:
            await self.cancel(rid)
            raise

    async def cancel(self, rid: int) -> None:
        if self._writer is None or self.closed.is_set():
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._writer.write(json.dumps({"op": "cancel", "args": {"target": rid}}).encode() + b"\n")
            await self._writer.drain()

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self._fail_all(SandboxError("the sandbox has ended"))
        self.closed.set()
