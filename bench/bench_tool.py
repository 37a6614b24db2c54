"""Tool round trip: one ``shell`` call running ``true`` in a live session, by every way in.

- ``POST /mcp`` (the AGB wire's callMcpTool) with a raw httpx client, keep-alive;
- the LinkUrl route, ``POST {linkUrl}/callTool`` with ``X-Access-Token``, raw httpx, keep-alive;
- our SDK over HTTP (``session.command.execute``: it takes the LinkUrl route);
- the official SDK over HTTP (``session.command.execute``: LinkUrl route, a new HTTP client per call);
- the session's own MCP endpoint (``mcpUrl``, streamable HTTP JSON-RPC ``tools/call``), when this build serves it;
- embedded, our SDK (no HTTP at all);
- the agent channel alone (``LocalRuntime.call``), to split the agent from the layers above it.

Baselines in the same run: ``subprocess.run(["true"])`` and ``subprocess.run(["bash", "-c", "true"])``
(the shell tool runs its command through bash).
"""

from __future__ import annotations

import json
from typing import Any

import benchlib as B
import httpx

FAMILY = "tool round trip"
ARGS = {"command": "true", "timeout_ms": 5000}


def _check_mcp(body: dict[str, Any]) -> None:
    if not body.get("success") or (body.get("data") or {}).get("isError"):
        raise RuntimeError(f"shell via /mcp failed: {str(body)[:300]}")


def _check_link(response: httpx.Response) -> None:
    body = response.json()
    result = (body.get("data") or {}).get("result") or {}
    if response.status_code != 200 or result.get("isError") or not result.get("content"):
        raise RuntimeError(f"shell via LinkUrl failed: HTTP {response.status_code} {str(body)[:300]}")


