"""``PUT/GET /sessions/{session_id}/files?path=…``: whole files as raw HTTP bodies (ours, not AGB's).

Auth is the API key (``Authorization: Bearer``), as for the wire operations; the body of a PUT is the
file's bytes (``mode=append`` to add to it), a GET answers them with their ``Content-Length``. Errors
are the usual AGB envelopes with the error's HTTP status (404 unknown or ended session or file, 400 bad
path, 413 more than the session's disk holds, 429 throttled). A PUT that fails after its body started
still reads the rest of the body (without keeping it) before answering, so a client that streams a
large file sees the error instead of a broken connection; a body declared larger than ``DRAIN_LIMIT``,
and any request without a valid key, is answered at once and the connection closed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from agbox.errors import AgboxError, InvalidRequestError
from agbox.server.wire import WireApi, envelope, error_envelope, new_request_id

# A failed upload reads at most this much of the rest of its body before answering (beyond it, or when
# the declared length is larger, the answer closes the connection): enough for any honest client.
DRAIN_LIMIT = 8 * 1024 ** 3


def _api_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return header.strip() or None


def _json(body: dict[str, Any], status: int = 200) -> JSONResponse:
    headers = {"x-request-id": str(body.get("requestId", ""))}
    if "retryAfter" in body:  # throttled: a real 429 with Retry-After, as on the wire routes
        headers["retry-after"] = str(max(1, math.ceil(float(body["retryAfter"]))))
    return JSONResponse(body, status_code=status, headers=headers)


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit() or len(value) > 19:
        raise InvalidRequestError(f"bad Content-Length {value[:40]!r}")
    return int(value)


def routes(wire: WireApi) -> list[BaseRoute]:
    platform = wire.platform
    streams = platform.files

    def owner_of(request: Request) -> str:
        owner = platform.keys.authenticate(_api_key(request))
        platform.limits.admit_request(owner)
        return owner

    async def put_file(request: Request, request_id: str) -> Response:
        session_id = request.path_params["session_id"]
        consumed = False
        source = request.stream()

        async def body() -> AsyncIterator[bytes]:
            nonlocal consumed
            async for chunk in source:
                if chunk:
                    yield chunk
            consumed = True

        try:
            owner = owner_of(request)
        except AgboxError as exc:  # no key, no courtesy: the body is not read, the connection closes
            response = _json(error_envelope(request_id, exc), status=exc.status_code)
            response.headers["connection"] = "close"
            return response
        try:
            declared = _declared_length(request)
            size = await streams.upload(owner, session_id, request.query_params.get("path"),
                                        request.query_params.get("mode"), body(), declared)
        except AgboxError as exc:
            response = _json(error_envelope(request_id, exc), status=exc.status_code)
            if not consumed:
                await _drain_or_close(request, source, response)
            return response
        return _json(envelope(request_id, {"path": request.query_params.get("path"), "size": size}))

    async def get_file(request: Request, request_id: str) -> Response:
        try:
            owner = owner_of(request)
            size, chunks = await streams.open_download(owner, request.path_params["session_id"],
                                                       request.query_params.get("path"))
        except AgboxError as exc:
            return _json(error_envelope(request_id, exc), status=exc.status_code)
        return StreamingResponse(chunks, media_type="application/octet-stream",
                                 headers={"content-length": str(size), "x-request-id": request_id})

    async def session_file(request: Request) -> Response:
        request_id = new_request_id()
        if request.method == "PUT":
            return await put_file(request, request_id)
        return await get_file(request, request_id)

    async def file_url(request: Request) -> Response:
        # A signed URL of the bulk file port (services/bulk_listener.py) for one transfer; url null
        # when that port cannot reach this session's files (then this route itself is the way).
        request_id = new_request_id()
        try:
            owner = owner_of(request)
            query = request.query_params
            url, expires = platform.bulk.file_url(owner, request.path_params["session_id"], query.get("path"),
                                                  query.get("method", "GET"), query.get("mode"))
        except AgboxError as exc:
            return _json(error_envelope(request_id, exc), status=exc.status_code)
        return _json(envelope(request_id, {"url": url, "expireTime": expires or None}))

    return [Route("/sessions/{session_id}/files", session_file, methods=["GET", "PUT"]),
            Route("/sessions/{session_id}/files/url", file_url, methods=["GET"])]


async def _drain_or_close(request: Request, source: AsyncIterator[bytes], response: Response) -> None:
    """Read what is left of a failed upload's body (so the client gets the answer), within a bound."""
    try:
        declared = _declared_length(request)
    except InvalidRequestError:
        declared = None
    if declared is not None and declared > DRAIN_LIMIT:
        response.headers["connection"] = "close"
        return
    read = 0
    with contextlib.suppress(ClientDisconnect, RuntimeError, StopAsyncIteration):
        async for chunk in source:
            read += len(chunk)
            if read > DRAIN_LIMIT:
                response.headers["connection"] = "close"
                return
