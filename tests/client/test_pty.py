"""Interactive terminals through our SDK (HTTP and embedded): shells, full-screen programs, resize,
Ctrl-C, signals, bad requests, and terminals ending with their session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from agbox.client.pty import terminal_url

CURSES_PROGRAM = """
import curses
def main(screen):
    screen.addstr(5, 10, "agbox-full-screen")
    screen.refresh()
    while screen.getkey() != "q":
        pass
curses.wrapper(main)
"""


def test_login_shell_runs_commands_and_exits(make_session: Callable[..., Any]) -> None:
    session = make_session()
    seen: list[bytes] = []
    terminal = session.pty.create(on_data=seen.append)
    try:
        assert terminal.pid > 1
        terminal.send_input("echo hi-$((40+2)); tty\r")
        assert terminal.wait_for_output("hi-42"), terminal.output
        assert terminal.wait_for_output("/dev/pts/"), terminal.output
        terminal.send_input("exit 7\r")
        ended = terminal.wait(30)
        assert (ended.exit_code, ended.signal) == (7, None)
        assert b"hi-42" in b"".join(seen)
    finally:
        terminal.close()


def test_full_screen_program_and_resize(make_session: Callable[..., Any]) -> None:
    session = make_session()
    terminal = session.pty.create(["python3", "-c", CURSES_PROGRAM], cols=100, rows=30)
    try:
        assert terminal.wait_for_output("agbox-full-screen"), terminal.output
        assert b"\x1b[?1049h" in terminal.output  # switched to the alternate screen, as vim does
        assert b"\x1b[6;11H" in terminal.output  # row 5, column 10 (1-based in the escape)
        terminal.send_input("q")
        assert terminal.wait(30).exit_code == 0
    finally:
        terminal.close()

    shell = session.pty.create(["/bin/bash", "--norc"], cols=100, rows=30)
    try:
        shell.send_input("stty size\r")
        assert shell.wait_for_output("30 100"), shell.output
        shell.resize(132, 43)
        shell.send_input("stty size\r")
        assert shell.wait_for_output("43 132"), shell.output
    finally:
        shell.close()


def test_ctrl_c_and_signals(make_session: Callable[..., Any]) -> None:
    session = make_session()
    sleeper = session.pty.create(["sh", "-c", "echo ready; exec sleep 600"])
    try:
        assert sleeper.wait_for_output("ready")
        sleeper.send_input("\x03")
        assert sleeper.wait(30).signal == "SIGINT"
        assert sleeper.result is not None and sleeper.result.exit_code == 130
    finally:
        sleeper.close()
    other = session.pty.create(["sleep", "600"])
    try:
        other.kill("SIGTERM")
        assert other.wait(30).signal == "SIGTERM"
    finally:
        other.close()


def test_bad_requests_are_refused_clearly(make_session: Callable[..., Any]) -> None:
    session = make_session()
    with pytest.raises(RuntimeError, match="cmd must be"):
        session.pty.create(5)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="cols must be"):
        session.pty.create(["sh"], cols=0)
    with pytest.raises(RuntimeError, match="cwd does not exist"):
        session.pty.create(["sh"], cwd="/nowhere")
    missing = session.pty.create(["no-such-program-x"])
    try:
        ended = missing.wait(30)
        assert ended.exit_code == 127 and b"cannot run no-such-program-x" in missing.output
    finally:
        missing.close()
    # Without the session's token the handshake is refused.
    with pytest.raises(InvalidStatus, match="403"):
        connect(terminal_url(session), open_timeout=10)
    with pytest.raises(InvalidStatus, match="403"):
        connect(terminal_url(session), additional_headers={"X-Access-Token": "wrong"}, open_timeout=10)


def test_terminal_ends_with_its_session(make_session: Callable[..., Any]) -> None:
    session = make_session()
    terminal = session.pty.create(["sleep", "600"])
    try:
        assert session.delete().success
        ended = terminal.wait(30)
        assert ended.exit_code == -1 and "ended" in ended.error_message
    finally:
        terminal.close()
