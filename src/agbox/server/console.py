"""The web console at ``/console``: sign in with an API key, list, create and delete sessions, and a
session page with live resource figures and a terminal (xterm.js on the ``/pty/{id}`` WebSocket).

Pages are rendered here as plain HTML; forms post back (no script needed to list, create or delete).
The one script, ``console.js`` (served as a file: the CSP allows no inline script), polls a session's
figures and drives the terminal.

Sign-in: the key is posted from a form, checked by ``KeyService.authenticate``, and answered with an
HttpOnly, SameSite=Strict cookie holding a token signed (HMAC-SHA256, ``services/url_signing``) under a
secret in the data dir. The token names the key id and an expiry, never the key; every request checks
that the key is still active, so a revoked key's console sessions end at once. The key never appears
in a URL or in browser storage. POSTs also check ``Origin`` (when sent) against the host, on top of
SameSite. The terminal needs the session's access token: ``/console/api/sessions/{id}/terminal`` hands
it to the signed-in owner of the session only.
"""

from __future__ import annotations

import datetime
import html
import json
import time
import urllib.parse
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from agbox.errors import AgboxError, AuthenticationError, InvalidRequestError, LimitExceededError
from agbox.models import SessionRecord, SessionStatus
from agbox.server import console_contexts, console_files
from agbox.server.desktop import is_desktop, live_urls
from agbox.server.wire import WireApi
from agbox.services.url_signing import load_secret, sign, verify

COOKIE = "agbox_console"
SIGN_IN_LIFETIME_S = 12 * 3600
MAX_FORM_BYTES = 16 * 1024
ASSETS_DIR = Path(__file__).resolve().parent / "console_assets"
ASSET_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}

# Scripts only from this server (files, never inline). xterm.js writes <style> elements and style
# attributes for its renderer, hence 'unsafe-inline' for styles only. WebSockets go to this host.
# Frames: the live view of a desktop or browser session (this server's own pages).
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                "connect-src 'self'; img-src 'self' data:; font-src 'self'; frame-src 'self'; "
                                "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "Cache-Control": "no-store",
    # Not no-referrer: under it Chromium sends "Origin: null" on same-origin form posts, which the
    # Origin check must refuse. Console URLs carry no secret, and nothing leaves for other sites.
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
# Assets change only with the package; an hour, then revalidated by Last-Modified/ETag.
ASSET_HEADERS = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}


def _age(ts: float) -> str:
    seconds = max(0, int(time.time() - ts))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d"


def _time(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_labels(text: str) -> dict[str, str]:
    """``k=v, k2=v2`` (commas or newlines) into a dict; entries without ``=`` are an error."""
    labels: dict[str, str] = {}
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InvalidRequestError(f"labels are written key=value; got {part[:80]!r}")
        labels[key.strip()] = value.strip()
    return labels


def _page(title: str, body: str, *, signed_in: bool = True, script: bool = False) -> str:
    esc = html.escape
    nav = ("<nav><a href=\"/console/sessions\">Sessions</a><a href=\"/console/contexts\">Contexts</a>"
           "<form method=\"post\" action=\"/console/logout\"><button type=\"submit\">Sign out</button></form></nav>"
           if signed_in else "")
    scripts = "<script type=\"module\" src=\"/console/assets/console.js\"></script>" if script else ""
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)} · agbox console</title>"
            f"<link rel=\"stylesheet\" href=\"/console/assets/console.css\">"
            f"<link rel=\"stylesheet\" href=\"/console/assets/xterm.css\">{scripts}</head>"
            f"<body><header><span class=\"brand\">agbox console</span>{nav}</header><main>{body}</main></body></html>")


# The file browser; console.js fills it from /console/api/sessions/{id}/files.
FILES_HTML = (
    "<h2>Files</h2><div id=\"files\"><form class=\"files-nav\"><label>Folder "
    "<input name=\"path\" value=\"/home/user\" spellcheck=\"false\"></label><button type=\"submit\">Open</button>"
    "</form><p class=\"files-error error\" role=\"alert\" hidden></p>"
    "<table class=\"files\"><thead><tr><th>Name</th><th>Size</th><th></th></tr></thead><tbody></tbody></table>"
    "<form class=\"upload\"><label>Upload into this folder <input type=\"file\" name=\"file\" required></label>"
    "<button type=\"submit\">Upload</button></form><p class=\"upload-status\"></p>"
    "<section class=\"viewer\" hidden><h3><code class=\"viewer-path\"></code> <small class=\"viewer-note\"></small>"
    "</h3><pre class=\"viewer-text\"></pre></section></div>")


