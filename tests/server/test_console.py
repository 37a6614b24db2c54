"""The web console (/console) against a real `agbox serve`: plain HTTP checks of its sign-in and API
authorization, and Debian's Chromium (driven by Playwright) going through it as a person would."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agb.session_params import CreateSessionParams
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.conftest import REPO, ServerProcess, wait_for
from tests.firefox import Firefox

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
        assert "frame-src 'self'" in csp and "frame-ancestors 'none'" in csp
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
        files = client.get("/console/assets/console-files.js")
        assert "max-age=3600" in files.headers["cache-control"] and files.headers["etag"]
        assert client.get("/console/assets/console-files.js",
                          headers={"if-none-match": files.headers["etag"]}).status_code == 304
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
        assert page.evaluate("localStorage.length + sessionStorage.length") == 0
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


def test_console_session_api_refuses_strangers_and_reports_bad_paths(server: ServerProcess, official: Any) -> None:
    created = official.create(CreateSessionParams(image_id="agb-code-space-1"))
    assert created.success, created.error_message
    session = created.session
    api = f"/console/api/sessions/{session.session_id}"
    try:
        with httpx.Client(base_url=server.endpoint, timeout=60) as client:
            for method, path in (("GET", "/files"), ("GET", "/files/content"), ("PUT", "/files/content"),
                                 ("GET", "/files/text"), ("POST", "/links"), ("GET", "/ports")):
                assert client.request(method, api + path).status_code == 401, (method, path)
            assert client.get("/console/contexts").headers["location"] == "/console/login"
            assert sign_in(client, server.api_key).status_code == 303

            missing = client.get(f"{api}/files", params={"path": "/no/such/folder"})
            assert missing.status_code == 404 and missing.json()["error"] == "No such file or directory: /no/such/folder"
            a_file = client.get(f"{api}/files", params={"path": "/etc/hostname"})
            assert a_file.status_code == 400 and "Not a directory: /etc/hostname" in a_file.json()["error"]
            folder = client.get(f"{api}/files/content", params={"path": "/etc"})
            assert folder.status_code == 400 and folder.text == "Is a directory, not a file: /etc"
            assert client.get(f"{api}/files/text", params={"path": "/usr/bin/python3"}).json()["error"].endswith(
                "is not a text file (it has NUL bytes); download it instead")

            # Writes need this site's Origin; a refused upload leaves nothing behind.
            forged = client.put(f"{api}/files/content", params={"path": "/tmp/x"}, content=b"x",
                                headers={"origin": "http://elsewhere.example"})
            assert forged.status_code == 403
            denied = client.put(f"{api}/files/content", params={"path": "/proc/x"}, content=b"x")
            assert denied.status_code in (400, 404) and "/proc/" in denied.json()["error"]
            into_folder = client.put(f"{api}/files/content", params={"path": "/tmp"}, content=b"x")
            assert into_folder.json()["error"] == "Could not upload /tmp: Is a directory, not a file: /tmp"
            empty = client.put(f"{api}/files/content", params={"path": "empty.txt"}, content=b"")
            assert empty.json() == {"path": "/home/user/empty.txt", "bytes": 0}
            assert client.get(f"{api}/files/content", params={"path": "empty.txt"}).content == b""
            listed = client.get(f"{api}/files").json()
            assert listed["path"] == "/home/user" and {"name": "empty.txt", "directory": False, "size": 0} in listed["entries"]
            assert not any(".agbox-upload-" in e["name"] for e in listed["entries"])

            outside = client.post(f"{api}/links", json={"port": 80}).json()
            assert outside["error"] == "port 80 is outside the link port range 30100-30199"
            assert client.post(f"{api}/links", content=b"not json").status_code == 400

            # An upload cut off half way (the client goes away) leaves neither the file nor its temporary.
            def cut_names() -> list[str]:
                entries = client.get(f"{api}/files", params={"path": "/tmp"}).json()["entries"]
                return [e["name"] for e in entries if "cut.bin" in e["name"]]

            def cut_off() -> Iterator[bytes]:
                yield b"x" * (5 << 20)  # more than one range: the first is written to the temporary file
                staged = wait_for(cut_names, 30, interval_s=0.05, what="the upload's temporary file")
                assert staged[0].startswith(".cut.bin.agbox-upload-"), staged
                raise ConnectionAbortedError("the browser went away")

            with httpx.Client(base_url=server.endpoint, timeout=60, cookies=client.cookies) as uploader, \
                    pytest.raises(ConnectionAbortedError):
                uploader.put(f"{api}/files/content", params={"path": "/tmp/cut.bin"}, content=cut_off())

            def tmp_is_clean() -> bool:
                return not cut_names()

            wait_for(tmp_is_clean, 30, interval_s=0.1, what="the cut-off upload's temporary file to go")
            assert client.post(f"{api}/links", json={}).json()["error"] == "a port is required"
            other = client.get("/console/api/sessions/session-none/files")
            assert other.status_code == 404
    finally:
        official.delete(session)


def goto(page: Page, url: str) -> None:
    """``page.goto``, loaded again when the host Chromium aborted it because sandboxes starting elsewhere
    added or removed host veths (ERR_NETWORK_CHANGED: the host browser's doing, not the console's)."""
    for attempt in range(3):
        try:
            page.goto(url)
            return
        except PlaywrightError as exc:
            if "ERR_NETWORK_CHANGED" not in str(exc) or attempt == 2:
                raise


def signed_in_page(server: ServerProcess, chromium: Browser, **options: Any) -> tuple[BrowserContext, Page]:
    context = chromium.new_context(viewport={"width": 1200, "height": 900}, **options)
    page = context.new_page()
    page.set_default_timeout(30_000)
    goto(page, f"{server.endpoint}/console/login")
    page.fill("input[name=key]", server.api_key)
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    return context, page


def test_console_file_browser_and_links_in_chromium(server: ServerProcess, chromium: Browser, official: Any,
                                                     tmp_path: Path) -> None:
    created = official.create(CreateSessionParams(image_id="agb-code-space-1", labels={"console": "files"}))
    assert created.success, created.error_message
    session = created.session
    assert session.file.write("/home/user/notes/readme.txt", "hello from the sandbox\nsecond line\n").success
    context, page = signed_in_page(server, chromium, accept_downloads=True)
    try:
        goto(page, f"{server.endpoint}/console/sessions/{session.session_id}")
        files = page.locator("#files")
        # The listing starts at the home folder; folders open in place (the terminal stays connected).
        files.locator("tr[data-name=notes] a.folder").click()
        expect(files.locator("input[name=path]")).to_have_value("/home/user/notes")
        files.locator("tr[data-name='readme.txt'] button.view").click()
        expect(files.locator(".viewer-text")).to_have_text("hello from the sandbox\nsecond line\n")
        expect(files.locator(".viewer-note")).to_have_text("35 B")

        # Upload 6 MiB of random bytes (more than one transfer range) as the raw body, see it listed.
        original = os.urandom(6 * 1024 * 1024 + 123)
        local = tmp_path / "random.bin"
        local.write_bytes(original)
        files.locator("form.upload input[type=file]").set_input_files(str(local))
        files.locator("form.upload button[type=submit]").click()
        expect(files.locator(".upload-status")).to_have_text("Uploaded /home/user/notes/random.bin (6.0 MiB).")
        row = files.locator("tr[data-name='random.bin']")
        expect(row.locator(".size")).to_have_text("6.0 MiB")
        assert int(session.file.info("/home/user/notes/random.bin").file_info["size"]) == len(original)

        with page.expect_download() as downloading:
            row.locator("a.download").click()
        download = downloading.value
        assert download.suggested_filename == "random.bin"
        assert Path(download.path()).read_bytes() == original

        # A path that is not there: the page says exactly what is wrong.
        files.locator("input[name=path]").fill("/no/such/folder")
        files.locator("form.files-nav button").click()
        expect(files.locator(".files-error")).to_have_text("No such file or directory: /no/such/folder")
        files.locator("tr[data-kind=parent] a").click()
        expect(files.locator(".files-error")).to_be_hidden()
        expect(files.locator("input[name=path]")).to_have_value("/home/user")

        # Links: an HTTP server started in the terminal is listed as listening and reached through its link.
        expect(page.locator(".terminal-status")).to_have_text("Connected.")
        page.locator("#terminal").click()
        page.keyboard.type("cd ~/notes && python3 -m http.server 30123 --bind 127.0.0.1 &\n")
        expect(page.locator("#terminal .xterm-rows")).to_contain_text("Serving HTTP on 127.0.0.1 port 30123")
        page.click("#links button.refresh-ports")
        page.click("#links button.port-link[data-port='30123']")
        link = page.locator("#links li[data-port='30123'] a")
        expect(link).to_have_attribute("href", re.compile(r"^http://127\.0\.0\.1:\d+/_agbox/"))
        url = link.get_attribute("href") or ""
        assert url == session.get_link(port=30123).data
        answer = httpx.get(url + "readme.txt", timeout=30, follow_redirects=True)
        assert answer.status_code == 200 and answer.text == "hello from the sandbox\nsecond line\n"
        files.locator("tr[data-name=notes] a.folder").click()
        expect(files.locator("tr[data-name='random.bin'] .size")).to_have_text("6.0 MiB")
        screenshot(page, "session-files")

        # A port outside the link range is stopped by the form itself (the server's refusal is tested above).
        page.fill("#links input[name=port]", "8080")
        page.click("#links form.link-form button")
        assert page.locator("#links input[name=port]").evaluate("input => input.validity.rangeUnderflow")
        expect(page.locator("#links li")).to_have_count(1)
    finally:
        context.close()
        official.delete(session)


def test_console_contexts_list_files_download_and_delete_in_chromium(server: ServerProcess, chromium: Browser,
                                                                     official: Any) -> None:
    name = f"console-ctx-{os.urandom(3).hex()}"
    made = official.context.create(name)
    assert made.success, made.error_message
    ctx = made.context
    report, blob = b"quarterly numbers\n", os.urandom(300_000)
    for path, data in (("/data/report.txt", report), ("/data/raw/blob.bin", blob)):
        assert httpx.put(official.context.get_file_upload_url(ctx.id, path).url, content=data).status_code == 200
    context, page = signed_in_page(server, chromium, accept_downloads=True)
    try:
        page.click("header nav a:text('Contexts')")
        row = page.locator(f"tr[data-context={ctx.id}]")
        expect(row).to_contain_text(name)
        expect(row.locator("td").nth(2)).to_have_text("2")
        expect(row.locator("td").nth(3)).to_have_text("293.0 KiB")
        expect(row.locator("td").nth(4)).to_have_text("available")
        screenshot(page, "contexts")

        row.locator(f"a:text('{name}')").click()
        expect(page.get_by_role("heading", name=f"Context {name}")).to_be_visible()
        page.click("table.context-files a.folder:text('data/')")
        expect(page.locator(".folder-path")).to_have_text("/data")
        with page.expect_download() as downloading:
            page.locator("tr[data-path='/data/report.txt'] a:text('Download')").click()
        assert Path(downloading.value.path()).read_bytes() == report
        page.click("table.context-files a.folder:text('raw/')")
        with page.expect_download() as downloading:
            page.locator("tr[data-path='/data/raw/blob.bin'] a:text('Download')").click()
        assert downloading.value.suggested_filename == "blob.bin"
        assert Path(downloading.value.path()).read_bytes() == blob
        screenshot(page, "context")

        # Deleting asks first; Cancel keeps the context.
        page.click("a.danger:text('Delete this context')")
        expect(page.get_by_role("heading", name=f"Delete context {name}?")).to_be_visible()
        expect(page.locator(".confirm")).to_contain_text("2 file(s)")
        page.click(".confirm a:text('Cancel')")
        expect(page.get_by_role("heading", name=f"Context {name}")).to_be_visible()
        assert official.context.get(context_id=ctx.id).success
        page.click("a.danger:text('Delete this context')")
        page.click(".confirm button.danger")
        expect(page.get_by_role("heading", name="Contexts")).to_be_visible()
        expect(page.locator(f"tr[data-context={ctx.id}]")).to_have_count(0)
        assert not official.context.get(context_id=ctx.id).success

        goto(page, f"{server.endpoint}/console/contexts/{ctx.id}")
        expect(page.get_by_role("alert")).to_have_text(f"context {ctx.id} not found")
    finally:
        context.close()
        if official.context.get(context_id=ctx.id).success:
            official.context.delete(ctx)


# Magenta pixels on the noVNC canvas of the live view page (the remote screen as the client drew it).
MAGENTA_PIXELS = """() => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || !canvas.width) return 0;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] === 255 && data[i + 1] === 0 && data[i + 2] === 255) count++;
  return count;
}"""


def test_console_embeds_the_live_view_of_desktop_and_browser_sessions(server: ServerProcess, chromium: Browser,
                                                                      official: Any) -> None:
    desktop = official.create(CreateSessionParams(image_id="agb-computer-use-ubuntu-2204"))
    assert desktop.success, desktop.error_message
    browser = official.create(CreateSessionParams(image_id="agb-browser-use-1"))
    context, page = signed_in_page(server, chromium)
    try:
        assert browser.success, browser.error_message
        # A browser session frames its browser's live view page (same URL as get_browser_live_view).
        with httpx.Client(base_url=server.endpoint, timeout=60) as client:
            sign_in(client, server.api_key)
            html_text = client.get(f"/console/sessions/{browser.session.session_id}").text
            frame = re.search(r'<iframe class="live-view browser" src="([^"]+)"', html_text)
            assert frame is not None and "/browser/live?key=" in frame.group(1)
            assert client.get(frame.group(1).replace("&amp;", "&")).status_code == 200
            plain = client.get("/console/sessions/" + desktop.session.session_id.replace("session-", "session-x"))
            assert "live-view" not in plain.text

        # A desktop session frames noVNC on the session's desktop, connected and drawing.
        # Sandboxes starting elsewhere add and remove host veths, and the host Chromium then aborts loads in
        # flight (ERR_NETWORK_CHANGED): noVNC's modules may fail to load. That is the host browser's doing, so
        # such a page is loaded again (a bounded number of times).
        network_changed: list[str] = []
        page.on("requestfailed", lambda request: network_changed.append(request.url)
                if "ERR_NETWORK_CHANGED" in (request.failure or "") else None)
        started = desktop.session.computer.app.start("xterm -bg '#ff00ff' -T console-live -geometry 100x30+80+60")
        assert started.success, started.error_message
        network_changed.clear()  # a failure of the pages before counts for nothing here
        goto(page, f"{server.endpoint}/console/sessions/{desktop.session.session_id}")
        live = page.locator("iframe.live-view.desktop")
        expect(live).to_be_visible()
        info = desktop.session.info()
        assert info.success
        assert live.get_attribute("src") == info.data["resource_url"].removeprefix(server.endpoint)
        status = page.frame_locator("iframe.live-view").locator("#status")
        for _ in range(6):
            wait_for(lambda: status.text_content() == "live" or network_changed, 45, interval_s=0.2,
                     what="the live view to connect")
            if status.text_content() == "live":
                break
            network_changed.clear()
            goto(page, page.url)
        expect(status).to_have_text("live")
        # The magenta xterm arrives through x11vnc, the relay and noVNC onto the framed page's canvas.
        frame = live.element_handle().content_frame()
        assert frame is not None
        wait_for(lambda: frame.evaluate(MAGENTA_PIXELS) > 10_000, 30, interval_s=0.2, what="the xterm in the live view")
        screenshot(page, "desktop")
    finally:
        context.close()
        official.delete(desktop.session)
        if browser.success:
            official.delete(browser.session)


def test_console_in_firefox_sign_in_list_terminal_and_files(server: ServerProcess, official: Any,
                                                           tmp_path: Path) -> None:
    created = official.create(CreateSessionParams(image_id="agb-code-space-1", labels={"browser": "firefox"}))
    assert created.success, created.error_message
    session = created.session
    assert session.file.write("/home/user/hello-firefox.txt", "seen in Firefox\n").success
    firefox = Firefox(tmp_path / "firefox-profile")
    try:
        firefox.navigate(f"{server.endpoint}/console")
        firefox.type("input[name=key]", "agbox_wrong")
        firefox.click("button[type=submit]")
        assert "not valid" in firefox.wait_script("return document.querySelector('[role=alert]')?.textContent")
        firefox.type("input[name=key]", server.api_key)
        firefox.click("button[type=submit]")
        firefox.wait_script("return document.querySelector('h1')?.textContent === 'Sessions'")
        assert firefox.script("return document.cookie") == "" and server.api_key not in firefox.url()
        labels = firefox.script(f"return document.querySelector('tr[data-session={session.session_id}] .labels')"
                                ".textContent")
        assert labels == "browser=firefox"

        firefox.click(f"tr[data-session={session.session_id}] a")
        firefox.wait_script("return document.querySelector('.terminal-status').textContent === 'Connected.'")
        firefox.type("#terminal textarea", "echo firefox-$((6*7))\n")
        firefox.wait_script("return document.querySelector('#terminal .xterm-rows').textContent"
                            ".includes('firefox-42')")
        firefox.wait_script("return document.querySelector('.meter[data-metric=memory] .value')"
                            ".textContent.includes('iB /')")
        firefox.click("#files tr[data-name='hello-firefox.txt'] button.view")
        firefox.wait_script("return document.querySelector('#files .viewer-text').textContent === 'seen in Firefox\\n'")
        if SCREENSHOTS is not None:
            (Path(SCREENSHOTS) / "console-firefox.png").write_bytes(firefox.screenshot())
    finally:
        firefox.close()
        official.delete(session)
