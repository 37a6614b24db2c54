"""The session WebSocket (``wsUrl`` = ``{base}/ws/{session_id}``): streamed ``run_code``.

Authenticated by the session token (``X-Access-Token`` header, or ``?token=``). Frames are JSON
objects ``{"invocationId", "source", "target", "data"}``. A client starts an invocation with
``data = {"method": "run_code", "mode": "stream", "params": {"language", "timeoutS", "code"}}``;
the server answers with frames of the same ``invocationId`` whose ``data`` is
``{"phase": "event", "eventType": "stdout"|"stderr", "chunk"}``,
``{"phase": "event", "eventType": "result", "result": {"isMainResult", "mime": {...}}}``,
``{"phase": "event", "eventType": "error", "error": {"code", "message", "traceback", "traceId"}}``,
then exactly one ``{"phase": "end", "executionCount", "executionTime", "status", "executionError"?}``.
A frame ``data = {"method": "cancel"}`` with the invocation's id (what the official SDK's
``WsStreamHandle.write({"method": "cancel"})`` sends) interrupts it; closing the socket cancels
every invocation of the connection. Malformed requests get ``{"phase": "error", "error": str}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agbox.errors import AgboxError, InvalidRequestError, QuotaExceededError
from agbox.models import SessionRecord
from agbox.services.limits import LimitService
from agbox.services.sessions import SessionService
from agbox.wirejson import clip, loads, same_secret

if TYPE_CHECKING:
    from agbox.server.wire import WireApi

log = logging.getLogger(__name__)

SERVER_SOURCE = "wuying_codespace"
# Frames that never had a usable invocation id are answered under this one.
NO_INVOCATION = "invalid-request"
# How long a released session's socket waits for its failing invocations to report why.
CLOSE_GRACE_S = 3.0
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_INVOCATION_ID = 256
MAX_STREAMS_PER_SESSION = 8


def session_owner(wire: WireApi, websocket: WebSocket, session_id: str) -> str | None:
    """The owner of the session when the socket carries its access token, else None."""
    token = websocket.headers.get("x-access-token") or websocket.query_params.get("token") or ""
    record = wire.platform.store.get_session(session_id)
    if record is None or not same_secret(token, record.token):
        return None
    return record.owner


def _mime_result(item: dict[str, Any]) -> dict[str, Any]:
    mime = {key: value for key, value in item.items() if key != "isMainResult"}
    return {"isMainResult": bool(item.get("isMainResult")), "mime": mime}


class StreamConnection:
    """One accepted socket: reads frames, runs invocations as tasks, writes frames in order."""

    def __init__(self, wire: WireApi, websocket: WebSocket, owner: str, session_id: str) -> None:
        self.wire = wire
        self.websocket = websocket
        self.owner = owner
        self.session_id = session_id
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.running: dict[str, asyncio.Task[None]] = {}

    def send(self, invocation_id: str, data: dict[str, Any], source: str = SERVER_SOURCE) -> None:
        self.outbox.put_nowait({"invocationId": invocation_id, "source": source, "target": "SDK", "data": data})

    async def _write_loop(self) -> None:
        while True:
            frame = await self.outbox.get()
            try:
                await self.websocket.send_text(json.dumps(frame, ensure_ascii=False))
            finally:
                self.outbox.task_done()

    async def close(self, code: int, reason: str, finish_first: bool = False) -> None:
        """End the connection from the server side (its serve() loop then ends and cleans up).
        ``finish_first``: the sandbox is already gone, so running invocations are about to fail with
        the cause; let them say it (bounded) before the socket closes."""
        with contextlib.suppress(Exception):
            if finish_first and self.running:
                await asyncio.wait(list(self.running.values()), timeout=CLOSE_GRACE_S)
                await asyncio.wait_for(self.outbox.join(), CLOSE_GRACE_S)
        with contextlib.suppress(Exception):
            await self.websocket.close(code=code, reason=reason)

    async def serve(self) -> None:
        writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.session_id}")
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                if raw is None and message.get("bytes") is not None:
                    raw = message["bytes"].decode("utf-8", "replace")
                if raw is not None:
                    self._handle(raw)
        except WebSocketDisconnect:
            pass
        finally:
            tasks = list(self.running.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    def _handle(self, raw: str) -> None:
        try:
            frame = loads(raw, "frame", max_bytes=MAX_FRAME_BYTES)
        except InvalidRequestError as exc:
            self.send(NO_INVOCATION, {"phase": "error", "error": exc.message})
            return
        if not isinstance(frame, dict):
            self.send(NO_INVOCATION, {"phase": "error", "error": "frame must be a JSON object"})
            return
        invocation_id = frame.get("invocationId") or frame.get("requestId")
        if not isinstance(invocation_id, str) or not invocation_id or len(invocation_id) > MAX_INVOCATION_ID:
            self.send(NO_INVOCATION, {"phase": "error", "error": "invocationId is required (a string of at most "
                                                                 f"{MAX_INVOCATION_ID} characters)"})
            return
        data = frame.get("data")
        if isinstance(data, str):
            with contextlib.suppress(InvalidRequestError):
                data = loads(data, "data")
        if not isinstance(data, dict):
            self.send(invocation_id, {"phase": "error", "error": "data must be an object"})
            return
        raw_target = frame.get("target")
        target = raw_target if isinstance(raw_target, str) and 0 < len(raw_target) <= 256 else SERVER_SOURCE
        method = data.get("method") or data.get("action")
        raw_params = data.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        if method == "cancel" or data.get("phase") == "cancel":
            victim = data.get("invocationId") or params.get("invocationId") or invocation_id
            task = self.running.get(victim) if isinstance(victim, str) else None
            if task is not None:
                task.cancel()
            return
        if method != "run_code":
            self.send(invocation_id, {"phase": "error", "error": f"unsupported method {clip(method, 60)}; "
                                                                   "this endpoint serves run_code"}, target)
            return
        if invocation_id in self.running:
            self.send(invocation_id, {"phase": "error", "error": "invocationId is already running"}, target)
            return
        task = asyncio.create_task(self._run_code(invocation_id, target, params), name=f"ws-run-{invocation_id}")
        self.running[invocation_id] = task
        task.add_done_callback(lambda _: self.running.pop(invocation_id, None))

    async def _run_code(self, invocation_id: str, target: str, params: dict[str, Any]) -> None:
        ended = False

        def on_event(event: dict[str, Any]) -> None:
            # A cancelled invocation's op may still report while it stops; its stream is over.
            if ended:
                return
            kind = event.get("type")
            if kind in ("stdout", "stderr"):
                self.send(invocation_id, {"phase": "event", "eventType": kind, "chunk": str(event.get("chunk", ""))},
                          target)
            elif kind == "result" and isinstance(event.get("result"), dict):
                self.send(invocation_id, {"phase": "event", "eventType": "result",
                                          "result": _mime_result(event["result"])}, target)

        def fail(code: str, message: str) -> None:
            self.send(invocation_id, {"phase": "event", "eventType": "error",
                                      "error": {"code": code, "message": message, "traceId": invocation_id}}, target)
            self.send(invocation_id, {"phase": "end", "status": "failed", "executionError": message,
                                      "executionTime": 0.0}, target)

        args = {"code": params.get("code"), "language": params.get("language"),
                "timeout_s": params.get("timeoutS", params.get("timeout_s"))}
        try:
            output = await self.wire.tools.call(self.owner, self.session_id, "run_code", args, on_event=on_event)
        except asyncio.CancelledError:
            ended = True
            self.send(invocation_id, {"phase": "end", "status": "cancelled",
                                      "executionError": "KeyboardInterrupt: execution cancelled"}, target)
            return
        except AgboxError as exc:
            fail(exc.code, exc.message)
            return
        except Exception:  # the top-level catch of an invocation task: log, answer, keep the socket
            log.exception("run_code over WebSocket failed for session %s", self.session_id)
            fail("InternalError", "internal error; see the server log")
            return
        if output.is_error:
            fail("ToolError", output.text)
            return
        payload = json.loads(output.text)
        error = payload.get("error")
        if isinstance(error, dict):
            self.send(invocation_id, {"phase": "event", "eventType": "error", "error": {
                "code": error.get("name", "ExecutionError"), "message": error.get("value", ""),
                "traceback": error.get("traceback", ""), "traceId": invocation_id}}, target)
        end: dict[str, Any] = {"phase": "end", "executionCount": payload.get("execution_count"),
                               "executionTime": payload.get("execution_time", 0.0),
                               "status": payload.get("status", "ok")}
        if payload.get("executionError"):
            end["executionError"] = payload["executionError"]
        self.send(invocation_id, end, target)


class OpenStreams:
    """The open sockets of each session: at most ``MAX_STREAMS_PER_SESSION`` at once (one session
    token cannot hold an unbounded number), and all of them are closed when the session is released."""

    def __init__(self, limits: LimitService, sessions: SessionService) -> None:
        self.limits = limits
        self.sessions = sessions
        self.by_session: dict[str, set[StreamConnection]] = {}

    def admit(self, connection: StreamConnection) -> str:
        """An empty string if the connection may stay open, else why not (per session, then per key)."""
        open_now = self.by_session.setdefault(connection.session_id, set())
        if len(open_now) >= MAX_STREAMS_PER_SESSION:
            return f"too many open streams for this session (at most {MAX_STREAMS_PER_SESSION})"
        try:
            self.limits.open_stream(connection.owner)
        except QuotaExceededError as exc:
            return exc.message
        open_now.add(connection)
        return ""

    def forget(self, connection: StreamConnection) -> None:
        open_now = self.by_session.get(connection.session_id)
        if open_now is not None and connection in open_now:
            open_now.discard(connection)
            self.limits.close_stream(connection.owner)
            if not open_now:
                del self.by_session[connection.session_id]

    async def before_release(self, record: SessionRecord) -> None:
        connections = list(self.by_session.get(record.id, ()))
        if not connections:
            return
        sandbox_gone = not self.sessions.runtime.alive(self.sessions.handle(record))
        for connection in connections:
            self.forget(connection)
            await connection.close(1001, "session released", finish_first=sandbox_gone)


def routes(wire: WireApi) -> list[BaseRoute]:
    streams = OpenStreams(wire.platform.limits, wire.platform.sessions)
    wire.platform.sessions.before_release.append(streams.before_release)

    async def endpoint(websocket: WebSocket) -> None:
        session_id = str(websocket.path_params["session_id"])
        owner = session_owner(wire, websocket, session_id)
        if owner is None:
            await websocket.close(code=1008, reason="missing or wrong session access token")
            return
        connection = StreamConnection(wire, websocket, owner, session_id)
        refusal = streams.admit(connection)
        if refusal:
            # Accepted, then closed: the client sees why (a refused handshake carries no reason).
            await websocket.accept()
            await websocket.close(code=1008, reason=refusal[:120])
            return
        try:
            await websocket.accept()
            await connection.serve()
        finally:
            streams.forget(connection)

    return [WebSocketRoute("/ws/{session_id}", endpoint)]
