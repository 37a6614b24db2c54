"""``session.resource_url`` (official SDK): AGB's query parameters, and a page a person can open."""

from __future__ import annotations

import html
import re
import urllib.parse
from typing import Any

import httpx
from agb.modules.browser.browser import BrowserOption
from agb.session_params import CreateSessionParams


def test_resource_url_has_agb_parameters_and_opens_the_session_page(official_session: Any) -> None:
    session = official_session
    url = urllib.parse.urlsplit(session.resource_url)
    query = urllib.parse.parse_qs(url.query)
    assert set(query) == {"resourceId", "authcode"}
    assert query["resourceId"] == [session.resource_id]
    assert len(query["authcode"][0]) >= 32
    assert session.info().data["resource_url"] == session.resource_url
    assert session.set_labels({"team": "<b>core</b>"}).success
    link = session.get_link(port=30100)
    assert link.success, link.error_message

    page = httpx.get(session.resource_url)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert session.session_id in page.text and "agb-code-space-1" in page.text and "RUNNING" in page.text
    assert "&lt;b&gt;core&lt;/b&gt;" in page.text and "<b>core</b>" not in page.text  # labels are escaped
    assert link.data in page.text  # the session's open link
    assert "<th>Browser</th><td>not started</td>" in page.text

    wrong = session.resource_url.replace(query["authcode"][0], "0" * len(query["authcode"][0]))
    for denied in (wrong, session.resource_url.split("&authcode=")[0],
                   session.resource_url.replace(session.session_id, "session-00000000000000000000")):
        answer = httpx.get(denied)
        assert answer.status_code == 403, denied
        assert answer.headers["content-type"].startswith("text/html")
        assert session.session_id not in answer.text


def test_page_embeds_the_live_view_of_a_running_browser(official: Any) -> None:
    session = official.create(CreateSessionParams(image_id="agb-browser-use-1")).session
    try:
        assert "No live view" in httpx.get(session.resource_url).text
        assert session.browser.initialize(BrowserOption())
        page = httpx.get(session.resource_url)
        assert page.status_code == 200 and "Chromium running" in page.text
        frame = re.search(r'<iframe class="live" src="([^"]+)"', page.text)
        assert frame is not None
        live = httpx.get(html.unescape(frame.group(1)))
        assert live.status_code == 200 and "agbox live view" in live.text
    finally:
        official.delete(session)


def test_page_shows_a_running_browser() -> None:
    from agbox.models import SessionRecord, SessionStatus
    from agbox.server.session_page import render

    record = SessionRecord(id="session-abc", owner="k", image_id="agb-browser-use-1", status=SessionStatus.RUNNING,
                           labels={}, created_at=1.0, last_active_at=2.0, idle_timeout_s=300, expires_at=3.0, token="t")
    live = "http://h/sessions/session-abc/browser/live?key=k&x=1"
    page = render(record, "http://h/sessions/session-abc/mcp", [], 9222, live)
    assert "Chromium running (DevTools port 9222" in page and "agb-browser-use-1" in page
    assert '<iframe class="live" src="http://h/sessions/session-abc/browser/live?key=k&amp;x=1"' in page
