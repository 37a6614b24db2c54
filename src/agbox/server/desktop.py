"""Desktop sessions seen from outside: screenshot URLs and the live view (noVNC over a relayed VNC).

- ``GET /desktop/{session}/screenshots/{key}.png``: an image taken by ``system_screenshot`` (the random
  key in the path is the credential; gone with the session).
- ``GET /desktop/{session}/{secret}/``: the live view page, a noVNC client (Debian's ``novnc`` files,
  served from ``.../novnc/``) that connects to ``.../websockify``. That WebSocket is relayed byte for byte
  to an x11vnc inside the sandbox (started on first use, listening on the sandbox's loopback only),
  through a socket opened in the sandbox's network namespace. Two secrets per session, both HMACs of the
  session token: one for control (mouse and keyboard), one view-only (x11vnc ``-viewonly``, so input is
  refused by the VNC server itself, not only by the page). Refused once the session ends; open views
  are cut when it is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agbox.models import ACTIVE_STATUSES, SessionRecord
from agbox.tools.computer import screenshot_store
from agbox.wirejson import same_secret

if TYPE_CHECKING:
    from agbox.server.wire import WireApi

log = logging.getLogger(__name__)

NOVNC_DIR = Path("/usr/share/novnc")
MODES = ("control", "view")
RELAY_CHUNK = 256 * 1024


def live_secret(record: SessionRecord, mode: str) -> str:
    return hmac.new(record.token.encode(), f"desktop-live:{mode}:{record.id}".encode(), hashlib.sha256).hexdigest()[:40]


def is_desktop(wire: WireApi, record: SessionRecord) -> bool:
    return "computer" in wire.platform.images.get(record.image_id).tool_sets


def live_urls(wire: WireApi, record: SessionRecord) -> dict[str, str]:
    base = wire.platform.settings.base_url
    return {mode: f"{base}/desktop/{record.id}/{live_secret(record, mode)}/" for mode in MODES}


def desktop_info(wire: WireApi, record: SessionRecord) -> dict[str, Any]:
    """``getMcpResource`` data of a desktop session: resourceUrl = the live view (with control)."""
    urls = live_urls(wire, record)
    ws = {mode: ("wss" + url[5:] if url.startswith("https") else "ws" + url[4:]) + "websockify"
          for mode, url in urls.items()}
    return {
        "sessionId": record.id,
        "resourceUrl": urls["control"],
        "desktopInfo": {
            "appId": record.image_id, "resourceId": f"r-{record.id[8:]}", "resourceType": "Desktop",
            "authCode": live_secret(record, "control"), "ticket": live_secret(record, "view"),
            "connectionProperties": json.dumps({"protocol": "rfb-over-websocket", "url": ws["control"],
                                                "viewOnlyUrl": ws["view"], "viewOnlyPage": urls["view"]}),
        },
    }


class LiveViews:
    """Open relays per session, so a release can cut them."""

    def __init__(self) -> None:
        self.open: dict[str, set[asyncio.Task[Any]]] = {}

    async def before_release(self, record: SessionRecord) -> None:
        for task in self.open.pop(record.id, set()):
            task.cancel()


def _active(wire: WireApi, session_id: str) -> SessionRecord | None:
    record = wire.platform.store.get_session(session_id)
    if record is None or record.status not in ACTIVE_STATUSES or record.id not in wire.platform.sessions.handles:
        return None
    return record


def _mode(record: SessionRecord, secret: str) -> str | None:
    for mode in MODES:
        if same_secret(secret, live_secret(record, mode)):
            return mode
    return None


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>agbox desktop {session}</title>
<style>html,body{{margin:0;height:100%;background:#1e1e1e;color:#ddd;font:13px sans-serif}}
#bar{{height:24px;line-height:24px;padding:0 8px}}#screen{{height:calc(100% - 24px)}}</style></head>
<body><div id="bar">agbox desktop {session} &middot; {label} &middot; <span id="status">connecting</span></div>
<div id="screen"></div>
<script type="module">
import RFB from "./novnc/core/rfb.js";
const url = new URL("websockify", window.location.href);
url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
const rfb = new RFB(document.getElementById("screen"), url.href);
rfb.scaleViewport = true;
rfb.viewOnly = {view_only};
const status = document.getElementById("status");
rfb.addEventListener("connect", () => {{ status.textContent = "live"; document.title = "agbox desktop (live)"; }});
rfb.addEventListener("disconnect", () => {{ status.textContent = "disconnected"; }});
window.agboxRfb = rfb;
</script></body></html>
"""


