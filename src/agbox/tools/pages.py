"""The page the browser tools act on: a CDP connection to the session's Chromium, attached to one page.

Without a ``page_id`` the tools use "the current page": the one the previous tool used if it still exists,
else a page of the browser that is not blank (one is opened when there is none).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from agbox.errors import InvalidRequestError
from agbox.tools.base import ToolContext
from agbox.tools.cdp import CdpConnection, CdpError

PAGE_STATE = "browser_page"


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
    status = await ctx.agent("browser_status", {}, timeout_s=25)  # the agent may wait for an ended browser's helpers
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


def page_id_arg(args: dict[str, Any]) -> str | None:
    value = args.get("page_id")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequestError("argument 'page_id' must be a string (the page's CDP target id)")
    return value


