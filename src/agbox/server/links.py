"""Wire operations of links: ``GET /internet/getLink`` (and ``GET /mcp/getLink``) → ``data.url``.

The proxy itself (listeners, admission, relay) lives in ``agbox.services.links``; this module only
registers the operations (the platform owns the LinkService and its release hook).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agbox.server.wire import envelope

if TYPE_CHECKING:
    from agbox.server.wire import Params, WireApi


def register_ops(wire: WireApi) -> None:
    service = wire.platform.links

    async def get_link(owner: str, p: Params, rid: str) -> dict[str, Any]:
        if p.get("port") in (None, ""):
            cdp_url = await wire.platform.browser.legacy_cdp_url(owner, p.get("sessionId"))
            if cdp_url is not None:  # SDKs up to 0.10 fetch the CDP URL this way
                return envelope(rid, {"url": cdp_url})
        url = await service.get_link(owner, p.get("sessionId"), p.get("protocolType"), p.get("port"))
        return envelope(rid, {"url": url})

    wire.register("getLink", "GET", "/internet/getLink", get_link)
    wire.register("getLinkAsync", "GET", "/mcp/getLink", get_link)
