"""The page a session's ``resourceUrl`` opens: ``GET /sessions/{id}/view?resourceId=…&authcode=…``.

A small HTML page for a person: the session's id, image, status, labels, times, links (its MCP
endpoint and the port links it has open) and its browser: while Chromium runs, the page embeds the
browser's live view (server/browser.py, its own key). Desktop views will go there too.
Authorized by the authcode alone (services/session_view.py); a missing or wrong one, or an unknown
session, gets the same 403 page, so the page does not tell which sessions exist.
"""

from __future__ import annotations

import datetime
import html

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from agbox.models import SessionRecord
from agbox.server.wire import WireApi
from agbox.services.session_view import authcode_valid

# The URL carries a secret: keep it out of caches and out of Referer headers of followed links.
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    # No scripts of its own; the only frame is the session's live view, served by this server.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'",
    "X-Content-Type-Options": "nosniff",
}

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 52rem; padding: 0 1rem; color: #1d2330; }
h1 { font-size: 1.3rem; margin-bottom: .2rem; } .sub { color: #5b6475; margin-top: 0; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e6ec; vertical-align: top; }
th { width: 11rem; color: #5b6475; font-weight: 500; }
code { font: 13px ui-monospace, monospace; word-break: break-all; }
.status { font-weight: 600; } .RUNNING { color: #137a3a; } .FINISH, .DELETING { color: #8a3a14; }
.view { border: 1px dashed #c3c9d4; border-radius: 6px; padding: 1rem; color: #5b6475; }
.live { width: 100%; height: 36rem; border: 1px solid #c3c9d4; border-radius: 6px; }
"""


def _time(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>")


def render(record: SessionRecord, mcp_url: str, links: list[tuple[int, str]], browser_port: int | None,
           live_url: str | None = None) -> str:
    esc = html.escape
    labels = "".join(f"<div><code>{esc(k)}</code> = <code>{esc(v)}</code></div>"
                     for k, v in sorted(record.labels.items())) or "-"
    link_rows = "".join(f"<div>port {port}: <a href=\"{esc(url)}\" rel=\"noreferrer\"><code>{esc(url)}</code></a></div>"
                        for port, url in links) or "no port links open (<code>session.get_link(port)</code> opens one)"
    status = record.status.value
    rows = [
        ("Session", f"<code>{esc(record.id)}</code>"),
        ("Image", f"<code>{esc(record.image_id)}</code>"),
        ("Status", f"<span class=\"status {esc(status)}\">{esc(status)}</span>"
                   + (f" — {esc(record.finish_reason)}" if record.finish_reason else "")),
        ("Labels", labels),
        ("Created", _time(record.created_at)),
        ("Last active", _time(record.last_active_at)),
        ("Ends at the latest", _time(record.expires_at)),
        ("MCP endpoint", f"<code>{esc(mcp_url)}</code> (session token as Bearer)"),
        ("Links", link_rows),
        ("Browser", f"Chromium running (DevTools port {browser_port} in the sandbox; "
                    "<code>session.browser.get_endpoint_url()</code> gives its CDP URL)"
         if browser_port is not None else "not started"),
    ]
    if live_url:
        view = (f"<p><a href=\"{esc(live_url)}\" rel=\"noreferrer\" target=\"_blank\">Open the live view</a></p>"
                f"<iframe class=\"live\" src=\"{esc(live_url)}\" title=\"live view\"></iframe>")
    else:
        view = "<div class=\"view\">No live view: the session's browser is not running.</div>"
    table = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    body = (f"<h1>agbox session</h1><p class=\"sub\"><code>{esc(record.id)}</code></p><table>{table}</table>"
            f"{view}")
    return _page(f"agbox session {record.id}", body)


def routes(wire: WireApi) -> list[BaseRoute]:
    platform = wire.platform

    async def view(request: Request) -> HTMLResponse:
        record = platform.store.get_session(str(request.path_params["session_id"]))
        if record is None or not authcode_valid(record, request.query_params.get("authcode", "")):
            body = _page("agbox: access denied", "<h1>Access denied</h1><p>This link is not valid for a session. "
                                                 "Ask the session's owner for its current resource URL.</p>")
            return HTMLResponse(body, status_code=403, headers=HEADERS)
        mcp_url = wire.session_urls(record)["mcpUrl"]
        browser = platform.browser.states.get(record.id)
        live_url = platform.browser.live_url(record.owner, record.id) if browser is not None else None
        page = render(record, mcp_url, platform.links.session_links(record.id), browser.port if browser else None,
                      live_url)
        return HTMLResponse(page, headers=HEADERS)

    return [Route("/sessions/{session_id}/view", view, methods=["GET"], name="session_view")]
