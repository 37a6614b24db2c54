"""Wire operations of links: ``GET /internet/getLink`` (and ``GET /mcp/getLink``) → ``data.url``.

The proxy itself (listeners, admission, relay) lives in ``agbox.services.links``; this module only
registers the operations and the release hook that closes a session's links.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agbox.server.wire import envelope
from agbox.services.browser import BrowserService
from agbox.services.links import LinkService

if TYPE_CHECKING:
    from agbox.server.wire import Params, WireApi


def link_service(wire: WireApi) -> LinkService:
    """The platform's one LinkService (made on first use, its release hook registered once)."""
    service = wire.platform.extensions.get("links")
    if not isinstance(service, LinkService):
        service = LinkService(wire.platform)
        wire.platform.extensions["links"] = service
        wire.platform.sessions.before_release.append(service.before_release)
        wire.platform.close_hooks.append(service.close)
    return service


def register_ops(wire: WireApi) -> None:
    service = link_service(wire)

    async def get_link(owner: str, p: Params, rid: str) -> dict[str, Any]:
        if p.get("port") in (None, ""):
            browser = wire.platform.extensions.get("browser")
            cdp_url = None
            if isinstance(browser, BrowserService):
                cdp_url = await browser.legacy_cdp_url(owner, p.get("sessionId"))
            if cdp_url is not None:  # SDKs up to 0.10 fetch the CDP URL this way
                return envelope(rid, {"url": cdp_url})
        url = await service.get_link(owner, p.get("sessionId"), p.get("protocolType"), p.get("port"))
        return envelope(rid, {"url": url})

    wire.register("getLink", "GET", "/internet/getLink", get_link)
    wire.register("getLinkAsync", "GET", "/mcp/getLink", get_link)
