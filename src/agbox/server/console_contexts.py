"""The console's contexts pages: the signed-in key's contexts, one context's files (folder by folder),
a file's download, and deleting a context after a confirmation page.

Plain HTML and forms, like the sessions pages. The data comes from ``services/contexts.ContextService``
(the same calls as the context wire operations) and its blob store, so a download streams the very
bytes a pre-signed URL would serve.
"""

from __future__ import annotations

import html
import posixpath
import urllib.parse
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from agbox.errors import AgboxError
from agbox.server.console_files import NO_STORE, attachment
from agbox.services.sync_policy import context_key
from agbox.store.contexts import ContextRecord

if TYPE_CHECKING:
    from agbox.server.console import Console

MAX_LISTED = 1000


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


class ContextPages:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.service = console.platform.contexts

    def _owner(self, request: Request) -> str | Response:
        owner = self.console.signed_in_key(request)
        return RedirectResponse("/console/login", status_code=303) if owner is None else owner

    def list_page(self, owner: str, message: str = "", status: int = 200) -> HTMLResponse:
        esc, c = html.escape, self.console
        try:
            records, _, _, total = self.service.list_contexts(owner, MAX_LISTED, None)
        except AgboxError as exc:
            records, total, message, status = [], 0, exc.message, exc.status_code
        rows = []
        for r in sorted(records, key=lambda r: -r.last_used_at):
            files = self.service.store.files(r.id)
            rows.append(
                f"<tr data-context=\"{esc(r.id)}\"><td><a href=\"/console/contexts/{esc(r.id)}\">{esc(r.name)}</a></td>"
                f"<td><code>{esc(r.id)}</code></td><td>{len(files)}</td><td>{human_bytes(sum(f.size for f in files))}</td>"
                f"<td>{esc(r.state)}</td><td>{c.time_text(r.created_at)}</td><td>{c.time_text(r.last_used_at)}</td>"
                f"<td><a class=\"danger\" href=\"/console/contexts/{esc(r.id)}/delete\">Delete…</a></td></tr>")
        more = f"<p class=\"empty\">Showing {len(records)} of {total}.</p>" if total > len(records) else ""
        table = (f"<table class=\"contexts\"><thead><tr><th>Name</th><th>Id</th><th>Files</th><th>Size</th>"
                 f"<th>State</th><th>Created</th><th>Last used</th><th></th></tr></thead><tbody>{''.join(rows)}"
                 f"</tbody></table>{more}" if rows else
                 "<p class=\"empty\">This key has no contexts. The SDK makes them: "
                 "<code>agb.context.get(\"name\", create=True)</code>.</p>")
        error = f"<p class=\"error\" role=\"alert\">{esc(message)}</p>" if message else ""
        return HTMLResponse(c.page("Contexts", f"<h1>Contexts</h1>{error}{table}"), status_code=status,
                            headers=c.page_headers)

    async def contexts(self, request: Request) -> Response:
        owner = self._owner(request)
        return owner if isinstance(owner, Response) else self.list_page(owner)

    def _context(self, request: Request) -> tuple[str, ContextRecord] | Response:
        owner = self._owner(request)
        if isinstance(owner, Response):
            return owner
        try:
            return owner, self.service.owned(owner, request.path_params["context_id"])
        except AgboxError as exc:
            return self.list_page(owner, exc.message, exc.status_code)

    async def context(self, request: Request) -> Response:
        found = self._context(request)
        if isinstance(found, Response):
            return found
        owner, record = found
        esc, c = html.escape, self.console
        quote = urllib.parse.quote
        base = f"/console/contexts/{quote(record.id)}"
        try:
            folder = context_key(request.query_params.get("folder") or "/", allow_root=True)
            entries, total = self.service.describe_files(owner, record.id, folder, 1, MAX_LISTED)
        except AgboxError as exc:
            return self.list_page(owner, exc.message, exc.status_code)
        rows = []
        if folder != "/":
            parent = posixpath.dirname(folder.rstrip("/")) or "/"
            rows.append(f"<tr><td><a href=\"{base}?folder={quote(parent)}\">..</a></td><td></td><td></td><td></td></tr>")
        for e in entries:
            path = e["filePath"]
            if e["fileType"] == "folder":
                name = f"<a class=\"folder\" href=\"{base}?folder={quote(path)}\">{esc(e['fileName'])}/</a>"
                action = ""
            else:
                name = esc(e["fileName"])
                action = f"<a href=\"{base}/download?path={quote(path)}\" download>Download</a>"
            rows.append(f"<tr data-path=\"{esc(path)}\"><td>{name}</td><td>{human_bytes(int(e['size']))}</td>"
                        f"<td>{esc(e['gmtModified'])}</td><td>{action}</td></tr>")
        more = f"<p class=\"empty\">Showing {len(entries)} of {total} entries.</p>" if total > len(entries) else ""
        table = ("<table class=\"context-files\"><thead><tr><th>Name</th><th>Size</th><th>Modified</th><th></th>"
                 f"</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}")
        if not entries and folder == "/":
            table = "<p class=\"empty\">This context holds no files.</p>"
        info = (f"<table class=\"info\"><tr><th>Name</th><td>{esc(record.name)}</td></tr>"
                f"<tr><th>Id</th><td><code>{esc(record.id)}</code></td></tr>"
                f"<tr><th>State</th><td>{esc(record.state)}</td></tr>"
                f"<tr><th>Created</th><td>{c.time_text(record.created_at)}</td></tr>"
                f"<tr><th>Last used</th><td>{c.time_text(record.last_used_at)}</td></tr></table>")
        body = (f"<h1>Context {esc(record.name)}</h1>{info}"
                f"<p><a class=\"danger\" href=\"{base}/delete\">Delete this context…</a></p>"
                f"<h2>Files in <code class=\"folder-path\">{esc(folder)}</code></h2>{table}")
        return HTMLResponse(c.page(f"Context {record.name}", body), headers=c.page_headers)

    async def download(self, request: Request) -> Response:
        found = self._context(request)
        if isinstance(found, Response):
            return found
        _, record = found
        try:
            key = context_key(request.query_params.get("path", ""))
            stored = self.service.object_blob(record.id, key)
        except AgboxError as exc:
            return PlainTextResponse(exc.message, status_code=exc.status_code, headers=NO_STORE)
        return StreamingResponse(self.service.blob_chunks(stored.blob), media_type="application/octet-stream",
                                 headers={**NO_STORE, "Content-Length": str(stored.size),
                                          "Content-Disposition": attachment(posixpath.basename(key)),
                                          "X-Content-Type-Options": "nosniff"})

    async def delete(self, request: Request) -> Response:
        found = self._context(request)
        if isinstance(found, Response):
            return found
        owner, record = found
        esc, c = html.escape, self.console
        if request.method == "GET":
            files = self.service.store.files(record.id)
            body = (f"<section class=\"confirm\"><h1>Delete context {esc(record.name)}?</h1>"
                    f"<p>The context <code>{esc(record.id)}</code> and its {len(files)} file(s) "
                    f"({human_bytes(sum(f.size for f in files))}) will be gone for good.</p>"
                    f"<form method=\"post\" action=\"/console/contexts/{esc(record.id)}/delete\">"
                    f"<button type=\"submit\" class=\"danger\">Delete the context</button> "
                    f"<a href=\"/console/contexts/{esc(record.id)}\">Cancel</a></form></section>")
            return HTMLResponse(c.page(f"Delete {record.name}", body), headers=c.page_headers)
        if not c.same_origin(request):
            return self.list_page(owner, "This form was posted from another site.", 403)
        try:
            self.service.delete(owner, record.id)
        except AgboxError as exc:
            return self.list_page(owner, f"Could not delete the context: {exc.message}", exc.status_code)
        return RedirectResponse("/console/contexts", status_code=303)


def routes(console: Console) -> list[BaseRoute]:
    pages = ContextPages(console)
    return [
        Route("/console/contexts", pages.contexts, methods=["GET"]),
        Route("/console/contexts/{context_id}", pages.context, methods=["GET"]),
        Route("/console/contexts/{context_id}/download", pages.download, methods=["GET"]),
        Route("/console/contexts/{context_id}/delete", pages.delete, methods=["GET", "POST"]),
    ]
