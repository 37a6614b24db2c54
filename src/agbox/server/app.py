"""The Starlette application: AGB wire routes plus the session-token routes (LinkUrl ``callTool``).

Every route does three things: read the request (bounded), call the wire layer or a service,
serialize. Unknown paths and malformed bodies get an AGB envelope too, never an HTML page.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agbox.errors import AgboxError, AuthenticationError, InvalidRequestError, LimitExceededError
from agbox.server import browser, console, contexts, desktop, files, links, mcp_endpoint, session_page, stream, terminal
from agbox.server.openapi import build_document
from agbox.server.operations import validate
from agbox.server.wire import ROUTES, WireApi, envelope, error_envelope, internal_error_envelope, new_request_id
from agbox.services.platform import Platform
from agbox.services.telemetry import CONTENT_TYPE as TELEMETRY_CONTENT_TYPE
from agbox.wirejson import clip, loads, same_secret

log = logging.getLogger(__name__)


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return header.strip() or None


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise LimitExceededError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise LimitExceededError(f"request body exceeds the limit of {limit} bytes")
    if not body.strip():
        return {}
    value = loads(body, "malformed JSON body", max_bytes=limit)
    if not isinstance(value, dict):
        raise InvalidRequestError("the JSON body must be an object")
    return value


class AsciiJSONResponse(JSONResponse):
    # ensure_ascii=True encodes large (base64) payloads about 5x faster than Starlette's default.
    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def json_response(body: dict[str, Any], status: int = 200) -> JSONResponse:
    # Header values must be Latin-1: a request id that is not printable ASCII stays in the body only.
    request_id = str(body.get("requestId", ""))
    headers = {"x-request-id": request_id} if request_id.isascii() and request_id.isprintable() else {}
    if "retryAfter" in body:
        # A throttled request is a real HTTP 429 (even on wire routes, which otherwise always answer
        # 200), so HTTP clients and proxies that honour Retry-After back off by themselves.
        status = 429
        headers["retry-after"] = str(max(1, math.ceil(float(body["retryAfter"]))))
    return AsciiJSONResponse(body, status_code=status, headers=headers)


def wire_route(wire: WireApi, op: str, method: str, path: str) -> Route:
    async def endpoint(request: Request) -> Response:
        try:
            params: dict[str, Any] = dict(request.query_params)
            if method == "POST":
                params.update(await read_json(request, wire.platform.settings.max_request_bytes))
        except AgboxError as exc:
            return json_response(error_envelope(new_request_id(), exc))
        return json_response(await wire.dispatch(op, bearer(request), params))

    return Route(path, endpoint, methods=[method], name=op)


def token_guard(wire: WireApi, request: Request, session_id: str) -> str:
    """The owner of a session whose access token the request carries."""
    token = request.headers.get("x-access-token") or request.query_params.get("token") or ""
    record = wire.platform.store.get_session(session_id)
    if record is None or not same_secret(token, record.token):
        raise AuthenticationError("missing or wrong session access token")
    return record.owner


async def link_call_tool(request: Request) -> Response:
    wire: WireApi = request.app.state.wire
    session_id = request.path_params["session_id"]
    request_id = new_request_id()
    try:
        owner = token_guard(wire, request, session_id)
        wire.platform.limits.admit_request(owner)
        body = validate("linkCallTool", await read_json(request, wire.platform.settings.max_request_bytes))
        request_id = body.get("requestId") or request_id
        output = await wire.tools.call(owner, session_id, body.get("tool") or body.get("name"), body.get("args"))
    except AgboxError as exc:
        return json_response(error_envelope(request_id, exc), status=exc.status_code)
    result = {"isError": output.is_error, "content": output.content()}
    return json_response(envelope(request_id, {"result": result}))


async def not_found(request: Request, exc: Exception) -> Response:
    return json_response(envelope(new_request_id(), None, success=False, code="NotFound",
                                  message=f"no such endpoint: {request.method} {clip(request.url.path)}", status=404),
                         status=404)


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    message = f"{clip(request.method, 20)} is not allowed on {clip(request.url.path)}"
    response = json_response(envelope(new_request_id(), None, success=False, code="MethodNotAllowed",
                                      message=message, status=405), status=405)
    allow = (getattr(exc, "headers", None) or {}).get("Allow")
    if allow:  # RFC 9110: a 405 names the methods the resource supports
        response.headers["Allow"] = allow
    return response


class ErrorEdge:
    """The one backstop of the HTTP edge (outermost but for Starlette's own): an exception that escaped
    a route is logged once and answered with an envelope; a client that went away is not an error.
    Causes are fixed where they arise; this only keeps a missed one from leaking a traceback or
    being logged twice (Starlette's ServerErrorMiddleware would log and re-raise to uvicorn)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] in ("http.response.start", "websocket.accept", "websocket.close"):
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            log.debug("client went away during %s %s", scope.get("method", "WS"), scope.get("path"))
        except Exception:
            request_id = new_request_id()
            log.exception("unhandled error on %s %s (%s)", scope.get("method", "WS"), scope.get("path"), request_id)
            if started:
                return
            if scope["type"] == "http":
                await json_response(internal_error_envelope(request_id), status=500)(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1011, "reason": "internal error"})


def create_app(platform: Platform, *, manage_platform: bool = True,
               on_ready: Callable[[], Awaitable[None]] | None = None) -> Starlette:
    wire = WireApi(platform)
    links.register_ops(wire)
    browser.register_ops(wire)
    contexts.register_ops(wire)
    desktop.register_ops(wire)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_platform:
            await platform.start()
        if on_ready is not None:
            await on_ready()
        try:
            yield
        finally:
            if manage_platform:
                await platform.close()

    routes: list[BaseRoute] = [*contexts.routes(wire), *files.routes(wire), *stream.routes(wire), *terminal.routes(wire),
                               *mcp_endpoint.routes(wire), *browser.routes(wire),
                               *session_page.routes(wire), *desktop.routes(wire), *console.routes(wire)]
    routes.append(Route("/link/{session_id}/callTool", link_call_tool, methods=["POST"]))
    routes.extend(wire_route(wire, op, method, path) for op, (method, path) in list(ROUTES.items()))
    routes.append(Route("/health", lambda request: JSONResponse({"ok": True}), methods=["GET"]))

    async def metrics(request: Request) -> Response:
        # Aggregates only (no ids), but still for key holders: Prometheus sends a bearer token.
        try:
            platform.keys.authenticate(bearer(request))
        except AuthenticationError as exc:
            return Response(exc.message, status_code=401, media_type="text/plain",
                            headers={"www-authenticate": "Bearer"})
        return Response(platform.telemetry.exposition(), media_type=TELEMETRY_CONTENT_TYPE)

    routes.append(Route("/metrics", metrics, methods=["GET"]))
    document = build_document()
    routes.append(Route("/openapi.json", lambda request: JSONResponse(document), methods=["GET"]))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(ErrorEdge)],
                    exception_handlers={404: not_found, 405: method_not_allowed})
    app.state.wire = wire
    app.state.platform = platform
    return app
