"""Pseudo-terminals: ``pty_open`` runs a program on a new terminal and streams what it draws until it
exits; ``pty_input``, ``pty_resize`` and ``pty_signal`` act on a running terminal by its id (the pid
of the program, which leads its own session and process group)."""

from __future__ import annotations

import base64
import errno
import fcntl
import os
import select
import signal
import struct
import termios
import threading
import time
from typing import Any

from common import Ctx, OpError

READ_CHUNK = 65536
# After the program exits, output still in the terminal's buffer is read for at most this long (a
# background child that keeps the terminal open must not keep the call alive).
DRAIN_GRACE_S = 0.2
MAX_DIMENSION = 1000

_terminals: dict[int, int] = {}
_terminals_lock = threading.Lock()


def _dimension(args: dict[str, Any], key: str, default: int) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DIMENSION:
        raise OpError("invalid", f"'{key}' must be an integer from 1 to {MAX_DIMENSION}")
    return value


def _set_size(fd: int, cols: int, rows: int) -> None:
    # The kernel sends SIGWINCH to the terminal's foreground process group when the size changes.
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _terminal(args: dict[str, Any]) -> tuple[int, int]:
    pid = args.get("pty_id")
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise OpError("invalid", "'pty_id' must be an integer")
    with _terminals_lock:
        fd = _terminals.get(pid)
    if fd is None:
        raise OpError("not_found", f"no running terminal {pid}")
    return pid, fd


def pty_open(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    argv = args.get("argv") or (["/bin/bash", "-l"] if os.path.exists("/bin/bash") else ["/bin/sh"])
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise OpError("invalid", "'argv' must be a non-empty list of strings")
    cols, rows = _dimension(args, "cols", 80), _dimension(args, "rows", 24)
    cwd = args.get("cwd") or os.environ.get("HOME") or "/"
    if not isinstance(cwd, str) or not os.path.isdir(cwd):
        raise OpError("invalid", f"cwd does not exist or is not a directory: {cwd}")
    envs = args.get("envs") or {}
    if not isinstance(envs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in envs.items()):
        raise OpError("invalid", "'envs' must map strings to strings")
    env = {**os.environ, "TERM": "xterm-256color", **envs}

    pid, fd = os.forkpty()
    if pid == 0:  # the child: only exec (the agent has threads; nothing else is safe after fork)
        try:
            # Python's own dispositions (SIGINT raises, SIGPIPE ignored) must not reach the program.
            for number in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(number, signal.SIG_DFL)
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)  # noqa: S606 - argv is the user's program, run as asked
        except OSError as exc:
            os.write(2, f"agbox: cannot run {argv[0]}: {exc.strerror}\r\n".encode())
        finally:
            os._exit(127)
    # forkpty's child makes itself a session leader only after the fork returns here: signals sent to
    # its process group before that would find no group. Wait (bounded) until it leads its own.
    settle_until = time.monotonic() + 2.0
    while time.monotonic() < settle_until:
        try:
            if os.getsid(pid) == pid:
                break
        except ProcessLookupError:
            break
        time.sleep(0.001)
    _set_size(fd, cols, rows)
    with _terminals_lock:
        _terminals[pid] = fd

    def hang_up() -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    ctx.on_cancel.append(hang_up)
    ctx.emit({"type": "started", "pty_id": pid})
    status: int | None = None
    drain_until: float | None = None
    try:
        while True:
            if status is None:
                done, code = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = code
                    drain_until = time.monotonic() + DRAIN_GRACE_S
            if drain_until is not None and time.monotonic() >= drain_until:
                break
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(fd, READ_CHUNK)
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: every holder of the terminal's other end closed it
                    raise
                chunk = b""
            if not chunk:
                if status is None:
                    _, status = os.waitpid(pid, 0)
                break
            ctx.emit({"type": "output", "data": base64.b64encode(chunk).decode("ascii")})
    finally:
        with _terminals_lock:
            _terminals.pop(pid, None)
        os.close(fd)
        if status is None:
            hang_up()
            _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return {"exit_code": 128 + number, "signal": signal.Signals(number).name}
    return {"exit_code": os.WEXITSTATUS(status), "signal": None}


def pty_input(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    _, fd = _terminal(args)
    data = args.get("data")
    if not isinstance(data, str):
        raise OpError("invalid", "'data' must be base64 text")
    try:
        payload = base64.b64decode(data, validate=True)
    except ValueError:
        raise OpError("invalid", "'data' is not valid base64") from None
    view = memoryview(payload)
    while view:
        _, writable, _ = select.select([], [fd], [], 5.0)
        if not writable:
            raise OpError("timeout", "the terminal does not accept input (its program is not reading)")
        view = view[os.write(fd, view):]
    return {"written": len(payload)}


def pty_resize(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    _, fd = _terminal(args)
    cols, rows = _dimension(args, "cols", 80), _dimension(args, "rows", 24)
    _set_size(fd, cols, rows)
    return {"cols": cols, "rows": rows}


def pty_signal(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    pid, _ = _terminal(args)
    name = args.get("signal", "SIGKILL")
    try:
        number = signal.Signals[name] if isinstance(name, str) else signal.Signals(name)
    except (KeyError, ValueError):
        raise OpError("invalid", f"unknown signal {name!r}") from None
    try:
        os.killpg(pid, number)
    except ProcessLookupError:
        pass
    return {"signal": number.name}


OPS = {"pty_open": pty_open, "pty_input": pty_input, "pty_resize": pty_resize, "pty_signal": pty_signal}
