"""Interactive terminals in sessions: a program on a pseudo-terminal, its output streamed, input,
resize and signals by terminal id. The terminal lives in the sandbox (agent op ``pty_open``); a
running terminal keeps its session from idle release, and ends with the session."""

from __future__ import annotations

import base64
import dataclasses
import shlex
import time
from collections.abc import Callable
from typing import Any

from agbox.errors import InvalidRequestError
from agbox.runtime.channel import AgentError
from agbox.services.activity import ActivityLog, clip
from agbox.services.sessions import SessionService

# A terminal can stay open for the whole life of its session.
TERMINAL_CALL_SLACK_S = 60.0
CONTROL_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class TerminalRequest:
    argv: list[str] | None = None
    cols: int = 80
    rows: int = 24
    cwd: str | None = None
    envs: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any) -> TerminalRequest:
        if not isinstance(raw, dict):
            raise InvalidRequestError("the first frame must be a JSON object {cmd, cols, rows, cwd, envs}")
        cmd = raw.get("cmd")
        if isinstance(cmd, str):
            argv: list[str] | None = ["/bin/sh", "-c", cmd]
        elif cmd is None:
            argv = None
        elif isinstance(cmd, list) and cmd and all(isinstance(a, str) and a for a in cmd):
            argv = list(cmd)
        else:
            raise InvalidRequestError("cmd must be a string, a non-empty list of strings, or null for a login shell")
        cols, rows = raw.get("cols", 80), raw.get("rows", 24)
        for name, value in (("cols", cols), ("rows", rows)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
                raise InvalidRequestError(f"{name} must be an integer from 1 to 1000")
        cwd = raw.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise InvalidRequestError("cwd must be a string")
        envs = raw.get("envs") or {}
        if not isinstance(envs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in envs.items()):
            raise InvalidRequestError("envs must map strings to strings")
        return cls(argv, cols, rows, cwd, envs)


@dataclasses.dataclass(frozen=True)
class TerminalExit:
    exit_code: int
    signal: str | None


class TerminalService:
    def __init__(self, sessions: SessionService, activity: ActivityLog | None = None) -> None:
        self.sessions = sessions
        # Where a terminal's program goes when it ends (its command line and exit; never what was typed).
        self.activity = activity

    async def run(self, owner: str, session_id: str, request: TerminalRequest,
                  on_started: Callable[[int], None], on_output: Callable[[bytes], None]) -> TerminalExit:
        """Run the program until it exits; cancelling this call kills it."""
        record = self.sessions.get(owner, session_id)
        handle = self.sessions.handle(record)

        def on_event(event: dict[str, Any]) -> None:
            if event.get("type") == "output":
                on_output(base64.b64decode(str(event.get("data", ""))))
            elif event.get("type") == "started":
                on_started(int(event["pty_id"]))

        args: dict[str, Any] = {"argv": request.argv, "cols": request.cols, "rows": request.rows,
                                "cwd": request.cwd, "envs": request.envs}
        started_at, started = time.time(), time.perf_counter()
        ended: TerminalExit | None = None
        error = "stopped: its connection closed"
        try:
            with self.sessions.in_use(record.id):
                try:
                    result = await self.sessions.runtime.call(
                        handle, "pty_open", args, on_event=on_event,
                        timeout_s=self.sessions.settings.max_lifetime_s + TERMINAL_CALL_SLACK_S)
                except AgentError as exc:
                    error = exc.message
                    raise InvalidRequestError(exc.message) from None
            ended = TerminalExit(int(result["exit_code"]), result.get("signal"))
            error = f"killed by {ended.signal}" if ended.signal else ""
            return ended
        finally:
            if self.activity is not None:
                shown = shlex.join(request.argv) if request.argv else "(login shell)"
                self.activity.add(record.id, "terminal", clip(shown, 200), started_at, time.perf_counter() - started,
                                  ended is not None and ended.exit_code == 0 and not ended.signal,
                                  ended.exit_code if ended is not None else None, clip(error, 160))

    async def _control(self, owner: str, session_id: str, op: str, args: dict[str, Any]) -> Any:
        record = self.sessions.get(owner, session_id)
        try:
            return await self.sessions.runtime.call(self.sessions.handle(record), op, args,
                                                    timeout_s=CONTROL_TIMEOUT_S)
        except AgentError as exc:
            raise InvalidRequestError(exc.message) from None

    async def write(self, owner: str, session_id: str, pty_id: int, data: bytes) -> None:
        await self._control(owner, session_id, "pty_input",
                            {"pty_id": pty_id, "data": base64.b64encode(data).decode("ascii")})

    async def resize(self, owner: str, session_id: str, pty_id: int, cols: Any, rows: Any) -> None:
        await self._control(owner, session_id, "pty_resize", {"pty_id": pty_id, "cols": cols, "rows": rows})

    async def signal(self, owner: str, session_id: str, pty_id: int, signal: Any) -> None:
        await self._control(owner, session_id, "pty_signal", {"pty_id": pty_id, "signal": signal})
