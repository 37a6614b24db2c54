"""``agb.context`` (ContextService), with the official SDK's names: list/get/create/update/delete
contexts, pre-signed file URLs, list/delete files, clear.

File paths are AGB's: a context file's path is its absolute path in the sandbox it was synced from
(``list_files(ctx, "/home/user/data")`` lists what a session mounted at ``/home/user/data`` synced).
The session side lives in context_manager.py (``session.context``) and file_transfer.py; sync
configuration in context_sync.py.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from agbox.client.envelopes import error_of, succeeded
from agbox.client.results import ApiResponse, OperationResult
from agbox.server.contexts import CONTEXT_ROUTES
from agbox.server.wire import ROUTES

if TYPE_CHECKING:
    from agbox.client.agb import AGB

POLL_START_S = 0.05

# The HTTP backend finds every operation's route in ROUTES; the context operations are added once here.
for _op, _route in CONTEXT_ROUTES.items():
    ROUTES.setdefault(_op, _route)


@dataclasses.dataclass
class Context:
    id: str
    name: str
    created_at: str | None = None
    last_used_at: str | None = None
    state: str = ""


@dataclasses.dataclass
class ContextResult(ApiResponse):
    success: bool = False
    context_id: str = ""
    context: Context | None = None
    error_message: str = ""


@dataclasses.dataclass
class ContextListResult(ApiResponse):
    success: bool = False
    contexts: list[Context] = dataclasses.field(default_factory=list)
    next_token: str | None = None
    max_results: int | None = None
    total_count: int | None = None
    error_message: str = ""


@dataclasses.dataclass
class ContextListParams:
    max_results: int | None = None
    next_token: str | None = None


@dataclasses.dataclass
class ContextFileEntry:
    file_id: str
    file_name: str
    file_path: str
    file_type: str | None = None
    gmt_create: str | None = None
    gmt_modified: str | None = None
    size: int | None = None
    status: str | None = None


@dataclasses.dataclass
class FileUrlResult(ApiResponse):
    success: bool = False
    url: str = ""
    expire_time: int | None = None
    error_message: str = ""


@dataclasses.dataclass
class ContextFileListResult(ApiResponse):
    success: bool = False
    entries: list[ContextFileEntry] = dataclasses.field(default_factory=list)
    count: int | None = None
    error_message: str = ""


@dataclasses.dataclass
class ClearContextResult(ApiResponse):
    success: bool = False
    error_message: str = ""
    status: str | None = None
    context_id: str | None = None


class ClearanceTimeoutError(Exception):
    """clear() did not see the context become available in time."""


def _context(data: dict[str, Any]) -> Context:
    return Context(id=str(data.get("id") or ""), name=str(data.get("name") or ""),
                   created_at=data.get("createTime"), last_used_at=data.get("lastUsedTime"),
                   state=str(data.get("state") or ""))


class ContextService:
    def __init__(self, agb: AGB) -> None:
        self.agb = agb

    def _call(self, op: str, query: dict[str, Any]) -> dict[str, Any]:
        return self.agb._backend.call(op, query, {})

    def list(self, params: ContextListParams | None = None) -> ContextListResult:
        params = params or ContextListParams()
        limit = params.max_results or 10
        response = self._call("listContexts", {"maxResults": str(limit), "nextToken": params.next_token or None})
        rid = str(response.get("requestId") or "")
        if not succeeded(response):
            return ContextListResult(request_id=rid, error_message=error_of(response))
        items = response.get("data") if isinstance(response.get("data"), list) else []
        return ContextListResult(request_id=rid, success=True, contexts=[_context(d) for d in items or []],
                                 next_token=str(response.get("nextToken") or "") or None,
                                 max_results=int(response.get("maxResults") or limit),
                                 total_count=int(response.get("totalCount") or 0))

    def get(self, name: str | None = None, create: bool = False, login_region_id: str | None = None,
            context_id: str | None = None) -> ContextResult:
        name = name.strip() if name and name.strip() else None
        context_id = context_id.strip() if context_id and context_id.strip() else None
        if not name and not context_id:
            return ContextResult(error_message="Either context_id or name must be provided (cannot both be empty)")
        if create and context_id:
            return ContextResult(error_message="context_id cannot be provided when create=True "
                                               "(only name is allowed when creating)")
        response = self._call("getContext", {"id": context_id, "name": name, "loginRegionId": login_region_id,
                                             "allowCreate": "true" if create else "false"})
        rid = str(response.get("requestId") or "")
        data = response.get("data")
        if not succeeded(response) or not isinstance(data, dict):
            return ContextResult(request_id=rid, error_message=error_of(response))
        context = _context(data)
        return ContextResult(request_id=rid, success=True, context_id=context.id, context=context)

    def create(self, name: str) -> ContextResult:
        return self.get(name, create=True)

    def update(self, context: Context) -> OperationResult:
        response = self._call("modifyContext", {"id": context.id, "name": context.name})
        return self._op_result(response)

    def delete(self, context: Context) -> OperationResult:
        return self._op_result(self._call("deleteContext", {"id": context.id}))

    @staticmethod
    def _op_result(response: dict[str, Any]) -> OperationResult:
        ok = succeeded(response)
        return OperationResult(request_id=str(response.get("requestId") or ""), success=ok, data=ok,
                               error_message="" if ok else error_of(response))

    def _url(self, op: str, context_id: str, file_path: str) -> FileUrlResult:
        response = self._call(op, {"contextId": context_id, "filePath": file_path})
        rid = str(response.get("requestId") or "")
        data = response.get("data")
        if not succeeded(response) or not isinstance(data, dict):
            return FileUrlResult(request_id=rid, error_message=error_of(response))
        return FileUrlResult(request_id=rid, success=True, url=str(data.get("url") or ""),
                             expire_time=data.get("expireTime"))

    def get_file_download_url(self, context_id: str, file_path: str) -> FileUrlResult:
        return self._url("getContextFileDownloadUrl", context_id, file_path)

    def get_file_upload_url(self, context_id: str, file_path: str) -> FileUrlResult:
        return self._url("getContextFileUploadUrl", context_id, file_path)

    def delete_file(self, context_id: str, file_path: str) -> OperationResult:
        if not context_id or not file_path:
            return OperationResult(error_message="context_id and file_path are required")
        return self._op_result(self._call("deleteContextFile", {"contextId": context_id, "filePath": file_path}))

    def list_files(self, context_id: str, parent_folder_path: str | None = None, page_number: int = 1,
                   page_size: int = 50) -> ContextFileListResult:
        if not context_id:
            return ContextFileListResult(error_message="context_id cannot be empty or None")
        response = self._call("describeContextFiles", {"contextId": context_id,
                                                       "parentFolderPath": parent_folder_path or "",
                                                       "pageNumber": str(page_number), "pageSize": str(page_size)})
        rid = str(response.get("requestId") or "")
        if not succeeded(response):
            return ContextFileListResult(request_id=rid, error_message=error_of(response))
        entries = [ContextFileEntry(file_id=str(d.get("fileId") or ""), file_name=str(d.get("fileName") or ""),
                                    file_path=str(d.get("filePath") or ""), file_type=d.get("fileType"),
                                    gmt_create=d.get("gmtCreate"), gmt_modified=d.get("gmtModified"),
                                    size=d.get("size"), status=d.get("status"))
                   for d in response.get("data") or []]
        return ContextFileListResult(request_id=rid, success=True, entries=entries, count=response.get("count"))

    def clear_async(self, context_id: str) -> ClearContextResult:
        response = self._call("clearContext", {"id": context_id})
        rid = str(response.get("requestId") or "")
        if not succeeded(response):
            return ClearContextResult(request_id=rid, error_message=error_of(response))
        return ClearContextResult(request_id=rid, success=True, status="clearing", context_id=context_id)

    def get_clear_status(self, context_id: str) -> ClearContextResult:
        response = self._call("getContext", {"id": context_id, "allowCreate": "false"})
        rid = str(response.get("requestId") or "")
        data = response.get("data")
        if not succeeded(response) or not isinstance(data, dict):
            return ClearContextResult(request_id=rid, error_message=error_of(response))
        return ClearContextResult(request_id=rid, success=True, status=str(data.get("state") or "clearing"),
                                  context_id=str(data.get("id") or context_id))

    def clear(self, context_id: str, timeout: int = 60, poll_interval: float = 2.0) -> ClearContextResult:
        started = self.clear_async(context_id)
        if not started.success:
            return started
        deadline = time.monotonic() + timeout
        wait = min(POLL_START_S, poll_interval)
        while time.monotonic() < deadline:
            status = self.get_clear_status(context_id)
            if not status.success:
                return status
            if status.status == "available":
                return ClearContextResult(request_id=started.request_id, success=True, status="available",
                                          context_id=context_id)
            time.sleep(wait)
            wait = min(wait * 2, poll_interval)
        raise ClearanceTimeoutError(f"Context clearing timed out after {timeout} seconds")
