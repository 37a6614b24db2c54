"""Isolation probes run from inside real sandboxes: host files, the server, other sessions, resources."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from agbox import AGB, CreateSessionParams
from tests.conftest import ServerProcess


@pytest.fixture
def pair(server: ServerProcess) -> Any:
    agb = AGB(api_key=server.api_key, endpoint=server.endpoint)
    sessions = [agb.create(CreateSessionParams(image_id="agb-code-space-1")).session for _ in range(2)]
    yield sessions
    for session in sessions:
        session.delete()
    agb.close()


def sh(session: Any, command: str, timeout_ms: int = 10000) -> Any:
    return session.command.execute(command, timeout_ms=timeout_ms)


def test_host_secrets_and_files_are_not_visible(pair: Any, server: ServerProcess) -> None:
    a, _ = pair
    assert "No such file" in sh(a, "cat /etc/shadow").stderr
    assert "No such file" in sh(a, "ls /root").stderr
    assert "No such file" in sh(a, f"ls {server.data_dir}").stderr
    assert "No such file" in sh(a, "ls /run/agbox").stderr
    passwd = sh(a, "cat /etc/passwd").stdout
    assert "user:x:1000" in passwd and "cloudsdk" not in passwd
    assert sh(a, "ls /home").stdout.split() == ["user"]
    write = sh(a, "touch /usr/evil")
    assert write.exit_code != 0 and "Read-only file system" in write.stderr
    assert sh(a, "touch /etc/evil").exit_code != 0
    assert not Path("/usr/evil").exists()


def test_the_server_and_other_sessions_are_unreachable(pair: Any, server: ServerProcess) -> None:
    a, b = pair
    probe = (f"python3 -c \"import socket; s=socket.socket(); s.settimeout(2); "
             f"print(s.connect_ex(('127.0.0.1', {server.port})))\"")
    result = sh(a, probe)
    assert result.stdout.strip() == str(111)  # ECONNREFUSED: its own loopback has nothing there
    assert sh(a, "cat /proc/net/dev | grep -c :").stdout.strip() == "2"  # lo and its own veth (tests/runtime/test_network.py)
    # Session b's files and processes do not exist for a.
    sh(b, "echo secret > /home/user/b.txt; sleep 300 >/dev/null 2>&1 &")
    assert "No such file" in sh(a, "cat /home/user/b.txt").stderr
    assert "sleep" not in sh(a, "ps -eo comm").stdout
    assert sh(a, "ps -e --no-headers | wc -l").stdout.strip() in {"3", "4", "5"}  # init, agent, shell, ps
    # Processes run as an unprivileged host uid.
    uids = {Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]
            for pid in os.listdir("/proc") if pid.isdigit() and _is_sandbox_agent(pid)}
    assert uids and all(int(uid) >= 200_000 for uid in uids)


def _is_sandbox_agent(pid: str) -> bool:
    # The agent itself, not a launcher (sh/setpriv, briefly root) whose arguments mention it.
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/usr/bin/python3\0-I\0-S\0/opt/agbox/agent/")
    except OSError:
        return False


def test_fork_bomb_and_memory_hog_are_contained(pair: Any, server: ServerProcess) -> None:
    a, b = pair
    bomb = sh(a, "bomb() { bomb | bomb & }; bomb; sleep 2", timeout_ms=4000)
    assert bomb.exit_code != 0 or "fork" in bomb.stderr.lower() or "resource" in bomb.stderr.lower()
    hog = sh(b, "python3 -c \"x = bytearray(3 * 1024**3); print('survived')\"", timeout_ms=20000)
    assert "survived" not in hog.stdout and hog.exit_code != 0
    # The server and the other session still answer; the bombed session recovers after its timeout.
    assert httpx.get(f"{server.endpoint}/health", timeout=5).status_code == 200
    assert sh(b, "echo alive").stdout == "alive\n"
    metrics = json.loads(b.call_mcp_tool("get_metrics", {}).data)
    assert metrics["mem_used"] <= metrics["mem_total"]


def test_kernel_attack_surface_is_narrowed(pair: Any) -> None:
    a, _ = pair
    # seccomp: bpf(2), keyctl(2), io_uring_setup(2) and mount(2) are refused with EPERM.
    probe = ("python3 -c \"import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
             "print([(libc.syscall(n, 0, 0, 0, 0, 0), ctypes.get_errno()) for n in (321, 250, 425, 165)])\"")
    assert sh(a, probe).stdout.strip() == "[(-1, 1), (-1, 1), (-1, 1), (-1, 1)]"
    # No nested user namespaces (and so no private root inside the sandbox).
    nested = sh(a, "unshare -U true")
    assert nested.exit_code != 0
    # Ordinary work still runs.
    assert sh(a, "python3 -c 'import subprocess; print(subprocess.run([\"echo\", \"ok\"], capture_output=True).stdout)'").stdout
