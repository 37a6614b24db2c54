"""The ``shell`` tool."""

from __future__ import annotations

from typing import Any

from agbox.errors import InvalidRequestError
from agbox.tools.base import ToolContext, ToolDef, ToolOutput, arg_int, arg_str, json_text, schema

# The SDK sends timeout_ms=1000 by default; a direct MCP caller that omits it gets a minute.
DEFAULT_TIMEOUT_MS = 60_000
MAX_TIMEOUT_MS = 24 * 3600 * 1000


async def shell(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    command = arg_str(args, "command")
    timeout_ms = arg_int(args, "timeout_ms", DEFAULT_TIMEOUT_MS, minimum=1, maximum=MAX_TIMEOUT_MS)
    cwd = arg_str(args, "cwd", required=False)
    envs = args.get("envs") or {}
    if not isinstance(envs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in envs.items()):
        raise InvalidRequestError("argument 'envs' must be an object mapping strings to strings")
    result = await ctx.agent("shell", {
        "command": command, "timeout_ms": timeout_ms, "cwd": cwd, "envs": envs,
        "max_output": ctx.settings.max_command_output_bytes, "stream": ctx.on_event is not None,
    }, timeout_s=timeout_ms / 1000 + 10)
    payload = {"stdout": result["stdout"], "stderr": result["stderr"], "exit_code": result["exit_code"]}
    if result.get("timed_out"):
        payload["timed_out"] = True
    if result.get("truncated"):
        payload["truncated"] = True
    return ToolOutput(json_text(payload), is_error=result["exit_code"] != 0)


TOOLS = [
    ToolDef(
        name="shell",
        description="Run a shell command (bash -c) in the session and return its stdout, stderr and exit code. "
                    "On timeout the command's whole process group is killed.",
        input_schema=schema({
            "command": {"type": "string", "description": "The command line to run."},
            "timeout_ms": {"type": "integer", "minimum": 1, "description": "Deadline in milliseconds.",
                           "default": DEFAULT_TIMEOUT_MS},
            "cwd": {"type": "string", "description": "Working directory (default /home/user)."},
            "envs": {"type": "object", "additionalProperties": {"type": "string"},
                     "description": "Extra environment variables."},
        }, ["command"]),
        server="wuying_shell",
        handler=shell,
    ),
]
