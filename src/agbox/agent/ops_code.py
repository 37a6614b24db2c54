"""The ``run_code`` op: Python in a persistent per-session IPython shell, JavaScript in a persistent
Node.js REPL evaluator (ES-module code, Java and R in a fresh process per call). Output is streamed as
``{"type": "stdout"|"stderr", "chunk"}`` and ``{"type": "result", "result": {mime: value, "isMainResult":
bool}}`` events when asked."""

from __future__ import annotations

import codecs
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable

from common import Ctx, OpError, require_str

PYTHON = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_WORKER = os.path.join(HERE, "code_worker.py")
JS_WORKER = os.path.join(HERE, "js_worker.js")
# After SIGINT, how long running code has to stop before its interpreter is killed.
INTERRUPT_GRACE_S = 2.0
# How long a fresh interpreter may take to start (IPython's import) before the run gives up (the tool
# call allows its timeout plus 30 s).
STARTUP_TIMEOUT_S = 20.0
# JavaScript with static `import`/`export` is an ES module: it runs in a fresh process, not in the REPL.
ES_MODULE = re.compile(r"^\s*(import\s[^(]|export\s)", re.M)
POLL_S = 0.05
DEFAULT_MAX_OUTPUT = 4 * 1024 * 1024
LANGUAGES = ("python", "javascript", "java", "r")
ALIASES = {"py": "python", "python3": "python", "js": "javascript", "node": "javascript", "nodejs": "javascript"}


class Output:
    """stdout/stderr of one execution: decoded incrementally, bounded, streamed when asked."""

    def __init__(self, ctx: Ctx, stream: bool, limit: int) -> None:
        self.ctx = ctx
        self.stream = stream
        self.limit = limit
        self.chunks: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.sizes = {"stdout": 0, "stderr": 0}
        self.truncated = False
        self.results: list[dict[str, Any]] = []
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in self.chunks}

    def data(self, name: str, raw: bytes, final: bool = False) -> None:
        text = self._decoders[name].decode(raw, final)
        if not text:
            return
        room = self.limit - self.sizes[name]
        if room <= 0:
            self.truncated = True
            return
        if len(text) > room:
            text = text[:room]
            self.truncated = True
        self.sizes[name] += len(text)
        self.chunks[name].append(text)
        if self.stream:
            self.ctx.emit({"type": name, "chunk": text})

    def result(self, bundle: dict[str, Any], main: bool) -> None:
        item = dict(bundle)
        item["isMainResult"] = main
        self.results.append(item)
        if self.stream:
            self.ctx.emit({"type": "result", "result": item})

    def finish(self) -> None:
        for name in self.chunks:
            self.data(name, b"", final=True)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _python_command(req_fd: int, resp_fd: int) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    env.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "agbox-matplotlib"))
    # IPython's profile directory: out of the user's home, like matplotlib's cache.
    env.setdefault("IPYTHONDIR", os.path.join(tempfile.gettempdir(), "agbox-ipython"))
    env["PYTHONUNBUFFERED"] = "1"
    return [PYTHON, "-u", PYTHON_WORKER, str(req_fd), str(resp_fd)], env


def _node_command(req_fd: int, resp_fd: int) -> tuple[list[str], dict[str, str]]:
    node = shutil.which("node")
    if node is None:
        raise OpError("unavailable", "language javascript is not available in this image (node is not installed)")
    return [node, JS_WORKER, str(req_fd), str(resp_fd)], dict(os.environ)


