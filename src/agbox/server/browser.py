"""Wire operations of the session browser: ``POST /browser/init`` → ``data.port`` and
``POST /internet/getCdpLink`` → ``data.url`` (a ``ws://…/devtools/browser/<id>`` URL).

The work happens in ``agbox.services.browser``; this module registers the operations. The platform
owns the BrowserService and orders its release hook (Chromium closes before contexts upload the
profile).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agbox.server.wire import envelope

if TYPE_CHECKING:
    from agbox.server.wire import Params, WireApi


def register_ops(wire: WireApi) -> None:
    service = wire.platform.browser

    async def init_browser(owner: str, p: Params, rid: str) -> dict[str, Any]:
        port = await service.init(owner, p.get("sessionId"), p.get("persistentPath"), p.get("browserOption"))
        return envelope(rid, {"port": port})

    async def get_cdp_link(owner: str, p: Params, rid: str) -> dict[str, Any]:
        return envelope(rid, {"url": await service.cdp_url(owner, p.get("sessionId"))})

    wire.register("initBrowser", "POST", "/browser/init", init_browser)
    wire.register("getCdpLink", "POST", "/internet/getCdpLink", get_cdp_link)
