"""The terminal WebSocket (``{base}/pty/{session_id}``): an interactive program on a pseudo-terminal.

Authenticated like the code stream, by the session token (``X-Access-Token`` header or ``?token=``).
The client's first frame is text, ``{"cmd": str | [str] | null, "cols", "rows", "cwd", "envs"}``
(null = a login shell). The server answers ``{"type": "started", "ptyId"}``, then sends what the
program draws as binary frames. Client binary frames are keyboard input; client text frames are
``{"type": "input", "data": str}``, ``{"type": "resize", "cols", "rows"}`` or
``{"type": "signal", "signal": "SIGINT"}``. When the program ends the server sends
``{"type": "exit", "exitCode", "signal"}`` and closes (1000). Faults come as
``{"type": "error", "message"}``. Closing the socket kills the program.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agbox.errors import AgboxError, InvalidRequestError
from agbox.server.stream import session_owner
from agbox.services.terminals import TerminalExit, TerminalRequest, TerminalService
from agbox.wirejson import loads

if TYPE_CHECKING:
    from agbox.server.wire import WireApi

log = logging.getLogger(__name__)
MAX_INPUT_FRAME = 1024 * 1024


class TerminalConnection:
    def __init__(self, terminals: TerminalService, websocket: WebSocket, owner: str, session_id: str) -> None:
        self.terminals = terminals
        self.websocket = websocket
        self.owner = owner
        self.session_id = session_id
        self.outbox: asyncio.Queue[dict[str, Any] | bytes | None] = asyncio.Queue()
        self.started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def _write_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            if item is None:
                return
            if isinstance(item, bytes):
                await self.websocket.send_bytes(item)
            else:
                await self.websocket.send_text(json.dumps(item))

    def _on_started(self, pty_id: int) -> None:
        if not self.started.done():
            self.started.set_result(pty_id)
        self.outbox.put_nowait({"type": "started", "ptyId": pty_id})

    async def _run(self, request: TerminalRequest) -> None:
        try:
            ended: TerminalExit = await self.terminals.run(self.owner, self.session_id, request, self._on_started,
                                                           self.outbox.put_nowait)
            self.outbox.put_nowait({"type": "exit", "exitCode": ended.exit_code, "signal": ended.signal})
        except AgboxError as exc:
            self.outbox.put_nowait({"type": "error", "message": exc.message})
        finally:
            self.outbox.put_nowait(None)
            if not self.started.done():
                self.started.cancel()

    async def _input_loop(self) -> None:
        pty_id: int | None = None
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if pty_id is None:
                pty_id = await self.started
            data: bytes | None = message.get("bytes")
            try:
                if data is not None:
                    if len(data) > MAX_INPUT_FRAME:
                        raise ValueError(f"input frames are limited to {MAX_INPUT_FRAME} bytes")
                    await self.terminals.write(self.owner, self.session_id, pty_id, data)
                    continue
                frame = loads(message.get("text") or "", "control frame", max_bytes=MAX_INPUT_FRAME)
                if not isinstance(frame, dict):
                    raise ValueError("control frames are JSON objects")
                kind = frame.get("type")
                if kind == "input" and isinstance(frame.get("data"), str):
                    await self.terminals.write(self.owner, self.session_id, pty_id, frame["data"].encode())
                elif kind == "resize":
                    await self.terminals.resize(self.owner, self.session_id, pty_id, frame.get("cols"),
                                                frame.get("rows"))
                elif kind == "signal":
                    await self.terminals.signal(self.owner, self.session_id, pty_id, frame.get("signal", "SIGINT"))
                else:
                    raise ValueError("unknown control frame; expected input, resize or signal")
            except (ValueError, InvalidRequestError) as exc:
                message_text = exc.message if isinstance(exc, InvalidRequestError) else str(exc)
                self.outbox.put_nowait({"type": "error", "message": message_text})
            except AgboxError as exc:
                self.outbox.put_nowait({"type": "error", "message": exc.message})

    async def serve(self, request: TerminalRequest) -> None:
        writer = asyncio.create_task(self._write_loop())
        program = asyncio.create_task(self._run(request))
        reader = asyncio.create_task(self._input_loop())
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        except (WebSocketDisconnect, asyncio.CancelledError):
            pass
        finally:
            for task in (reader, program):
                task.cancel()
            await asyncio.gather(reader, program, return_exceptions=True)
            if not writer.done():
                # The program ended: let its last output and the exit frame go out.
                self.outbox.put_nowait(None)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer, 5.0)
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
            with contextlib.suppress(Exception):
                await self.websocket.close(1000)


def routes(wire: WireApi) -> list[BaseRoute]:
    terminals = TerminalService(wire.sessions, wire.tools.activity)

    async def endpoint(websocket: WebSocket) -> None:
        session_id = str(websocket.path_params["session_id"])
        owner = session_owner(wire, websocket, session_id)
        if owner is None:
            await websocket.close(code=1008, reason="missing or wrong session access token")
            return
        await websocket.accept()
        try:
            first = await websocket.receive_text()
            request = TerminalRequest.parse(loads(first, "the first frame", max_bytes=MAX_INPUT_FRAME))
        except WebSocketDisconnect:
            return
        except (ValueError, RecursionError, KeyError, AgboxError) as exc:
            reason = exc.message if isinstance(exc, AgboxError) else f"the first frame is not valid JSON: {exc}"
            await websocket.send_text(json.dumps({"type": "error", "message": reason}))
            await websocket.close(1008)
            return
        await TerminalConnection(terminals, websocket, owner, session_id).serve(request)

    return [WebSocketRoute("/pty/{session_id}", endpoint)]
