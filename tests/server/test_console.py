"""The web console (/console) against a real `agbox serve`: plain HTTP checks of its sign-in and API
authorization, and Debian's Chromium (driven by Playwright) going through it as a person would."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import REPO, ServerProcess

CHROMIUM = "/usr/bin/chromium"
# Set AGBOX_CONSOLE_SCREENSHOTS=1 to refresh the screenshots in docs/ (looked at, then committed).
SCREENSHOTS = REPO / "docs" if os.environ.get("AGBOX_CONSOLE_SCREENSHOTS") else None


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    return client.post("/console/login", data={"key": key})


def test_console_api_refuses_requests_without_a_signed_in_cookie(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.endpoint, timeout=30) as client:
        assert client.get("/console/api/sessions/s-none/metrics").status_code == 401
        assert client.get("/console/api/sessions/s-none/terminal").status_code == 401
        # A cookie that is not ours (not signed under the server's secret) counts for nothing.
        client.cookies.set("agbox_console", "eyJrZXkiOiJrZXktMSJ9.00", path="/console")
        assert client.get("/console/api/sessions/s-none/terminal").status_code == 401
        page = client.get("/console/sessions")
        assert page.status_code == 303 and page.headers["location"] == "/console/login"


def test_sign_in_sets_an_http_only_strict_cookie_without_the_key(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.endpoint, timeout=30) as client:
        refused = sign_in(client, "not-a-key")
        assert refused.status_code == 401 and "not valid" in refused.text and "set-cookie" not in refused.headers

        answer = sign_in(client, server.api_key)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/sessions"
        cookie = answer.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "Path=/console" in cookie
        assert server.api_key not in cookie

        listing = client.get("/console/sessions")
        assert listing.status_code == 200 and "<h1>Sessions</h1>" in listing.text
        csp = listing.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert listing.headers["cache-control"] == "no-store"
        # An unknown session is "not found" for the signed-in key too.
        assert client.get("/console/api/sessions/s-none/metrics").status_code == 404

        # Bad input gets a page that says what is wrong (not a 500).
        bad = client.post("/console/sessions", data={"image": "agb-code-space-1", "labels": "no-equals-sign"})
        assert bad.status_code == 400 and "key=value" in bad.text
        unknown = client.post("/console/sessions", data={"image": "no-such-image"})
        assert unknown.status_code in (400, 404) and "no-such-image" in unknown.text
        assert client.post("/console/sessions", data={"labels": "x" * 20_000}).status_code == 413

        # A form posted from another site is refused even with the cookie.
        forged = client.post("/console/sessions", data={"image": "agb-code-space-1"},
                             headers={"origin": "http://elsewhere.example"})
        assert forged.status_code == 403

        signed_out = client.post("/console/logout")
        assert signed_out.status_code == 303
        client.cookies.clear()  # what the browser does with the expired cookie the server sent
        assert client.get("/console/api/sessions/s-none/metrics").status_code == 401


def test_console_assets_are_cached_files(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.endpoint, timeout=30) as client:
        script = client.get("/console/assets/console.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert "max-age=3600" in script.headers["cache-control"]
        xterm = client.get("/console/assets/xterm.mjs")
        assert xterm.status_code == 200 and "Terminal" in xterm.text
        assert client.get("/console/assets/..%2Fconsole.py").status_code == 404
        assert client.get("/console/assets/missing.js").status_code == 404


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS is not None:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"console-{name}.png"), full_page=True)


def test_console_in_chromium_sign_in_create_terminal_labels_delete(server: ServerProcess, chromium: Browser) -> None:
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    created: str | None = None
    try:
        page.goto(f"{server.endpoint}/console")
        page.fill("input[name=key]", "agbox_wrong")
        page.click("button[type=submit]")
        expect(page.get_by_role("alert")).to_contain_text("not valid")
        assert context.cookies() == []

        page.fill("input[name=key]", server.api_key)
        page.click("button[type=submit]")
        expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
        cookies = context.cookies()
        assert [c["name"] for c in cookies] == ["agbox_console"]
        assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # not readable by scripts
        assert server.api_key not in page.url

        page.fill("form.create input[name=labels]", "team=console, env=test")
        page.fill("form.create input[name=timeout]", "600")
        page.click("form.create button[type=submit]")
        page.wait_for_url(re.compile(r"/console/sessions/[^/]+$"))
        created = page.url.rsplit("/", 1)[1]
        expect(page.locator("table.info")).to_contain_text("team=console")

        # Live figures from get_metrics, refreshed by the script.
        expect(page.locator(".meter[data-metric=memory] .value")).to_contain_text("iB /")
        first = page.locator(".updated").text_content()
        expect(page.locator(".updated")).not_to_have_text(first or "")

        # The terminal: a shell on the session's PTY, drawn by xterm.js.
        expect(page.locator(".terminal-status")).to_have_text("Connected.")
        page.locator("#terminal").click()
        page.keyboard.type("echo console-$((40+2))\n")
        expect(page.locator("#terminal .xterm-rows")).to_contain_text("console-42")

        # Memory taken in the session shows in the memory figure within a few refreshes.
        page.keyboard.type("python3 -c 'b = b\"x\" * (300 << 20); print(\"held\"); input()'\n")
        expect(page.locator("#terminal .xterm-rows")).to_contain_text("held")
        page.wait_for_function("""() => {
            const text = document.querySelector('.meter[data-metric=memory] .value').textContent;
            const match = /^([0-9.]+) (MiB|GiB)/.exec(text);
            return match && (match[2] === 'GiB' || parseFloat(match[1]) >= 300);
        }""", timeout=15_000)
        screenshot(page, "session")
        page.keyboard.press("Control+C")

        # Labels are edited on the session page.
        page.fill("form.labels-edit input[name=labels]", "team=console, env=test, owner=me")
        page.click("form.labels-edit button[type=submit]")
        expect(page.locator("table.info")).to_contain_text("owner=me")
        page.fill("form.labels-edit input[name=labels]", "broken")
        page.click("form.labels-edit button[type=submit]")
        expect(page.get_by_role("alert")).to_contain_text("key=value")

        page.click("header nav a")
        row = page.locator(f"tr[data-session={created}]")
        expect(row).to_contain_text("team=console")
        expect(row).to_contain_text("env=test")
        expect(row.locator(".status")).to_have_text("RUNNING")
        page.fill("form.filter input[name=labels]", "team=console")
        page.click("form.filter button[type=submit]")
        expect(row).to_be_visible()
        screenshot(page, "sessions")
        page.fill("form.filter input[name=labels]", "team=nobody")
        page.click("form.filter button[type=submit]")
        expect(page.locator(".empty")).to_contain_text("match this filter")

        page.goto(f"{server.endpoint}/console/sessions")
        page.locator(f"tr[data-session={created}] button.danger").click()
        expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
        expect(page.locator(f"tr[data-session={created}]")).to_have_count(0)
        created = None

        page.click("header nav button")
        expect(page.locator("input[name=key]")).to_be_visible()
        assert context.cookies() == []
    finally:
        context.close()
        if created is not None:
            httpx.post(f"{server.endpoint}/mcp/releaseSession", json={"sessionId": created},
                       headers={"authorization": f"Bearer {server.api_key}"}, timeout=30)
