"""The console's JSON routes for a session's files and links, used by ``console.js`` on the session page.

- ``GET  /console/api/sessions/{id}/files?path=``          a folder's entries
- ``GET  /console/api/sessions/{id}/files/content?path=``  a file, streamed as an attachment
- ``PUT  /console/api/sessions/{id}/files/content?path=``  a file's new bytes as the raw request body
  (the page sends the picked ``File`` itself: the browser streams it from disk, nothing is base64-ed)
- ``GET  /console/api/sessions/{id}/files/text?path=``     the start of a text file, for viewing
- ``POST /console/api/sessions/{id}/links`` ``{"port": N}`` the port's link URL (``LinkService.get_link``,
  the same URL ``session.get_link`` gives)
- ``GET  /console/api/sessions/{id}/ports``                 TCP ports programs in the session listen on

Every route needs the signed-in cookie and a session of that key; writes also check ``Origin``.
Failures answer ``{"error": message}`` with the error's status (the page shows the message as is).
The work happens in ``services/sandbox_files.SandboxFiles`` on the file tools.
"""

from __future__ import annotations

import json
import posixpath
import urllib.parse
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from agbox.errors import AgboxError, InvalidRequestError
from agbox.models import SessionRecord
from agbox.services.sandbox_files import SandboxFiles, absolute

if TYPE_CHECKING:
    from agbox.server.console import Console

NO_STORE = {"Cache-Control": "no-store"}
MAX_LINK_BODY_BYTES = 1024


def error_json(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=NO_STORE)


def attachment(name: str) -> str:
    """A Content-Disposition that keeps any file name intact (RFC 6266 ``filename*``) with an ASCII
    fallback for old clients."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


class SessionFilesApi:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.platform = console.platform
        self.files = SandboxFiles(console.platform.tools)

    def _record(self, request: Request, *, write: bool = False) -> SessionRecord | JSONResponse:
        if write and not self.console.same_origin(request):
            return error_json("This request came from another site.", 403)
        return self.console.api_record(request)

    @staticmethod
    def _path(request: Request) -> str:
        return request.query_params.get("path", "")

    async def listing(self, request: Request) -> Response:
        record = self._record(request)
        if isinstance(record, JSONResponse):
            return record
        try:
            folder = absolute(self._path(request) or "/home/user")
            entries = await self.files.list_folder(record.owner, record.id, folder)
        except AgboxError as exc:
            return error_json(exc.message, exc.status_code)
        return JSONResponse({
            "path": folder, "parent": posixpath.dirname(folder) if folder != "/" else None,
            "entries": [{"name": e.name, "directory": e.directory, "size": e.size} for e in entries],
        }, headers=NO_STORE)

    async def download(self, request: Request) -> Response:
        record = self._record(request)
        if isinstance(record, JSONResponse):
            return record
        try:
            path = absolute(self._path(request))
            size, chunks = await self.files.open_read(record.owner, record.id, path)
        except AgboxError as exc:
            # A plain message: a person who followed the download link reads it in the tab.
            return PlainTextResponse(exc.message, status_code=exc.status_code, headers=NO_STORE)
        return StreamingResponse(chunks, media_type="application/octet-stream", headers={
            **NO_STORE, "Content-Length": str(size), "Content-Disposition": attachment(posixpath.basename(path)),
            "X-Content-Type-Options": "nosniff"})

    async def upload(self, request: Request) -> Response:
        record = self._record(request, write=True)
        if isinstance(record, JSONResponse):
            return record

        async def body() -> AsyncIterator[bytes]:
            async for piece in request.stream():
                if piece:
                    yield piece

        try:
            path = absolute(self._path(request))
            written = await self.files.write(record.owner, record.id, path, body())
        except AgboxError as exc:
            return error_json(f"Could not upload {self._path(request)}: {exc.message}", exc.status_code)
        except ClientDisconnect:  # the browser went away mid-upload; the partial file is already discarded
            return error_json("the upload was cut off", 400)
        return JSONResponse({"path": path, "bytes": written}, headers=NO_STORE)

    async def text(self, request: Request) -> Response:
        record = self._record(request)
        if isinstance(record, JSONResponse):
            return record
        try:
            path = absolute(self._path(request))
            view = await self.files.text(record.owner, record.id, path)
        except AgboxError as exc:
            return error_json(exc.message, exc.status_code)
        return JSONResponse({"path": path, "text": view.text, "size": view.size, "truncated": view.truncated},
                            headers=NO_STORE)

    async def link(self, request: Request) -> Response:
        record = self._record(request, write=True)
        if isinstance(record, JSONResponse):
            return record
        try:
            raw = await request.body()
            if len(raw) > MAX_LINK_BODY_BYTES:
                raise InvalidRequestError("the request body is too large")
            try:
                asked: Any = json.loads(raw or b"{}")
            except ValueError:
                raise InvalidRequestError("the request body must be JSON like {\"port\": 30100}") from None
            port = asked.get("port") if isinstance(asked, dict) else None
            if port in (None, ""):
                raise InvalidRequestError("a port is required")
            url = await self.platform.links.get_link(record.owner, record.id, "http", port)
        except AgboxError as exc:
            return error_json(exc.message, exc.status_code)
        return JSONResponse({"port": int(port), "url": url}, headers=NO_STORE)

    async def ports(self, request: Request) -> Response:
        record = self._record(request)
        if isinstance(record, JSONResponse):
            return record
        try:
            listening = await self.files.listening_ports(record.owner, record.id)
        except AgboxError as exc:
            return error_json(exc.message, exc.status_code)
        settings = self.platform.settings
        return JSONResponse({"ports": listening, "linkPorts": [settings.link_port_min, settings.link_port_max]},
                            headers=NO_STORE)


def routes(console: Console) -> list[BaseRoute]:
    api = SessionFilesApi(console)
    base = "/console/api/sessions/{session_id}"
    return [
        Route(f"{base}/files", api.listing, methods=["GET"]),
        Route(f"{base}/files/content", api.download, methods=["GET"]),
        Route(f"{base}/files/content", api.upload, methods=["PUT"]),
        Route(f"{base}/files/text", api.text, methods=["GET"]),
        Route(f"{base}/links", api.link, methods=["POST"]),
        Route(f"{base}/ports", api.ports, methods=["GET"]),
    ]
