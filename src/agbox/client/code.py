"""``session.code``: run code (tool ``run_code``), or stream it over the session WebSocket."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agbox.client.results import ApiResponse

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

    from agbox.client.session import Session

LANGUAGE_ALIASES = {"py": "python", "python3": "python", "js": "javascript", "node": "javascript",
                    "nodejs": "javascript"}
SUPPORTED_LANGUAGES = ("java", "javascript", "python", "r")
DEFAULT_STREAM_TARGET = "wuying_codespace"
# How long past the execution timeout the client waits for the server's answer.
CLIENT_GRACE_S = 60.0


@dataclasses.dataclass
class ExecutionResult:
    text: str | None = None
    html: str | None = None
    markdown: str | None = None
    png: str | None = None
    jpeg: str | None = None
    svg: str | None = None
    json: Any = None
    latex: str | None = None
    chart: Any = None
    is_main_result: bool = False


@dataclasses.dataclass
class ExecutionLogs:
    stdout: list[str] = dataclasses.field(default_factory=list)
    stderr: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ExecutionError:
    name: str = ""
    value: str = ""
    traceback: str = ""


@dataclasses.dataclass
class EnhancedCodeExecutionResult(ApiResponse):
    execution_count: int | None = None
    execution_time: float = 0.0
    logs: ExecutionLogs = dataclasses.field(default_factory=ExecutionLogs)
    results: list[ExecutionResult] = dataclasses.field(default_factory=list)
    error: ExecutionError | None = None
    error_message: str = ""
    success: bool = False

    @property
    def result(self) -> str:
        """The main result's text, else the first result's text, else all of stdout."""
        for item in self.results:
            if item.is_main_result and item.text:
                return item.text
        if self.results and self.results[0].text:
            return self.results[0].text
        return "".join(self.logs.stdout)


def execution_result(mime: dict[str, Any], is_main: bool) -> ExecutionResult:
    return ExecutionResult(
        text=mime.get("text/plain"), html=mime.get("text/html"), markdown=mime.get("text/markdown"),
        png=mime.get("image/png"), jpeg=mime.get("image/jpeg"), svg=mime.get("image/svg+xml"),
        json=mime.get("application/json"), latex=mime.get("text/latex"),
        chart=mime.get("application/vnd.vegalite.v5+json") or mime.get("application/vnd.vegalite.v4+json"),
        is_main_result=is_main)


def parse_run_code(text: str, request_id: str) -> EnhancedCodeExecutionResult:
    """Our tool's JSON (``result``/``stdout``/``stderr``/``error``), or plain text as one main result."""
    try:
        payload = json.loads(text)
    except (TypeError, ValueError):
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("result"), list):
        return EnhancedCodeExecutionResult(request_id=request_id, success=True, logs=ExecutionLogs([text], []),
                                           results=[ExecutionResult(text=text, is_main_result=True)])
    results = [execution_result(item, bool(item.get("isMainResult"))) for item in payload["result"]
               if isinstance(item, dict)]
    error = None
    raw_error = payload.get("error")
    if isinstance(raw_error, dict):
        error = ExecutionError(str(raw_error.get("name", "")), str(raw_error.get("value", "")),
                               str(raw_error.get("traceback", "")))
    elif payload.get("executionError"):
        error = ExecutionError("ExecutionError", str(payload["executionError"]))
    count = payload.get("execution_count")
    return EnhancedCodeExecutionResult(
        request_id=request_id, execution_count=count if isinstance(count, int) else None,
        execution_time=float(payload.get("execution_time") or 0.0),
        logs=ExecutionLogs(list(payload.get("stdout") or []), list(payload.get("stderr") or [])),
        results=results, error=error, error_message=str(payload.get("executionError") or ""),
        success=error is None)


def _failure(message: str, request_id: str = "") -> EnhancedCodeExecutionResult:
    return EnhancedCodeExecutionResult(request_id=request_id, success=False, error_message=message)


