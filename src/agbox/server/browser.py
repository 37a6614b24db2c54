"""Wire operations of the session browser: ``POST /browser/init`` → ``data.port`` and
``POST /internet/getCdpLink`` → ``data.url`` (a ``ws://…/devtools/browser/<id>`` URL).

The work happens in ``agbox.services.browser``; this module registers the operations and the
release hook that closes Chromium before contexts upload the profile (so it is registered before
the contexts feature's hook, see ``FEATURE_MODULES``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agbox.server.links import link_service
from agbox.server.wire import envelope
from agbox.services.browser import BrowserService

if TYPE_CHECKING:
    from agbox.server.wire import Params, WireApi
    from agbox.services.platform import Platform


def browser_service_of(platform: Platform) -> BrowserService | None:
    service = platform.extensions.get("browser")
    return service if isinstance(service, BrowserService) else None


def browser_service(wire: WireApi) -> BrowserService:
    """The platform's one BrowserService (made on first use, its release hook registered once)."""
    service = browser_service_of(wire.platform)
    if service is None:
        service = BrowserService(wire.platform, link_service(wire))
        wire.platform.extensions["browser"] = service
        wire.platform.sessions.before_release.append(service.before_release)
    return service


def register_ops(wire: WireApi) -> None:
    service = browser_service(wire)

    async def init_browser(owner: str, p: Params, rid: str) -> dict[str, Any]:
        port = await service.init(owner, p.get("sessionId"), p.get("persistentPath"), p.get("browserOption"))
        return envelope(rid, {"port": port})

    async def get_cdp_link(owner: str, p: Params, rid: str) -> dict[str, Any]:
        return envelope(rid, {"url": await service.cdp_url(owner, p.get("sessionId"))})

    wire.register("initBrowser", "POST", "/browser/init", init_browser)
    wire.register("getCdpLink", "POST", "/internet/getCdpLink", get_cdp_link)