def _labels_html(labels: dict[str, str]) -> str:
    esc = html.escape
    return "".join(f"<span class=\"label\">{esc(k)}={esc(v)}</span>" for k, v in sorted(labels.items())) or "-"


class Console:
    # For the other console modules (console_files, console_contexts): one look, one set of headers.
    page = staticmethod(_page)
    time_text = staticmethod(_time)
    page_headers = PAGE_HEADERS

    def __init__(self, wire: WireApi) -> None:
        self.wire = wire
        self.platform = wire.platform
        self.secret = load_secret(self.platform.settings.data_dir / "console-secret")

    # ---- sign-in ---------------------------------------------------------------------------------

    def signed_in_key(self, request: Request) -> str | None:
        """The key id the request's cookie names, if its signature holds, it has not expired and the
        key is still active."""
        token = request.cookies.get(COOKIE, "")
        if not token:
            return None
        try:
            claims = verify(self.secret, token)
        except AgboxError:
            return None
        key_id = claims.get("key")
        if claims.get("use") != "console" or not isinstance(key_id, str):
            return None
        expires = claims.get("exp")
        if not isinstance(expires, int | float) or expires < time.time():
            return None
        record = self.platform.store.key_by_id(key_id)
        if record is None or record.revoked_at is not None:
            return None
        return key_id

    @staticmethod
    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:  # not sent by older browsers; the SameSite cookie still guards the request
            return True
        return urllib.parse.urlsplit(origin).netloc == request.headers.get("host", "")

    @staticmethod
    async def read_form(request: Request) -> dict[str, str]:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise LimitExceededError(f"form data exceeds {MAX_FORM_BYTES} bytes")
        pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        return dict(pairs)

    def sign_in_page(self, message: str = "", status: int = 200) -> HTMLResponse:
        error = f"<p class=\"error\" role=\"alert\">{html.escape(message)}</p>" if message else ""
        body = ("<section class=\"signin\"><h1>Sign in</h1>"
                "<p>Use an API key of this server (<code>agbox keys create</code>).</p>"
                f"{error}<form method=\"post\" action=\"/console/login\">"
                "<label>API key <input type=\"password\" name=\"key\" autocomplete=\"current-password\" required>"
                "</label><button type=\"submit\">Sign in</button></form></section>")
        return HTMLResponse(_page("Sign in", body, signed_in=False), status_code=status, headers=PAGE_HEADERS)

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            if self.signed_in_key(request):
                return RedirectResponse("/console/sessions", status_code=303)
            return self.sign_in_page()
        if not self.same_origin(request):
            return self.sign_in_page("This form was posted from another site.", 403)
        try:
            form = await self.read_form(request)
            key_id = self.platform.keys.authenticate(form.get("key", "").strip())
        except AuthenticationError:
            return self.sign_in_page("That API key is not valid on this server.", 401)
        except AgboxError as exc:
            return self.sign_in_page(exc.message, 400)
        token = sign(self.secret, {"use": "console", "key": key_id, "exp": int(time.time()) + SIGN_IN_LIFETIME_S})
        response = RedirectResponse("/console/sessions", status_code=303)
        response.set_cookie(COOKIE, token, max_age=SIGN_IN_LIFETIME_S, path="/console", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/console/login", status_code=303)
        if self.same_origin(request):
            response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
        return response

    # ---- pages -----------------------------------------------------------------------------------

    def sessions_page(self, owner: str, filter_text: str, message: str = "", status: int = 200) -> HTMLResponse:
        esc = html.escape
        try:
            wanted = parse_labels(filter_text)
            records, _, _, _ = self.platform.sessions.list(owner, wanted or None, 100, None)
        except AgboxError as exc:
            message, records, status = exc.message, [], 400
        rows = "".join(
            f"<tr data-session=\"{esc(r.id)}\"><td><a href=\"/console/sessions/{esc(r.id)}\"><code>{esc(r.id)}</code></a></td>"
            f"<td class=\"status {esc(r.status.value)}\">{esc(r.status.value)}</td><td>{esc(r.image_id)}</td>"
            f"<td class=\"labels\">{_labels_html(r.labels)}</td><td>{_age(r.created_at)}</td>"
            f"<td><form method=\"post\" action=\"/console/sessions/{esc(r.id)}/delete\">"
            f"<button type=\"submit\" class=\"danger\">Delete</button></form></td></tr>"
            for r in sorted(records, key=lambda r: -r.created_at))
        table = (f"<table class=\"sessions\"><thead><tr><th>Session</th><th>Status</th><th>Image</th><th>Labels</th>"
                 f"<th>Age</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
                 if rows else "<p class=\"empty\">No active sessions" + (" match this filter." if filter_text else ".")
                 + "</p>")
        default_image = "agb-code-space-1"  # the lightest image: preselected
        images = "".join(f"<option{' selected' if i == default_image else ''}>{esc(i)}</option>"
                         for i in self.platform.images.ids())
        error = f"<p class=\"error\" role=\"alert\">{esc(message)}</p>" if message else ""
        body = (f"<h1>Sessions</h1>{error}"
                f"<form class=\"filter\" method=\"get\" action=\"/console/sessions\"><label>Label filter "
                f"<input name=\"labels\" value=\"{esc(filter_text)}\" placeholder=\"team=a, env=dev\"></label>"
                f"<button type=\"submit\">Filter</button></form>{table}"
                f"<h2>New session</h2><form class=\"create\" method=\"post\" action=\"/console/sessions\">"
                f"<label>Image <select name=\"image\">{images}</select></label>"
                f"<label>Labels <input name=\"labels\" placeholder=\"team=a, env=dev\"></label>"
                f"<label>Idle timeout (s) <input name=\"timeout\" type=\"number\" min=\"1\" placeholder=\"default\"></label>"
                f"<button type=\"submit\">Create</button></form>")
        return HTMLResponse(_page("Sessions", body), status_code=status, headers=PAGE_HEADERS)

    async def sessions(self, request: Request) -> Response:
        owner = self.signed_in_key(request)
        if owner is None:
            return RedirectResponse("/console/login", status_code=303)
        if request.method == "GET":
            return self.sessions_page(owner, request.query_params.get("labels", ""))
        if not self.same_origin(request):
            return self.sessions_page(owner, "", "This form was posted from another site.", 403)
        try:
            form = await self.read_form(request)
            labels = parse_labels(form.get("labels", ""))
            record = await self.platform.sessions.create(owner, form.get("image") or None, labels or None,
                                                         form.get("timeout") or None)
        except AgboxError as exc:
            return self.sessions_page(owner, "", f"Could not create the session: {exc.message}", exc.status_code)
        return RedirectResponse(f"/console/sessions/{record.id}", status_code=303)

    async def delete(self, request: Request) -> Response:
        owner = self.signed_in_key(request)
        if owner is None:
            return RedirectResponse("/console/login", status_code=303)
        if not self.same_origin(request):
            return self.sessions_page(owner, "", "This form was posted from another site.", 403)
        try:
            await self.platform.sessions.release(owner, request.path_params["session_id"])
        except AgboxError as exc:
            return self.sessions_page(owner, "", f"Could not delete the session: {exc.message}", exc.status_code)
        return RedirectResponse("/console/sessions", status_code=303)

    def session_page(self, record: SessionRecord, message: str = "", status_code: int = 200) -> HTMLResponse:
        esc = html.escape
        status = record.status.value
        rows = [
            ("Session", f"<code>{esc(record.id)}</code>"),
            ("Image", esc(record.image_id)),
            ("Status", f"<span class=\"status {esc(status)}\">{esc(status)}</span>"
                       + (f" — {esc(record.finish_reason)}" if record.finish_reason else "")),
            ("Labels", f"<span class=\"labels\">{_labels_html(record.labels)}</span>"),
            ("Created", _time(record.created_at)),
            ("Idle timeout", f"{record.idle_timeout_s} s"),
            ("Ends at the latest", _time(record.expires_at)),
        ]
        table = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
        label_text = ", ".join(f"{k}={v}" for k, v in sorted(record.labels.items()))
        error = f"<p class=\"error\" role=\"alert\">{esc(message)}</p>" if message else ""
        labels_form = (f"<form class=\"labels-edit\" method=\"post\" action=\"/console/sessions/{esc(record.id)}/labels\">"
                       f"<label>Labels <input name=\"labels\" value=\"{esc(label_text)}\" placeholder=\"team=a, env=dev\">"
                       f"</label><button type=\"submit\">Save labels</button></form>")
        meters = "".join(
            f"<div class=\"meter\" data-metric=\"{name}\"><span class=\"name\">{title}</span>"
            f"<span class=\"bar\"><span class=\"fill\"></span></span><span class=\"value\">…</span></div>"
            for name, title in (("cpu", "CPU"), ("memory", "Memory"), ("disk", "Disk"), ("network", "Network")))
        body = (f"<h1>Session <code>{esc(record.id)}</code></h1>{error}<table class=\"info\">{table}</table>"
                f"{labels_form}<form method=\"post\" action=\"/console/sessions/{esc(record.id)}/delete\">"
                f"<button type=\"submit\" class=\"danger\">Delete this session</button></form>"
                f"{self.live_view_html(record)}"
                f"<h2>Resources <small class=\"updated\"></small></h2><div id=\"metrics\">{meters}</div>"
                f"<h2>Terminal</h2><div id=\"terminal\" data-session=\"{esc(record.id)}\"></div>"
                f"<p class=\"terminal-status\"></p>{FILES_HTML}{self.links_html(record)}")
        return HTMLResponse(_page(f"Session {record.id}", body, script=True), status_code=status_code,
                            headers=PAGE_HEADERS)

    def live_view_html(self, record: SessionRecord) -> str:
        """The live view of a desktop (noVNC, with mouse and keyboard) or browser session (the browser's
        screencast), framed by path so it is this page's own origin whatever ``base_url`` says."""
        image = self.platform.images.get(record.image_id)
        if record.status is not SessionStatus.RUNNING:
            return ""
        if is_desktop(self.wire, record):
            url, what = urllib.parse.urlsplit(live_urls(self.wire, record)["control"]).path, "desktop"
        elif "browser" in image.tool_sets:
            try:
                split = urllib.parse.urlsplit(self.platform.browser.live_url(record.owner, record.id))
            except AgboxError:  # the session ended since it was read: no live view then
                return ""
            url, what = f"{split.path}?{split.query}", "browser"
        else:
            return ""
        esc = html.escape
        return (f"<h2>Live view <small>the session's {what}</small></h2>"
                f"<p><a class=\"live-open\" href=\"{esc(url)}\" target=\"_blank\" rel=\"noopener\">"
                f"Open the live view in its own tab</a></p>"
                f"<iframe class=\"live-view {what}\" src=\"{esc(url)}\" title=\"Live view of the {what}\"></iframe>")

    def links_html(self, record: SessionRecord) -> str:
        esc = html.escape
        settings = self.platform.settings
        known = "".join(f"<li data-port=\"{port}\"><span class=\"port\">{port}</span> <a href=\"{esc(url)}\" "
                        f"target=\"_blank\" rel=\"noopener\">{esc(url)}</a></li>"
                        for port, url in self.platform.links.session_links(record.id))
        return (f"<section id=\"links\"><h2>Links</h2><p class=\"hint\">A URL that reaches a server listening "
                f"on a port inside the session ({settings.link_port_min}-{settings.link_port_max}), as "
                f"<code>session.get_link()</code> gives it.</p><form class=\"link-form\"><label>Port "
                f"<input name=\"port\" type=\"number\" min=\"{settings.link_port_min}\" max=\"{settings.link_port_max}\" "
                f"placeholder=\"{settings.link_port_min}\" required></label><button type=\"submit\">Get link</button>"
                f"</form><p class=\"link-error error\" role=\"alert\" hidden></p><ul class=\"links\">{known}</ul>"
                f"<p class=\"listening\">Listening inside: <span class=\"ports\">…</span> "
                f"<button type=\"button\" class=\"refresh-ports\">Refresh</button></p></section>")

    def _page_record(self, request: Request) -> tuple[str, SessionRecord] | Response:
        """The signed-in owner and the session of the path, or the page to answer instead."""
        owner = self.signed_in_key(request)
        if owner is None:
            return RedirectResponse("/console/login", status_code=303)
        try:
            return owner, self.platform.sessions.get(owner, request.path_params["session_id"], touch=False)
        except AgboxError as exc:
            return self.sessions_page(owner, "", exc.message, exc.status_code)

    async def labels(self, request: Request) -> Response:
        found = self._page_record(request)
        if isinstance(found, Response):
            return found
        owner, record = found
        if not self.same_origin(request):
            return self.session_page(record, "This form was posted from another site.", 403)
        try:
            form = await self.read_form(request)
            self.platform.sessions.set_labels(owner, record.id, parse_labels(form.get("labels", "")))
        except AgboxError as exc:
            return self.session_page(record, f"Could not save the labels: {exc.message}", exc.status_code)
        return RedirectResponse(f"/console/sessions/{record.id}", status_code=303)

    async def session(self, request: Request) -> Response:
        found = self._page_record(request)
        return found if isinstance(found, Response) else self.session_page(found[1])

    async def root(self, request: Request) -> Response:
        target = "/console/sessions" if self.signed_in_key(request) else "/console/login"
        return RedirectResponse(target, status_code=303)

    # ---- JSON API for the script -----------------------------------------------------------------

    def api_record(self, request: Request) -> SessionRecord | JSONResponse:
        owner = self.signed_in_key(request)
        if owner is None:
            return JSONResponse({"error": "not signed in"}, status_code=401, headers={"Cache-Control": "no-store"})
        try:
            return self.platform.sessions.get(owner, request.path_params["session_id"], touch=False)
        except AgboxError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status_code,
                                headers={"Cache-Control": "no-store"})

    async def api_metrics(self, request: Request) -> Response:
        record = self.api_record(request)
        if isinstance(record, JSONResponse):
            return record
        # The same tool as the SDK's get_metrics, so the figures (and rates) are the same.
        try:
            output = await self.platform.tools.call(record.owner, record.id, "get_metrics", {})
        except AgboxError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status_code,
                                headers={"Cache-Control": "no-store"})
        if output.is_error:
            return JSONResponse({"error": output.text}, status_code=409, headers={"Cache-Control": "no-store"})
        return JSONResponse(json.loads(output.text), headers={"Cache-Control": "no-store"})

    async def api_terminal(self, request: Request) -> Response:
        record = self.api_record(request)
        if isinstance(record, JSONResponse):
            return record
        return JSONResponse({"path": f"/pty/{record.id}", "token": record.token},
                            headers={"Cache-Control": "no-store"})

    async def asset(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        path = ASSETS_DIR / name
        media_type = ASSET_TYPES.get(path.suffix)
        if "/" in name or name.startswith(".") or media_type is None or not path.is_file():
            return Response("no such asset", status_code=404, media_type="text/plain")
        response = FileResponse(path, media_type=media_type, headers=ASSET_HEADERS, stat_result=path.stat())
        # Revalidation after max-age: an unchanged file is answered 304 without its body.
        tags = {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}
        if response.headers["etag"] in tags:
            return Response(status_code=304, headers={**ASSET_HEADERS, "ETag": response.headers["etag"]})
        return response


def routes(wire: WireApi) -> list[BaseRoute]:
    console = Console(wire)
    return [
        Route("/console", console.root, methods=["GET"]),
        Route("/console/", console.root, methods=["GET"]),
        Route("/console/login", console.login, methods=["GET", "POST"]),
        Route("/console/logout", console.logout, methods=["POST"]),
        Route("/console/sessions", console.sessions, methods=["GET", "POST"]),
        Route("/console/sessions/{session_id}", console.session, methods=["GET"]),
        Route("/console/sessions/{session_id}/delete", console.delete, methods=["POST"]),
        Route("/console/sessions/{session_id}/labels", console.labels, methods=["POST"]),
        Route("/console/api/sessions/{session_id}/metrics", console.api_metrics, methods=["GET"]),
        Route("/console/api/sessions/{session_id}/terminal", console.api_terminal, methods=["GET"]),
        Route("/console/assets/{name}", console.asset, methods=["GET"]),
        *console_files.routes(console),
        *console_contexts.routes(console),
    ]
