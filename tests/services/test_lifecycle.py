"""Session lifecycle against real servers: idle release, keep-alive, lifetime cap, restarts, shutdown."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agbox import AGB, CreateSessionParams
from tests.conftest import ServerProcess, start_server, wait_for


def sandbox_pids(data_dir: Path) -> list[int]:
    """Live processes in the sandbox cgroups of the server that owns ``data_dir`` (zombies left to
    PID 1 after a kill -9 are dead and are not counted)."""
    tag = "agbox-" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:10]
    pids: list[int] = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                if tag in Path(f"/proc/{pid}/cgroup").read_text() and stat[stat.rfind(")") + 2] != "Z":
                    pids.append(int(pid))
            except OSError:
                continue
    return pids


def status_of(session: Any) -> str:
    result = session.get_status()
    return result.status if result.success else "NOT_FOUND"


@pytest.fixture
def own_server(tmp_path: Path) -> Any:
    servers: list[ServerProcess] = []

    def start(**kwargs: Any) -> ServerProcess:
        srv = start_server(tmp_path / "data", **kwargs)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop(signal.SIGKILL)


def test_idle_sessions_are_released_and_status_polls_do_not_count(agb: AGB, make_session: Any) -> None:
    session = make_session(idle_release_timeout=2)
    started = time.monotonic()
    wait_for(lambda: status_of(session) in {"FINISH", "NOT_FOUND"}, 10, 0.1, "idle release")
    assert time.monotonic() - started >= 1.5
    assert not agb.get(session.session_id).success


def test_keep_alive_and_calls_reset_the_idle_timer(make_session: Any) -> None:
    session = make_session(idle_release_timeout=2)
    deadline = time.monotonic() + 4

    def kept_alive_until_deadline() -> bool:
        assert session.keep_alive().success
        return time.monotonic() > deadline

    wait_for(kept_alive_until_deadline, 10, 0.5, "four seconds of keep-alives")
    assert status_of(session) == "RUNNING"
    assert session.command.execute("echo still here").stdout == "still here\n"


def test_a_long_call_is_not_cut_by_the_idle_timer(make_session: Any) -> None:
    session = make_session(idle_release_timeout=1)
    result = session.command.execute("sleep 2.5; echo finished", timeout_ms=10000)
    assert result.success and result.stdout == "finished\n"
    assert status_of(session) == "RUNNING"  # the call's end counted as activity


def test_maximum_lifetime(own_server: Any) -> None:
    srv = own_server(extra_env={"AGBOX_MAX_LIFETIME": "2"})
    agb = AGB(api_key=srv.api_key, endpoint=srv.endpoint)
    session = agb.create(CreateSessionParams(image_id="agb-code-space-1")).session

    def released_despite_activity() -> bool:
        session.keep_alive()
        return status_of(session) in {"FINISH", "NOT_FOUND"}

    wait_for(released_despite_activity, 10, 0.2, "lifetime cap")
    agb.close()


def test_kill_9_then_restart_leaves_nothing_running_and_list_tells_the_truth(own_server: Any) -> None:
    srv = own_server()
    agb = AGB(api_key=srv.api_key, endpoint=srv.endpoint)
    sessions = [agb.create(CreateSessionParams(image_id="agb-code-space-1")).session for _ in range(2)]
    for session in sessions:
        session.command.execute("sleep 600 >/dev/null 2>&1 &")
    assert len(sandbox_pids(srv.data_dir)) >= 4
    srv.stop(signal.SIGKILL)
    wait_for(lambda: not sandbox_pids(srv.data_dir), 10, what="sandboxes to die with the server")

    restarted = own_server(port=srv.port)
    assert agb.list().session_ids == []
    for session in sessions:
        assert status_of(session) == "FINISH"
        assert not session.command.execute("echo hi").success
    listed = subprocess.run([sys.executable, "-m", "agbox", "sessions", "list", "--data-dir", str(srv.data_dir)],
                            capture_output=True, text=True, check=True)
    assert listed.stdout == ""
    fresh = agb.create(CreateSessionParams(image_id="agb-code-space-1"))
    assert fresh.success and fresh.session.command.execute("echo new").stdout == "new\n"
    assert restarted.process.poll() is None
    agb.close()


def test_sigterm_ends_every_sandbox(own_server: Any) -> None:
    srv = own_server()
    agb = AGB(api_key=srv.api_key, endpoint=srv.endpoint)
    for _ in range(3):
        agb.create(CreateSessionParams(image_id="agb-code-space-1")).session.command.execute("sleep 600 &")
    assert sandbox_pids(srv.data_dir)
    assert srv.stop(signal.SIGTERM) == 0
    assert sandbox_pids(srv.data_dir) == []
    tag = hashlib.sha256(str(srv.data_dir.resolve()).encode()).hexdigest()[:10]
    assert not Path(f"/run/agbox/{tag}").exists()
    agb.close()
