"""The ``get_metrics`` tool: figures from the session's cgroup and namespaces."""

from __future__ import annotations

import datetime
import time
from typing import Any

from agbox.tools.base import ToolContext, ToolDef, ToolOutput, json_text, schema


async def get_metrics(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    stats = await ctx.runtime.stats(ctx.handle)
    now = time.monotonic()
    # Rates are over the interval since the previous call, or since the sandbox started.
    previous = ctx.state.get("metrics_sample")
    if previous is None:
        previous = (now - max(time.time() - ctx.created_at, 0.001), 0, 0, 0)
    then, cpu_then, rx_then, tx_then = previous
    elapsed = max(now - then, 1e-6)
    cpu_pct = (stats.cpu_usage_ns - cpu_then) / 1e9 / elapsed / stats.cpu_count * 100
    ctx.state["metrics_sample"] = (now, stats.cpu_usage_ns, stats.rx_bytes, stats.tx_bytes)
    payload = {
        "cpu_count": stats.cpu_count,
        "cpu_used_pct": round(min(max(cpu_pct, 0.0), 100.0), 2),
        "mem_total": stats.mem_total,
        "mem_used": stats.mem_used,
        "disk_total": stats.disk_total,
        "disk_used": stats.disk_used,
        "rx_rate_kbyte_per_s": round((stats.rx_bytes - rx_then) / 1024 / elapsed, 3),
        "tx_rate_kbyte_per_s": round((stats.tx_bytes - tx_then) / 1024 / elapsed, 3),
        "rx_used_kbyte": round(stats.rx_bytes / 1024, 3),
        "tx_used_kbyte": round(stats.tx_bytes / 1024, 3),
        "pids": stats.pids,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return ToolOutput(json_text(payload))


TOOLS = [
    ToolDef(
        name="get_metrics",
        description="Resource figures of the session from the kernel: CPU count and use, memory and disk used/total "
                    "(bytes), network received/sent totals (KB) and rates (KB/s).",
        input_schema=schema({}),
        server="wuying_system",
        handler=get_metrics,
    ),
]