class McpEndpoint:
    """A minimal streamable-HTTP MCP client (JSON-RPC over POST; JSON or SSE answers)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.client = httpx.Client(timeout=30, headers={
            "authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"})
        self.next_id = 1
        self.session_header: dict[str, str] = {}
        answer = self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                             "clientInfo": {"name": "agbox-bench", "version": "1"}})
        if "result" not in answer:
            raise RuntimeError(f"initialize failed: {str(answer)[:200]}")
        self.notify("notifications/initialized")

    def _post(self, payload: dict[str, Any]) -> httpx.Response:
        response = self.client.post(self.url, json=payload, headers=self.session_header)
        if response.status_code == 404:
            raise RuntimeError("not available on this build: the session MCP endpoint answers HTTP 404")
        if response.status_code >= 400:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        if "mcp-session-id" in response.headers:
            self.session_header = {"mcp-session-id": response.headers["mcp-session-id"]}
        return response

    def notify(self, method: str) -> None:
        self._post({"jsonrpc": "2.0", "method": method})

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rid = self.next_id
        self.next_id += 1
        response = self._post({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            for line in response.text.splitlines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("id") == rid:
                        return dict(message)
            raise RuntimeError("no answer in the event stream")
        return dict(response.json())

    def shell(self) -> None:
        answer = self.request("tools/call", {"name": "shell", "arguments": ARGS})
        if (answer.get("result") or {}).get("isError") or "result" not in answer:
            raise RuntimeError(f"tools/call failed: {str(answer)[:200]}")

    def close(self) -> None:
        self.client.close()


def run(quick: bool) -> list[dict[str, Any]]:
    from agbox import AGB, CreateSessionParams

    n = B.samples(quick, 500, 40)
    rows: list[dict[str, Any]] = []
    B.say(f"baselines: subprocess true and bash -c true (n={n})")
    sub = B.measure_subprocess_true(n)
    bash = B.time_calls(lambda: B._run_ok(["bash", "-c", "true"]), n)
    rows.append(B.row(FAMILY, B.SUBPROCESS_NAME, sub, key="tool.subprocess"))
    rows.append(B.row(FAMILY, 'subprocess.run(["bash", "-c", "true"])', bash, key="tool.bash_baseline",
                      baseline=B.SUBPROCESS_NAME, baseline_s=sub))

    def add(name: str, key: str, samples_s: list[float], note: str = "") -> None:
        rows.append(B.row(FAMILY, name, samples_s, key=key, baseline=B.SUBPROCESS_NAME, baseline_s=sub, note=note))

    with B.server("agbox-bench-tool-") as srv:
        ours = srv.sdk()
        http = srv.http()
        link = httpx.Client(timeout=30)
        try:
            created = ours.create(CreateSessionParams(image_id=B.IMAGE))
            if not created.success:
                raise RuntimeError(f"create failed: {created.error_message}")
            session = created.session
            sid = session.session_id

            B.say(f"POST /mcp, raw httpx (n={n})")
            mcp_body = {"sessionId": sid, "name": "shell", "args": json.dumps(ARGS)}
            add("shell true via POST /mcp (HTTP, raw httpx, keep-alive)", "tool.mcp_http",
                B.time_calls(lambda: _check_mcp(http.post(f"{srv.endpoint}/mcp", json=mcp_body).json()), n))

            B.say(f"LinkUrl route, raw httpx (n={n})")
            link_body = {"args": ARGS, "server": "wuying_shell", "tool": "shell", "token": session.token,
                         "requestId": "bench"}
            link_headers = {"X-Access-Token": session.token}
            add("shell true via LinkUrl POST {linkUrl}/callTool (HTTP, raw httpx)", "tool.link_http",
                B.time_calls(lambda: _check_link(link.post(f"{session.link_url}/callTool", json=link_body,
                                                           headers=link_headers)), n))

            B.say(f"our SDK over HTTP (n={n})")

            def sdk_call() -> None:
                result = session.command.execute("true")
                if not result.success:
                    raise RuntimeError(result.error_message)

            add("shell true via our SDK over HTTP (command.execute, LinkUrl route)", "tool.sdk_http",
                B.time_calls(sdk_call, n))

            B.say(f"official SDK over HTTP (n={max(n // 5, 10)})")
            import bench_tti

            bench_tti.quiet_official_sdk()
            official = srv.official()
            got = official.get(sid)
            if not got.success:
                raise RuntimeError(f"official get failed: {got.error_message}")

            def official_call() -> None:
                result = got.session.command.execute("true")
                if not result.success:
                    raise RuntimeError(result.error_message)

            add("shell true via official SDK over HTTP (command.execute, LinkUrl route)", "tool.official_http",
                B.time_calls(official_call, max(n // 5, 10)),
                note="the official SDK opens a new httpx.Client (and TLS context) for every LinkUrl call")

            B.say("session MCP endpoint")
            try:
                endpoint = McpEndpoint(session.mcp_url or f"{srv.endpoint}/sessions/{sid}/mcp", session.token)
                try:
                    add("shell true via the session MCP endpoint (streamable HTTP tools/call)", "tool.mcp_endpoint",
                        B.time_calls(endpoint.shell, n))
                finally:
                    endpoint.close()
            except Exception as exc:
                rows.append(B.row(FAMILY, "shell true via the session MCP endpoint", key="tool.mcp_endpoint",
                                  note=f"not measured: {exc}"))
            session.delete()
        finally:
            link.close()
            http.close()
            ours.close()

    B.say(f"embedded: our SDK and the agent channel alone (n={n})")
    with B.temp_root("agbox-bench-tool-emb-") as root:
        agb = AGB(data_dir=root / "data")
        try:
            session = agb.create(CreateSessionParams(image_id=B.IMAGE)).session

            def embedded_call() -> None:
                result = session.command.execute("true")
                if not result.success:
                    raise RuntimeError(result.error_message)

            add("shell true via our SDK embedded (no HTTP)", "tool.embedded", B.time_calls(embedded_call, n))
            embedded = agb._backend.platform  # the EmbeddedPlatform: reach below the wire on purpose
            platform = embedded.platform
            handle = platform.sessions.handles[session.session_id]
            shell_args = {"command": "true", "timeout_ms": 5000, "cwd": None, "envs": {}, "max_output": 1 << 20,
                          "stream": False}

            def agent_call() -> None:
                result = embedded.run(platform.runtime.call(handle, "shell", shell_args, timeout_s=10))
                if result["exit_code"] != 0:
                    raise RuntimeError(str(result))

            add("shell true via the agent channel only (LocalRuntime.call, embedded)", "tool.agent",
                B.time_calls(agent_call, n), note="no wire, no service, no tool layer: pipe to the agent and back")
            session.delete()
        finally:
            agb.close()
    return rows
