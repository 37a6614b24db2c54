"""What the platform reports to Prometheus: counters and latency histograms of wire operations and
tool calls, session creates, and gauges read at scrape time (sessions by state and image, warm
sandboxes). One registry per platform (several platforms may share a process, e.g. in tests)."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agbox.models import ACTIVE_STATUSES

if TYPE_CHECKING:
    from agbox.runtime.base import Runtime
    from agbox.store.base import Store

# Tool calls run from a millisecond (a file stat) to minutes (a build): buckets span both.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _LiveFigures(Collector):
    """Figures read when Prometheus scrapes, not kept up to date on every change."""

    def __init__(self, store: Store, runtime: Runtime) -> None:
        self.store = store
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily("agbox_sessions", "Sessions that are not finished, by status and image",
                                     labels=["status", "image"])
        counts = collections.Counter((r.status.value, r.image_id) for r in self.store.sessions(statuses=ACTIVE_STATUSES))
        for (status, image), count in sorted(counts.items()):
            sessions.add_metric([status, image], count)
        yield sessions
        yield GaugeMetricFamily("agbox_warm_sandboxes", "Started sandboxes waiting in the warm pools",
                                value=self.runtime.warm_sandboxes())


class Telemetry:
    def __init__(self, store: Store, runtime: Runtime) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.operations = Counter("agbox_operations", "AGB wire operations by outcome (ok or the error code)",
                                  ["operation", "outcome"], registry=self.registry)
        self.operation_seconds = Histogram("agbox_operation_seconds", "Wire operation latency", ["operation"],
                                           buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tool_calls = Counter("agbox_tool_calls", "MCP tool calls by outcome (ok, tool_error or the error code)",
                                  ["tool", "outcome"], registry=self.registry)
        self.tool_call_seconds = Histogram("agbox_tool_call_seconds", "MCP tool call latency", ["tool"],
                                           buckets=LATENCY_BUCKETS, registry=self.registry)
        self.creates = Counter("agbox_session_creates", "Sessions created, by image", ["image"], registry=self.registry)
        self.link_bytes = Counter("agbox_link_bytes", "Bytes relayed by links (heads and bodies), by direction: "
                                  "to_sandbox (client to the app) or to_client", ["direction"], registry=self.registry)
        self.link_connections = Counter("agbox_link_connections", "Client connections accepted by link listeners",
                                        registry=self.registry)
        self.registry.register(_LiveFigures(store, runtime))
        # Called before each scrape: counters kept cheaply elsewhere (e.g. bytes of open link
        # connections) are brought up to date only when someone looks.
        self.before_scrape: list[Callable[[], None]] = []

    def operation_done(self, operation: str, outcome: str, started: float) -> None:
        self.operations.labels(operation, outcome).inc()
        self.operation_seconds.labels(operation).observe(time.perf_counter() - started)

    def tool_call_done(self, tool: str, outcome: str, started: float) -> None:
        self.tool_calls.labels(tool, outcome).inc()
        self.tool_call_seconds.labels(tool).observe(time.perf_counter() - started)

    def exposition(self) -> bytes:
        for update in self.before_scrape:
            update()
        return generate_latest(self.registry)
