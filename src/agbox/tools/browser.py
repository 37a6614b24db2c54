"""Browser tools of the browser images, for agents that do not run Playwright themselves.

- ``stopChrome``: what the SDK's ``browser.destroy()`` calls.
- ``page_use_navigate`` / ``page_use_screenshot`` / ``page_use_close_session``: what ``browser.agent``
  calls; they drive the session's Chromium over CDP from the host (a socket made inside the sandbox).
- ``page_use_act*`` / ``page_use_observe`` / ``page_use_extract*``: need a language model, which agbox
  does not run yet; they answer with an error saying so.
- ``browser_page_text``, ``browser_click``, ``browser_type``: small tools of our own (text of the page,
  click or type into the element a CSS selector names).

Without a ``page_id`` the tools act on "the current page" (``tools/pages.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

from agbox.errors import InvalidRequestError
from agbox.tools import browser_agent
from agbox.tools.base import ToolContext, ToolDef, ToolOutput, arg_int, arg_str, json_text, schema
from agbox.tools.cdp import CdpError, fillers_expired, flush_cookies
from agbox.tools.pages import PAGE_STATE, current_page, page_id_arg

# Chromium's own shutdown, then its helpers' last writes (agent: HELPERS_GRACE_S); slow under load.
STOP_GRACE_S = 10.0
HELPERS_GRACE_S = 10.0
NAVIGATE_TIMEOUT_S = 30.0


async def stop_chrome(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    # Graceful: SIGTERM lets Chromium close its profile (cookies reach disk), then the group is killed.
    status = await ctx.agent("browser_status", {}, timeout_s=25)
    stop_args: dict[str, Any] = {"grace_s": STOP_GRACE_S}
    if status.get("running"):  # cookies set in the last 30 s reach the disk too
        stop_args["changed_after"] = await flush_cookies(ctx.runtime, ctx.handle, int(status["port"]),
                                                         str(status["path"]))
    result = await ctx.agent("browser_stop", stop_args,
                               timeout_s=STOP_GRACE_S + HELPERS_GRACE_S + 10)
    await fillers_expired(stop_args.get("changed_after"))
    ctx.state.pop(PAGE_STATE, None)
    if not result.get("was_running"):
        return ToolOutput(json_text({"stopped": False, "message": "the browser was not running"}))
    return ToolOutput(json_text({"stopped": True, "message": "the browser was stopped"}))


# ---- page_use_* ------------------------------------------------------------------------------------


async def navigate(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    url = arg_str(args, "url")
    assert url is not None
    try:
        async with current_page(ctx, page_id_arg(args)) as page:
            loaded = asyncio.get_running_loop().create_future()

            def on_event(message: dict[str, Any]) -> None:
                if message.get("sessionId") == page.session_id and message.get("method") == "Page.loadEventFired" \
                        and not loaded.done():
                    loaded.set_result(True)

            stop_listening = page.cdp.listen(on_event)
            try:
                await page.call("Page.enable")
                result = await page.call("Page.navigate", {"url": url}, timeout_s=NAVIGATE_TIMEOUT_S)
                if result.get("errorText"):
                    return ToolOutput(f"Navigation to {url} failed: {result['errorText']}", is_error=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(loaded, NAVIGATE_TIMEOUT_S)
            finally:
                stop_listening()
            where = await page.evaluate("({url: location.href, title: document.title})")
    except CdpError as exc:
        return ToolOutput(exc.message, is_error=True)
    return ToolOutput(json_text({"success": True, "url": where.get("url"), "title": where.get("title"),
                                 "page_id": page.target_id}))


async def screenshot(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    full_page = args.get("full_page", True)
    if not isinstance(full_page, bool):
        raise InvalidRequestError("argument 'full_page' must be a boolean")
    arg_int(args, "quality", 80, minimum=0, maximum=100)  # checked only: PNG is lossless (quality is for JPEG)
    clip = args.get("clip")
    if clip is not None and (not isinstance(clip, dict) or not all(
            isinstance(clip.get(k), int | float) and not isinstance(clip.get(k), bool) for k in ("x", "y", "width", "height"))):
        raise InvalidRequestError("argument 'clip' must be an object with numeric x, y, width and height")
    timeout_s = arg_int(args, "timeout", 30000, minimum=1) / 1000
    params: dict[str, Any] = {"format": "png"}
    try:
        async with current_page(ctx, page_id_arg(args)) as page:
            if clip is not None:
                params["clip"] = {**{k: clip[k] for k in ("x", "y", "width", "height")}, "scale": 1}
            elif full_page:
                metrics = await page.call("Page.getLayoutMetrics")
                size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
                params["clip"] = {"x": 0, "y": 0, "width": size.get("width", 0), "height": size.get("height", 0),
                                  "scale": 1}
                params["captureBeyondViewport"] = True
            shot = await page.call("Page.captureScreenshot", params, timeout_s=timeout_s)
    except CdpError as exc:
        return ToolOutput(exc.message, is_error=True)
    data = str(shot.get("data", ""))
    base64.b64decode(data, validate=True)  # strict base64 (no newlines), as the SDK expects
    return ToolOutput(f"data:image/png;base64,{data}")


async def close_session(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    # The agent's page session ends; the browser and its pages stay.
    ctx.state.pop(PAGE_STATE, None)
    return ToolOutput(json_text({"success": True}))


# ---- small tools of our own ---------------------------------------------------------------------------


async def page_text(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    limit = arg_int(args, "max_chars", 20000, minimum=1, maximum=1_000_000)
    try:
        async with current_page(ctx, page_id_arg(args)) as page:
            found = await page.evaluate("({url: location.href, title: document.title, "
                                        "text: document.body ? document.body.innerText : ''})")
    except CdpError as exc:
        return ToolOutput(exc.message, is_error=True)
    text = str(found.get("text") or "")
    return ToolOutput(json_text({"url": found.get("url"), "title": found.get("title"), "text": text[:limit],
                                 "truncated": len(text) > limit, "page_id": page.target_id}))


def _element_script(selector: str, action: str) -> str:
    return (f"(() => {{ const el = document.querySelector({json.dumps(selector)}); "
            f"if (!el) return 'no element matches ' + {json.dumps(selector)}; {action} return ''; }})()")


async def _on_element(ctx: ToolContext, args: dict[str, Any], action: str, done: str) -> ToolOutput:
    selector = arg_str(args, "selector")
    assert selector is not None
    try:
        async with current_page(ctx, page_id_arg(args)) as page:
            problem = await page.evaluate(_element_script(selector, action))
    except CdpError as exc:
        return ToolOutput(exc.message, is_error=True)
    if problem:
        return ToolOutput(str(problem), is_error=True)
    return ToolOutput(json_text({"success": True, "message": done}))


async def click(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    return await _on_element(ctx, args, "el.scrollIntoView({block: 'center'}); el.click();", "clicked")


async def type_text(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    text = args.get("text")
    if not isinstance(text, str):
        raise InvalidRequestError("argument 'text' must be a string")
    action = (f"el.focus(); el.value = {json.dumps(text)}; "
              "el.dispatchEvent(new Event('input', {bubbles: true})); el.dispatchEvent(new Event('change', {bubbles: true}));")
    return await _on_element(ctx, args, action, "typed")


PAGE_ID = {"type": "string", "description": "CDP target id of the page (default: the current page)"}
SERVER = "wuying_browser"
MODEL_TASKS = (
    ("act", "perform one action the instruction describes: click or fill an element",
     {"action": {"type": "string"}, "variables": {"type": "object"}, "page_id": PAGE_ID, "context_id": {"type": "integer"}}),
    ("observe", "elements that match the instruction, with a selector and the method to use on each",
     {"instruction": {"type": "string"}, "page_id": PAGE_ID, "context_id": {"type": "integer"}}),
    ("extract", "data from the page as JSON following field_schema ('schema: <JSON schema>')",
     {"instruction": {"type": "string"}, "field_schema": {"type": "string"}, "page_id": PAGE_ID,
      "context_id": {"type": "integer"}}),
)
TOOLS = [
    ToolDef("stopChrome", "Stop the session's browser (Chromium) gracefully, so its profile and cookies are saved. "
                          "Initialize the browser again to start a new one.", schema({}), SERVER, stop_chrome),
    ToolDef("page_use_navigate", "Open a URL in the current page of the session's browser and wait for it to load.",
            schema({"url": {"type": "string"}, "page_id": PAGE_ID}, ["url"]), SERVER, navigate),
    ToolDef("page_use_screenshot", "Screenshot of the current page as a data URL (data:image/png;base64,...).",
            schema({"context_id": {"type": "integer"}, "page_id": PAGE_ID, "full_page": {"type": "boolean"},
                    "quality": {"type": "integer"}, "clip": {"type": "object"}, "timeout": {"type": "integer"}}),
            SERVER, screenshot),
    ToolDef("page_use_close_session", "End the page agent's session (the browser keeps running).", schema({}),
            SERVER, close_session),
    *(ToolDef(f"page_use_{kind}", f"{kind.capitalize()} on the current page with the configured language model "
                                   f"({purpose}).", schema(props), SERVER, browser_agent.tool_now(kind))
      for kind, purpose, props in MODEL_TASKS),
    *(ToolDef(f"page_use_{kind}_async", f"Start {kind} in the background; answers {{task_id}} for "
                                         f"page_use_get_{kind}_result.", schema(props), SERVER,
              browser_agent.tool_start(kind)) for kind, _purpose, props in MODEL_TASKS),
    *(ToolDef(f"page_use_get_{kind}_result", f"The result of a page_use_{kind}_async task (not ready yet: "
                                              "keep polling).", schema({"task_id": {"type": "string"}}, ["task_id"]),
              SERVER, browser_agent.tool_result(kind)) for kind, _purpose, _props in MODEL_TASKS),
    ToolDef("browser_page_text", "URL, title and visible text of the current page.",
            schema({"page_id": PAGE_ID, "max_chars": {"type": "integer"}}), SERVER, page_text),
    ToolDef("browser_click", "Click the element a CSS selector names in the current page.",
            schema({"selector": {"type": "string"}, "page_id": PAGE_ID}, ["selector"]), SERVER, click),
    ToolDef("browser_type", "Set the value of the input a CSS selector names (fires input and change events).",
            schema({"selector": {"type": "string"}, "text": {"type": "string"}, "page_id": PAGE_ID},
                   ["selector", "text"]), SERVER, type_text),
]
