"""Browser persistence through contexts with the official SDK: cookies (BrowserContext), fingerprints
(BrowserFingerprintContext), and extensions (ExtensionsService)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

from agb.extension import ExtensionsService
from agb.modules.browser.browser import BrowserFingerprint, BrowserFingerprintContext, BrowserOption
from agb.modules.browser.fingerprint import FingerprintFormat
from agb.session_params import BrowserContext, CreateSessionParams
from playwright.async_api import async_playwright

from tests.browser.helpers import EXAMPLE_USER_AGENT, example_fingerprint
from tests.conftest import ServerProcess

COOKIES = [{"name": "agbox_session", "value": "kept-across-sessions", "domain": "example.test", "path": "/",
            "expires": int(time.time()) + 3600},
           {"name": "second", "value": "two", "domain": "example.test", "path": "/", "expires": int(time.time()) + 3600}]


async def _set_cookies(url: str) -> None:
    """Set cookies in the profile's context and disconnect; the browser keeps running until the release,
    which writes Chromium's pending cookie batch before it closes the browser."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.connect_over_cdp(url)
        await browser.contexts[0].add_cookies(COOKIES)  # type: ignore[arg-type]
        await browser.close()


async def _cookies_and_user_agent(url: str) -> tuple[list[dict[str, Any]], str]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.connect_over_cdp(url)
        cookies = await browser.contexts[0].cookies()  # before any page is opened
        page = await browser.contexts[0].new_page()
        await page.goto("data:text/html,<title>ua</title>")
        user_agent: str = await page.evaluate("() => navigator.userAgent")
        await browser.close()
        return [dict(c) for c in cookies], user_agent


def test_cookies_and_fingerprint_survive_to_the_next_session(official: Any) -> None:
    browser_ctx = official.context.get("agbox-browser-profile", create=True).context
    fingerprint_ctx = official.context.get("agbox-browser-fingerprint", create=True).context
    params = CreateSessionParams(image_id="agb-browser-use-1", browser_context=BrowserContext(
        browser_ctx.id, auto_upload=True, fingerprint_context=BrowserFingerprintContext(fingerprint_ctx.id)))
    try:
        first = official.create(params).session
        try:
            option = BrowserOption(use_stealth=True, fingerprint_persistent=True, fingerprint=BrowserFingerprint(
                devices=["desktop"], operating_systems=["windows"], locales=["zh-CN"]))
            assert first.browser.initialize(option)
            asyncio.run(_set_cookies(first.browser.get_endpoint_url()))
            saved = first.command.execute("cat /tmp/agb_browser_fingerprint/fingerprint.json", timeout_ms=5000)
            assert "Windows NT" in json.loads(saved.stdout)["fingerprint"]["navigator"]["userAgent"]
        finally:
            assert official.delete(first, sync_context=True).success

        second = official.create(params).session
        try:
            # Only the persisted fingerprint is named: the server reads it back.
            assert second.browser.initialize(BrowserOption(use_stealth=True, fingerprint_persistent=True))
            cookies, user_agent = asyncio.run(_cookies_and_user_agent(second.browser.get_endpoint_url()))
        finally:
            official.delete(second)
        kept = {c["name"]: c["value"] for c in cookies}
        assert kept == {"agbox_session": "kept-across-sessions", "second": "two"}
        assert "Windows NT 10.0" in user_agent
    finally:
        official.context.delete(browser_ctx)
        official.context.delete(fingerprint_ctx)


def test_extension_service_and_a_raw_fingerprint_in_a_10kb_query(official: Any, tmp_path: Path) -> None:
    """An extension zip from ExtensionsService reaches the session unpacked and Chromium loads it (its MV3
    service worker is a chrome-extension:// target); a full fingerprint travels in the init query."""
    service = ExtensionsService(official, f"extensions-{os.urandom(4).hex()}")
    profile = official.context.create(f"browser-{os.urandom(4).hex()}").context
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.json", json.dumps({"manifest_version": 3, "name": "agbox test extension",
                                                      "version": "1.0", "background": {"service_worker": "worker.js"}}))
        archive.writestr("worker.js", "self.addEventListener('install', () => {});\n")
    (tmp_path / "extension.zip").write_bytes(buffer.getvalue())
    extension = service.create(str(tmp_path / "extension.zip"))
    session = official.create(CreateSessionParams(image_id="agb-browser-use-1", browser_context=BrowserContext(
        profile.id, extension_option=service.create_extension_option([extension.id])))).session
    try:
        option = BrowserOption(use_stealth=True, extension_path="/tmp/extensions/",
                               fingerprint_format=FingerprintFormat.load(example_fingerprint()))
        assert len(json.dumps(option.to_map())) > 8000  # the request line is ~10 KB
        assert session.browser.initialize(option)

        async def extension_targets() -> list[str]:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.connect_over_cdp(session.browser.get_endpoint_url())
                cdp = await browser.new_browser_cdp_session()
                for _ in range(200):  # the service worker registers shortly after start
                    targets = (await cdp.send("Target.getTargets"))["targetInfos"]
                    found = [t["url"] for t in targets if t["url"].startswith("chrome-extension://")]
                    if found:
                        break
                    await asyncio.sleep(0.05)
                await browser.close()
                return found

        assert asyncio.run(extension_targets())
        user_agent = asyncio.run(_cookies_and_user_agent(session.browser.get_endpoint_url()))[1]
        assert user_agent == EXAMPLE_USER_AGENT
    finally:
        official.delete(session)
        service.cleanup()
        official.context.delete(profile)


def test_our_sdk_browser_context_keeps_cookies(server: ServerProcess) -> None:
    from agbox import AGB
    from agbox import CreateSessionParams as OurParams
    from agbox.client.browser import BrowserContext as OurContext
    from agbox.client.browser import BrowserOption as OurOption

    agb = AGB(api_key=server.api_key, endpoint=server.endpoint)
    ctx = agb.context.get(f"our-profile-{os.urandom(4).hex()}", create=True).context
    params = OurParams(image_id="agb-browser-use-1", browser_context=OurContext(ctx.id))
    try:
        first = agb.create(params).session
        try:
            assert first.browser.initialize(OurOption())
            asyncio.run(_set_cookies(first.browser.get_endpoint_url()))
        finally:
            assert first.delete().success  # auto upload at release
        second = agb.create(params).session
        try:
            assert second.browser.initialize(OurOption())
            cookies = asyncio.run(_cookies_and_user_agent(second.browser.get_endpoint_url()))[0]
        finally:
            second.delete()
        assert {c["name"]: c["value"] for c in cookies} == {"agbox_session": "kept-across-sessions", "second": "two"}
    finally:
        agb.context.delete(ctx)
        agb.close()
