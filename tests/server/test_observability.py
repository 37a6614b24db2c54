"""Prometheus ``/metrics`` (parsed with prometheus_client's own parser) and JSON logs whose
``requestId`` matches the envelope's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from agb.session_params import CreateSessionParams
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess, start_server, wait_for


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"{server.endpoint}/metrics", headers={"authorization": f"Bearer {server.api_key}"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def test_metrics_count_what_happens(server: ServerProcess, official: Any) -> None:
    assert httpx.get(f"{server.endpoint}/metrics").status_code == 401
    assert httpx.get(f"{server.endpoint}/metrics", headers={"authorization": "Bearer nope"}).status_code == 401
    before = scrape(server)
    image = "agb-code-space-1"
    session = official.create(CreateSessionParams(image_id=image)).session
    try:
        assert session.command.execute("echo hi").success
        bad = httpx.post(f"{server.endpoint}/mcp/noSuchOperation", headers={"authorization": f"Bearer {server.api_key}"})
        assert bad.status_code in (200, 404)
        after = scrape(server)

        def delta(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        assert delta("agbox_session_creates_total", image=image) == 1
        assert delta("agbox_operations_total", operation="createSession", outcome="ok") == 1
        assert delta("agbox_tool_calls_total", tool="shell", outcome="ok") >= 1
        assert delta("agbox_tool_call_seconds_count", tool="shell") >= 1
        assert after[("agbox_sessions", (("image", image), ("status", "RUNNING")))] >= 1
        assert ("agbox_warm_sandboxes", ()) in after
        # Operation names a client makes up never become label values.
        assert not any("noSuchOperation" in str(labels) for _, labels in after)
    finally:
        session.delete()


def test_metrics_count_link_bytes_and_connections(server: ServerProcess, official: Any) -> None:
    session = official.create(CreateSessionParams(image_id="agb-code-space-1")).session
    try:
        size = 3 * 1024 * 1024 + 17  # large enough to take the splice path, odd to catch off-by-ones
        started = session.command.execute(
            f"mkdir -p /tmp/www && head -c {size} /dev/zero > /tmp/www/blob && cd /tmp/www && "
            "nohup python3 -m http.server 30100 >/tmp/h.log 2>&1 &", timeout_ms=10_000)
        assert started.success, started.error_message
        got = session.get_link(None, 30100)
        assert got.success, got.error_message
        url = got.data

        def answering() -> bool:
            try:
                return httpx.get(url, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answering, 20, interval_s=0.05, what="the link to answer")
        before = scrape(server)
        with httpx.Client(timeout=30) as client:
            first = client.get(url + "blob")
            second = client.get(url + "blob")
        assert first.content == second.content == b"\0" * size
        after = scrape(server)

        def delta(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        # Bodies plus heads: at least both bodies, at most a few KiB of heads more.
        assert 2 * size <= delta("agbox_link_bytes_total", direction="to_client") <= 2 * size + 8192
        assert 0 < delta("agbox_link_bytes_total", direction="to_sandbox") <= 8192
        assert delta("agbox_link_connections_total") >= 1
    finally:
        session.delete()


def test_json_logs_carry_the_request_id(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", extra_args=["--log-format", "json", "--log-level", "debug"])
    try:
        answer = httpx.get(f"{server.endpoint}/sdk/ListSession", headers={"authorization": f"Bearer {server.api_key}"},
                           params={"maxResults": "5"}).json()
        assert answer["success"], answer
        request_id = answer["requestId"]

        def logged() -> dict[str, Any] | None:
            for line in server.log().splitlines():
                if request_id in line and line.startswith("{"):
                    return dict(json.loads(line))
            return None

        entry = wait_for(logged, 10, what="a JSON log line with the request id")
        assert entry["requestId"] == request_id and entry["level"] == "debug" and "listSession" in entry["message"]
    finally:
        server.stop()
