"""Browser MCP tools and our SDK's ``session.browser`` (over HTTP and embedded), with a real Chromium."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import websockets.sync.client
from agb.modules.browser.browser import BrowserOption as OfficialOption
from agb.session_params import CreateSessionParams as OfficialParams
from mcp import Client
from playwright.async_api import async_playwright

from agbox.client.browser import BrowserError, BrowserOption, BrowserViewport
from tests.browser.helpers import png_size, serve_page
from tests.conftest import ServerProcess
from tests.server.test_mcp_endpoint import bearer, with_mcp

FORM_HTML = ("<title>form</title><input id='q'><button id='go' onclick=\"document.title='clicked '+"
             "document.getElementById('q').value\">Go</button><p>Some visible text</p>")


@pytest.fixture
def official_browser(official: Any) -> Iterator[Any]:
    result = official.create(OfficialParams(image_id="agb-browser-use-1"))
    assert result.success, result.error_message
    yield result.session
    with contextlib.suppress(Exception):
        official.delete(result.session)


def test_our_sdk_browser(make_session: Callable[..., Any]) -> None:
    session = make_session("agb-browser-use-1")
    with pytest.raises(BrowserError, match="not initialized"):
        session.browser.get_endpoint_url()
    assert session.browser.initialize(BrowserOption(viewport=BrowserViewport(800, 600), user_agent="agbox-test/1"))
    assert session.browser.is_initialized() and session.browser.get_option().user_agent == "agbox-test/1"
    url = session.browser.get_endpoint_url()
    page_url = serve_page(session)

    async def drive() -> tuple[str, str, bytes]:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.connect_over_cdp(url)
            page = await browser.contexts[0].new_page()
            await page.goto(page_url)
            shot = await session.browser.screenshot(page)
            values = await page.title(), await page.evaluate("() => navigator.userAgent")
            await browser.close()
            return values[0], values[1], shot

    title, user_agent, shot = asyncio.run(drive())
    assert title == "agbox test page" and user_agent == "agbox-test/1"
    _live_view_shows(session.browser.get_live_view_url(), "agbox test page")
    # viewport sets the window size; the page area is that less the (emulated) browser toolbar.
    width, height = png_size(shot)
    assert width == 800 and 400 < height <= 600
    session.browser.destroy()
    with pytest.raises(BrowserError, match="not running"):
        session.browser.get_endpoint_url()
    bad = make_session("agb-browser-use-1").browser
    assert not bad.initialize(BrowserOption(viewport=BrowserViewport(0, 600)))
    assert "viewport.width must be an integer between 1 and 10000" in bad.last_error


def _live_view_shows(url: str, title: str) -> None:
    """The live view page opens, refuses a wrong key, and its WebSocket streams JPEG frames of the newest page."""
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200 and "agbox live view" in page.text
    assert httpx.get(url.replace("key=", "key=0"), timeout=10).status_code == 403
    with websockets.sync.client.connect(url.replace("http", "ws", 1).replace("/browser/live?", "/browser/live/ws?"),
                                        open_timeout=10) as ws:
        frame = json.loads(ws.recv(timeout=20))
    assert base64.b64decode(frame["data"])[:3] == b"\xff\xd8\xff" and frame["title"] == title


def test_page_use_tools(official: Any, official_browser: Any, server: ServerProcess) -> None:
    """page_use_* through the official agent API, our tools through call_mcp_tool and the session MCP endpoint;
    a second browser session sees none of the first one's pages or ports."""
    session = official_browser
    assert session.browser.initialize(OfficialOption())
    page_url = serve_page(session, FORM_HTML)
    agent = session.browser.agent
    navigated = json.loads(asyncio.run(agent.navigate_async(page_url)))
    assert navigated["success"] and navigated["title"] == "form" and navigated["url"] == page_url
    shot = asyncio.run(agent.screenshot_async(full_page=True))
    assert shot.startswith("data:image/png;base64,")
    width, height = png_size(base64.b64decode(shot.split(",", 1)[1], validate=True))
    assert width == 1920 and height >= 1

    typed = session.call_mcp_tool("browser_type", {"selector": "#q", "text": "agbox"})
    clicked = session.call_mcp_tool("browser_click", {"selector": "#go"})
    assert typed.success and clicked.success, (typed.error_message, clicked.error_message)
    text = json.loads(session.call_mcp_tool("browser_page_text", {}).data)
    assert text["title"] == "clicked agbox" and "Some visible text" in text["text"]
    missing = session.call_mcp_tool("browser_click", {"selector": "#nope"})
    assert not missing.success and "no element matches #nope" in missing.error_message
    act = session.call_mcp_tool("page_use_act_async", {"context_id": 0, "action": "click go"})
    assert not act.success and "language model" in act.error_message
    assert asyncio.run(agent.close_async())

    async def scenario(client: Client) -> tuple[Any, Any, Any]:
        listed = await client.list_tools()
        navigated = await client.call_tool("page_use_navigate", {"url": "data:text/html,<title>via mcp</title>"})
        shot = await client.call_tool("page_use_screenshot", {"context_id": 0, "full_page": False})
        return listed, navigated, shot

    mcp_url = f"{server.endpoint}/sessions/{session.session_id}/mcp"
    listed, navigated_mcp, shot_mcp = with_mcp(mcp_url, bearer(session), scenario)
    assert {"stopChrome", "page_use_navigate", "page_use_screenshot", "page_use_extract_async"} <= \
        {tool.name for tool in listed.tools}
    assert navigated_mcp.is_error is False and json.loads(navigated_mcp.content[0].text)["title"] == "via mcp"
    assert png_size(base64.b64decode(shot_mcp.content[0].text.split(",", 1)[1]))[0] == 1920

    created = official.create(OfficialParams(image_id="agb-browser-use-1"))
    assert created.success, created.error_message
    try:
        _second_session_sees_nothing(session, created.session, page_url)
    finally:
        official.delete(created.session)

    # A stopped browser is reported by the page tools, not waited on.
    session.browser.destroy()
    stopped = session.call_mcp_tool("page_use_navigate", {"url": page_url})
    assert not stopped.success and "not running" in stopped.error_message


def _second_session_sees_nothing(one: Any, two: Any, page_url: str) -> None:
    assert two.browser.initialize(OfficialOption())

    async def look() -> tuple[list[str], list[str], str]:
        async with async_playwright() as playwright:
            first = await playwright.chromium.connect_over_cdp(one.browser.get_endpoint_url())
            second = await playwright.chromium.connect_over_cdp(two.browser.get_endpoint_url())
            pages_one = [p.url for p in first.contexts[0].pages]
            pages_two = [p.url for p in second.contexts[0].pages]
            other = await second.contexts[0].new_page()
            failed = ""
            try:
                await other.goto(page_url, timeout=10000)
            except Exception as exc:  # session two's loopback has nothing on the page's port
                failed = str(exc)
            await first.close()
            await second.close()
            return pages_one, pages_two, failed

    pages_one, pages_two, failed = asyncio.run(look())
    assert any(url.startswith("data:text/html") for url in pages_one)
    assert not any(url.startswith(("data:", page_url)) for url in pages_two) and "ERR_CONNECTION_REFUSED" in failed