def routes(wire: WireApi) -> list[BaseRoute]:
    views = LiveViews()
    wire.platform.sessions.before_release.append(views.before_release)

    async def screenshot(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        record = _active(wire, session_id)
        shot = None
        if record is not None:
            shot = screenshot_store(wire.platform.sessions.tool_state.get(session_id, {})).get(request.path_params["key"])
        if shot is None:
            return PlainTextResponse("screenshot not found (or its session has ended)", status_code=404)
        return Response(shot[1], media_type="image/png", headers={"Cache-Control": "no-store"})

    def checked(request: Request | WebSocket) -> tuple[SessionRecord, str] | None:
        record = _active(wire, request.path_params["session_id"])
        if record is None:
            return None
        mode = _mode(record, request.path_params["secret"])
        return None if mode is None else (record, mode)

    async def page(request: Request) -> Response:
        found = checked(request)
        if found is None:
            return PlainTextResponse("desktop not found (or its session has ended)", status_code=404)
        record, mode = found
        if not request.url.path.endswith("/"):
            return RedirectResponse(request.url.path + "/")
        html = PAGE.format(session=record.id, label="view only" if mode == "view" else "mouse and keyboard",
                           view_only="true" if mode == "view" else "false")
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    async def novnc(request: Request) -> Response:
        if checked(request) is None:
            return PlainTextResponse("desktop not found (or its session has ended)", status_code=404)
        relative = request.path_params["path"]
        target = (NOVNC_DIR / relative).resolve()
        if not target.is_relative_to(NOVNC_DIR) or not target.is_file():
            return PlainTextResponse("not found", status_code=404)
        media = "text/javascript" if target.suffix == ".js" else mimetypes.guess_type(target.name)[0]
        return FileResponse(target, media_type=media or "application/octet-stream")

    async def websockify(websocket: WebSocket) -> None:
        found = checked(websocket)
        if found is None:
            await websocket.close(code=4404)
            return
        record, mode = found
        wire.platform.sessions.touch(record)
        handle = wire.platform.sessions.handle(record)
        runtime = wire.platform.runtime
        try:
            port = (await runtime.call(handle, "desktop_vnc", {"mode": mode}, timeout_s=30))["port"]
            sock = await runtime.connect_port(handle, int(port))
        except Exception as exc:  # the sandbox could not offer VNC: refuse this view, keep serving
            log.warning("live view of %s unavailable: %s", record.id, exc)
            await websocket.close(code=1011)
            return
        requested = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="binary" if "binary" in requested else None)
        task = asyncio.current_task()
        assert task is not None
        views.open.setdefault(record.id, set()).add(task)
        loop = asyncio.get_running_loop()

        async def to_sandbox() -> None:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes") or (message.get("text") or "").encode()
                if data:
                    await loop.sock_sendall(sock, data)

        async def to_browser() -> None:
            while True:
                data = await loop.sock_recv(sock, RELAY_CHUNK)
                if not data:
                    return
                await websocket.send_bytes(data)

        pumps = [asyncio.create_task(to_sandbox()), asyncio.create_task(to_browser())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the session was released
        finally:
            for pump in pumps:
                pump.cancel()
            for pump in pumps:
                with contextlib.suppress(asyncio.CancelledError, OSError, WebSocketDisconnect, RuntimeError):
                    await pump
            sock.close()
            views.open.get(record.id, set()).discard(task)
            with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                await websocket.close()

    return [
        Route("/desktop/{session_id}/screenshots/{key}.png", screenshot, methods=["GET"]),
        Route("/desktop/{session_id}/{secret}/", page, methods=["GET"]),
        Route("/desktop/{session_id}/{secret}", page, methods=["GET"]),
        Route("/desktop/{session_id}/{secret}/novnc/{path:path}", novnc, methods=["GET"]),
        WebSocketRoute("/desktop/{session_id}/{secret}/websockify", websockify),
    ]


def register_ops(wire: WireApi) -> None:
    """Desktop sessions answer getMcpResource with the live view (resourceUrl) and desktopInfo."""

    def live_view(record: SessionRecord) -> dict[str, Any]:
        return desktop_info(wire, record) if is_desktop(wire, record) else {}

    wire.resource_info.append(live_view)
