"""``session.command``: run shell commands (tool ``shell``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from agbox.client.results import CommandResult

if TYPE_CHECKING:
    from agbox.client.session import Session


class Command:
    def __init__(self, session: Session) -> None:
        self.session = session

    def execute(self, command: str, timeout_ms: int = 1000, cwd: str | None = None,
                envs: dict[str, str] | None = None) -> CommandResult:
        if envs is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in envs.items()):
            raise ValueError("envs keys and values must be strings")
        args: dict[str, object] = {"command": command, "timeout_ms": timeout_ms}
        if cwd:
            args["cwd"] = cwd
        if envs:
            args["envs"] = envs
        result = self.session.call_mcp_tool("shell", args, read_timeout=timeout_ms + 30_000,
                                            connect_timeout=timeout_ms + 30_000)
        text = result.data or result.error_message
        try:
            payload = json.loads(text)
        except (ValueError, TypeError):
            payload = None
        if not isinstance(payload, dict):
            if result.success:
                return CommandResult(request_id=result.request_id, success=True, output=text, stdout=text)
            return CommandResult(request_id=result.request_id, success=False, error_message=text, exit_code=-1)
        stdout, stderr = str(payload.get("stdout", "")), str(payload.get("stderr", ""))
        exit_code = int(payload.get("exit_code", 0 if result.success else -1))
        success = result.success and exit_code == 0
        return CommandResult(request_id=result.request_id, success=success, output=stdout + stderr,
                             error_message="" if success else (stderr or text), exit_code=exit_code,
                             stdout=stdout, stderr=stderr, trace_id=str(payload.get("traceId", "")))
