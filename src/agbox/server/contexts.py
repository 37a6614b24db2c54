"""Contexts on the wire: the /sdk/*Context* operations and the pre-signed object route.

``register_ops`` registers every operation on the platform's ContextService (services/contexts.py).
``routes`` adds ``PUT/GET /context-objects/{token}``: plain HTTP, authorized by an HMAC-signed,
expiring token (no API key), which is what the SDK's pre-signed URLs need.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from agbox.errors import AgboxError, ContextNotFoundError
from agbox.server.wire import WireApi, envelope
from agbox.services.contexts import FILE_TRANSFER, MAX_OBJECT_BYTES, iso
from agbox.store.contexts import ContextRecord

log = logging.getLogger(__name__)

Params = dict[str, Any]

# (HTTP method, path) of every context operation, as the official SDK sends them. The SDK client
# adds these to its route table too (it does not build a WireApi when it talks HTTP).
CONTEXT_ROUTES: dict[str, tuple[str, str]] = {
    "listContexts": ("GET", "/sdk/ListContexts"),
    "getContext": ("GET", "/sdk/GetContext"),
    "modifyContext": ("POST", "/sdk/ModifyContext"),
    "deleteContext": ("POST", "/sdk/DeleteContext"),
    "clearContext": ("POST", "/sdk/ClearContext"),
    "syncContext": ("POST", "/sdk/SyncContext"),
    "getContextInfo": ("GET", "/sdk/GetContextInfo"),
    "getContextFileUploadUrl": ("POST", "/sdk/GetContextFileUploadUrl"),
    "getContextFileDownloadUrl": ("POST", "/sdk/GetContextFileDownloadUrl"),
    "deleteContextFile": ("POST", "/sdk/DeleteContextFile"),
    "describeContextFiles": ("POST", "/sdk/DescribeContextFiles"),
    "getAndLoadInternalContext": ("POST", "/sdk/GetAndLoadInternalContext"),
}


def context_data(record: ContextRecord) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "createTime": iso(record.created_at),
            "lastUsedTime": iso(record.last_used_at), "state": record.state}


def register_ops(wire: WireApi) -> None:
    service = wire.platform.contexts

    def op(name: str) -> Callable[[Callable[[str, Params, str], Awaitable[dict[str, Any]]]], None]:
        method, path = CONTEXT_ROUTES[name]

        def decorate(handler: Callable[[str, Params, str], Awaitable[dict[str, Any]]]) -> None:
            wire.register(name, method, path, handler)

        return decorate

    @op("listContexts")
    async def list_contexts(owner: str, p: Params, rid: str) -> dict[str, Any]:
        page, token, limit, total = service.list_contexts(owner, p.get("maxResults"), p.get("nextToken"))
        return envelope(rid, [context_data(r) for r in page], nextToken=token, maxResults=limit, totalCount=total)

    @op("getContext")
    async def get_context(owner: str, p: Params, rid: str) -> dict[str, Any]:
        record = service.get(owner, p.get("id"), p.get("name"), p.get("allowCreate"))
        return envelope(rid, context_data(record))

    @op("modifyContext")
    async def modify_context(owner: str, p: Params, rid: str) -> dict[str, Any]:
        service.modify(owner, p.get("id"), p.get("name"))
        return envelope(rid, None)

    @op("deleteContext")
    async def delete_context(owner: str, p: Params, rid: str) -> dict[str, Any]:
        service.delete(owner, p.get("id"))
        return envelope(rid, None)

    @op("clearContext")
    async def clear_context(owner: str, p: Params, rid: str) -> dict[str, Any]:
        service.clear_async(owner, p.get("id"))
        return envelope(rid, None)

    @op("syncContext")
    async def sync_context(owner: str, p: Params, rid: str) -> dict[str, Any]:
        await service.sync(owner, p.get("sessionId"), p.get("contextId"), p.get("path"), p.get("mode"))
        return envelope(rid, None)

    @op("getContextInfo")
    async def get_context_info(owner: str, p: Params, rid: str) -> dict[str, Any]:
        status = service.info(owner, p.get("sessionId"), p.get("contextId"), p.get("path"), p.get("taskType"))
        return envelope(rid, {"contextStatus": status})

    @op("getContextFileUploadUrl")
    async def upload_url(owner: str, p: Params, rid: str) -> dict[str, Any]:
        url, expires = service.file_url(owner, p.get("contextId"), p.get("filePath"), "PUT")
        return envelope(rid, {"url": url, "expireTime": expires})

    @op("getContextFileDownloadUrl")
    async def download_url(owner: str, p: Params, rid: str) -> dict[str, Any]:
        url, expires = service.file_url(owner, p.get("contextId"), p.get("filePath"), "GET")
        return envelope(rid, {"url": url, "expireTime": expires})

    @op("deleteContextFile")
    async def delete_file(owner: str, p: Params, rid: str) -> dict[str, Any]:
        service.delete_file(owner, p.get("contextId"), p.get("filePath"))
        return envelope(rid, None)

    @op("describeContextFiles")
    async def describe_files(owner: str, p: Params, rid: str) -> dict[str, Any]:
        entries, count = service.describe_files(owner, p.get("contextId"), p.get("parentFolderPath"),
                                                p.get("pageNumber"), p.get("pageSize"))
        return envelope(rid, entries, count=count)

    @op("getAndLoadInternalContext")
    async def load_internal(owner: str, p: Params, rid: str) -> dict[str, Any]:
        return envelope(rid, service.load_internal(owner, p.get("sessionId"), p.get("contextTypes")))


def _denied(exc: Exception, status: int = 403) -> Response:
    message = exc.message if isinstance(exc, AgboxError) else "invalid pre-signed URL"
    if isinstance(exc, ContextNotFoundError):
        status = 404
    return JSONResponse({"success": False, "code": "AccessDenied" if status == 403 else "NotFound",
                         "message": message}, status_code=status)


def routes(wire: WireApi) -> list[BaseRoute]:
    service = wire.platform.contexts

    async def put_object(request: Request) -> Response:
        try:
            record, key = service.check_url(request.path_params["token"], "PUT")
        except (AgboxError, ValueError) as exc:
            return _denied(exc)
        # The internal transfer context of a session is a hop on the way into that session: no fsync.
        writer = service.blobs.begin(MAX_OBJECT_BYTES, durable=record.kind != FILE_TRANSFER)
        try:
            async for chunk in request.stream():
                writer.write(chunk)
            blob, size = writer.finish()
        except AgboxError as exc:
            writer.abort()
            return _denied(exc, exc.status_code)
        except BaseException:
            writer.abort()
            raise
        try:
            service.commit_object(record.id, key, blob, size)
        except AgboxError as exc:
            return _denied(exc)
        return Response(status_code=200, headers={"ETag": f'"{blob}"'})

    async def get_object(request: Request) -> Response:
        try:
            record, key = service.check_url(request.path_params["token"], "GET")
            found = service.object_blob(record.id, key)
        except (AgboxError, ValueError) as exc:
            return _denied(exc)
        return StreamingResponse(service.blob_chunks(found.blob), media_type="application/octet-stream",
                                 headers={"Content-Length": str(found.size), "ETag": f'"{found.blob}"'})

    async def context_object(request: Request) -> Response:
        # One route for both methods, so a 405 answer's Allow header names both.
        return await (put_object(request) if request.method == "PUT" else get_object(request))

    return [Route("/context-objects/{token}", context_object, methods=["GET", "PUT"])]
