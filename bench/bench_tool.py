"""Tool round trip: one ``shell`` call running ``true`` in a live session, by every way in.

- ``POST /mcp`` (the AGB wire's callMcpTool) with a raw httpx client, keep-alive;
- the LinkUrl route, ``POST {linkUrl}/callTool`` with ``X-Access-Token``, raw httpx, keep-alive;
- our SDK over HTTP (``session.command.execute``: it takes the LinkUrl route);
- the official SDK over HTTP (``session.command.execute``: LinkUrl route, a new HTTP client per call);
- embedded, our SDK (no HTTP at all);
- the agent channel alone (``LocalRuntime.call``), to split the agent from the layers above it.

The session's own MCP endpoint (``mcpUrl``) is timed by ``bench_mcp.py`` (same family).

Baselines in the same run: ``subprocess.run(["true"])`` and ``subprocess.run(["bash", "-c", "true"])``
(the shell tool runs its command through bash).
"""

from __future__ import annotations

import json
from typing import Any

import benchlib as B
import httpx

FAMILY = "tool_round_trip"  # shared with bench_mcp.py (the session MCP endpoint)
ARGS = {"command": "true", "timeout_ms": 5000}


def _check_mcp(body: dict[str, Any]) -> None:
    if not body.get("success") or (body.get("data") or {}).get("isError"):
        raise RuntimeError(f"shell via /mcp failed: {str(body)[:300]}")


def _check_link(response: httpx.Response) -> None:
    body = response.json()
    result = (body.get("data") or {}).get("result") or {}
    if response.status_code != 200 or result.get("isError") or not result.get("content"):
        raise RuntimeError(f"shell via LinkUrl failed: HTTP {response.status_code} {str(body)[:300]}")


def run(quick: bool) -> list[dict[str, Any]]:
    from agbox import AGB, CreateSessionParams

    n = B.samples(quick, 500, 40)
    rows: list[dict[str, Any]] = []
    B.say(f"baselines: subprocess true and bash -c true (n={n})")
    sub = B.measure_subprocess_true(n)
    bash, bash_base = B.paired(B.timed(lambda: B._run_ok(["bash", "-c", "true"])), B.subprocess_true, n)
    rows.append(B.row(FAMILY, B.SUBPROCESS_NAME, sub, key="tool.subprocess"))
    rows.append(B.row(FAMILY, 'subprocess.run(["bash", "-c", "true"])', bash, key="tool.bash_baseline",
                      baseline=B.SUBPROCESS_NAME + " (interleaved)", baseline_s=bash_base))

    def add(name: str, key: str, fn: Any, note: str = "", count: int = n) -> None:
        """Time ``fn`` interleaved with subprocess.run(["true"]), so both see the same load."""
        measured, base = B.paired(B.timed(fn), B.subprocess_true, count)
        rows.append(B.row(FAMILY, name, measured, key=key, baseline=B.SUBPROCESS_NAME + " (interleaved)",
                          baseline_s=base, note=note))

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
                lambda: _check_mcp(http.post(f"{srv.endpoint}/mcp", json=mcp_body).json()))

            B.say(f"LinkUrl route, raw httpx (n={n})")
            link_body = {"args": ARGS, "server": "wuying_shell", "tool": "shell", "token": session.token,
                         "requestId": "bench"}
            link_headers = {"X-Access-Token": session.token}
            add("shell true via LinkUrl POST {linkUrl}/callTool (HTTP, raw httpx)", "tool.link_http",
                lambda: _check_link(link.post(f"{session.link_url}/callTool", json=link_body, headers=link_headers)))

            B.say(f"our SDK over HTTP (n={n})")

            def sdk_call() -> None:
                result = session.command.execute("true")
                if not result.success:
                    raise RuntimeError(result.error_message)

            add("shell true via our SDK over HTTP (command.execute, LinkUrl route)", "tool.sdk_http",
                sdk_call)

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
                official_call, count=max(n // 5, 10),
                note="the official SDK opens a new httpx.Client (and TLS context) for every LinkUrl call")

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

            add("shell true via our SDK embedded (no HTTP)", "tool.embedded", embedded_call)
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
                agent_call, note="no wire, no service, no tool layer: pipe to the agent and back")
            session.delete()
        finally:
            agb.close()
    return rows
