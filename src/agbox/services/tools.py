"""Tool calls: find the session and the tool, validate, run, and shape the MCP result."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from agbox.errors import AgboxError, InvalidRequestError, SandboxError, SessionNotFoundError, ToolTimeoutError
from agbox.images import ImageCatalog
from agbox.models import SessionRecord
from agbox.runtime.base import EventCallback
from agbox.runtime.channel import AgentError
from agbox.services.activity import ActivityEntry, ActivityLog, clip, outcome_of, summarize
from agbox.services.sessions import SessionService
from agbox.services.telemetry import Telemetry
from agbox.tools.base import ToolContext, ToolDef, ToolOutput
from agbox.tools.registry import ToolRegistry
from agbox.wirejson import loads

log = logging.getLogger(__name__)
# How long a call that lost its sandbox waits for the end to be complete (and its cause known).
END_GRACE_S = 2.0


def parse_args(raw: Any) -> dict[str, Any]:
    """Tool arguments arrive as an object, or (on the AGB wire) as a JSON string of one."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        raw = loads(raw, "args")
    if not isinstance(raw, dict):
        raise InvalidRequestError("args must be a JSON object")
    return raw


class ToolService:
    def __init__(self, sessions: SessionService, images: ImageCatalog, registry: ToolRegistry,
                 telemetry: Telemetry) -> None:
        self.sessions = sessions
        self.images = images
        self.registry = registry
        self.telemetry = telemetry
        # Each session's recent calls (agbox logs); a session's log is retired when it is released.
        self.activity = ActivityLog()
        sessions.before_release.append(self._retire_activity)

    async def _retire_activity(self, record: SessionRecord) -> None:
        self.activity.finish(record.id)

    def activity_of(self, owner: str, session_id: Any, after_seq: int = 0,
                    limit: int = 200) -> tuple[str, list[ActivityEntry]]:
        """(status, recent entries) of one of ``owner``'s sessions, finished ones included (while kept)."""
        if not isinstance(session_id, str) or not session_id:
            raise InvalidRequestError("sessionId is required")
        record = self.sessions.store.get_session(session_id)
        if record is None or record.owner != owner:
            raise SessionNotFoundError(session_id)
        return record.status.value, self.activity.entries(record.id, after_seq, limit)

    def list_tools(self, image_id: str | None) -> list[ToolDef]:
        return self.registry.tools_for(self.images.get(image_id))

    def context(self, owner: str, session_id: Any, on_event: EventCallback | None = None) -> ToolContext:
        # No touch here: the call's end counts as activity (SessionService.in_use), one write per call.
        record = self.sessions.get(owner, session_id, touch=False)
        return ToolContext(
            session_id=record.id, image_id=record.image_id, runtime=self.sessions.runtime,
            handle=self.sessions.handle(record), settings=self.sessions.settings,
            state=self.sessions.tool_state.setdefault(record.id, {}), created_at=record.created_at,
            on_event=on_event,
        )

    async def call(self, owner: str, session_id: Any, name: Any, raw_args: Any,
                   on_event: EventCallback | None = None) -> ToolOutput:
        started = time.perf_counter()
        tool = name if isinstance(name, str) and len(name) <= 64 and name.isprintable() else "(invalid)"
        try:
            output = await self._call(owner, session_id, name, raw_args, on_event)
        except AgboxError as exc:
            self.telemetry.tool_call_done(tool, exc.code, started)
            raise
        self.telemetry.tool_call_done(tool, "tool_error" if output.is_error else "ok", started)
        return output

    async def _call(self, owner: str, session_id: Any, name: Any, raw_args: Any,
                    on_event: EventCallback | None) -> ToolOutput:
        """Session and argument faults raise; faults of the tool itself become an error result, and so
        does the end of the sandbox during the call (the session then ends, with the cause as its reason)."""
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("tool name is required")
        ctx = self.context(owner, session_id, on_event)
        # From here on the session is the caller's own: the call goes into its log, whatever its end.
        started_at, started = time.time(), time.perf_counter()
        summary = "(arguments not valid)"
        output: ToolOutput | None = None
        error = ""
        try:
            args = parse_args(raw_args)
            summary = summarize(name, args)
            output = await self._run(ctx, name, args)
            return output
        except AgboxError as exc:
            error = exc.code
            raise
        finally:
            exit_code, message = outcome_of(output.text, output.is_error) if output is not None else (None, error)
            ok = output is not None and not output.is_error
            if not ok and not message and exit_code is None:
                message = "failed"
            self.activity.add(ctx.session_id, clip(name, 64), summary, started_at, time.perf_counter() - started, ok,
                              exit_code, message)

    async def _run(self, ctx: ToolContext, name: str, args: dict[str, Any]) -> ToolOutput:
        tool = self.registry.find(self.images.get(ctx.image_id), name)
        runtime = self.sessions.runtime
        before = runtime.limit_events(ctx.handle)
        try:
            with self.sessions.in_use(ctx.session_id):
                output = await tool.handler(ctx, args)
        except InvalidRequestError as exc:
            output = ToolOutput(f"invalid arguments for {name}: {exc.message}", is_error=True)
        except ToolTimeoutError as exc:
            output = ToolOutput(exc.message, is_error=True)
        except AgentError as exc:
            output = ToolOutput(exc.message, is_error=True)
        except SandboxError:
            if not await runtime.wait_ended(ctx.handle, END_GRACE_S):
                raise
            cause = runtime.end_reason(ctx.handle, before)
            self.sessions.end(ctx.session_id, cause)
            return ToolOutput(f"the session has ended: {cause}. Its processes and files are gone; "
                              "create a new session to go on.", is_error=True)
        note = runtime.limit_note(ctx.handle, before)
        return with_note(output, note) if note else output


def with_note(output: ToolOutput, note: str) -> ToolOutput:
    """Add ``note`` where clients show a failure: a command's stderr, a program's error, else the text."""
    try:
        payload = json.loads(output.text)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return ToolOutput(f"{output.text.rstrip()}\n{note}".lstrip(), output.is_error, output.extra)
    placed = False
    stderr = payload.get("stderr")
    if isinstance(stderr, str):
        separator = "\n" if stderr and not stderr.endswith("\n") else ""
        payload["stderr"] = f"{stderr}{separator}{note}\n"
        placed = True
    if isinstance(payload.get("executionError"), str):
        payload["executionError"] += f" ({note})"
        placed = True
    error = payload.get("error")
    if isinstance(error, dict) and isinstance(error.get("value"), str):
        error["value"] += f" ({note})"
        placed = True
    if not placed:
        payload["note"] = note
    return ToolOutput(json.dumps(payload, ensure_ascii=False), output.is_error, output.extra)
