"""Each session is an MCP server: the official `mcp` client lists and calls its tools at session.mcp_url.

Runs twice through the `agb` fixture: against a real `agbox serve` and embedded (where mcp_url points at
the embedded loopback listener). Both MCP protocol eras are exercised: "auto" (2026-07-28 per-request
wire, after server/discover) and "legacy" (the initialize handshake of 2025-11-25 and earlier).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.conftest import wait_for

LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
RAW_HEADERS = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}


def with_mcp(url: str, headers: dict[str, str], fn: Callable[[Client], Awaitable[Any]], mode: str = "auto") -> Any:
    """Open the official MCP client on ``url`` with ``headers``, run ``fn(client)``, close it."""

    async def main() -> Any:
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
                return await fn(client)

    return anyio.run(main)


def bearer(session: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {session.token}"}


def raw_post(url: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, json=LIST_TOOLS, headers={**RAW_HEADERS, **headers}, timeout=30)


def test_mcp_url_is_the_session_endpoint(agb: Any, make_session: Callable[..., Any]) -> None:
    session = make_session()
    url = session.get_mcp_url()
    assert url == session.mcp_url
    parts = urlsplit(url)
    assert parts.path == f"/sessions/{session.session_id}/mcp"
    if agb.embedded:
        assert parts.scheme == "http" and parts.hostname == "127.0.0.1" and parts.port


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_list_and_call_tools(make_session: Callable[..., Any], mode: str) -> None:
    session = make_session()

    async def scenario(client: Client) -> tuple[Any, Any, Any]:
        listed = await client.list_tools()
        hi = await client.call_tool("shell", {"command": "echo hi", "timeout_ms": 5000})
        failed = await client.call_tool("shell", {"command": "echo oops >&2; exit 3", "timeout_ms": 5000})
        return listed, hi, failed

    listed, hi, failed = with_mcp(session.mcp_url, bearer(session), scenario, mode)

    tools = {tool.name: tool for tool in listed.tools}
    assert {"shell", "get_metrics"} <= set(tools)
    wire_servers = {t.name: t.server for t in session.tool_list}
    for tool in listed.tools:
        assert tool.description
        assert tool.input_schema["type"] == "object"
        assert isinstance(tool.input_schema.get("properties"), dict)
        assert tool.meta == {"server": wire_servers[tool.name], "tool": tool.name}
    assert "command" in tools["shell"].input_schema["properties"]
    assert tools["shell"].input_schema["required"] == ["command"]
    assert tools["shell"].meta == {"server": "wuying_shell", "tool": "shell"}

    assert hi.is_error is False
    assert hi.content[0].type == "text"
    assert json.loads(hi.content[0].text) == {"stdout": "hi\n", "stderr": "", "exit_code": 0}

    assert failed.is_error is True
    assert json.loads(failed.content[0].text) == {"stdout": "", "stderr": "oops\n", "exit_code": 3}


def test_x_access_token_and_protocol_errors(make_session: Callable[..., Any]) -> None:
    session = make_session()

    async def scenario(client: Client) -> tuple[Any, str]:
        metrics = await client.call_tool("get_metrics", {})
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("no_such_tool", {})
        return metrics, unknown.value.message

    metrics, unknown = with_mcp(session.mcp_url, {"X-Access-Token": session.token}, scenario)
    assert metrics.is_error is False
    assert isinstance(json.loads(metrics.content[0].text), dict)
    assert "no_such_tool" in unknown  # an unknown tool is a protocol error (JSON-RPC), not a tool result


def test_bad_tool_arguments_are_a_tool_error(make_session: Callable[..., Any]) -> None:
    session = make_session()

    async def scenario(client: Client) -> Any:
        return await client.call_tool("shell", {"command": 42})

    result = with_mcp(session.mcp_url, bearer(session), scenario)
    assert result.is_error is True
    assert "argument 'command' must be a string" in result.content[0].text


def test_mcp_requests_count_as_activity(embedded_dir: Any) -> None:
    from agbox import AGB, CreateSessionParams
    from agbox.client import backend

    agb = AGB(data_dir=embedded_dir)
    session = agb.create(CreateSessionParams(image_id="agb-code-space-1")).session
    try:
        store = backend._embedded[embedded_dir].platform.store

        def last_active() -> float:
            record = store.get_session(session.session_id)
            assert record is not None
            return record.last_active_at

        for name, args in (("list", None), ("shell", {"command": "true"})):
            before = last_active()
            wait_for(lambda: time.time() > before, what="the clock to move past the last activity")

            async def scenario(client: Client, name: str = name, args: Any = args) -> Any:
                return await (client.list_tools() if args is None else client.call_tool(name, args))

            with_mcp(session.mcp_url, bearer(session), scenario)
            assert last_active() > before, name
    finally:
        session.delete()  # the embedded platform stays up for the run (closed by embedded_dir)


def test_wrong_or_missing_token_is_401(make_session: Callable[..., Any]) -> None:
    session = make_session()
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"X-Access-Token": "wrong-token"},
                    {"Authorization": f"Bearer {session.token}x"}):
        response = raw_post(session.mcp_url, headers)
        assert response.status_code == 401, (headers, response.text)
        body = response.json()
        assert body["success"] is False and body["code"] == "InvalidAccessToken"
        assert "session access token" in body["message"]
        assert body["error"]["message"] == body["message"]  # also a JSON-RPC error
        assert response.headers["www-authenticate"].startswith("Bearer")

    async def scenario(client: Client) -> Any:
        return await client.list_tools()

    # The official client surfaces the server's message (inside anyio's exception groups).
    with pytest.raises(BaseException) as failure:
        with_mcp(session.mcp_url, {"Authorization": "Bearer wrong-token"}, scenario)
    assert failure.group_contains(MCPError, match="wrong session access token", depth=None) \
        if isinstance(failure.value, BaseExceptionGroup) else "wrong session access token" in str(failure.value)
    # The right token on the same endpoint still works.
    assert raw_post(session.mcp_url, bearer(session)).status_code == 200


def test_ended_or_unknown_session_is_404(make_session: Callable[..., Any]) -> None:
    session = make_session()
    assert raw_post(session.mcp_url, bearer(session)).status_code == 200
    assert session.delete().success

    def gone() -> httpx.Response | None:
        response = raw_post(session.mcp_url, bearer(session))
        return response if response.status_code == 404 else None

    response = wait_for(gone, 30, what="the ended session's MCP endpoint to answer 404")
    assert response.json()["code"] == "InvalidMcpSession.NotFound"
    assert session.session_id in response.json()["message"]

    unknown = session.mcp_url.replace(session.session_id, "session-doesnotexist0000")
    response = raw_post(unknown, bearer(session))
    assert response.status_code == 404
    assert "not found" in response.json()["message"]


def test_only_mcp_methods_are_routed(make_session: Callable[..., Any]) -> None:
    session = make_session()
    response = httpx.put(session.mcp_url, headers=bearer(session), timeout=30)
    assert response.status_code == 405
