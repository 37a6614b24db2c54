"""The Session API through our SDK, in both modes (HTTP against `agbox serve`, and embedded)."""

from __future__ import annotations

import json
from typing import Any

from agbox import AGB, CreateSessionParams


def test_create_labels_info_status_and_delete(agb: AGB, make_session: Any) -> None:
    session = make_session(labels={"team": "core", "run": "1"})
    assert session.session_id.startswith("session-")
    assert session.get_labels().data == {"team": "core", "run": "1"}

    assert session.set_labels({"team": "edge", "extra": "yes"}).success
    assert session.get_labels().data == {"team": "edge", "extra": "yes"}

    info = session.info()
    assert info.success and info.data["session_id"] == session.session_id
    assert info.data["resource_url"]

    status = session.get_status()
    assert status.success and status.status == "RUNNING"
    assert session.keep_alive().success

    deleted = session.delete()
    assert deleted.success, deleted.error_message
    after = agb.get(session.session_id)
    assert not after.success and "not found" in after.error_message


def test_label_validation_messages_match_the_official_sdk(make_session: Any) -> None:
    session = make_session()
    assert session.set_labels({}).error_message == "Labels cannot be empty. Please provide at least one label."
    assert "array" in session.set_labels([]).error_message  # type: ignore[arg-type]
    assert "keys cannot be empty" in session.set_labels({" ": "v"}).error_message
    assert "values cannot be empty" in session.set_labels({"k": " "}).error_message


def test_shell_command_results(make_session: Any) -> None:
    session = make_session()
    ok = session.command.execute("echo hello; echo oops >&2", timeout_ms=5000)
    assert ok.success and ok.exit_code == 0
    assert ok.stdout == "hello\n" and ok.stderr == "oops\n"

    failed = session.command.execute("exit 7", timeout_ms=5000)
    assert not failed.success and failed.exit_code == 7

    env = session.command.execute("echo $GREETING; pwd", timeout_ms=5000, cwd="/tmp", envs={"GREETING": "hi"})
    assert env.stdout == "hi\n/tmp\n"

    raw = session.call_mcp_tool("shell", {"command": "id -un; hostname", "timeout_ms": 5000})
    assert raw.success
    assert json.loads(raw.data)["stdout"] == "user\nsandbox\n"


def test_shell_timeout_kills_the_process_group(make_session: Any) -> None:
    session = make_session()
    result = session.command.execute("sleep 30 & sleep 30; echo never", timeout_ms=300)
    assert not result.success and result.exit_code == 124
    assert "timed out" in result.stderr
    # Both sleeps were in the killed group: nothing of them is left.
    left = session.command.execute("pgrep -c sleep || true", timeout_ms=5000)
    assert left.stdout.strip() == "0"


def test_flooding_output_is_truncated_with_a_marker(make_session: Any) -> None:
    session = make_session()
    result = session.command.execute("head -c 50000000 /dev/zero | tr '\\0' x", timeout_ms=30000)
    assert result.exit_code == 0
    assert "output truncated" in result.stdout
    assert len(result.stdout) < 5 * 1024 * 1024


def test_metrics_come_from_the_kernel(make_session: Any) -> None:
    session = make_session()
    session.command.execute("head -c 20000000 /dev/urandom > /tmp/blob", timeout_ms=20000)
    result = session.get_metrics()
    assert result.success, result.error_message
    metrics = result.metrics
    assert metrics is not None
    assert metrics.cpu_count >= 1
    assert 0 <= metrics.cpu_used_pct <= 100
    assert metrics.mem_total == 1024 * 1024 * 1024
    assert 0 < metrics.mem_used < metrics.mem_total
    # The session's own ext4 layer of 2 GiB: its usable size, less the filesystem's own metadata.
    assert 0.95 * 2048 * 1024 * 1024 <= metrics.disk_total <= 2048 * 1024 * 1024
    assert metrics.disk_used >= 20_000_000  # the blob lives on the session's own root
    assert metrics.timestamp


def test_list_filters_by_labels_and_pages(agb: AGB, make_session: Any) -> None:
    tag = make_session().session_id[-6:]
    made = [make_session(labels={"suite": tag, "n": str(i % 2)}) for i in range(3)]
    all_ids = {s.session_id for s in made}

    listed = agb.list(labels={"suite": tag})
    assert listed.success and set(listed.session_ids) == all_ids and listed.total_count == 3
    odd = agb.list(labels={"suite": tag, "n": "1"})
    assert set(odd.session_ids) == {made[1].session_id}

    first = agb.list(labels={"suite": tag}, page=1, limit=2)
    second = agb.list(labels={"suite": tag}, page=2, limit=2)
    assert len(first.session_ids) == 2 and len(second.session_ids) == 1
    assert set(first.session_ids) | set(second.session_ids) == all_ids
    beyond = agb.list(labels={"suite": tag}, page=3, limit=2)
    assert not beyond.success and "No more pages" in beyond.error_message

    made[0].delete()
    assert made[0].session_id not in agb.list(labels={"suite": tag}).session_ids


def test_tools_list_has_real_schemas(make_session: Any) -> None:
    session = make_session()
    tools = {tool.name: tool for tool in session.list_mcp_tools().tools}
    assert {"shell", "get_metrics"} <= set(tools)
    shell = tools["shell"]
    assert shell.input_schema["type"] == "object"
    assert "command" in shell.input_schema["properties"]
    assert shell.input_schema["required"] == ["command"]


def test_bad_input_gives_clear_errors(agb: AGB, make_session: Any) -> None:
    unknown_image = agb.create(CreateSessionParams(image_id="no-such-image"))
    assert not unknown_image.success and "no-such-image" in unknown_image.error_message

    session = make_session()
    wrong_type = session.call_mcp_tool("shell", {"command": 42})
    assert not wrong_type.success and "'command' must be a string" in wrong_type.error_message
    bad_timeout = session.call_mcp_tool("shell", {"command": "true", "timeout_ms": "soon"})
    assert not bad_timeout.success and "timeout_ms" in bad_timeout.error_message
    unknown_tool = session.call_mcp_tool("no_such_tool", {})
    assert not unknown_tool.success and "no_such_tool" in unknown_tool.error_message

    huge = session.set_labels({f"k{i}": "v" for i in range(500)})
    assert not huge.success and "too many labels" in huge.error_message
    assert session.get_labels().data == {}  # nothing was half-applied

    session.delete()
    dead = session.command.execute("echo hi")
    assert not dead.success and "not found" in dead.error_message
    assert not session.get_metrics().success
    assert not agb.get("session-doesnotexist").success


def test_image_limits_can_be_overridden_by_the_operator(tmp_path: Any) -> None:
    from agbox.images import ImageCatalog

    (tmp_path / "small.toml").write_text(
        'id = "agb-code-space-1"\ntool_sets = ["shell"]\n[limits]\nmemory_mb = 64\ncpus = 0.5\npids = 32\n')
    image = ImageCatalog(extra_dir=tmp_path).get("agb-code-space-1")
    assert image.limits.memory_bytes == 64 * 1024 * 1024 and image.limits.pids == 32
    assert image.tool_sets == ("shell",)
    assert ImageCatalog(extra_dir=tmp_path).get("agb-code-space-2").limits.pids == 512
