"""``session.logs()``: a session's recent tool calls and terminals, through our SDK both ways in
(HTTP and embedded) and its async twin; bad input answered precisely."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from agbox import AGB, AsyncAGB


def test_logs_record_calls_terminals_and_outcomes(agb: AGB, make_session: Callable[..., Any]) -> None:
    session = make_session()
    assert session.logs().entries == []
    assert session.command.execute("echo one").exit_code == 0
    failed = session.call_mcp_tool("read_file", {"path": "/nope/missing"})
    assert not failed.success
    first = session.logs()
    assert first.success and first.status == "RUNNING"
    assert [(e.tool, e.summary, e.ok, e.exit_code) for e in first.entries] == [
        ("shell", "echo one", True, 0), ("read_file", "path=/nope/missing", False, None)]
    assert first.entries[1].error and first.entries[0].duration_ms > 0
    assert first.last_seq == first.entries[-1].seq

    terminal = session.pty.create(["sh", "-c", "exit 4"])
    assert terminal.wait(30).exit_code == 4
    newer = session.logs(after_seq=first.last_seq)
    assert [(e.tool, e.summary, e.exit_code, e.ok) for e in newer.entries] == [
        ("terminal", "sh -c 'exit 4'", 4, False)]

    async def from_async() -> list[str]:
        client = AsyncAGB(api_key=agb.api_key, endpoint=None if agb.embedded else agb.endpoint,
                          data_dir=agb.endpoint.removeprefix("embedded:") if agb.embedded else None)
        try:
            got = await client.get_session_logs(session.session_id)
            assert got.success, got.error_message
            async_session = (await client.get(session.session_id)).session
            again = await async_session.logs(limit=1)
            assert [e.summary for e in again.entries] == [got.entries[-1].summary]
            return [e.tool for e in got.entries]
        finally:
            await client.close()

    assert asyncio.run(from_async())[:2] == ["shell", "read_file"]


def test_logs_refuse_bad_input(agb: AGB) -> None:
    missing = agb.get_session_logs("s-does-not-exist")
    assert not missing.success and "s-does-not-exist" in missing.error_message
    assert "session_id is required" in agb.get_session_logs("").error_message
    response = agb._backend.call("getSessionLogs", {"sessionId": "s-x", "afterSeq": "-1"})
    assert response["success"] is False and "afterSeq" in response["message"]
