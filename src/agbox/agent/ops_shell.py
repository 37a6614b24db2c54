"""The ``shell`` op: run a command in its own process group with a deadline and bounded output."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from typing import Any

from common import Ctx, OpError, require_str

TRUNCATION_MARKER = "\n[agbox: output truncated after {limit} bytes]\n"
# After the main process exits, wait this long for background children to close the pipes.
DRAIN_GRACE_S = 0.05


def _shell() -> list[str]:
    return ["/bin/bash", "-c"] if os.path.exists("/bin/bash") else ["/bin/sh", "-c"]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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

    proc = subprocess.Popen([*_shell(), command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    ctx.on_cancel.append(lambda: _kill_group(proc))
    buffers = {"stdout": bytearray(), "stderr": bytearray()}
    truncated = {"stdout": False, "stderr": False}
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    deadline = time.monotonic() + timeout_ms / 1000
    timed_out = False
    drain_until: float | None = None
    while sel.get_map():
        now = time.monotonic()
        if now >= deadline and not timed_out:
            timed_out = True
            _kill_group(proc)
        if drain_until is None and proc.poll() is not None:
            drain_until = now + DRAIN_GRACE_S
        if drain_until is not None and now >= drain_until:
            break
        wait = min(deadline - now if not timed_out else 0.05, 0.05 if drain_until is None else drain_until - now)
        for key, _ in sel.select(max(wait, 0.001)):
            chunk = os.read(key.fd, 65536)
            name = key.data
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            if stream:
                ctx.emit({"type": name, "chunk": chunk.decode("utf-8", "replace")})
            room = limit - len(buffers[name])
            if room > 0:
                buffers[name] += chunk[:room]
            if len(chunk) > room:
                truncated[name] = True
    sel.close()
    proc.stdout.close()
    proc.stderr.close()
    try:
        exit_code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        exit_code = proc.wait()
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
