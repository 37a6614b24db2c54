"""Each session is an MCP server: ``/sessions/{session_id}/mcp`` speaks MCP streamable HTTP.

Any MCP client can list and call the session's tools there, authenticated by the session's access
token (``Authorization: Bearer <token>`` or ``X-Access-Token: <token>``), not by an API key.

Wiring:
- One low-level ``mcp.server.lowlevel.Server`` for the whole app; its handlers find the session from
  the ASGI scope that the route below stamped after authenticating, so the tool list is per session.
- The transport runs stateless with JSON responses: every HTTP request gets a fresh
  ``StreamableHTTPSessionManager`` whose ``run()`` (its task group) is entered and left inside that
  request. Nothing depends on the Starlette lifespan (embedded mode serves the app with
  ``lifespan="off"``) and nothing outlives the request, so there is no background task to stop.
- Auth and session checks happen before the MCP layer: wrong or missing token → 401, unknown or ended
  session → 404. The body is a JSON-RPC error (MCP clients surface its message) carrying the AGB
  envelope fields too (``success``, ``code``, ``message``), like the rest of the server.
- ``GET`` (the optional standalone SSE stream for server-initiated messages) answers 405, as the MCP
  transport allows: a stateless server never sends such messages, and a stream nobody writes to
  would only stay open, outlive its session and pile up per token.
"""

from __future__ import annotations

import logging
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from agbox.errors import AgboxError, InvalidRequestError, NotFoundError
from agbox.models import ACTIVE_STATUSES
from agbox.server.wire import WireApi, envelope, new_request_id
from agbox.wirejson import same_secret

log = logging.getLogger(__name__)

SCOPE_KEY = "agbox.mcp_session"  # (owner, session id, image id), set by the route after auth
PATH = "/sessions/{session_id}/mcp"


def session_token(request: Request) -> str:
    # X-Access-Token first: it can only mean the session token (Authorization may carry an API key).
    explicit = request.headers.get("x-access-token", "").strip()
    if explicit:
        return explicit
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return ""


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON-RPC error (so MCP clients show ``message``) that is also an AGB envelope (``success``, ``code``)."""
    request_id = new_request_id()
    body = envelope(request_id, None, success=False, code=code, message=message, status=status)
    body.update({"jsonrpc": "2.0", "id": None,
                 "error": {"code": types.INVALID_REQUEST, "message": message, "data": {"code": code}}})
    return JSONResponse(body, status_code=status, headers={"x-request-id": request_id, **(headers or {})})


def _bound_session(ctx: Any) -> tuple[str, str, str]:
    request = getattr(ctx, "request", None)
    bound = request.scope.get(SCOPE_KEY) if request is not None else None
    if bound is None:  # only reachable if the MCP server were mounted without the guard below
        raise MCPError(types.INVALID_REQUEST, "no agbox session bound to this request")
    owner, session_id, image_id = bound
    return str(owner), str(session_id), str(image_id)


def make_server(wire: WireApi) -> Server[Any]:
    tools = wire.tools

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        owner, session_id, image_id = _bound_session(ctx)
        try:
            wire.sessions.get(owner, session_id)  # still active; listing counts as activity like a call
        except AgboxError as exc:
            raise MCPError(types.INVALID_PARAMS, exc.message, {"code": exc.code}) from None
        return types.ListToolsResult(tools=[
            types.Tool(name=t.name, description=t.description, input_schema=t.input_schema,
                       _meta={"server": t.server, "tool": t.name})
            for t in tools.list_tools(image_id)
        ])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        owner, session_id, _ = _bound_session(ctx)
        try:
            output = await tools.call(owner, session_id, params.name, params.arguments or {})
        except (InvalidRequestError, NotFoundError) as exc:
            # Unknown tool, malformed arguments, session gone: protocol errors, not tool results.
            raise MCPError(types.INVALID_PARAMS, exc.message, {"code": exc.code}) from None
        except AgboxError as exc:
            raise MCPError(types.INTERNAL_ERROR, exc.message, {"code": exc.code}) from None
        return types.CallToolResult.model_validate({"content": output.content(), "isError": output.is_error})

    return Server("agbox-session", version=_version(), on_list_tools=list_tools, on_call_tool=call_tool)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("agbox")
    except Exception:  # not installed as a distribution (e.g. a source checkout on sys.path)
        return "0"


class SessionMcpEndpoint:
    """ASGI endpoint: authenticate with the session token, then hand the request to the MCP transport."""

    def __init__(self, wire: WireApi) -> None:
        self.wire = wire
        self.server = make_server(wire)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        if request.method == "GET":
            response = _error(405, "MethodNotAllowed", "this MCP endpoint is stateless and offers no SSE stream; "
                              "POST JSON-RPC requests to it", headers={"allow": "POST, DELETE"})
            await response(scope, receive, send)
            return
        session_id = str(request.path_params.get("session_id", ""))
        record = self.wire.platform.store.get_session(session_id)
        if record is None:
            await _error(404, "InvalidMcpSession.NotFound", f"session {session_id} not found")(scope, receive, send)
            return
        token = session_token(request)
        if not same_secret(token, record.token):
            response = _error(401, "InvalidAccessToken",
                              "missing or wrong session access token: send 'Authorization: Bearer <token>' "
                              "or 'X-Access-Token: <token>' with the session's token",
                              headers={"www-authenticate": 'Bearer realm="agbox-session"'})
            await response(scope, receive, send)
            return
        if record.status not in ACTIVE_STATUSES:
            await _error(404, "InvalidMcpSession.NotFound",
                         f"session {session_id} has ended ({record.status.value})")(scope, receive, send)
            return
        if request.method == "POST" and \
                request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            # Answered here so the error is JSON like every other one (the transport's is plain text).
            await _error(415, "UnsupportedMediaType", "POST a JSON-RPC message with Content-Type: application/json")(
                scope, receive, send)
            return
        scope[SCOPE_KEY] = (record.owner, record.id, record.image_id)
        manager = StreamableHTTPSessionManager(
            app=self.server, json_response=True, stateless=True,
            max_request_body_size=self.wire.platform.settings.max_request_bytes,
        )
        async with manager.run():
            await manager.handle_request(scope, receive, send)


def routes(wire: WireApi) -> list[BaseRoute]:
    return [Route(PATH, SessionMcpEndpoint(wire), methods=["GET", "POST", "DELETE"], name="session_mcp")]
