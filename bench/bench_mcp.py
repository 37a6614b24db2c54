"""Tool round trip through a session's own MCP endpoint (``/sessions/{id}/mcp``, streamable HTTP).

Starts its own ``agbox serve`` on a free port with a temp data dir, creates one session with our SDK,
opens the official ``mcp`` client on ``session.mcp_url`` (Bearer session token, default "auto" mode,
i.e. the 2026-07-28 per-request wire after ``server/discover``) and times ``shell`` running ``true``,
one call after the other on the open client. Baseline, measured in the same run: a plain
``subprocess.run(["true"])``. Everything (session, server, temp dir) is cleaned up, also on failure.

Run alone: ``python bench/bench_mcp.py [--quick]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import benchlib

FAMILY = "tool_round_trip"
NAME = "shell via session MCP endpoint"
BASELINE = "subprocess.run(true)"
FULL, QUICK, WARMUP = 300, 40, 5


def _time_mcp_shell(url: str, token: str, n: int) -> list[float]:
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def main() -> list[float]:
        out: list[float] = []
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                for i in range(WARMUP + n):
                    start = time.perf_counter()
                    result = await client.call_tool("shell", {"command": "true", "timeout_ms": 5000})
                    elapsed = time.perf_counter() - start
                    if result.is_error:
                        raise RuntimeError(f"shell true failed via MCP: {result.content}")
                    if i >= WARMUP:
                        out.append(elapsed)
        return out

    return anyio.run(main)


def _time_subprocess_true(n: int) -> list[float]:
    out = []
    for i in range(WARMUP + n):
        start = time.perf_counter()
        subprocess.run(["true"], check=True)
        if i >= WARMUP:
            out.append(time.perf_counter() - start)
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    from agbox import AGB, CreateSessionParams

    n = benchlib.samples(quick, FULL, QUICK)
    with benchlib.server("agbox-bench-mcp-") as srv:
        endpoint = srv.endpoint
        agb = AGB(api_key=srv.api_key, endpoint=endpoint)
        try:
            created = agb.create(CreateSessionParams(image_id="agb-code-space-1"))
            if not created.success:
                raise RuntimeError(f"create failed: {created.error_message}")
            session = created.session
            try:
                mcp_s = _time_mcp_shell(session.get_mcp_url(), session.token, n)
            finally:
                session.delete()
        finally:
            agb.close()
    base_s = _time_subprocess_true(n)
    p50, base_p50 = benchlib.percentile(mcp_s, 50) * 1000, benchlib.percentile(base_s, 50) * 1000
    return [{
        "family": FAMILY, "name": NAME, "key": "mcp_endpoint_shell_true",
        "p50_ms": p50, "p95_ms": benchlib.percentile(mcp_s, 95) * 1000, "p99_ms": benchlib.percentile(mcp_s, 99) * 1000, "n": n,
        "baseline": BASELINE, "baseline_p50_ms": base_p50, "ratio": p50 / base_p50, "delta_ms": p50 - base_p50,
        "higher_is_better": False,
        "note": "official mcp client (auto mode: 2026-07-28 wire), one open client, agbox serve over loopback HTTP",
    }]


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv[1:]), indent=2))