def _canonical_language(language: Any) -> str | None:
    raw = "" if language is None else str(language)
    canonical = LANGUAGE_ALIASES.get(raw.strip().lower(), raw.strip().lower())
    return canonical if canonical in SUPPORTED_LANGUAGES else None


class CodeStream:
    """A streamed execution over the session WebSocket: ``wait()`` for the result, ``cancel()`` to stop it."""

    def __init__(self, session: Session, code: str, language: str, timeout_s: int,
                 on_stdout: Callable[[str], None] | None, on_stderr: Callable[[str], None] | None,
                 on_error: Callable[[Any], None] | None) -> None:
        from websockets.sync.client import connect

        self.invocation_id = uuid.uuid4().hex
        self.timeout_s = timeout_s
        self._on_stdout, self._on_stderr, self._on_error = on_stdout, on_stderr, on_error
        self._target = session._tool_server("run_code") or DEFAULT_STREAM_TARGET
        self._send_lock = threading.Lock()
        self._ws: ClientConnection = connect(session.ws_url, additional_headers={"X-Access-Token": session.token},
                                             open_timeout=30, max_size=None)
        self._done = threading.Event()
        self._result = EnhancedCodeExecutionResult(request_id=self.invocation_id, error_message="no answer yet")
        self._send({"method": "run_code", "mode": "stream",
                    "params": {"language": language, "timeoutS": timeout_s, "code": code}})
        # Frames are read (and the callbacks called) on a thread of their own, so the caller may
        # cancel while output is arriving.
        self._reader = threading.Thread(target=self._read, name=f"agbox-code-stream-{self.invocation_id[:8]}",
                                        daemon=True)
        self._reader.start()

    def _send(self, data: dict[str, Any]) -> None:
        frame = {"invocationId": self.invocation_id, "source": "SDK", "target": self._target, "data": data}
        with self._send_lock:
            self._ws.send(json.dumps(frame, ensure_ascii=False))

    def cancel(self) -> None:
        """Interrupt the execution (safe from a callback or another thread); ``wait()`` then returns."""
        try:
            self._send({"method": "cancel"})
        except Exception:  # the socket is already gone: nothing left to cancel
            return

    def wait(self, timeout_s: float | None = None) -> EnhancedCodeExecutionResult:
        """The result, once the server has ended the execution (or the stream failed)."""
        if not self._done.wait(self.timeout_s + CLIENT_GRACE_S if timeout_s is None else timeout_s):
            return EnhancedCodeExecutionResult(request_id=self.invocation_id, success=False,
                                               error_message="timed out waiting for the end of the stream")
        return self._result

    def _read(self) -> None:
        try:
            self._result = self._collect()
        finally:
            self._done.set()

    def _collect(self) -> EnhancedCodeExecutionResult:
        stdout: list[str] = []
        stderr: list[str] = []
        results: list[ExecutionResult] = []
        error: ExecutionError | None = None
        try:
            while True:
                frame = json.loads(self._ws.recv(timeout=self.timeout_s + CLIENT_GRACE_S))
                if not isinstance(frame, dict) or frame.get("invocationId") != self.invocation_id:
                    continue
                data = frame.get("data")
                if isinstance(data, str):
                    data = json.loads(data)
                if not isinstance(data, dict):
                    continue
                phase = data.get("phase")
                if phase == "event":
                    kind = data.get("eventType")
                    chunk = data.get("chunk")
                    if kind == "stdout" and isinstance(chunk, str):
                        stdout.append(chunk)
                        if self._on_stdout is not None:
                            self._on_stdout(chunk)
                    elif kind == "stderr" and isinstance(chunk, str):
                        stderr.append(chunk)
                        if self._on_stderr is not None:
                            self._on_stderr(chunk)
                    elif kind == "result" and isinstance(data.get("result"), dict):
                        item = data["result"]
                        mime = item.get("mime") if isinstance(item.get("mime"), dict) else {}
                        results.append(execution_result(mime, bool(item.get("isMainResult"))))
                    elif kind == "error":
                        raw_error = data.get("error")
                        payload: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
                        error = ExecutionError(str(payload.get("code") or "ExecutionError"),
                                               str(payload.get("message") or ""), str(payload.get("traceback") or ""))
                        if self._on_error is not None:
                            self._on_error(payload)
                elif phase == "end":
                    execution_error = str(data.get("executionError") or "")
                    if execution_error and error is None:
                        error = ExecutionError("ExecutionError", execution_error)
                    ok = error is None and not execution_error and data.get("status") not in ("failed", "cancelled")
                    count = data.get("executionCount")
                    return EnhancedCodeExecutionResult(
                        request_id=self.invocation_id, execution_count=count if isinstance(count, int) else None,
                        execution_time=float(data.get("executionTime") or 0.0), logs=ExecutionLogs(stdout, stderr),
                        results=results, error=error, success=ok,
                        error_message="" if ok else (execution_error or (error.value if error else "failed")))
                else:
                    message = str(data.get("error") or f"unexpected frame phase {phase!r}")
                    if self._on_error is not None:
                        self._on_error(message)
                    return EnhancedCodeExecutionResult(request_id=self.invocation_id, success=False,
                                                       logs=ExecutionLogs(stdout, stderr), results=results,
                                                       error_message=message)
        except Exception as exc:  # transport failures become a failed result, like every SDK call
            if self._on_error is not None:
                self._on_error(exc)
            return EnhancedCodeExecutionResult(request_id=self.invocation_id, success=False,
                                               logs=ExecutionLogs(stdout, stderr), results=results, error=error,
                                               error_message=f"stream failed: {type(exc).__name__}: {exc}")
        finally:
            self.close()

    def close(self) -> None:
        try:
            self._ws.close()
        except Exception:  # closing a broken socket has nothing to report
            return


