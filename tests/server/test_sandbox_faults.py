"""Real work against a default code space through the official SDK: a 1 GiB file on its disk layer, and
processes killed by the kernel (out of memory, process limit) or by a signal, over every route.

Each route must answer with an error naming the cause (never HTTP 500); a killed agent ends the session
with that cause as its reason; the server logs no traceback. The server here is this module's own, so
its log holds only these scenarios.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, start_server, wait_for

GIB = 1024**3
# A code space with small limits, so that reaching them is quick.
SMALL = "agbox-test-small"
SMALL_IMAGE = f"""id = "{SMALL}"
tool_sets = ["system", "shell", "files", "code"]
[limits]
memory_mb = 128
pids = 64
disk_mb = 128
"""
# Allocates (and touches) 256 MiB: past the small code space's memory limit.
HOG = "x = b'y' * (256 * 1024 * 1024)\nprint('survived')"
KILL_AGENT = ("import os\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try:\n"
              "            cmd = open(f'/proc/{p}/cmdline', 'rb').read()\n        except OSError:\n"
              "            continue\n        if b'/opt/agbox/agent/main.py' in cmd:\n"
              "            os.kill(int(p), 9)\nimport time\ntime.sleep(5)")
ROUTES = ("mcp", "link", "endpoint")


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("faults")
    (root / "images").mkdir()
    (root / "images" / f"{SMALL}.toml").write_text(SMALL_IMAGE)
    proc = start_server(root / "data", extra_env={"AGBOX_IMAGES_DIR": str(root / "images")})
    try:
        yield proc
    finally:
        proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-4000:]


@pytest.fixture
def official(fault_server: ServerProcess) -> Any:
    from agb import AGB as OfficialAGB
    from agb.config import Config

    return OfficialAGB(api_key=fault_server.api_key, cfg=Config(endpoint=fault_server.endpoint, timeout_ms=60000))


@pytest.fixture
def sessions(official: Any) -> Iterator[Any]:
    """``sessions()`` creates a default code space with the official SDK; all are deleted at teardown."""
    from agb.session_params import CreateSessionParams

    made: list[Any] = []

    def make(image_id: str = "agb-code-space-1") -> Any:
        result = official.create(CreateSessionParams(image_id=image_id))
        assert result.success, result.error_message
        made.append(result.session)
        return result.session

    yield make
    for session in made:
        try:
            official.delete(session)
        except Exception:  # an ended session is already gone
            pass


def call(server: ServerProcess, session: Any, route: str, tool: str, args: dict[str, Any]) -> tuple[int, bool, str]:
    """Call a tool over one route; returns (HTTP status, isError, the text a client shows)."""
    if route == "mcp":
        response = httpx.post(f"{server.endpoint}/mcp", headers={"authorization": f"Bearer {server.api_key}"},
                              json={"sessionId": session.session_id, "name": tool, "args": json.dumps(args)},
                              timeout=120)
        body = response.json()
        if not body["success"]:
            return response.status_code, True, str(body["message"])
        return response.status_code, bool(body["data"]["isError"]), str(body["data"]["content"][0]["text"])
    if route == "link":
        response = httpx.post(f"{session.link_url}/callTool", headers={"x-access-token": session.token},
                              json={"tool": tool, "args": args, "requestId": "r1"}, timeout=120)
        if response.status_code != 200:
            return response.status_code, True, response.text
        result = response.json()["data"]["result"]
        return response.status_code, bool(result["isError"]), str(result["content"][0]["text"])
    response = httpx.post(f"{server.endpoint}/sessions/{session.session_id}/mcp",
                          headers={"authorization": f"Bearer {session.token}",
                                   "accept": "application/json, text/event-stream",
                                   "mcp-protocol-version": "2025-11-25"},
                          json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                "params": {"name": tool, "arguments": args}}, timeout=120)
    body = response.json()
    if "error" in body:
        return response.status_code, True, str(body["error"]["message"])
    return response.status_code, bool(body["result"]["isError"]), str(body["result"]["content"][0]["text"])


def test_a_default_code_space_holds_a_1_gib_file(sessions: Any) -> None:
    session = sessions()
    wrote = session.command.execute("dd if=/dev/zero of=/tmp/x bs=1M count=1024 && stat -c %s /tmp/x",
                                    timeout_ms=120_000)
    assert wrote.success, (wrote.error_message, wrote.stderr)
    assert wrote.stdout.strip() == str(GIB)
    back = session.command.execute("cmp -n 1073741824 /tmp/x /dev/zero && wc -c < /tmp/x", timeout_ms=120_000)
    assert back.success and back.stdout.strip() == str(GIB), (back.error_message, back.stderr)
    metrics = session.get_metrics().metrics
    assert metrics.disk_used >= GIB
    assert 1.9 * GIB <= metrics.disk_total <= 2 * GIB  # the layer's size: the 2 GiB limit less ext4's own
    # Past the disk limit space is refused with ENOSPC (tests/runtime writes up to it); the session lives on.
    full = session.command.execute("fallocate -l 1500M /home/user/y", timeout_ms=30_000)
    assert not full.success and "No space left on device" in full.stderr
    assert session.command.execute("rm /home/user/y /tmp/x && echo alive", timeout_ms=10_000).stdout == "alive\n"


def test_out_of_memory_is_named_over_every_route(fault_server: ServerProcess, sessions: Any) -> None:
    session = sessions(SMALL)
    for route in ROUTES:
        status, is_error, text = call(fault_server, session, route, "shell",
                                      {"command": f"python3 -c \"{HOG}\"", "timeout_ms": 60_000})
        assert status == 200 and is_error, (route, status, text)
        assert "out of memory: the sandbox reached its 128 MiB memory limit" in text, (route, text)
        assert "survived" not in text
    # The official SDK shows it (LinkUrl route) for a command and for code, streamed or not.
    command = session.command.execute(f"python3 -c \"{HOG}\"", timeout_ms=60_000)
    assert not command.success and "out of memory" in command.error_message
    code = session.code.run(HOG, "python", timeout_s=60)
    assert not code.success and "out of memory" in code.error_message
    errors: list[Any] = []
    streamed = session.code.run(HOG, "python", timeout_s=60, stream_beta=True, on_error=errors.append)
    assert not streamed.success and "out of memory" in streamed.error_message
    assert errors and "out of memory" in errors[-1]["message"]
    # The session recovered: the killed process was the hog, not the agent.
    assert session.command.execute("echo alive", timeout_ms=10_000).stdout == "alive\n"


def test_a_killed_agent_ends_the_session_with_its_cause(fault_server: ServerProcess, sessions: Any) -> None:
    expected = f"the sandbox's agent was killed by signal 9 ({signal.SIGKILL.name})"
    for route in ROUTES:
        session = sessions()
        status, is_error, text = call(fault_server, session, route, "run_code",
                                      {"code": KILL_AGENT, "language": "python", "timeout_s": 30})
        assert status == 200 and is_error, (route, status, text)
        assert f"the session has ended: {expected}" in text, (route, text)
        # Later calls: the session is gone, and says why.

        def ended(s: Any = session) -> str:
            later = call(fault_server, s, "mcp", "shell", {"command": "echo hi"})
            return later[2] if "not found" in later[2] else ""

        message = wait_for(ended, 20, what="the session to end")
        assert expected in message
    session = sessions()
    errors: list[Any] = []
    streamed = session.code.run(KILL_AGENT, "python", timeout_s=30, stream_beta=True, on_error=errors.append)
    assert not streamed.success and expected in streamed.error_message


def test_a_fork_bomb_is_named_and_contained(fault_server: ServerProcess, sessions: Any) -> None:
    session = sessions(SMALL)
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 1"
    for route in ROUTES:
        status, _, text = call(fault_server, session, route, "shell", {"command": bomb, "timeout_ms": 1500})
        assert status == 200, (route, status, text)
        assert "process limit: the sandbox reached its limit of 64 processes" in text, (route, text)
        # Let the bomb's survivors die down (they exit as soon as forks fail), then the session works.
        wait_for(lambda: call(fault_server, session, "mcp", "shell",
                              {"command": "echo alive"})[2].startswith('{"stdout": "alive'), 30,
                 what="the session to answer after the bomb")
