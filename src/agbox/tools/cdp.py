"""A small Chrome DevTools Protocol client for the host side (browser tools, live view).

It talks to the session's Chromium over a socket opened inside the sandbox's network namespace
(``Runtime.connect_port``), so it needs no link and no network. One ``CdpConnection`` is one
browser-level WebSocket; page commands go through flat sessions (``Target.attachToTarget`` with
``flatten``), which carry a ``sessionId`` on each message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agbox.errors import SandboxError
from agbox.runtime.base import Runtime, SandboxHandle

MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # full-page screenshots are large base64 strings
# Cookie changes Chromium collects before it writes them at once (its SQLite store's batch size).
FLUSH_BATCH = 512
# The throwaway cookies expire this long after they are set (callers wait it out before the next browser
# can load the profile, so none of them is ever seen).
FILLER_LIFETIME_S = 1.0


class CdpError(SandboxError):
    """A CDP command failed, or the browser went away."""

    code = "BrowserError"


EventHandler = Callable[[dict[str, Any]], None]


class CdpConnection:
    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._listeners: list[EventHandler] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, runtime: Runtime, handle: SandboxHandle, port: int, path: str) -> CdpConnection:
        try:
            sock = await asyncio.wait_for(runtime.connect_port(handle, port), 10)
            socket = await connect(f"ws://127.0.0.1:{port}{path}", sock=sock, max_size=MAX_MESSAGE_BYTES,
                                   open_timeout=10, compression=None)
        except (OSError, TimeoutError) as exc:
            raise CdpError(f"cannot reach the browser's DevTools port: {exc}") from None
        return cls(socket)

    async def _read(self) -> None:
        try:
            async for raw in self._socket:
                message = json.loads(raw)
                future = self._pending.pop(message.get("id", -1), None) if "id" in message else None
                if future is not None:
                    if not future.done():
                        future.set_result(message)
                    continue
                for listener in list(self._listeners):
                    listener(message)
        except (ConnectionClosed, ValueError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CdpError("the browser closed the DevTools connection"))
            self._pending.clear()

    @property
    def closed(self) -> bool:
        return self._reader.done()

    def listen(self, handler: EventHandler) -> Callable[[], None]:
        self._listeners.append(handler)
        return lambda: self._listeners.remove(handler) if handler in self._listeners else None

    async def call(self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None,
                   timeout_s: float = 30.0) -> dict[str, Any]:
        if self._reader.done():
            raise CdpError("the browser closed the DevTools connection")
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        try:
            await self._socket.send(json.dumps(message))
            answer = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise CdpError(f"{method} got no answer within {timeout_s:g} s") from None
        except ConnectionClosed:
            raise CdpError("the browser closed the DevTools connection") from None
        finally:
            self._pending.pop(message_id, None)
        if "error" in answer:
            raise CdpError(f"{method} failed: {answer['error'].get('message', answer['error'])}")
        result: dict[str, Any] = answer.get("result") or {}
        return result

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._socket.close()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


async def flush_cookies(runtime: Runtime, handle: SandboxHandle, port: int, path: str) -> float | None:
    """Make Chromium write its pending cookie changes now; returns when the write was asked for (None: could not).

    Chromium batches cookie writes (a commit every 30 s, or at once when 512 changes are pending) and,
    headless, does not write the batch when it shuts down: cookies set shortly before a stop would be lost.
    512 throwaway cookies (expired after FILLER_LIFETIME_S, on a reserved domain) fill the batch, so the
    commit happens now, with the user's cookies in it. Call ``fillers_expired(asked)`` before the profile is
    used again.
    """
    try:
        cdp = await CdpConnection.open(runtime, handle, port, path)
    except CdpError:
        return None
    try:
        asked = time.time()
        filler = [{"name": f"agbox-flush-{i}", "value": "1", "domain": "agbox-flush.invalid", "path": "/",
                   "expires": asked + FILLER_LIFETIME_S} for i in range(FLUSH_BATCH)]
        await cdp.call("Storage.setCookies", {"cookies": filler}, timeout_s=10)
        return asked
    except CdpError:
        return None
    finally:
        await cdp.close()


async def fillers_expired(asked: float | None) -> None:
    """Wait until the throwaway cookies of ``flush_cookies`` have expired (at most FILLER_LIFETIME_S)."""
    if asked is not None:
        remaining = asked + FILLER_LIFETIME_S - time.time()
        if remaining > 0:
            await asyncio.sleep(remaining)
