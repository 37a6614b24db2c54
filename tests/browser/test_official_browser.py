"""The unmodified official SDK's ``session.browser`` against a real `agbox serve`: a real Chromium in the
session's sandbox, driven from this process by the real Playwright client over the CDP link."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets.sync.client
from agb.exceptions import BrowserError
from agb.modules.browser.browser import BrowserOption, BrowserViewport
from agb.session_params import CreateSessionParams
from playwright.async_api import async_playwright

from tests.browser.helpers import png_size, serve_page
from tests.conftest import ServerProcess, wait_for


@pytest.fixture
def browser_session(official: Any) -> Iterator[Any]:
    result = official.create(CreateSessionParams(image_id="agb-browser-use-1"))
    assert result.success, result.error_message
    yield result.session
    with contextlib.suppress(Exception):
        official.delete(result.session)


async def _drive(url: str, page_url: str) -> dict[str, Any]:
    """What a user's Playwright does: connect, use the profile context, open a page, screenshot, CDP."""
    found: dict[str, Any] = {}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.connect_over_cdp(url)
        context = browser.contexts[0]  # the profile's default context
        found["initial_pages"] = [page.url for page in context.pages]
        page = await context.new_page()
        await page.goto(page_url)
        found["title"] = await page.title()
        found["heading"] = await page.inner_text("#greeting")
        found["js"] = await page.evaluate("() => [navigator.webdriver, navigator.userAgent, innerWidth, 6 * 7]")
        found["png"] = await page.screenshot()
        cdp = await browser.new_browser_cdp_session()
        found["targets"] = (await cdp.send("Target.getTargets"))["targetInfos"]
        found["cookies"] = await context.cookies()
        await browser.close()  # closes only the connection: Chromium keeps running
        # Reconnects, several at once, each a new WebSocket through the relay.
        again = await asyncio.gather(*(playwright.chromium.connect_over_cdp(url) for _ in range(3)))
        found["reconnected_pages"] = [[p.url for p in b.contexts[0].pages] for b in again]
        for other in again:
            await other.close()
    return found


async def _close_browser(url: str) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.connect_over_cdp(url)
        cdp = await browser.new_browser_cdp_session()
        with contextlib.suppress(Exception):  # the connection ends with the browser
            await cdp.send("Browser.close")


def _cdp_error(session: Any) -> str:
    """The error get_endpoint_url raises now, or '' while the browser still runs."""
    try:
        session.browser.get_endpoint_url()
    except BrowserError as exc:
        return str(exc)
    return ""


def test_official_browser_init_cdp_playwright(official: Any, browser_session: Any, server: ServerProcess) -> None:
    session = browser_session
    assert not session.browser.is_initialized()
    assert session.browser.initialize(BrowserOption(use_stealth=True, viewport=BrowserViewport(1280, 720)))
    assert session.browser.is_initialized() and session.browser.endpoint_router_port > 0
    url = session.browser.get_endpoint_url()
    assert url.startswith("ws://127.0.0.1:") and "/devtools/browser/" in url

    page_url = serve_page(session)
    found = asyncio.run(_drive(url, page_url))
    assert found["initial_pages"] == ["about:blank"]
    assert found["title"] == "agbox test page" and found["heading"] == "Hello from inside the session"
    webdriver, user_agent, inner_width, answer = found["js"]
    assert webdriver is False and "HeadlessChrome" not in user_agent and "Chrome/" in user_agent  # stealth
    assert inner_width == 1280 and answer == 42
    assert png_size(found["png"])[0] == 1280
    assert any(t["type"] == "page" and t["url"] == page_url for t in found["targets"])
    assert {"name": "visited", "value": "yes"}.items() <= found["cookies"][0].items()
    assert all(page_url in pages for pages in found["reconnected_pages"])

    # SDKs up to 0.10 ask getLink without a port for the CDP URL; with a port it is an ordinary link.
    assert session.get_link().data == url
    assert "/devtools/" not in session.get_link(port=30100).data

    # A second init (a new Session object, as from agb.get) keeps the running browser and its pages.
    again = official.get(session.session_id).session
    assert again.browser.initialize(BrowserOption())
    assert again.browser.endpoint_router_port == session.browser.endpoint_router_port
    assert again.browser.get_endpoint_url() == url
    # The async init (aiohttp, no request body) parses a JSON reply too.
    assert asyncio.run(official.get(session.session_id).session.browser.initialize_async(BrowserOption()))

    # A wrong secret in the URL is refused before anything reaches the sandbox.
    wrong = url.replace("/_agbox/", "/_agbox/0", 1)
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(wrong, open_timeout=5).close()
    assert refused.value.response.status_code == 403

    # A crash (here: SIGKILL, as the memory limit would) is reported, and init starts a new browser.
    killed = session.command.execute("kill -9 $(pgrep -o -x chromium)", timeout_ms=5000)
    assert killed.exit_code == 0, killed.stderr
    assert "SIGKILL" in wait_for(lambda: _cdp_error(session), 10, what="the crash to be seen")
    # (The SDK's Browser object skips init once initialized: a fresh Session object asks again.)
    assert official.get(session.session_id).session.browser.initialize(BrowserOption())
    relaunched = again.browser.get_endpoint_url()
    assert relaunched != url

    # A client's CDP Browser.close ends the browser; init relaunches it.
    asyncio.run(_close_browser(relaunched))
    assert "was closed" in wait_for(lambda: _cdp_error(session), 10, what="the browser to end")
    assert official.get(session.session_id).session.browser.initialize(BrowserOption())

    # destroy() = the stopChrome tool; afterwards the CDP link says the browser is not running.
    session.browser.destroy()
    with pytest.raises(BrowserError, match="not running"):
        session.browser.get_endpoint_url()
    assert official.get(session.session_id).session.browser.initialize(BrowserOption())
    last_url = again.browser.get_endpoint_url()

    # The CDP link of an ended session is refused.
    assert official.delete(session).success
    with pytest.raises((OSError, websockets.exceptions.InvalidStatus)):
        websockets.sync.client.connect(last_url, open_timeout=5).close()


def test_official_browser_errors(official: Any, server: ServerProcess) -> None:
    code = official.create(CreateSessionParams(image_id="agb-code-space-1")).session
    try:
        assert code.browser.initialize(BrowserOption()) is False
        with pytest.raises(BrowserError, match="not initialized"):
            code.browser.get_endpoint_url()
        # The precise reasons, as the wire answers them.
        headers = {"authorization": f"Bearer {server.api_key}"}
        no_browser = httpx.post(f"{server.endpoint}/browser/init", headers=headers, json={},
                                params={"sessionId": code.session_id, "browserOption": "{}"}).json()
        assert not no_browser["success"] and "has no browser" in no_browser["message"]
        cdp = httpx.post(f"{server.endpoint}/internet/getCdpLink", headers=headers, json={},
                         params={"sessionId": code.session_id}).json()
        assert not cdp["success"] and "has no browser" in cdp["message"]
    finally:
        official.delete(code)
