"""``Session``: one sandbox, with the AGB Session API (labels, info, link, status, tools, metrics, delete)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import httpx

from agbox.client.browser import Browser
from agbox.client.code import Code
from agbox.client.command import Command
from agbox.client.computer import Computer
from agbox.client.context_manager import ContextManager
from agbox.client.file import FileSystem
from agbox.client.file_transfer import FileTransfer
from agbox.client.pty import Pty
from agbox.client.results import (
    DeleteResult,
    McpTool,
    McpToolResult,
    McpToolsResult,
    OperationResult,
    SessionLogsResult,
    SessionMetrics,
    SessionMetricsResult,
    SessionStatusResult,
)

if TYPE_CHECKING:
    from agbox.client.agb import AGB

DELETE_TIMEOUT_S = 300.0


def data_of(response: dict[str, Any]) -> dict[str, Any]:
    data = response.get("data")
    return data if isinstance(data, dict) else {}


def envelope_error(response: dict[str, Any], fallback: str) -> str:
    return str(response.get("message") or fallback)


def _validate_labels(labels: Any) -> str | None:
    # The official SDK's client-side checks, with its exact messages.
    if isinstance(labels, list):
        return "Labels cannot be an array. Please provide a valid labels object."
    if labels is None or not isinstance(labels, dict):
        return "Labels cannot be null, undefined, or invalid type. Please provide a valid labels object."
    if not labels:
        return "Labels cannot be empty. Please provide at least one label."
    for key, value in labels.items():
        if not isinstance(key, str) or not key.strip():
            return "Label keys cannot be empty Please provide valid keys."
        if value is None or not isinstance(value, str) or not value.strip():
            return "Label values cannot be empty Please provide valid values."
    return None


def parse_tool_list(raw: Any) -> list[McpTool] | str:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw else []
        except ValueError:
            return ""
    if not isinstance(raw, list) or not raw:
        return ""
    tools = []
    for item in raw:
        if isinstance(item, dict):
            tools.append(McpTool(name=str(item.get("name") or item.get("Name") or ""),
                                 server=str(item.get("server") or item.get("serverName") or item.get("Server") or ""),
                                 tool=str(item.get("name") or "")))
    return tools


class Session:
    def __init__(self, agb: AGB, session_id: str) -> None:
        self.agb = agb
        self.session_id = session_id
        self.resource_url = ""
        self.image_id = ""
        self.app_instance_id = ""
        self.resource_id = ""
        self.link_url = ""
        self.ws_url = ""
        self.token = ""
        self.mcp_url = ""
        self.tool_list: list[McpTool] | str = ""
        self.command = Command(self)
        self.file = FileSystem(self)
        self.code = Code(self)
        self.browser = Browser(self)
        self.computer = Computer(self)
        self.pty = Pty(self)
        self.context = ContextManager(self)
        self.file_transfer = FileTransfer(self, self.context, agb.context)

    def _apply(self, data: dict[str, Any]) -> None:
        self.resource_url = str(data.get("resourceUrl") or "")
        self.app_instance_id = str(data.get("appInstanceId") or "")
        self.resource_id = str(data.get("resourceId") or "")
        self.link_url = str(data.get("linkUrl") or data.get("LinkUrl") or "")
        self.ws_url = str(data.get("wsUrl") or data.get("WsUrl") or "")
        self.token = str(data.get("token") or data.get("Token") or "")
        self.mcp_url = str(data.get("mcpUrl") or "")
        self.tool_list = parse_tool_list(data.get("toolList") or data.get("ToolList"))

    # ---- getters of the official SDK
    def get_session_id(self) -> str:
        return self.session_id

    def get_api_key(self) -> str:
        return self.agb.api_key

    def get_link_url(self) -> str:
        return self.link_url

    def get_token(self) -> str:
        return self.token

    def get_mcp_url(self) -> str:
        """The streamable-HTTP MCP endpoint of this session (send the token as a Bearer header)."""
        return self.mcp_url

    def _call(self, op: str, query: dict[str, Any] | None = None, body: dict[str, Any] | None = None,
              timeout_s: float | None = None) -> dict[str, Any]:
        return self.agb._backend.call(op, query, body, timeout_s)

    # ---- labels
    def set_labels(self, labels: dict[str, str]) -> OperationResult:
        problem = _validate_labels(labels)
        if problem:
            return OperationResult(success=False, error_message=problem)
        response = self._call("setLabel", {"sessionId": self.session_id, "Labels": json.dumps(labels)})
        return OperationResult(request_id=response.get("requestId", ""), success=bool(response.get("success")),
                               error_message="" if response.get("success") else envelope_error(response, "Failed to set labels"))

    def get_labels(self) -> OperationResult:
        response = self._call("getLabel", {"sessionId": self.session_id})
        if not response.get("success"):
            return OperationResult(request_id=response.get("requestId", ""), success=False,
                                   error_message=envelope_error(response, "Failed to get labels"))
        raw = (response.get("data") or {}).get("labels") or "{}"
        return OperationResult(request_id=response.get("requestId", ""), success=True, data=json.loads(raw))

    # ---- info, link, status
    def info(self) -> OperationResult:
        response = self._call("getMcpResource", None, {"sessionId": self.session_id})
        data = response.get("data")
        if not response.get("success") or not isinstance(data, dict):
            return OperationResult(request_id=response.get("requestId", ""), success=False,
                                   error_message=envelope_error(response, "No resource data found in response"))
        info = {"session_id": data.get("sessionId", ""), "resource_url": data.get("resourceUrl", ""),
                "network": data.get("network")}
        desktop = data.get("desktopInfo")
        if isinstance(desktop, dict) and desktop:
            # Desktop sessions, as the official SDK maps them (live view secrets and connection details).
            for key, wire_key in (("app_id", "appId"), ("auth_code", "authCode"), ("resource_id", "resourceId"),
                                  ("connection_properties", "connectionProperties"),
                                  ("resource_type", "resourceType"), ("ticket", "ticket")):
                info[key] = desktop.get(wire_key, "")
        return OperationResult(request_id=response.get("requestId", ""), success=True, data=info)

    def set_network_policy(self, policy: Any) -> OperationResult:
        """Replace the session's network policy (an ``agbox.NetworkPolicy``); open connections it no
        longer allows fail at their next packet. ``data`` is the session's network afterwards."""
        response = self._call("setNetworkPolicy", None, {"sessionId": self.session_id,
                                                         "networkPolicy": policy.to_wire()})
        data = response.get("data")
        if not response.get("success") or not isinstance(data, dict):
            return OperationResult(request_id=response.get("requestId", ""), success=False,
                                   error_message=envelope_error(response, "Failed to set the network policy"))
        return OperationResult(request_id=response.get("requestId", ""), success=True, data=data.get("network"))

    def get_link(self, protocol_type: str | None = None, port: int | None = None) -> OperationResult:
        query = {"sessionId": self.session_id, "protocolType": protocol_type,
                 "port": str(port) if port is not None else None}
        response = self._call("getLink", query)
        data = response.get("data")
        url = data.get("url") if isinstance(data, dict) else (data if isinstance(data, str) else None)
        if not response.get("success") or not url:
            return OperationResult(request_id=response.get("requestId", ""), success=False,
                                   error_message=envelope_error(response, "Failed to get link"))
        return OperationResult(request_id=response.get("requestId", ""), success=True, data=url)

    def get_status(self) -> SessionStatusResult:
        response = self._call("getSessionInfo", None, {"sessionId": self.session_id})
        data = data_of(response)
        return SessionStatusResult(
            request_id=response.get("requestId", ""), http_status_code=int(response.get("httpStatusCode") or 0),
            code=str(response.get("code") or ""), success=bool(response.get("success")),
            status=str(data.get("status") or data.get("Status") or ""),
            error_message="" if response.get("success") else envelope_error(response, "Failed to get status"))

    def keep_alive(self) -> OperationResult:
        response = self._call("refreshSessionIdleTime", {"sessionId": self.session_id}, {})
        return OperationResult(request_id=response.get("requestId", ""), success=bool(response.get("success")),
                               error_message="" if response.get("success") else envelope_error(response, "keep_alive failed"))

    def logs(self, after_seq: int = 0, limit: int = 200) -> SessionLogsResult:
        """This session's recent tool calls and terminals, oldest first (see ``AGB.get_session_logs``)."""
        return self.agb.get_session_logs(self.session_id, after_seq, limit)

    # ---- delete
    def delete(self, sync_context: bool = False) -> DeleteResult:
        if sync_context:
            context = getattr(self, "context", None)
            if context is not None:
                context.sync_blocking()
        response = self._call("releaseSessionAsync", None, {"sessionId": self.session_id})
        request_id = response.get("requestId", "")
        if not response.get("success"):
            return DeleteResult(request_id=request_id, success=False,
                                error_message=f"[{response.get('code') or 'Unknown'}] "
                                              f"{response.get('message') or 'Failed to delete session'}")
        deadline = time.monotonic() + DELETE_TIMEOUT_S
        pause = 0.005
        while time.monotonic() < deadline:
            status = self.get_status()
            if status.success and status.status == "FINISH":
                return DeleteResult(request_id=request_id, success=True)
            if not status.success and "not found" in status.error_message.lower():
                return DeleteResult(request_id=request_id, success=True)
            time.sleep(pause)  # bounded poll of a remote state, backing off to 0.5 s
            pause = min(pause * 2, 0.5)
        return DeleteResult(request_id=request_id, success=False,
                            error_message=f"Timeout waiting for session deletion after {DELETE_TIMEOUT_S}s")

    # ---- tools
    def _tool_server(self, name: str) -> str:
        if isinstance(self.tool_list, list):
            for tool in self.tool_list:
                if tool.name == name:
                    return tool.server
        return ""

    def call_mcp_tool(self, tool_name: str, args: dict[str, Any], read_timeout: int | None = None,
                      connect_timeout: int | None = None) -> McpToolResult:
        backend = self.agb._backend
        timeout_s = max(read_timeout / 1000, 1) if read_timeout else None
        client = backend.http()
        server = self._tool_server(tool_name)
        if client is not None and self.link_url and self.token and server:
            return self._call_via_link(client, tool_name, args, server, timeout_s)
        response = self._call("callMcpTool", {"autoGenSession": "false"},
                              {"sessionId": self.session_id, "name": tool_name, "args": json.dumps(args)}, timeout_s)
        request_id = response.get("requestId", "")
        data = data_of(response)
        text = "\n".join(item.get("text", "") for item in data.get("content", []) if item.get("type") == "text")
        if not response.get("success"):
            return McpToolResult(request_id=request_id, success=False,
                                 error_message=envelope_error(response, "tool call failed"))
        if data.get("isError"):
            return McpToolResult(request_id=request_id, success=False, data=text, error_message=text)
        return McpToolResult(request_id=request_id, success=True, data=text)

    def _call_via_link(self, client: httpx.Client, tool_name: str, args: dict[str, Any], server: str,
                       timeout_s: float | None) -> McpToolResult:
        request_id = f"link-{int(time.time() * 1000)}-{time.perf_counter_ns() % 10**9:09d}"
        try:
            response = client.post(f"{self.link_url.rstrip('/')}/callTool",
                                   json={"args": args, "server": server, "requestId": request_id,
                                         "tool": tool_name, "token": self.token},
                                   headers={"X-Access-Token": self.token, "authorization": ""},
                                   timeout=timeout_s or 900)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            return McpToolResult(request_id=request_id, success=False, error_message=f"link call failed: {exc}")
        if response.status_code >= 300 or not isinstance(body, dict):
            message = body.get("message") if isinstance(body, dict) else None
            return McpToolResult(request_id=request_id, success=False,
                                 error_message=str(message or f"HTTP {response.status_code}"))
        result = ((body.get("data") or {}).get("result") or {})
        content = result.get("content") or [{}]
        text = str(content[0].get("text", "")) if content else ""
        if result.get("isError"):
            return McpToolResult(request_id=request_id, success=False, data=text, error_message=text)
        return McpToolResult(request_id=request_id, success=True, data=text)

    def list_mcp_tools(self, image_id: str | None = None) -> McpToolsResult:
        image = image_id or self.image_id
        if not image:
            raise ValueError("image_id is required: pass it or create the session with an image_id")
        response = self._call("listTools", {"imageId": image}, {})
        if not response.get("success"):
            return McpToolsResult(request_id=response.get("requestId", ""), success=False,
                                  error_message=envelope_error(response, "Failed to list tools"))
        items = json.loads(response.get("data") or "[]")
        tools = [McpTool(name=t.get("name", ""), description=t.get("description", ""),
                         input_schema=t.get("inputSchema") or {}, server=t.get("server", ""), tool=t.get("tool", ""))
                 for t in items]
        return McpToolsResult(request_id=response.get("requestId", ""), success=True, tools=tools)

    def get_metrics(self, read_timeout: int | None = None, connect_timeout: int | None = None) -> SessionMetricsResult:
        result = self.call_mcp_tool("get_metrics", {}, read_timeout, connect_timeout)
        if not result.success:
            return SessionMetricsResult(request_id=result.request_id, success=False, error_message=result.error_message)
        try:
            raw = json.loads(result.data)
            if not isinstance(raw, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return SessionMetricsResult(request_id=result.request_id, success=False,
                                        error_message=f"Failed to parse get_metrics response: {exc}")
        fields = {f for f in SessionMetrics.__dataclass_fields__}
        metrics = SessionMetrics(**{k: v for k, v in raw.items() if k in fields})
        return SessionMetricsResult(request_id=result.request_id, success=True, metrics=metrics, raw=raw)
