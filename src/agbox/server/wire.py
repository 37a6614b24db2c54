"""AGB wire operations, independent of HTTP: ``(op, api key, params) -> (http status, envelope)``.

The Starlette routes and the embedded client both call ``WireApi.dispatch``, so the two ways into
agbox run the same code and answer byte-for-byte alike. This is the one place where typed errors
become AGB envelopes (``success=false``, ``code``, ``message``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agbox.errors import AgboxError, InvalidRequestError, ThrottledError
from agbox.logs import request_id_var
from agbox.models import SessionRecord
from agbox.server.operations import validate
from agbox.services.platform import Platform
from agbox.services.session_view import resource_url
from agbox.wirejson import clip

log = logging.getLogger(__name__)

Params = dict[str, Any]
Handler = Callable[[str, Params], Awaitable[Any]]

# (HTTP method, path) of each operation, as the official SDK sends them.
ROUTES: dict[str, tuple[str, str]] = {
    "createSession": ("POST", "/mcp/createSession"),
    "getSession": ("POST", "/mcp/getSession"),
    "getSessionInfo": ("POST", "/mcp/getSessionInfo"),
    "releaseSessionAsync": ("POST", "/mcp/releaseSessionAsync"),
    "releaseSession": ("POST", "/mcp/releaseSession"),
    "refreshSessionIdleTime": ("POST", "/mcp/refreshSessionIdleTime"),
    "listSession": ("GET", "/sdk/ListSession"),
    "setLabel": ("POST", "/sdk/SetLabel"),
    "getLabel": ("GET", "/sdk/GetLabel"),
    "getMcpResource": ("POST", "/mcp/getMcpResource"),
    "listTools": ("POST", "/mcp/listTools"),
    "callMcpTool": ("POST", "/mcp"),
    "setNetworkPolicy": ("POST", "/mcp/setNetworkPolicy"),  # ours: change a running session's policy
    "getSessionLogs": ("GET", "/sdk/GetSessionLogs"),  # ours: a session's recent tool calls (agbox logs)
    # Handled by the links feature module; listed here so SDK clients know the route without a platform.
    "getLink": ("GET", "/internet/getLink"),
    # Handled by the browser feature module (server/browser.py).
    "initBrowser": ("POST", "/browser/init"),
    "getCdpLink": ("POST", "/internet/getCdpLink"),
    "getBrowserLiveView": ("POST", "/browser/liveView"),
}


def new_request_id() -> str:
    return "req-" + secrets.token_hex(8)


def envelope(request_id: str, data: Any = None, *, success: bool = True, code: str = "ok", message: str = "",
             status: int = 200, **top: Any) -> dict[str, Any]:
    body = {"success": success, "code": code, "message": message, "requestId": request_id,
            "httpStatusCode": status, "data": data}
    body.update(top)
    return body


# Messages may quote client input (an id, a path); never echo more than this of it.
MAX_MESSAGE_CHARS = 2000


def error_envelope(request_id: str, exc: AgboxError) -> dict[str, Any]:
    body = envelope(request_id, None, success=False, code=exc.code, message=clip(exc.message, MAX_MESSAGE_CHARS),
                    status=exc.status_code)
    if isinstance(exc, ThrottledError):  # the HTTP edge turns it into 429 + Retry-After
        body["retryAfter"] = round(exc.retry_after_s, 3)
    return body


def internal_error_envelope(request_id: str) -> dict[str, Any]:
    return envelope(request_id, None, success=False, code="InternalError",
                    message=f"internal error; see the server log for request {request_id}", status=500)


class WireApi:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.sessions = platform.sessions
        self.tools = platform.tools
        self._ops: dict[str, Callable[[str, Params, str], Awaitable[dict[str, Any]]]] = {
            "createSession": self._create_session,
            "getSession": self._get_session,
            "getSessionInfo": self._get_session_info,
            "releaseSessionAsync": self._release_async,
            "releaseSession": self._release,
            "refreshSessionIdleTime": self._refresh,
            "listSession": self._list_session,
            "setLabel": self._set_label,
            "getLabel": self._get_label,
            "getMcpResource": self._get_mcp_resource,
            "listTools": self._list_tools,
            "callMcpTool": self._call_tool,
            "setNetworkPolicy": self._set_network_policy,
            "getSessionLogs": self._get_session_logs,
        }
        # The feature modules of the edge (links, contexts) add theirs through register() (server/app.py).
        self.extra_ops: dict[str, Callable[[str, Params, str], Awaitable[dict[str, Any]]]] = {}
        # Feature modules that describe a session's resource further (the desktop's live view) add a
        # provider here; getMcpResource merges what each returns for the session.
        self.resource_info: list[Callable[[SessionRecord], dict[str, Any]]] = []

    def register(self, op: str, method: str, path: str,
                 handler: Callable[[str, Params, str], Awaitable[dict[str, Any]]]) -> None:
        ROUTES[op] = (method, path)
        self.extra_ops[op] = handler

    async def dispatch(self, op: str, api_key: str | None, params: Params) -> dict[str, Any]:
        request_id = new_request_id()
        started = time.perf_counter()
        known = op in self._ops or op in self.extra_ops
        token = request_id_var.set(request_id)
        outcome = "ok"
        try:
            handler = self._ops.get(op) or self.extra_ops.get(op)
            if handler is None:
                raise InvalidRequestError(f"unknown operation {op}")
            owner = self.platform.keys.authenticate(api_key)
            self.platform.limits.admit_request(owner)
            return await handler(owner, validate(op, params), request_id)
        except AgboxError as exc:
            outcome = exc.code
            return error_envelope(request_id, exc)
        except Exception:  # backstop only (causes are fixed where they arise): log once, answer without a traceback
            outcome = "InternalError"
            log.exception("internal error in %s (%s)", op, request_id)
            return internal_error_envelope(request_id)
        finally:
            log.debug("%s: %s in %.1f ms", op if known else "(unknown operation)", outcome,
                      (time.perf_counter() - started) * 1000)
            request_id_var.reset(token)
            # Unknown operation names are not labels: a client must not grow the metric set at will.
            self.platform.telemetry.operation_done(op if known else "(unknown)", outcome, started)

    # ---- session data as the SDK wants it ----------------------------------------------------------

    def session_urls(self, record: SessionRecord) -> dict[str, Any]:
        base = self.platform.settings.base_url
        ws_base = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
        tools = self.tools.list_tools(record.image_id)
        return {
            "sessionId": record.id,
            "resourceUrl": resource_url(base, record),
            "appInstanceId": f"ai-{record.id[8:]}",
            "resourceId": f"r-{record.id[8:]}",
            "linkUrl": f"{base}/link/{record.id}",
            "wsUrl": f"{ws_base}/ws/{record.id}",
            "token": record.token,
            "toolList": json.dumps([{"name": t.name, "server": t.server} for t in tools]),
            "mcpUrl": f"{base}/sessions/{record.id}/mcp",
        }

    # ---- operations ------------------------------------------------------------------------------------

    async def _create_session(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        # Everything a create will need is checked before anything is made ...
        self.platform.contexts.check_persistence(owner, p.get("persistenceDataList"))
        # networkPolicy is ours (beside the official fields): the official SDK never sends it.
        record = await self.sessions.create(owner, p.get("imageId"), p.get("labels"), p.get("timeout"),
                                            p.get("mcpPolicyId"), p.get("desktopSize"), p.get("networkPolicy"))
        self.platform.telemetry.creates.labels(record.image_id).inc()
        try:
            await self.platform.contexts.on_create(record, p)
        except BaseException:
            # ... and a create that fails half-way leaves no session behind.
            with contextlib.suppress(Exception):
                await self.sessions.release(owner, record.id)
            raise
        data = self.session_urls(record)
        data["success"] = True
        return envelope(rid, data)

    async def _get_session(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        record = self.sessions.get(owner, p.get("sessionId"))
        data = self.session_urls(record)
        data["status"] = record.status.value
        return envelope(rid, data)

    async def _get_session_info(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        status = self.sessions.status(owner, p.get("sessionId"))
        return envelope(rid, {"sessionId": p.get("sessionId"), "status": status.value})

    async def _release_async(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        await self.sessions.release_async(owner, p.get("sessionId"))
        return envelope(rid, None)

    async def _release(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        await self.sessions.release(owner, p.get("sessionId"))
        return envelope(rid, None)

    async def _refresh(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        self.sessions.get(owner, p.get("sessionId"))
        return envelope(rid, None)

    async def _list_session(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        page, token, limit, total = self.sessions.list(owner, p.get("labels"), p.get("maxResults"),
                                                       p.get("nextToken"))
        data = [{"sessionId": r.id, "sessionStatus": r.status.value} for r in page]
        return envelope(rid, data, nextToken=token, maxResults=limit, count=total)

    async def _set_label(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        self.sessions.set_labels(owner, p.get("sessionId"), p.get("Labels", p.get("labels")))
        return envelope(rid, None)

    async def _get_label(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        record = self.sessions.get(owner, p.get("sessionId"))
        return envelope(rid, {"labels": json.dumps(record.labels)})

    async def _get_mcp_resource(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        record = self.sessions.get(owner, p.get("sessionId"))
        urls = self.session_urls(record)
        # node and network: where the session runs and what it may reach (ours; the official SDK
        # ignores unknown fields).
        data: dict[str, Any] = {"sessionId": record.id, "resourceUrl": urls["resourceUrl"], "node": record.node,
                                "network": self.sessions.network_info(record)}
        for provide in self.resource_info:
            data.update(provide(record))
        return envelope(rid, data)

    async def _set_network_policy(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        network = await self.sessions.set_network_policy(owner, p.get("sessionId"), p.get("networkPolicy"))
        return envelope(rid, {"sessionId": p.get("sessionId"), "network": network})

    async def _list_tools(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        image_id = p.get("imageId") or "agb-code-space-1"
        tools = self.tools.list_tools(image_id)
        return envelope(rid, json.dumps([t.describe() for t in tools]))

    async def _call_tool(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        output = await self.tools.call(owner, p.get("sessionId"), p.get("name"), p.get("args"))
        # Tool errors keep success=true and an empty message, so the SDK hands the tool's own
        # JSON payload (stdout, stderr, exit code) to the module that asked.
        return envelope(rid, {"content": output.content(), "isError": output.is_error})

    async def _get_session_logs(self, owner: str, p: Params, rid: str) -> dict[str, Any]:
        status, entries = self.tools.activity_of(owner, p.get("sessionId"), p.get("afterSeq") or 0,
                                                 p.get("maxResults") or 200)
        last = entries[-1].seq if entries else int(p.get("afterSeq") or 0)
        return envelope(rid, {"sessionId": p.get("sessionId"), "status": status, "lastSeq": last,
                              "entries": [e.to_wire() for e in entries]})