class Code:
    def __init__(self, session: Session) -> None:
        self.session = session

    def run(self, code: str, language: str, timeout_s: int = 60, stream_beta: bool = False,
            on_stdout: Callable[[str], None] | None = None, on_stderr: Callable[[str], None] | None = None,
            on_error: Callable[[Any], None] | None = None) -> EnhancedCodeExecutionResult:
        """Run ``code``; Python keeps its variables between calls of one session."""
        canonical = _canonical_language(language)
        if canonical is None:
            return _failure(f"Unsupported language: {language}. Supported languages are "
                            f"{', '.join(SUPPORTED_LANGUAGES)}")
        if stream_beta:
            try:
                handle = self.stream(code, canonical, timeout_s, on_stdout, on_stderr, on_error)
            except Exception as exc:  # no socket: a failed result, as the official SDK gives
                if on_error is not None:
                    on_error(exc)
                return _failure(f"stream failed: {type(exc).__name__}: {exc}")
            return handle.wait()
        wait_ms = int((timeout_s + CLIENT_GRACE_S) * 1000)
        result = self.session.call_mcp_tool("run_code", {"code": code, "language": canonical, "timeout_s": timeout_s},
                                            read_timeout=wait_ms, connect_timeout=wait_ms)
        if not result.success:
            return _failure(result.error_message or "Failed to run code", result.request_id)
        return parse_run_code(result.data, result.request_id)

    def stream(self, code: str, language: str, timeout_s: int = 60, on_stdout: Callable[[str], None] | None = None,
               on_stderr: Callable[[str], None] | None = None,
               on_error: Callable[[Any], None] | None = None) -> CodeStream:
        """Start a streamed execution and return its handle (agbox extension; ``run(stream_beta=True)`` uses it)."""
        if not self.session.ws_url or not self.session.token:
            raise RuntimeError("this session has no wsUrl/token for streaming")
        canonical = _canonical_language(language)
        if canonical is None:
            raise ValueError(f"Unsupported language: {language}. Supported languages are "
                             f"{', '.join(SUPPORTED_LANGUAGES)}")
        return CodeStream(self.session, code, canonical, timeout_s, on_stdout, on_stderr, on_error)

