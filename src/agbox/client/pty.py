"""``session.pty``: interactive terminals in a session (a program on a pseudo-terminal, over a WebSocket)."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

    from agbox.client.session import Session


@dataclasses.dataclass
class PtyExit:
    exit_code: int
    signal: str | None = None
    error_message: str = ""


def terminal_url(session: Session) -> str:
    """The session's terminal socket: a sibling of its code stream socket (``…/ws/{id}`` → ``…/pty/{id}``)."""
    base, marker, _ = session.ws_url.rpartition("/ws/")
    if not marker:
        raise RuntimeError("this session has no wsUrl; terminals need a server that offers streams")
    return f"{base}/pty/{session.session_id}"


class PtyHandle:
    """A running terminal. Output goes to ``on_data`` (bytes, on a reader thread) and into ``output``."""

    def __init__(self, session: Session, request: dict[str, Any], on_data: Callable[[bytes], None] | None,
                 open_timeout_s: float) -> None:
        from websockets.sync.client import connect

        self._on_data = on_data
        self._output = bytearray()
        self._output_lock = threading.Lock()
        self._arrived = threading.Condition(self._output_lock)
        self._send_lock = threading.Lock()
        self._started = threading.Event()
        self._done = threading.Event()
        self.pty_id = 0
        self.result: PtyExit | None = None
        self.last_error = ""
        self._ws: ClientConnection = connect(terminal_url(session), additional_headers={"X-Access-Token": session.token},
                                             open_timeout=open_timeout_s, max_size=None)
        self._ws.send(json.dumps(request))
        self._reader = threading.Thread(target=self._read, name="agbox-pty-reader", daemon=True)
        self._reader.start()
        if not self._started.wait(open_timeout_s):
            self.close()
            raise TimeoutError(f"the terminal did not start within {open_timeout_s:g} s")
        if self.result is not None and not self.pty_id:
            self.close()
            raise RuntimeError(f"the terminal did not start: {self.result.error_message}")

    @property
    def pid(self) -> int:
        return self.pty_id

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    @property
    def output(self) -> bytes:
        with self._output_lock:
            return bytes(self._output)

    def _finish(self, result: PtyExit) -> None:
        if self.result is None:
            self.result = result
        self._started.set()
        with self._arrived:
            self._done.set()
            self._arrived.notify_all()

    def _read(self) -> None:
        try:
            for message in self._ws:
                if isinstance(message, bytes):
                    with self._arrived:
                        self._output += message
                        self._arrived.notify_all()
                    if self._on_data is not None:
                        self._on_data(message)
                    continue
                frame = json.loads(message)
                kind = frame.get("type")
                if kind == "started":
                    self.pty_id = int(frame["ptyId"])
                    self._started.set()
                elif kind == "exit":
                    self._finish(PtyExit(int(frame.get("exitCode", -1)), frame.get("signal")))
                elif kind == "error":
                    self.last_error = str(frame.get("message", "terminal error"))
                    if not self._started.is_set():
                        self._finish(PtyExit(-1, None, self.last_error))
        except Exception as exc:  # the socket broke: the terminal is over for this client
            self._finish(PtyExit(-1, None, f"terminal connection lost: {exc}"))
        else:
            self._finish(PtyExit(-1, None, self.last_error or "the terminal closed without an exit status"))

    def _send_text(self, frame: dict[str, Any]) -> None:
        with self._send_lock:
            self._ws.send(json.dumps(frame))

    def send_input(self, data: str | bytes) -> None:
        """Type into the terminal (``"\\x03"`` is Ctrl-C)."""
        with self._send_lock:
            self._ws.send(data.encode() if isinstance(data, str) else bytes(data))

    def resize(self, cols: int, rows: int) -> None:
        self._send_text({"type": "resize", "cols": cols, "rows": rows})

    def kill(self, signal: str = "SIGKILL") -> None:
        """Send a signal (name, e.g. ``"SIGINT"``) to the terminal's program and its process group."""
        self._send_text({"type": "signal", "signal": signal})

    def wait(self, timeout_s: float | None = None) -> PtyExit:
        """The exit status once the program has ended (``exit_code`` -1 and a message on failure)."""
        if not self._done.wait(timeout_s):
            raise TimeoutError(f"the terminal is still running after {timeout_s:g} s")
        assert self.result is not None
        return self.result

    def wait_for_output(self, needle: bytes | str, timeout_s: float = 10.0) -> bool:
        """True once ``needle`` has appeared in the output; False if the program ended or time ran out first."""
        target = needle.encode() if isinstance(needle, str) else needle
        with self._arrived:
            return self._arrived.wait_for(lambda: target in self._output or self._done.is_set(), timeout_s) and \
                target in self._output

    def close(self) -> None:
        """Disconnect; the program is killed if it still runs."""
        self._ws.close()
        self._reader.join(5)


class Pty:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create(self, cmd: str | list[str] | None = None, cols: int = 80, rows: int = 24, cwd: str | None = None,
               envs: dict[str, str] | None = None, on_data: Callable[[bytes], None] | None = None,
               open_timeout_s: float = 30.0) -> PtyHandle:
        """Start ``cmd`` (None: a login shell) on a new terminal of ``cols`` x ``rows``."""
        request = {"cmd": cmd, "cols": cols, "rows": rows, "cwd": cwd, "envs": envs or {}}
        return PtyHandle(self.session, request, on_data, open_timeout_s)

