"""Browser tools of the browser images: ``stopChrome`` (what the SDK's ``browser.destroy()`` calls)."""

from __future__ import annotations

from typing import Any

from agbox.tools.base import ToolContext, ToolDef, ToolOutput, json_text, schema

STOP_GRACE_S = 5.0


async def stop_chrome(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    # Graceful: SIGTERM lets Chromium close its profile (cookies reach disk), then the group is killed.
    result = await ctx.agent("browser_stop", {"grace_s": STOP_GRACE_S}, timeout_s=STOP_GRACE_S + 10)
    if not result.get("was_running"):
        return ToolOutput(json_text({"stopped": False, "message": "the browser was not running"}))
    return ToolOutput(json_text({"stopped": True, "message": "the browser was stopped"}))


TOOLS = [
    ToolDef(
        name="stopChrome",
        description="Stop the session's browser (Chromium) gracefully, so its profile and cookies are saved. "
                    "Initialize the browser again to start a new one.",
        input_schema=schema({}),
        server="wuying_browser",
        handler=stop_chrome,
    ),
]