class Kernel:
    """One long-lived interpreter (code_worker.py: IPython; js_worker.js: Node's REPL) speaking the
    worker protocol; executions run one at a time, in one namespace, started on first use."""

    def __init__(self, label: str, command: Callable[[int, int], tuple[list[str], dict[str, str]]]) -> None:
        self.label = label
        self.command = command
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.req_fd = -1
        self.resp_fd = -1
        self.count = 0

    def _start(self) -> subprocess.Popen[bytes]:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        try:
            argv, env = self.command(req_r, resp_w)
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(req_r, resp_w), start_new_session=True, env=env)
        except BaseException:
            os.close(req_w)
            os.close(resp_r)
            raise
        finally:
            os.close(req_r)
            os.close(resp_w)
        self.proc, self.req_fd, self.resp_fd = proc, req_w, resp_r
        return proc

    def _stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
        for fd in (self.req_fd, self.resp_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
        self.proc = None

    def _acquire(self, ctx: Ctx, deadline: float) -> bool:
        while not ctx.cancelled.is_set() and time.monotonic() < deadline:
            if self.lock.acquire(timeout=POLL_S):
                return True
        return False

    def run(self, code: str, timeout_s: float, ctx: Ctx, out: Output) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + timeout_s
        if not self._acquire(ctx, deadline):
            status = "cancelled" if ctx.cancelled.is_set() else "timeout"
            return {"status": status, "execution_count": self.count, "error": {
                "name": "TimeoutError" if status == "timeout" else "KeyboardInterrupt",
                "value": f"the {self.label} session was busy with another execution", "traceback": ""}}
        try:
            return self._run_locked(code, timeout_s, deadline, ctx, out)
        finally:
            self.lock.release()

    def _run_locked(self, code: str, timeout_s: float, deadline: float, ctx: Ctx, out: Output) -> dict[str, Any]:
        proc = self.proc if self.proc is not None and self.proc.poll() is None else None
        # A fresh interpreter first starts (IPython's import): the execution deadline starts when it is ready.
        starting = proc is None
        if proc is None:
            self._stop()
            proc = self._start()
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
        self.count += 1
        count = self.count
        request = json.dumps({"code": code, "count": count}).encode() + b"\n"
        view = memoryview(request)
        while view:
            view = view[os.write(self.req_fd, view):]
        assert proc.stdout is not None and proc.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        sel.register(self.resp_fd, selectors.EVENT_READ, "resp")
        pending = b""
        done: dict[str, Any] | None = None
        reason = ""
        interrupted_at = 0.0
        killed = False
        try:
            while done is None:
                now = time.monotonic()
                if not reason and (now >= deadline or ctx.cancelled.is_set()):
                    reason = "cancelled" if ctx.cancelled.is_set() else "timeout"
                if reason and starting:
                    killed = True  # nothing of the user's runs yet: no interrupt to wait for
                    break
                if reason and not interrupted_at:
                    interrupted_at = now
                    _kill_group(proc.pid, signal.SIGINT)
                if interrupted_at and now - interrupted_at > INTERRUPT_GRACE_S:
                    killed = True
                    break
                wait = POLL_S if reason else min(max(deadline - now, 0.001), POLL_S)
                eof = False
                for key, _ in sel.select(wait):
                    chunk = os.read(key.fd, 65536)
                    if key.data != "resp":
                        if chunk:
                            out.data(key.data, chunk)
                        else:
                            sel.unregister(key.fileobj)
                        continue
                    if not chunk:
                        eof = True
                        break
                    pending += chunk
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        message = json.loads(line)
                        kind = message.get("type")
                        if kind == "display":
                            out.result(message.get("data") or {}, False)
                        elif kind == "ready":
                            starting = False
                            deadline = time.monotonic() + timeout_s
                        elif kind == "done":
                            done = message
                if eof:
                    break
            # Everything the code printed before "done" is already in the pipes: drain it.
            while done is not None:
                ready = [key for key, _ in sel.select(0) if key.data != "resp"]
                if not ready:
                    break
                for key in ready:
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        out.data(key.data, chunk)
                    else:
                        sel.unregister(key.fileobj)
        finally:
            sel.close()
        if done is None:
            # Interrupt did not work in time, or the interpreter died: its state is gone. What it wrote
            # before dying (an import error at start-up, say) is part of the answer.
            self._drain_and_stop(out)
        out.finish()
        result: dict[str, Any] = {"execution_count": count, "status": "ok"}
        if done is None:
            result["restarted"] = True
            if killed and starting:
                name = "TimeoutError" if reason == "timeout" else "KeyboardInterrupt"
                value = (f"the {self.label} interpreter did not start within {STARTUP_TIMEOUT_S:g} s"
                         if reason == "timeout" else f"execution cancelled while the {self.label} interpreter started")
            elif killed:
                value = (f"execution timed out after {timeout_s:g} s" if reason == "timeout"
                         else "execution cancelled")
                value += "; the interpreter did not stop on interrupt and was restarted (its variables are lost)"
                name = "TimeoutError" if reason == "timeout" else "KeyboardInterrupt"
            elif starting:
                name, value = "DeadKernelError", f"the {self.label} interpreter failed to start; see stderr"
            else:
                name, value = "DeadKernelError", f"the {self.label} interpreter exited; its variables are lost"
            result["status"] = reason or "error"
            result["error"] = {"name": name, "value": value, "traceback": ""}
            return result
        if done.get("exiting"):
            self._stop()  # exit(): the worker is ending by itself; the next run starts a fresh one
        if done.get("main") is not None:
            out.result(done["main"], True)
        error = done.get("error")
        if reason == "timeout":
            error = {"name": "TimeoutError", "value": f"execution timed out after {timeout_s:g} s",
                     "traceback": (error or {}).get("traceback", "")}
        elif reason == "cancelled":
            error = {"name": "KeyboardInterrupt", "value": "execution cancelled",
                     "traceback": (error or {}).get("traceback", "")}
        if error:
            result["error"] = error
            result["status"] = reason or "error"
        return result

    def _drain_and_stop(self, out: Output) -> None:
        proc = self.proc
        if proc is None:
            return
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            # The process is gone: read what it left in the pipe, but not forever (a daemon it started in
            # another process group may still hold the pipe and write).
            os.set_blocking(pipe.fileno(), False)
            try:
                for _ in range(64):
                    chunk = os.read(pipe.fileno(), 65536)
                    if not chunk:
                        break
                    out.data(name, chunk)
            except OSError:
                pass
        self._stop()


KERNELS = {"python": Kernel("Python (IPython)", _python_command),
           "javascript": Kernel("JavaScript (Node.js)", _node_command)}
_COUNTS: dict[str, int] = {}
_counts_lock = threading.Lock()


# ---- other languages: a fresh process per call -----------------------------------------------------

def _java_source(code: str) -> tuple[str, str]:
    """(file name, source) for ``java File.java``; a bare snippet is wrapped in a Main class."""
    if re.search(r"\b(class|interface|enum|record)\s+\w+", code):
        public = re.search(r"\bpublic\s+(?:final\s+|abstract\s+)*class\s+(\w+)", code)
        return (public.group(1) if public else "Main") + ".java", code
    imports, body = [], []
    for line in code.splitlines():
        (imports if re.match(r"\s*import\s+[\w.*]+\s*;\s*$", line) else body).append(line)
    source = "\n".join(imports) + "\npublic class Main {\n"
    source += "    public static void main(String[] args) throws Exception {\n"
    source += "\n".join("        " + line for line in body) + "\n    }\n}\n"
    return "Main.java", source


def _error_from_stderr(language: str, stderr: str, exit_code: int) -> dict[str, str]:
    name, value = "", ""
    if language == "java":
        match = re.search(r'Exception in thread "[^"]*" ([\w.$]+)(?::\s*(.*))?', stderr)
        if match:
            name, value = match.group(1).rsplit(".", 1)[-1], match.group(2) or ""
        elif "error: compilation failed" in stderr:
            first = re.search(r"^\S+\.java:\d+: error: (.*)$", stderr, re.M)
            name, value = "CompilationError", first.group(1) if first else "compilation failed"
    elif language == "javascript":
        match = re.search(r"^(\w*(?:Error|Exception)):\s*(.*)$", stderr, re.M)
        if match:
            name, value = match.group(1), match.group(2)
    elif language == "r":
        match = re.search(r"^Error(?: in .*?)?\s*:\s*(.*)$", stderr, re.M)
        if match:
            name, value = "RError", match.group(1).strip()
    if not name:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        name, value = "ExitError", lines[-1] if lines else ""
    if not value:
        value = f"process exited with code {exit_code}"
    return {"name": name, "value": value, "traceback": stderr}


def _run_process(language: str, code: str, timeout_s: float, ctx: Ctx, out: Output) -> dict[str, Any]:
    binaries = {"javascript": "node", "java": "java", "r": "Rscript"}
    binary = shutil.which(binaries[language])
    if binary is None:
        raise OpError("unavailable", f"language {language} is not available in this image "
                                     f"({binaries[language]} is not installed)")
    with _counts_lock:
        count = _COUNTS[language] = _COUNTS.get(language, 0) + 1
    workdir = tempfile.mkdtemp(prefix="agbox-code-")
    stdin_data: bytes | None = None
    if language == "javascript":
        argv = [binary, "--input-type=module"]
        stdin_data = code.encode()
    elif language == "java":
        name, source = _java_source(code)
        path = os.path.join(workdir, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(source)
        argv = [binary, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto", path]
    else:
        path = os.path.join(workdir, "code.R")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(code)
        argv = [binary, path]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        ctx.on_cancel.append(lambda: _kill_group(proc.pid, signal.SIGKILL))
        if stdin_data is not None:
            assert proc.stdin is not None
            # The runtimes read the whole program before running it, so this cannot deadlock.
            proc.stdin.write(stdin_data)
            proc.stdin.close()
        status = _pump(proc, timeout_s, ctx, out)
        exit_code = proc.wait()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out.finish()
    result: dict[str, Any] = {"execution_count": count, "status": status, "exit_code": exit_code}
    if status == "timeout":
        result["error"] = {"name": "TimeoutError", "value": f"execution timed out after {timeout_s:g} s",
                           "traceback": ""}
    elif status == "cancelled":
        result["error"] = {"name": "KeyboardInterrupt", "value": "execution cancelled", "traceback": ""}
    elif exit_code != 0:
        result["status"] = "error"
        result["error"] = _error_from_stderr(language, "".join(out.chunks["stderr"]), exit_code)
    return result


def _pump(proc: subprocess.Popen[bytes], timeout_s: float, ctx: Ctx, out: Output) -> str:
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    deadline = time.monotonic() + timeout_s
    status = "ok"
    try:
        while sel.get_map():
            now = time.monotonic()
            if status == "ok" and (now >= deadline or ctx.cancelled.is_set()):
                status = "cancelled" if ctx.cancelled.is_set() else "timeout"
                _kill_group(proc.pid, signal.SIGKILL)
            for key, _ in sel.select(min(max(deadline - now, 0.001), POLL_S)):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    out.data(key.data, chunk)
                else:
                    sel.unregister(key.fileobj)
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    return status


# ---- the op ------------------------------------------------------------------------------------------

def run_code(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    code = args.get("code")
    if not isinstance(code, str):
        raise OpError("invalid", "'code' must be a string")
    raw_language = require_str(args, "language").strip().lower()
    language = ALIASES.get(raw_language, raw_language)
    if language not in LANGUAGES:
        raise OpError("invalid", f"Unsupported language: {raw_language}. Supported languages are "
                                 f"{', '.join(sorted(LANGUAGES))}")
    timeout_s = args.get("timeout_s", 60)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise OpError("invalid", "'timeout_s' must be a positive number")
    out = Output(ctx, bool(args.get("stream")), int(args.get("max_output", DEFAULT_MAX_OUTPUT)))
    started = time.monotonic()
    if language == "python" and not os.path.exists(PYTHON):
        raise OpError("unavailable", "language python is not available in this image")
    if language == "python" or (language == "javascript" and not ES_MODULE.search(code)):
        result = KERNELS[language].run(code, float(timeout_s), ctx, out)
    else:
        result = _run_process(language, code, float(timeout_s), ctx, out)
    result["execution_time"] = round(time.monotonic() - started, 6)
    result["language"] = language
    result["results"] = out.results
    # The chunks as read are arbitrary pieces (they were streamed as such); the answer joins them.
    for name in ("stdout", "stderr"):
        text = "".join(out.chunks[name])
        result[name] = [text] if text else []
    if out.truncated:
        result["truncated"] = True
    return result


OPS = {"run_code": run_code}
