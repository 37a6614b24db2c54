"""The unmodified official SDK (agbcloud-sdk 0.12.0 from PyPI) against a real `agbox serve`."""

from __future__ import annotations

import json
import time
from typing import Any

from agb.session_params import CreateSessionParams


def test_official_sdk_session_lifecycle(official: Any) -> None:
    created = official.create(CreateSessionParams(image_id="agb-code-space-1", labels={"suite": "official", "k": "v"}))
    assert created.success, created.error_message
    session = created.session
    try:
        # The LinkUrl route is offered (linkUrl, token, toolList), so tools go over it.
        assert session.link_url and session.token and session.tool_list
        assert session.set_labels({"suite": "official", "k": "w"}).success
        assert session.get_labels().data == {"suite": "official", "k": "w"}
        info = session.info()
        assert info.success and info.data["session_id"] == session.session_id
        status = session.get_status()
        assert status.success and status.status == "RUNNING"
        assert session.keep_alive().success

        raw = session.call_mcp_tool("shell", {"command": "echo hi", "timeout_ms": 5000})
        assert raw.success and json.loads(raw.data)["stdout"] == "hi\n"
        ok = session.command.execute("echo out; echo err >&2", timeout_ms=5000)
        assert ok.success and ok.exit_code == 0 and ok.stdout == "out\n" and ok.stderr == "err\n"
        failed = session.command.execute("exit 4", timeout_ms=5000)
        assert not failed.success and failed.exit_code == 4

        metrics = session.get_metrics()
        assert metrics.success and metrics.metrics.cpu_count >= 1 and metrics.metrics.mem_total > 0
        tools = session.list_mcp_tools()
        assert {"shell", "get_metrics"} <= {t.name for t in tools.tools}
        assert all(t.input_schema.get("type") == "object" for t in tools.tools)

        listed = official.list(labels={"suite": "official", "k": "w"}, page=1, limit=5)
        assert listed.success and session.session_id in listed.session_ids
        got = official.get(session.session_id)
        assert got.success and got.session.session_id == session.session_id
        # A session from get() uses the API route (/mcp) when no image is known; both routes work.
        assert got.session.command.execute("echo again", timeout_ms=5000).stdout == "again\n"
    finally:
        started = time.monotonic()
        deleted = official.delete(session)
    assert deleted.success, deleted.error_message
    assert time.monotonic() - started < 0.9  # the first status poll already sees FINISH
    assert not official.get(session.session_id).success
    assert session.session_id not in official.list(labels={"suite": "official"}).session_ids


def test_official_sdk_tool_calls_on_the_api_route(official_session: Any) -> None:
    # Without linkUrl the SDK posts every tool call to {endpoint}/mcp.
    official_session.link_url = ""
    result = official_session.command.execute("echo via-api; exit 3", timeout_ms=5000)
    assert result.exit_code == 3 and result.stdout == "via-api\n"
    assert official_session.call_mcp_tool("shell", {"command": "true", "timeout_ms": 5000}).success


def test_official_sdk_errors(official: Any) -> None:
    bad_image = official.create(CreateSessionParams(image_id="agb-nope"))
    assert not bad_image.success and "agb-nope" in bad_image.error_message
    missing = official.get("session-0000")
    assert not missing.success and "not found" in missing.error_message
