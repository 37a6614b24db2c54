"""What a tool is: a name, a description, a JSON schema, the MCP server it belongs to, a handler."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

from agbox.errors import InvalidRequestError
from agbox.runtime.base import EventCallback, Runtime, SandboxHandle
from agbox.settings import Settings
from agbox.wirejson import json_type


@dataclasses.dataclass
class ToolOutput:
    text: str
    is_error: bool = False
    # Extra MCP content items (e.g. images) after the text.
    extra: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def content(self) -> list[dict[str, Any]]:
        return [{"type": "text", "text": self.text}, *self.extra]


@dataclasses.dataclass
class ToolContext:
    session_id: str
    image_id: str
    runtime: Runtime
    handle: SandboxHandle
    settings: Settings
    # Per-session scratch space that outlives one call (e.g. the previous metrics sample).
    state: dict[str, Any]
    created_at: float
    on_event: EventCallback | None = None

    async def agent(self, op: str, args: dict[str, Any], timeout_s: float) -> Any:
        return await self.runtime.call(self.handle, op, args, timeout_s=timeout_s, on_event=self.on_event)


Handler = Callable[[ToolContext, dict[str, Any]], Awaitable[ToolOutput]]


@dataclasses.dataclass(frozen=True)
class ToolDef:
    name: str
    description: str
    input_schema: dict[str, Any]
    server: str
    handler: Handler

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "inputSchema": self.input_schema,
                "server": self.server, "tool": self.name}


def schema(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or [], "additionalProperties": True}


# ---- argument helpers: precise messages for wrong types ------------------------------------------

def arg_str(args: dict[str, Any], key: str, *, required: bool = True, default: str | None = None) -> str | None:
    value = args.get(key, default)
    if value is None:
        if required:
            raise InvalidRequestError(f"missing required argument '{key}'")
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(f"argument '{key}' must be a string, got {json_type(value)}")
    if required and not value:
        raise InvalidRequestError(f"argument '{key}' must not be empty")
    return value


def arg_int(args: dict[str, Any], key: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    value = args.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise InvalidRequestError(f"argument '{key}' must be an integer, got {json_type(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise InvalidRequestError(f"argument '{key}' must be {bound}, got {value}")
    return int(value)


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
