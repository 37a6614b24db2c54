"""The ``run_code`` tool: Python (IPython, stateful per session, rich outputs), JavaScript (stateful), Java, R."""

from __future__ import annotations

from typing import Any

from agbox.errors import InvalidRequestError
from agbox.tools.base import ToolContext, ToolDef, ToolOutput, arg_int, json_text, schema
from agbox.wirejson import json_type

LANGUAGES = ("python", "javascript", "java", "r")
ALIASES = {"py": "python", "python3": "python", "js": "javascript", "node": "javascript", "nodejs": "javascript"}
DEFAULT_TIMEOUT_S = 60
MAX_TIMEOUT_S = 24 * 3600
# On top of the execution timeout: interrupting Python (then restarting it) and process start-up.
AGENT_GRACE_S = 30.0


def normalize_language(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidRequestError("argument 'language' must be one of " + ", ".join(LANGUAGES))
    language = raw.strip().lower()
    language = ALIASES.get(language, language)
    if language not in LANGUAGES:
        raise InvalidRequestError(f"Unsupported language: {raw}. Supported languages are "
                                  f"{', '.join(sorted(LANGUAGES))}")
    return language


def execution_payload(result: dict[str, Any]) -> dict[str, Any]:
    """The agent's answer in the shape the official SDK prefers (``result``/``stdout``/``stderr``)."""
    payload: dict[str, Any] = {
        "result": result.get("results", []),
        "stdout": result.get("stdout", []),
        "stderr": result.get("stderr", []),
        "execution_count": result.get("execution_count"),
        "execution_time": result.get("execution_time", 0.0),
        "status": result.get("status", "ok"),
    }
    error = result.get("error")
    if isinstance(error, dict):
        payload["executionError"] = f"{error.get('name', 'Error')}: {error.get('value', '')}".rstrip(": ")
        name, value = str(error.get("name", "")), str(error.get("value", ""))
        # name/value as the official SDK's ExecutionError has them, ename/evalue as a Jupyter error output.
        payload["error"] = {"name": name, "value": value, "ename": name, "evalue": value,
                            "traceback": str(error.get("traceback", ""))}
    if result.get("truncated"):
        payload["truncated"] = True
    if result.get("restarted"):
        payload["restarted"] = True
    return payload


async def run_code(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    code = args.get("code")
    if not isinstance(code, str):
        raise InvalidRequestError("missing required argument 'code'" if code is None
                                  else f"argument 'code' must be a string, got {json_type(code)}")
    language = normalize_language(args.get("language"))
    timeout_s = arg_int(args, "timeout_s", DEFAULT_TIMEOUT_S, minimum=1, maximum=MAX_TIMEOUT_S)
    result = await ctx.agent("run_code", {
        "code": code, "language": language, "timeout_s": timeout_s,
        "max_output": ctx.settings.max_command_output_bytes, "stream": ctx.on_event is not None,
    }, timeout_s=timeout_s + AGENT_GRACE_S)
    # A failing program is a successful tool call: the SDK reads executionError from the payload.
    return ToolOutput(json_text(execution_payload(result)))


TOOLS = [
    ToolDef(
        name="run_code",
        description="Run code in the session. Python runs in a persistent IPython shell, like a notebook: variables "
                    "survive between calls, the last expression is returned, display() and IPython.display give "
                    "rich outputs (HTML, Markdown, PNG/JPEG/SVG images such as matplotlib figures, LaTeX, JSON, "
                    "Vega-Lite charts), %magics and !shell lines work. JavaScript runs in a persistent Node.js "
                    "REPL (declarations survive, top-level await, the last expression is returned); code with "
                    "static import/export runs as an ES module on its own. Java and R run in a fresh process per "
                    "call. On timeout the code is interrupted.",
        input_schema=schema({
            "code": {"type": "string", "description": "The source code to run."},
            "language": {"type": "string", "enum": [*LANGUAGES, *ALIASES],
                         "description": "python, javascript, java or r (aliases: py, python3, js, node, nodejs)."},
            "timeout_s": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_S, "default": DEFAULT_TIMEOUT_S,
                          "description": "Execution deadline in seconds."},
        }, ["code", "language"]),
        server="wuying_codespace",
        handler=run_code,
    ),
]
