"""The ``shell`` op: run a command in its own process group with a deadline and bounded output."""

from __future__ import annotations

# Loaded in every sandbox right after its agent is ready, so its imports are part of every sandbox
# start's CPU: the command is started with os.posix_spawn (a vfork in glibc) and watched with
# select.poll, not with subprocess/selectors/signal (their imports cost about as much CPU as the
# interpreter's own start: subprocess pulls in locale, re and enum).
import os
import select
import time

from common import OpError, require_str

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from common import Ctx

TRUNCATION_MARKER = "\n[agbox: output truncated after {limit} bytes]\n"
# After the main process exits, wait this long for background children to close the pipes.
DRAIN_GRACE_S = 0.05
SIGKILL = 9
# Python ignores SIGPIPE and SIGXFSZ; a command starts with their default actions (as subprocess does).
RESET_SIGNALS = (13, 25)
ENV = "/usr/bin/env"


def _shell() -> list[str]:
    return ["/bin/bash", "-c"] if os.path.exists("/bin/bash") else ["/bin/sh", "-c"]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, SIGKILL)
    except ProcessLookupError:
        pass


def _spawn(argv: list[str], cwd: str | None, env: dict[str, str]) -> tuple[int, int, int]:
    """Start ``argv`` as the leader of a new session (its own process group) with stdin from /dev/null and
    stdout/stderr on new pipes; returns (pid, stdout read end, stderr read end). posix_spawn cannot change
    directory, so a command with a cwd starts through ``env -C``. Only the three standard fds reach the
    command: every other fd of the agent is close-on-exec (Python's default)."""
    if cwd is not None:
        argv = [ENV, "-C", cwd, "--", *argv]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = os.posix_spawn(argv[0], argv, env, setsid=True, setsigdef=RESET_SIGNALS, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ])
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return pid, out_r, err_r


def _wait_exit(pid: int, timeout_s: float) -> int:
    """The command's exit code once it ends (its pipes are closed by now, so usually at once); the group is
    killed if it has not ended within ``timeout_s``."""
    pidfd = os.pidfd_open(pid)
    try:
        exited = select.poll()
        exited.register(pidfd, select.POLLIN)
        if not exited.poll(timeout_s * 1000):
            _kill_group(pid)
    finally:
        os.close(pidfd)
    code = _exit_status(pid, block=True)
    assert code is not None
    return code


def _exit_status(pid: int, block: bool) -> int | None:
    """The command's exit code (negative: killed by that signal), or None while it runs."""
    done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def run_shell(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    command = require_str(args, "command")
    timeout_ms = args.get("timeout_ms", 60000)
    if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms <= 0:
        raise OpError("invalid", "'timeout_ms' must be a positive integer")
    limit = int(args.get("max_output", 4 * 1024 * 1024))
    cwd = args.get("cwd") or None
    if cwd is not None and not os.path.isdir(cwd):
        raise OpError("invalid", f"cwd does not exist or is not a directory: {cwd}")
    env = dict(os.environ)
    envs = args.get("envs") or {}
    if not isinstance(envs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in envs.items()):
        raise OpError("invalid", "'envs' must map strings to strings")
    env.update(envs)
    stream = bool(args.get("stream"))

    pid, out_r, err_r = _spawn([*_shell(), command], cwd, env)
    ctx.on_cancel.append(lambda: _kill_group(pid))
    buffers = {"stdout": bytearray(), "stderr": bytearray()}
    truncated = {"stdout": False, "stderr": False}
    names = {out_r: "stdout", err_r: "stderr"}
    poller = select.poll()
    for fd in names:
        poller.register(fd, select.POLLIN)
    open_fds = set(names)
    deadline = time.monotonic() + timeout_ms / 1000
    timed_out = False
    exit_code: int | None = None
    drain_until: float | None = None
    while open_fds:
        now = time.monotonic()
        if now >= deadline and not timed_out:
            timed_out = True
            _kill_group(pid)
        if drain_until is None and exit_code is None:
            exit_code = _exit_status(pid, block=False)
            if exit_code is not None:
                drain_until = now + DRAIN_GRACE_S
        if drain_until is not None and now >= drain_until:
            break
        wait = min(deadline - now if not timed_out else 0.05, 0.05 if drain_until is None else drain_until - now)
        for fd, _ in poller.poll(max(wait, 0.001) * 1000):
            chunk = os.read(fd, 65536)
            name = names[fd]
            if not chunk:
                poller.unregister(fd)
                open_fds.discard(fd)
                continue
            if stream:
                ctx.emit({"type": name, "chunk": chunk.decode("utf-8", "replace")})
            room = limit - len(buffers[name])
            if room > 0:
                buffers[name] += chunk[:room]
            if len(chunk) > room:
                truncated[name] = True
    os.close(out_r)
    os.close(err_r)
    if exit_code is None:
        exit_code = _wait_exit(pid, 5.0)
    result: dict[str, Any] = {}
    for name in ("stdout", "stderr"):
        text = buffers[name].decode("utf-8", "replace")
        if truncated[name]:
            text += TRUNCATION_MARKER.format(limit=limit)
        result[name] = text
    if timed_out:
        exit_code = 124
        result["stderr"] += f"\n[agbox: command timed out after {timeout_ms} ms; its process group was killed]\n"
    elif ctx.cancelled.is_set():
        result["stderr"] += "\n[agbox: command cancelled]\n"
    result["exit_code"] = exit_code if exit_code >= 0 else 128 - exit_code
    result["timed_out"] = timed_out
    result["truncated"] = truncated["stdout"] or truncated["stderr"]
    return result


OPS = {"shell": run_shell}
