"""The session's browser: one Chromium, a long-lived child of this agent (so it dies with the sandbox).

The host builds the command line (``agbox.services.chromium``); this module only runs it, waits for
DevTools to listen, reports a crash with the end of Chromium's log, and stops it gracefully.

Ops:
- ``browser_start {argv, env?, ready_timeout_s?}`` → ``{pid, port, path, reused}``. When a browser is
  already running it is kept (``reused: true``), as AGB answers a second init.
- ``browser_status {}`` → ``{running, pid?, port?, path?, exit?, log?}``; ``exit`` describes how the
  last browser ended (``{"code": int}`` or ``{"signal": int}``) and ``log`` is the end of its stderr.
- ``browser_stop {grace_s?}`` → ``{was_running, exit?}``: SIGTERM (Chromium closes its profile and
  flushes cookies), then SIGKILL of its whole process group after ``grace_s`` (and what its helpers need
  to finish writing, up to ``HELPERS_GRACE_S``). A browser that is already closing gets no signal.
- ``browser_prepare {extension_path?, fingerprint_path?}`` → ``{extensions: [dir], fingerprint: text|null}``:
  the facts the host needs to build the command line (directories with a manifest.json, the persisted
  fingerprint file).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import threading
import time
from typing import Any

from common import Ctx, OpError

LISTENING = re.compile(r"DevTools listening on ws://[^:/\s]+:(\d+)(/devtools/browser/[\w-]+)")
LOG_LINES = 40
# Chromium logs its failed D-Bus lookups on every start; they say nothing in a sandbox without D-Bus.
NOISE = ("dbus/", "Failed to connect to the bus", "object_proxy.cc")
MAX_FINGERPRINT_BYTES = 1024 * 1024
HELPERS_GRACE_S = 10.0


class Browser:
    def __init__(self, proc: subprocess.Popen[bytes], profile_dir: str) -> None:
        self.proc = proc
        self.profile_dir = profile_dir
        self.port = 0
        self.path = ""
        self.ready = threading.Event()
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if not self.ready.is_set():
                match = LISTENING.search(line)
                if match:
                    self.port, self.path = int(match.group(1)), match.group(2)
                    self.ready.set()
                    continue
            if line and not any(marker in line for marker in NOISE):
                self.log.append(line[:500])
        # stderr closes when every Chromium process is gone (children inherit it): wake any waiter.
        self.ready.set()

    def running(self) -> bool:
        return self.proc.poll() is None

    def exit_info(self) -> dict[str, int] | None:
        code = self.proc.poll()
        if code is None:
            return None
        return {"signal": -code} if code < 0 else {"code": code}

    def info(self) -> dict[str, Any]:
        return {"pid": self.proc.pid, "port": self.port, "path": self.path}


_lock = threading.Lock()
_browser: Browser | None = None
_last_exit: dict[str, Any] | None = None


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_written(path: Any, changed_after: Any, timeout_s: float = 3.0) -> None:
    """Wait (bounded) until ``path`` was modified at or after ``changed_after`` (a commit the host asked for)."""
    if not isinstance(path, str) or not isinstance(changed_after, (int, float)):
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.stat(path).st_mtime >= changed_after:
                return
        except OSError:
            pass
        time.sleep(0.02)


def _devtools_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _describe_exit(exit_info: dict[str, int] | None) -> str:
    if not exit_info:
        return "exited"
    if "signal" in exit_info:
        sig = exit_info["signal"]
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = " (killed: most likely the session's memory limit)" if sig == signal.SIGKILL else ""
        return f"was killed by signal {name}{hint}"
    if exit_info["code"] == 0:
        return "was closed (a client's Browser.close, or from inside the session)"
    return f"exited with code {exit_info['code']}"


def _forget_dead() -> None:
    """Record how a browser that is no longer running ended (called with the lock held)."""
    global _browser, _last_exit
    if _browser is not None and not _browser.running():
        # The browser process exits before its helpers: the network service may still be writing the
        # cookie database. Let them finish on their own (a SIGKILL now leaves a hot journal that the next
        # Chromium rolls back, losing the cookies), then kill whatever is left.
        _wait_group_gone(_browser.proc.pid, HELPERS_GRACE_S)
        _kill_group(_browser.proc.pid, signal.SIGKILL)
        _browser.reader.join(timeout=1.0)
        _last_exit = {"exit": _browser.exit_info(), "log": "\n".join(_browser.log)}
        _browser = None


def start(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    global _browser
    argv = args.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise OpError("invalid", "'argv' must be a non-empty list of strings")
    extra_env = args.get("env") or {}
    if not isinstance(extra_env, dict):
        raise OpError("invalid", "'env' must be an object")
    timeout_s = float(args.get("ready_timeout_s", 30))
    with _lock:
        _forget_dead()
        if _browser is not None:
            return {**_browser.info(), "reused": True}
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in extra_env.items()})
        for directory in args.get("make_dirs") or []:
            os.makedirs(str(directory), exist_ok=True)
        binary = argv[0]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            raise OpError("browser", f"could not start the browser ({binary}): {exc.strerror or exc}") from None
        profile_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("--user-data-dir=")), "")
        browser = Browser(proc, profile_dir)
        ctx.on_cancel.append(lambda: _kill_group(proc.pid, signal.SIGKILL))
        if not browser.ready.wait(timeout_s) or not browser.port:
            still_running = browser.running()
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
            browser.reader.join(timeout=1.0)
            tail = "\n".join(browser.log)[-2000:] or "no output"
            if still_running:
                raise OpError("browser", f"the browser did not open its DevTools port within {timeout_s:g} s; "
                                         f"its log:\n{tail}")
            raise OpError("browser", f"the browser {_describe_exit(browser.exit_info())} during start; its log:\n{tail}")
        _browser = browser
        return {**browser.info(), "reused": False}


def status(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    with _lock:
        _forget_dead()
        if _browser is not None:
            return {"running": True, **_browser.info()}
        result: dict[str, Any] = {"running": False}
        if _last_exit is not None:
            result.update(_last_exit)
            result["reason"] = _describe_exit(_last_exit.get("exit"))
        return result


def stop(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    global _last_exit
    grace_s = float(args.get("grace_s", 10))
    with _lock:
        _forget_dead()
        browser = _browser
        if browser is None:
            return {"was_running": False}
        proc = browser.proc
        _wait_written(os.path.join(browser.profile_dir, "Default", "Cookies"), args.get("changed_after"))
        # A browser whose DevTools port is already closed is shutting down (a client sent Browser.close):
        # a signal now would cut its last cookie writes short, so it only gets the time to finish.
        if _devtools_open(browser.port):
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
        _forget_dead()
        _last_exit = None  # stopped on request: nothing to report later
        return {"was_running": True, "exit": browser.exit_info()}


def prepare(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    extensions: list[str] = []
    extension_path = args.get("extension_path")
    if isinstance(extension_path, str) and os.path.isdir(extension_path):
        for entry in sorted(os.scandir(extension_path), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(entry.path, "manifest.json")):
                extensions.append(entry.path)
    fingerprint = None
    fingerprint_path = args.get("fingerprint_path")
    if isinstance(fingerprint_path, str) and os.path.isfile(fingerprint_path):
        with open(fingerprint_path, "rb") as handle:
            fingerprint = handle.read(MAX_FINGERPRINT_BYTES).decode("utf-8", "replace")
    return {"extensions": extensions, "fingerprint": fingerprint}


def write_file(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    """Write a small text file the browser set-up produced (the persisted fingerprint), making its folder."""
    path = args.get("path")
    text = args.get("text")
    if not isinstance(path, str) or not path.startswith("/") or not isinstance(text, str):
        raise OpError("invalid", "'path' (absolute) and 'text' are required")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
    return {"path": path}


OPS = {"browser_start": start, "browser_status": status, "browser_stop": stop, "browser_prepare": prepare,
       "browser_write_file": write_file}
