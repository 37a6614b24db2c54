"""Console page load: first contentful paint of ``/console`` pages in headless Chromium.

Against ``agbox serve`` with a few labelled sessions, Debian's Chromium (``/usr/bin/chromium``, driven by
Playwright, no browser download) signs in once through the form, then loads, each in a fresh tab of the
same browser context (so its cache holds the console's assets after the warm-up, as on a repeat visit):
the signed-in sessions list and one session's page (charts, terminal). First contentful paint is
``performance.getEntriesByName('first-contentful-paint')[0].startTime``, read in the page once the
browser has reported it. Baseline, interleaved sample by sample: a static tiny HTML page served by a
plain ``http.server`` in a process of its own, loaded the same way by the same browser.
"""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

if __name__ != "__main__":
    import benchlib as B

FAMILY = "console"
CHROMIUM = "/usr/bin/chromium"
SESSIONS = 5
TINY_PAGE = (b"<!doctype html><html><head><meta charset=utf-8><title>tiny</title></head>"
             b"<body><h1>Sessions</h1><p>a static page of one heading and one line</p></body></html>")
FCP_SCRIPT = """() => new Promise(resolve => {
  const now = performance.getEntriesByName('first-contentful-paint');
  if (now.length) { resolve(now[0].startTime); return; }
  new PerformanceObserver((list, observer) => {
    const found = list.getEntriesByName('first-contentful-paint');
    if (found.length) { observer.disconnect(); resolve(found[0].startTime); }
  }).observe({type: 'paint', buffered: true});
})"""
RESPONSE_SCRIPT = "() => { const n = performance.getEntriesByType('navigation')[0]; return n.responseEnd - n.startTime; }"


class _TinyHandler(http.server.BaseHTTPRequestHandler):
    # Like the agbox server: keep-alive (Chromium reuses the connection across tabs), no Nagle delay,
    # the whole answer in one write.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        head = (f"HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n"
                f"content-length: {len(TINY_PAGE)}\r\ncache-control: no-store\r\n\r\n")
        self.wfile.write(head.encode() + TINY_PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def serve_tiny() -> None:
    """The baseline's server, run as its own process (``python bench_console.py``) so that it competes
    with the bench's own threads for nothing: prints its port, serves until stdin closes."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TinyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()
    server.shutdown()


@contextlib.contextmanager
def tiny_server() -> Iterator[str]:
    process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}/tiny.html"
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def load(context: Any, url: str) -> tuple[float, float]:
    """(first contentful paint, response end) in seconds of one load of ``url`` in a fresh tab."""
    page = context.new_page()
    try:
        response = page.goto(url, wait_until="load", timeout=30_000)
        if response is None or response.status != 200:
            raise RuntimeError(f"{url} answered {response.status if response else 'nothing'}")
        fcp = float(page.evaluate(FCP_SCRIPT))
        return fcp / 1000, float(page.evaluate(RESPONSE_SCRIPT)) / 1000
    finally:
        page.close()


def run(quick: bool) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    from agbox import CreateSessionParams

    n = B.samples(quick, 40, 8)
    sessions_fcp: list[float] = []
    session_fcp: list[float] = []
    tiny_fcp: list[float] = []
    sessions_response: list[float] = []
    tiny_response: list[float] = []
    with B.server("agbox-bench-console-") as srv, tiny_server() as tiny_url, sync_playwright() as pw:
        sdk = srv.sdk()
        made = []
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            for i in range(SESSIONS):
                created = sdk.create(CreateSessionParams(image_id=B.IMAGE, labels={"team": "bench", "n": str(i)}))
                if not created.success:
                    raise RuntimeError(f"create failed: {created.error_message}")
                made.append(created.session)
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{srv.endpoint}/console/login")
            page.fill("input[name=key]", srv.api_key)
            with page.expect_navigation():
                page.press("input[name=key]", "Enter")
            if "/console/sessions" not in page.url:
                raise RuntimeError(f"sign-in did not reach the sessions page: {page.url}")
            page.close()
            sessions_url = f"{srv.endpoint}/console/sessions"
            session_url = f"{srv.endpoint}/console/sessions/{made[0].session_id}"
            B.say(f"first contentful paint: console pages vs a static page, {n} loads each, interleaved")
            for i in range(n + 2):  # two warm-up rounds fill the browser's cache
                fcp, response = load(context, sessions_url)
                page_fcp, _ = load(context, session_url)
                base_fcp, base_response = load(context, tiny_url)
                if i >= 2:
                    sessions_fcp.append(fcp)
                    sessions_response.append(response)
                    session_fcp.append(page_fcp)
                    tiny_fcp.append(base_fcp)
                    tiny_response.append(base_response)
            context.close()
        finally:
            browser.close()
            for session in made:
                with contextlib.suppress(Exception):
                    session.delete()
            sdk.close()

    baseline = "static tiny HTML page, plain http.server (interleaved)"
    return [
        B.row(FAMILY, f"first contentful paint, /console/sessions (signed in, {SESSIONS} sessions)", sessions_fcp,
              key="console.fcp_sessions", baseline=baseline, baseline_s=tiny_fcp,
              note=f"headless Debian Chromium via Playwright, a fresh tab per load, cached assets; the server's "
                   f"response was complete after {B.percentile(sessions_response, 50) * 1000:.1f} ms (p50) vs "
                   f"{B.percentile(tiny_response, 50) * 1000:.1f} ms for the static page"),
        B.row(FAMILY, "first contentful paint, a session's page (charts, terminal)", session_fcp,
              key="console.fcp_session", baseline=baseline, baseline_s=tiny_fcp),
    ]


if __name__ == "__main__":
    serve_tiny()
