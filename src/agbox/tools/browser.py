"""Browser tools of the browser images, for agents that do not run Playwright themselves.

- ``stopChrome``: what the SDK's ``browser.destroy()`` calls.
- ``page_use_navigate`` / ``page_use_screenshot`` / ``page_use_close_session``: what ``browser.agent``
  calls; they drive the session's Chromium over CDP from the host (a socket made inside the sandbox).
- ``page_use_act*`` / ``page_use_observe`` / ``page_use_extract*``: need a language model, which agbox
  does not run yet; they answer with an error saying so.
- ``browser_page_text``, ``browser_click``, ``browser_type``: small tools of our own (text of the page,
  click or type into the element a CSS selector names).

Without a ``page_id`` the tools act on "the current page": the one the previous tool used if it
still exists, else a page of the browser that is not blank (one is opened when there is none).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from agbox.errors import InvalidRequestError
from agbox.tools.base import ToolContext, ToolDef, ToolOutput, arg_int, arg_str, json_text, schema
from agbox.tools.cdp import CdpConnection, CdpError

STOP_GRACE_S = 5.0
NAVIGATE_TIMEOUT_S = 30.0
PAGE_STATE = "browser_page"
MODEL_TOOLS = ("page_use_act", "page_use_act_async", "page_use_get_act_result", "page_use_observe",
               "page_use_observe_async", "page_use_get_observe_result", "page_use_extract",
               "page_use_extract_async", "page_use_get_extract_result")


async def stop_chrome(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    # Graceful: SIGTERM lets Chromium close its profile (cookies reach disk), then the group is killed.
    result = await ctx.agent("browser_stop", {"grace_s": STOP_GRACE_S}, timeout_s=STOP_GRACE_S + 10)
    ctx.state.pop(PAGE_STATE, None)
    if not result.get("was_running"):
        return ToolOutput(json_text({"stopped": False, "message": "the browser was not running"}))
    return ToolOutput(json_text({"stopped": True, "message": "the browser was stopped"}))


# ---- the current page ----------------------------------------------------------------------------


class Page:
    """A CDP connection to the session's browser, attached to one page target."""

    def __init__(self, cdp: CdpConnection, target_id: str, session_id: str) -> None:
        self.cdp = cdp
        self.target_id = target_id
        self.session_id = session_id

    async def call(self, method: str, params: dict[str, Any] | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        return await self.cdp.call(method, params, session_id=self.session_id, timeout_s=timeout_s)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(f"script failed: {details.get('exception', {}).get('description') or details.get('text')}")
        return result.get("result", {}).get("value")


@contextlib.asynccontextmanager
async def current_page(ctx: ToolContext, page_id: str | None) -> AsyncIterator[Page]:
    status = await ctx.agent("browser_status", {}, timeout_s=10)
    if not status.get("running"):
        reason = status.get("reason")
        raise CdpError("the browser is not running" + (f" (it {reason})" if reason else "")
                       + "; initialize it first (/browser/init)")
    cdp = await CdpConnection.open(ctx.runtime, ctx.handle, int(status["port"]), str(status["path"]))
    try:
        targets = [t for t in (await cdp.call("Target.getTargets"))["targetInfos"] if t.get("type") == "page"]
        wanted = page_id or ctx.state.get(PAGE_STATE)
        target = next((t for t in targets if t["targetId"] == wanted), None)
        if target is None and page_id:
            raise CdpError(f"no page with id {page_id} in the browser")
        if target is None:
            # Chromium's target list is unordered: prefer a page that shows something over a blank one.
            targets.sort(key=lambda t: t.get("url") in ("about:blank", ""))
            target_id = targets[0]["targetId"] if targets else \
                (await cdp.call("Target.createTarget", {"url": "about:blank"}))["targetId"]
        else:
            target_id = target["targetId"]
        ctx.state[PAGE_STATE] = target_id
        attached = await cdp.call("Target.attachToTarget", {"targetId": target_id, "flatten": True})
        yield Page(cdp, target_id, attached["sessionId"])
    finally:
        await cdp.close()


def _page_id(args: dict[str, Any]) -> str | None:
    value = args.get("page_id")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequestError("argument 'page_id' must be a string (the page's CDP target id)")
    return value


# ---- page_use_* ------------------------------------------------------------------------------------


async def navigate(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    url = arg_str(args, "url")
    assert url is not None
    try:
        async with current_page(ctx, _page_id(args)) as page:
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
        async with current_page(ctx, _page_id(args)) as page:
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


async def needs_model(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    return ToolOutput("act, observe and extract need a language model, and this agbox server has none configured "
                      "(the model-driven browser agent is not available yet). Drive the page with Playwright over "
                      "the CDP link, or with page_use_navigate, browser_click, browser_type and browser_page_text.",
                      is_error=True)


# ---- small tools of our own ---------------------------------------------------------------------------


async def page_text(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    limit = arg_int(args, "max_chars", 20000, minimum=1, maximum=1_000_000)
    try:
        async with current_page(ctx, _page_id(args)) as page:
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
        async with current_page(ctx, _page_id(args)) as page:
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
    *(ToolDef(name, "Needs a language model (not configured on this server); answers with an error saying so.",
              schema({}), SERVER, needs_model) for name in MODEL_TOOLS),
    ToolDef("browser_page_text", "URL, title and visible text of the current page.",
            schema({"page_id": PAGE_ID, "max_chars": {"type": "integer"}}), SERVER, page_text),
    ToolDef("browser_click", "Click the element a CSS selector names in the current page.",
            schema({"selector": {"type": "string"}, "page_id": PAGE_ID}, ["selector"]), SERVER, click),
    ToolDef("browser_type", "Set the value of the input a CSS selector names (fires input and change events).",
            schema({"selector": {"type": "string"}, "text": {"type": "string"}, "page_id": PAGE_ID},
                   ["selector", "text"]), SERVER, type_text),
]
