"""AGB wire operations, independent of HTTP: ``(op, api key, params) -> (http status, envelope)``.

The Starlette routes and the embedded client both call ``WireApi.dispatch``, so the two ways into
agbox run the same code and answer byte-for-byte alike. This is the one place where typed errors
become AGB envelopes (``success=false``, ``code``, ``message``).
"""

from __future__ import annotations

import importlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from agbox.errors import AgboxError, InvalidRequestError
from agbox.models import SessionRecord
from agbox.services.platform import Platform

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
    # Handled by the links feature module; listed here so SDK clients know the route without a platform.
    "getLink": ("GET", "/internet/getLink"),
}


# Optional feature modules: each may define ``register_ops(wire)`` (AGB wire operations) and
# ``routes(wire) -> list[BaseRoute]`` (HTTP/WebSocket routes of its own).
FEATURE_MODULES = ("agbox.server.links", "agbox.server.contexts", "agbox.server.stream", "agbox.server.mcp_endpoint")


def feature_modules() -> list[Any]:
    modules = []
    for name in FEATURE_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return modules


def new_request_id() -> str:
    return "req-" + secrets.token_hex(8)


def envelope(request_id: str, data: Any = None, *, success: bool = True, code: str = "ok", message: str = "",
             status: int = 200, **top: Any) -> dict[str, Any]:
    body = {"success": success, "code": code, "message": message, "requestId": request_id,
            "httpStatusCode": status, "data": data}
    body.update(top)
    return body


def error_envelope(request_id: str, exc: AgboxError) -> dict[str, Any]:
    return envelope(request_id, None, success=False, code=exc.code, message=exc.message, status=exc.status_code)


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
        }
        # Feature modules (links, contexts, ...) add operations through register().
        self.extra_ops: dict[str, Callable[[str, Params, str], Awaitable[dict[str, Any]]]] = {}
        for module in feature_modules():
            register_ops = getattr(module, "register_ops", None)
            if register_ops is not None:
                register_ops(self)

    def register(self, op: str, method: str, path: str,
                 handler: Callable[[str, Params, str], Awaitable[dict[str, Any]]]) -> None:
        ROUTES[op] = (method, path)
        self.extra_ops[op] = handler

    async def dispatch(self, op: str, api_key: str | None, params: Params) -> dict[str, Any]:
        request_id = new_request_id()
        try:
            handler = self._ops.get(op) or self.extra_ops.get(op)
            if handler is None:
                raise InvalidRequestError(f"unknown operation {op}")
            owner = self.platform.keys.authenticate(api_key)
            return await handler(owner, params, request_id)
        except AgboxError as exc:
            return error_envelope(request_id, exc)
        except Exception:  # the one top-level catch of the wire: log it, answer without a traceback
            log.exception("internal error in %s (%s)", op, request_id)
            return envelope(request_id, None, success=False, code="InternalError",
                            message=f"internal error; see the server log for request {request_id}", status=500)

    # ---- session data as the SDK wants it ----------------------------------------------------------

    def session_urls(self, record: SessionRecord) -> dict[str, Any]:
        base = self.platform.settings.base_url
        ws_base = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
        tools = self.tools.list_tools(record.image_id)
        return {
            "sessionId": record.id,
            "resourceUrl": f"{base}/sessions/{record.id}",
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
        # networkPolicy is ours (beside the official fields): the official SDK never sends it.
        record = await self.sessions.create(owner, p.get("imageId"), p.get("labels"), p.get("timeout"),
                                            p.get("mcpPolicyId"), p.get("networkPolicy"))
        extra = self.platform.extensions.get("on_create")
        if extra is not None:
            await extra(record, p)
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
        return envelope(rid, {"sessionId": record.id, "resourceUrl": urls["resourceUrl"],
                              "network": self.sessions.network_info(record)})

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
