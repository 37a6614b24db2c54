"""Wire operations of the session browser: ``POST /browser/init`` → ``data.port`` and
``POST /internet/getCdpLink`` → ``data.url`` (a ``ws://…/devtools/browser/<id>`` URL).

The work happens in ``agbox.services.browser``; this module registers the operations and the live
view's routes. The platform owns the BrowserService and orders its release hook (Chromium closes
before contexts upload the profile).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agbox.errors import AgboxError
from agbox.server.wire import envelope

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from agbox.server.wire import Params, WireApi


def register_ops(wire: WireApi) -> None:
    service = wire.platform.browser

    async def init_browser(owner: str, p: Params, rid: str) -> dict[str, Any]:
        port = await service.init(owner, p.get("sessionId"), p.get("persistentPath"), p.get("browserOption"))
        return envelope(rid, {"port": port})

    async def get_cdp_link(owner: str, p: Params, rid: str) -> dict[str, Any]:
        return envelope(rid, {"url": await service.cdp_url(owner, p.get("sessionId"))})

    async def live_view(owner: str, p: Params, rid: str) -> dict[str, Any]:
        return envelope(rid, {"url": service.live_url(owner, p.get("sessionId"))})

    wire.register("initBrowser", "POST", "/browser/init", init_browser)
    wire.register("getCdpLink", "POST", "/internet/getCdpLink", get_cdp_link)
    wire.register("getBrowserLiveView", "POST", "/browser/liveView", live_view)


LIVE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>agbox live view</title>
<style>body{margin:0;background:#1b1e24;color:#cfd3da;font:14px sans-serif}
#bar{padding:6px 10px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
#screen{display:block;max-width:100%;margin:0 auto}</style></head>
<body><div id="bar">connecting…</div><img id="screen" alt="">
<script>
const bar = document.getElementById("bar"), img = document.getElementById("screen");
const ws = new WebSocket(location.href.replace(/^http/, "ws").replace("/browser/live?", "/browser/live/ws?"));
ws.onmessage = (event) => {
  const frame = JSON.parse(event.data);
  if (frame.error) { bar.textContent = frame.error; return; }
  img.src = "data:image/jpeg;base64," + frame.data;
  bar.textContent = (frame.title || "(untitled)") + " — " + frame.url;
};
ws.onclose = () => { bar.textContent += " [the live view ended]"; };
</script></body></html>"""


def routes(wire: WireApi) -> list[BaseRoute]:
    """The live view: a page any browser tab can open, fed by a WebSocket of CDP screencast frames."""
    service = wire.platform.browser

    async def page(request: Request) -> Response:
        if service.live_admits(request.path_params["session_id"], request.query_params.get("key", "")) is None:
            return PlainTextResponse("Forbidden: wrong live view key, or the session has ended.", status_code=403)
        return HTMLResponse(LIVE_PAGE, headers={"Cache-Control": "no-store"})

    async def frames(websocket: WebSocket) -> None:
        record = service.live_admits(websocket.path_params["session_id"], websocket.query_params.get("key", ""))
        if record is None:
            await websocket.close(code=1008, reason="wrong live view key, or the session has ended")
            return
        await websocket.accept()

        async def send(frame: dict[str, Any]) -> None:
            await websocket.send_text(json.dumps(frame))

        async def cast() -> None:
            try:
                await service.screencast(record, send)
                await websocket.send_text(json.dumps({"error": "the browser is not running"}))
            except AgboxError as exc:
                await websocket.send_text(json.dumps({"error": exc.message}))

        async def until_viewer_leaves() -> None:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass

        tasks = {asyncio.create_task(cast()), asyncio.create_task(until_viewer_leaves())}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the viewer may be gone already
            await websocket.close()

    return [Route("/sessions/{session_id}/browser/live", page, methods=["GET"]),
            WebSocketRoute("/sessions/{session_id}/browser/live/ws", frames)]
