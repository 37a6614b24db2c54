"""The CLI as a user runs it: keys on a real data dir, and create/exec/ls/rm against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agbox.services.keys import KeyService
from agbox.store.sqlite import SqliteStore
from tests.conftest import ServerProcess


def agbox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AGB_", "AGBOX_"))}
    return subprocess.run([sys.executable, "-m", "agbox", *args], capture_output=True, text=True, timeout=60,
                          env={**environ, **(env or {})})


def test_keys_lifecycle(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    data = str(tmp_path / "data")
    made = agbox("keys", "create", "--name", "ci", "--data-dir", data)
    assert made.returncode == 0, made.stderr
    key_id, key = made.stdout.strip().split("\t")
    listed = agbox("keys", "list", "--data-dir", data)
    assert key_id in listed.stdout and "active" in listed.stdout and key not in listed.stdout

    store = SqliteStore(tmp_path / "data" / "agbox.db")
    assert KeyService(store).authenticate(key) == key_id
    store.close()

    assert agbox("keys", "revoke", key_id, "--data-dir", data).returncode == 0
    assert "revoked" in agbox("keys", "list", "--data-dir", data).stdout
    assert agbox("keys", "revoke", key_id, "--data-dir", data).returncode == 1
    store = SqliteStore(tmp_path / "data" / "agbox.db")
    try:
        KeyService(store).authenticate(key)
        raise AssertionError("a revoked key was accepted")
    except Exception as exc:
        assert "revoked" in str(exc)
    store.close()


def test_sessions_list_on_an_empty_data_dir(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    result = agbox("sessions", "list", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0 and result.stdout == ""


def test_data_dir_commands_refuse_a_missing_dir(tmp_path: Path) -> None:
    typo = tmp_path / "dtaa"
    for args in (["sessions", "list"], ["keys", "create"], ["keys", "list"]):
        result = agbox(*args, "--data-dir", str(typo))
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert f"no agbox data dir at {typo}" in result.stderr and result.stdout == ""
    assert not typo.exists()


def test_version() -> None:
    result = agbox("--version")
    assert result.returncode == 0 and result.stdout.startswith("agbox ") and result.stdout.split()[1][0].isdigit()


def test_user_commands_need_an_endpoint() -> None:
    result = agbox("ls")
    assert result.returncode == 2 and "AGB_ENDPOINT" in result.stderr


def test_create_exec_ls_rm_against_a_server(server: ServerProcess) -> None:
    env = {"AGB_ENDPOINT": server.endpoint, "AGB_API_KEY": server.api_key}
    made = agbox("create", "--label", "team=cli", "--label", "run=7", env=env)
    assert made.returncode == 0, made.stderr
    session_id = made.stdout.strip()
    try:
        ran = agbox("exec", session_id, "--", "sh", "-c", "echo out; echo err >&2; exit 3", env=env)
        assert (ran.returncode, ran.stdout, ran.stderr) == (3, "out\n", "err\n")
        assert agbox("exec", session_id, "--", "echo", "it's here", env=env).stdout == "it's here\n"

        listed = agbox("ls", "--label", "team=cli", env=env)
        assert listed.returncode == 0, listed.stderr
        line = next(row for row in listed.stdout.splitlines() if row.startswith(session_id))
        assert "RUNNING" in line and "run=7,team=cli" in line
        assert session_id not in agbox("ls", "--label", "team=other", env=env).stdout

        bad = agbox("exec", "s-nope", "--", "true", env=env)
        assert bad.returncode == 2 and "s-nope" in bad.stderr
        assert agbox("create", "--label", "novalue", env=env).returncode == 2
    finally:
        removed = agbox("rm", session_id, env=env)
    assert removed.returncode == 0 and removed.stdout.strip() == session_id, removed.stderr
    assert session_id not in agbox("ls", env=env).stdout
    assert agbox("rm", session_id, env=env).returncode == 1


def test_shell_is_an_interactive_terminal(server: ServerProcess) -> None:
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    env = {"AGB_ENDPOINT": server.endpoint, "AGB_API_KEY": server.api_key}
    session_id = agbox("create", env=env).stdout.strip()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AGB_", "AGBOX_"))}
    process = subprocess.Popen([sys.executable, "-m", "agbox", "shell", session_id], stdin=slave, stdout=slave,
                               stderr=slave, env={**environ, **env}, start_new_session=True)
    os.close(slave)
    screen = bytearray()

    def read_until(needle: bytes, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in screen:
            assert time.monotonic() < deadline, f"{needle!r} never appeared in {bytes(screen)!r}"
            if select.select([master], [], [], 0.1)[0]:
                try:
                    screen.extend(os.read(master, 65536))
                except OSError:  # the CLI exited and closed the terminal
                    break

    try:
        read_until(b"$ ")  # the session's prompt
        os.write(master, b"stty size; echo ok-$((6*7))\r")
        read_until(b"ok-42")
        assert b"33 111" in screen
        os.write(master, b"exit 5\r")
        assert process.wait(30) == 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(master)
        agbox("rm", session_id, env=env)


def test_cp_in_and_out_of_a_session_with_progress(server: ServerProcess, tmp_path: Path) -> None:
    env = {"AGB_ENDPOINT": server.endpoint, "AGB_API_KEY": server.api_key}
    made = agbox("create", env=env)
    assert made.returncode == 0, made.stderr
    session_id = made.stdout.strip()
    data = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "in.bin").write_bytes(data)
    try:
        up = agbox("cp", "--progress", str(tmp_path / "in.bin"), f"{session_id}:/tmp/d/in.bin", env=env)
        assert up.returncode == 0, up.stderr
        # --progress: one line rewritten in place, ending with the full size and a rate.
        assert "3.0 MiB" in up.stderr and "100.0% of 3.0 MiB" in up.stderr and "MB/s" in up.stderr
        down = agbox("cp", f"{session_id}:/tmp/d/in.bin", str(tmp_path), env=env)
        assert down.returncode == 0 and down.stderr == "", down.stderr  # not a tty: quiet
        assert (tmp_path / "in.bin").read_bytes() == data
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("AGB_", "AGBOX_"))} | env
        stdin = subprocess.run([sys.executable, "-m", "agbox", "cp", "-", f"{session_id}:/tmp/d/t.txt"],
                               input="from a pipe\n", capture_output=True, text=True, timeout=60, env=environ)
        assert stdin.returncode == 0, stdin.stderr
        piped = agbox("cp", f"{session_id}:/tmp/d/t.txt", "-", env=env)
        assert piped.returncode == 0 and piped.stdout == "from a pipe\n", piped.stderr

        missing = agbox("cp", f"{session_id}:/tmp/nope", str(tmp_path / "x"), env=env)
        assert missing.returncode == 1 and "No such file or directory: /tmp/nope" in missing.stderr
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()
        both_local = agbox("cp", str(tmp_path / "in.bin"), str(tmp_path / "y"), env=env)
        assert both_local.returncode == 2 and "between this machine and a session" in both_local.stderr
        unknown = agbox("cp", str(tmp_path / "in.bin"), "s-nope:/tmp/x", env=env)
        assert unknown.returncode == 2 and "s-nope" in unknown.stderr
    finally:
        agbox("rm", session_id, env=env)


def test_logs_shows_a_sessions_calls_to_its_owner_only(server: ServerProcess) -> None:
    import json
    import select
    import time

    import httpx

    env = {"AGB_ENDPOINT": server.endpoint, "AGB_API_KEY": server.api_key}
    session_id = agbox("create", env=env).stdout.strip()
    follower: subprocess.Popen[str] | None = None
    try:
        assert agbox("exec", session_id, "--", "echo", "first", env=env).returncode == 0
        with httpx.Client(base_url=server.endpoint, headers={"authorization": f"Bearer {server.api_key}"}) as http:
            for command in ("sh -c 'exit 3'", "true", "true", "true"):
                http.post("/mcp", json={"sessionId": session_id, "name": "shell",
                                        "args": json.dumps({"command": command})}).raise_for_status()
            # Secrets the caller sent as payloads: file contents and environment values are not kept.
            wrote = http.post("/mcp", json={"sessionId": session_id, "name": "write_file", "args": json.dumps(
                {"path": "/tmp/k.txt", "content": "content-secret-123"})}).json()
            assert wrote["success"] and not wrote["data"]["isError"], wrote
            ran = http.post("/mcp", json={"sessionId": session_id, "name": "shell", "args": json.dumps(
                {"command": "test -n \"$TOKEN\"", "envs": {"TOKEN": "env-secret-456"}})}).json()
            assert ran["success"] and not ran["data"]["isError"], ran

        shown = agbox("logs", session_id, env=env)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert len(lines) == 5, shown.stdout  # the three `true` calls fold into one line
        assert "shell" in lines[0] and "exit 0" in lines[0] and lines[0].endswith("echo first")
        assert "exit 3" in lines[1] and "sh -c 'exit 3'" in lines[1]
        assert lines[2].endswith("true (x3)")
        assert "write_file" in lines[3] and "path=/tmp/k.txt" in lines[3] and "<18 chars>" in lines[3]
        assert "envs={TOKEN}" in lines[4]
        assert "secret" not in shown.stdout

        # Another key's session is "not found", and so is its log.
        made = agbox("keys", "create", "--name", "other", "--data-dir", str(server.data_dir))
        other_key = made.stdout.split("\t")[1].strip()
        refused = agbox("logs", session_id, env={**env, "AGB_API_KEY": other_key})
        assert refused.returncode == 2 and session_id in refused.stderr and "first" not in refused.stdout

        # --follow prints new calls as they come, and ends with the session.
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("AGB_", "AGBOX_"))}
        follower = subprocess.Popen([sys.executable, "-m", "agbox", "logs", "-f", "-n", "1", session_id,
                                     "--interval", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={**environ, **env})
        stream = follower.stdout
        assert stream is not None

        def wait_line(needle: str) -> None:
            deadline = time.monotonic() + 30
            while True:
                assert time.monotonic() < deadline, f"{needle!r} never appeared in the followed log"
                if select.select([stream], [], [], 0.5)[0]:
                    line = stream.readline()
                    assert line, f"agbox logs -f ended early: {follower.stderr.read() if follower.stderr else ''}"
                    if needle in line:
                        return

        wait_line("envs={TOKEN}")  # -n 1: the newest entry first
        assert agbox("exec", session_id, "--", "echo", "while-following", env=env).returncode == 0
        wait_line("while-following")
    finally:
        removed = agbox("rm", session_id, env=env)
        if follower is not None:
            try:
                follower.wait(30)
            finally:
                if follower.poll() is None:
                    follower.kill()
                    follower.wait(10)
    assert removed.returncode == 0 and follower.returncode == 0
    # The log of an ended session stays readable for a while.
    after = agbox("logs", session_id, env=env)
    assert after.returncode == 0 and "while-following" in after.stdout
