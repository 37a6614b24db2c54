"""Contexts in the SDK, with the official SDK's names.

- ``agb.context`` (ContextService): list/get/create/update/delete, file URLs, list/delete files, clear.
- ``session.context`` (ContextManager): ``info``, ``sync`` (async, like the official SDK), and
  ``sync_blocking``/``wait_ready`` used by ``Session.delete(sync_context=True)`` and ``AGB.create``.
- ``session.file_transfer`` (FileTransfer): ``upload``/``download`` through the session's internal
  context and pre-signed URLs; also bound as ``session.file.upload/download`` when ``session.file`` exists.
- ``ContextSync`` / ``SyncPolicy`` and its parts: ``CreateSessionParams.context_syncs`` items
  (``to_wire()`` gives a ``persistenceDataList`` entry).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import os
import re
import time
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import httpx

from agbox.client.results import ApiResponse, OperationResult

if TYPE_CHECKING:
    from agbox.client.agb import AGB
    from agbox.client.session import Session

POLL_START_S = 0.05
POLL_MAX_S = 1.0
_WILDCARD = re.compile(r"[*?\[\]]")


def _error(response: dict[str, Any], fallback: str = "Unknown error") -> str:
    return str(response.get("message") or response.get("code") or fallback)


def _ok(response: dict[str, Any]) -> bool:
    return bool(response.get("success")) and int(response.get("httpStatusCode") or 200) == 200


def _no_wildcards(path: str, what: str) -> None:
    if path and _WILDCARD.search(path):
        raise ValueError(f"Wildcard patterns are not supported in {what}. Got: {path}. "
                         "Please use exact directory paths instead.")


# ---- sync policy -----------------------------------------------------------------------------------


class UploadStrategy(str, enum.Enum):
    UPLOAD_BEFORE_RESOURCE_RELEASE = "UploadBeforeResourceRelease"


class DownloadStrategy(str, enum.Enum):
    DOWNLOAD_ASYNC = "DownloadAsync"


class UploadMode(str, enum.Enum):
    FILE = "File"
    ARCHIVE = "Archive"


class Lifecycle(str, enum.Enum):
    LIFECYCLE_1DAY = "Lifecycle_1Day"
    LIFECYCLE_3DAYS = "Lifecycle_3Days"
    LIFECYCLE_5DAYS = "Lifecycle_5Days"
    LIFECYCLE_10DAYS = "Lifecycle_10Days"
    LIFECYCLE_15DAYS = "Lifecycle_15Days"
    LIFECYCLE_30DAYS = "Lifecycle_30Days"
    LIFECYCLE_90DAYS = "Lifecycle_90Days"
    LIFECYCLE_180DAYS = "Lifecycle_180Days"
    LIFECYCLE_360DAYS = "Lifecycle_360Days"
    LIFECYCLE_FOREVER = "Lifecycle_Forever"


@dataclasses.dataclass
class UploadPolicy:
    auto_upload: bool = True
    upload_strategy: UploadStrategy = UploadStrategy.UPLOAD_BEFORE_RESOURCE_RELEASE
    upload_mode: UploadMode = UploadMode.FILE

    def __post_init__(self) -> None:
        self.upload_mode = UploadMode(self.upload_mode)

    def to_dict(self) -> dict[str, Any]:
        return {"autoUpload": self.auto_upload, "uploadStrategy": UploadStrategy(self.upload_strategy).value,
                "uploadMode": self.upload_mode.value}


@dataclasses.dataclass
class DownloadPolicy:
    auto_download: bool = True
    download_strategy: DownloadStrategy = DownloadStrategy.DOWNLOAD_ASYNC

    def to_dict(self) -> dict[str, Any]:
        return {"autoDownload": self.auto_download,
                "downloadStrategy": DownloadStrategy(self.download_strategy).value}


@dataclasses.dataclass
class DeletePolicy:
    sync_local_file: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"syncLocalFile": self.sync_local_file}


@dataclasses.dataclass
class ExtractPolicy:
    extract: bool = True
    delete_src_file: bool = True
    extract_current_folder: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"extract": self.extract, "deleteSrcFile": self.delete_src_file,
                "extractToCurrentFolder": self.extract_current_folder}


@dataclasses.dataclass
class RecyclePolicy:
    lifecycle: Lifecycle = Lifecycle.LIFECYCLE_FOREVER
    paths: list[str] = dataclasses.field(default_factory=lambda: [""])

    def __post_init__(self) -> None:
        self.lifecycle = Lifecycle(self.lifecycle)
        for path in self.paths:
            _no_wildcards(path, "recycle policy paths")

    def to_dict(self) -> dict[str, Any]:
        return {"lifecycle": self.lifecycle.value, "paths": list(self.paths)}


@dataclasses.dataclass
class WhiteList:
    path: str = ""
    exclude_paths: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        _no_wildcards(self.path, "path")
        for path in self.exclude_paths:
            _no_wildcards(path, "exclude_paths")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "excludePaths": list(self.exclude_paths)}


@dataclasses.dataclass
class BWList:
    white_lists: list[WhiteList] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"whiteLists": [w.to_dict() for w in self.white_lists]}


@dataclasses.dataclass
class MappingPolicy:
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path}


@dataclasses.dataclass
class SyncPolicy:
    upload_policy: UploadPolicy | None = None
    download_policy: DownloadPolicy | None = None
    delete_policy: DeletePolicy | None = None
    extract_policy: ExtractPolicy | None = None
    recycle_policy: RecyclePolicy | None = None
    bw_list: BWList | None = None
    mapping_policy: MappingPolicy | None = None

    def __post_init__(self) -> None:
        self.upload_policy = self.upload_policy or UploadPolicy()
        self.download_policy = self.download_policy or DownloadPolicy()
        self.delete_policy = self.delete_policy or DeletePolicy()
        self.extract_policy = self.extract_policy or ExtractPolicy()
        self.recycle_policy = self.recycle_policy or RecyclePolicy()
        self.bw_list = self.bw_list or BWList()

    def to_dict(self) -> dict[str, Any]:
        parts: dict[str, Any] = {"uploadPolicy": self.upload_policy, "downloadPolicy": self.download_policy,
                                 "deletePolicy": self.delete_policy, "extractPolicy": self.extract_policy,
                                 "recyclePolicy": self.recycle_policy, "bwList": self.bw_list,
                                 "mappingPolicy": self.mapping_policy}
        return {key: value.to_dict() for key, value in parts.items() if value is not None}


@dataclasses.dataclass
class ContextSync:
    context_id: str
    path: str
    policy: SyncPolicy | None = None

    @classmethod
    def new(cls, context_id: str, path: str, policy: SyncPolicy | None = None) -> ContextSync:
        return cls(context_id, path, policy)

    def with_policy(self, policy: SyncPolicy) -> ContextSync:
        self.policy = policy
        return self

    def to_wire(self) -> dict[str, Any]:
        item: dict[str, Any] = {"contextId": self.context_id, "path": self.path}
        if self.policy is not None:
            item["policy"] = json.dumps(self.policy.to_dict(), ensure_ascii=False)
        return item


# ---- results -------------------------------------------------------------------------------------


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


@dataclasses.dataclass
class ContextStatusData:
    context_id: str = ""
    path: str = ""
    error_message: str = ""
    status: str = ""
    start_time: int = 0
    finish_time: int = 0
    task_type: str = ""


@dataclasses.dataclass
class ContextInfoResult(ApiResponse):
    success: bool = False
    context_status_data: list[ContextStatusData] = dataclasses.field(default_factory=list)
    error_message: str = ""


@dataclasses.dataclass
class ContextSyncResult(ApiResponse):
    success: bool = False
    error_message: str = ""


@dataclasses.dataclass
class UploadResult(ApiResponse):
    success: bool = False
    path: str = ""
    bytes_sent: int = 0
    http_status: int | None = None
    etag: str | None = None
    error_message: str = ""


@dataclasses.dataclass
class DownloadResult(ApiResponse):
    success: bool = False
    path: str = ""
    local_path: str = ""
    bytes_received: int = 0
    http_status: int | None = None
    error_message: str = ""


def _context(data: dict[str, Any]) -> Context:
    return Context(id=str(data.get("id") or ""), name=str(data.get("name") or ""),
                   created_at=data.get("createTime"), last_used_at=data.get("lastUsedTime"),
                   state=str(data.get("state") or ""))


# ---- agb.context ---------------------------------------------------------------------------------


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
        if not _ok(response):
            return ContextListResult(request_id=rid, error_message=_error(response))
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
        if not _ok(response) or not isinstance(data, dict):
            return ContextResult(request_id=rid, error_message=_error(response))
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
        ok = _ok(response)
        return OperationResult(request_id=str(response.get("requestId") or ""), success=ok, data=ok,
                               error_message="" if ok else _error(response))

    def _url(self, op: str, context_id: str, file_path: str) -> FileUrlResult:
        response = self._call(op, {"contextId": context_id, "filePath": file_path})
        rid = str(response.get("requestId") or "")
        data = response.get("data")
        if not _ok(response) or not isinstance(data, dict):
            return FileUrlResult(request_id=rid, error_message=_error(response))
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
        if not _ok(response):
            return ContextFileListResult(request_id=rid, error_message=_error(response))
        entries = [ContextFileEntry(file_id=str(d.get("fileId") or ""), file_name=str(d.get("fileName") or ""),
                                    file_path=str(d.get("filePath") or ""), file_type=d.get("fileType"),
                                    gmt_create=d.get("gmtCreate"), gmt_modified=d.get("gmtModified"),
                                    size=d.get("size"), status=d.get("status"))
                   for d in response.get("data") or []]
        return ContextFileListResult(request_id=rid, success=True, entries=entries, count=response.get("count"))

    def clear_async(self, context_id: str) -> ClearContextResult:
        response = self._call("clearContext", {"id": context_id})
        rid = str(response.get("requestId") or "")
        if not _ok(response):
            return ClearContextResult(request_id=rid, error_message=_error(response))
        return ClearContextResult(request_id=rid, success=True, status="clearing", context_id=context_id)

    def get_clear_status(self, context_id: str) -> ClearContextResult:
        response = self._call("getContext", {"id": context_id, "allowCreate": "false"})
        rid = str(response.get("requestId") or "")
        data = response.get("data")
        if not _ok(response) or not isinstance(data, dict):
            return ClearContextResult(request_id=rid, error_message=_error(response))
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


# ---- session.context -----------------------------------------------------------------------------


class ContextManager:
    def __init__(self, session: Session) -> None:
        self.session = session

    def info(self, context_id: str | None = None, path: str | None = None,
             task_type: str | None = None) -> ContextInfoResult:
        response = self.session._call("getContextInfo", {"sessionId": self.session.session_id,
                                                         "contextId": context_id or None, "path": path or None,
                                                         "taskType": task_type or None})
        rid = str(response.get("requestId") or "")
        data = response.get("data")
        if not _ok(response) or not isinstance(data, dict):
            return ContextInfoResult(request_id=rid, error_message=_error(response))
        items: list[ContextStatusData] = []
        try:
            for block in json.loads(data.get("contextStatus") or "[]"):
                if block.get("type") != "data":
                    continue
                for d in json.loads(block.get("data") or "[]"):
                    items.append(ContextStatusData(
                        context_id=str(d.get("contextId") or ""), path=str(d.get("path") or ""),
                        error_message=str(d.get("errorMessage") or ""), status=str(d.get("status") or ""),
                        start_time=int(d.get("startTime") or 0), finish_time=int(d.get("finishTime") or 0),
                        task_type=str(d.get("taskType") or "")))
        except (ValueError, AttributeError, TypeError) as exc:
            return ContextInfoResult(request_id=rid, error_message=f"Failed to parse context status: {exc}")
        return ContextInfoResult(request_id=rid, success=True, context_status_data=items)

    def _wait(self, context_id: str | None, path: str | None, timeout_s: float,
              task_types: tuple[str, ...] = ("upload", "download")) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout_s
        wait = POLL_START_S
        while True:
            info = self.info(context_id, path)
            if info.success:
                tasks = [t for t in info.context_status_data if t.task_type in task_types]
                if all(t.status in ("Success", "Failed") for t in tasks):
                    failed = [f"{t.context_id} {t.path}: {t.error_message}" for t in tasks if t.status == "Failed"]
                    return not failed, "; ".join(failed)
            if time.monotonic() > deadline:
                return False, "context sync did not finish in time"
            time.sleep(wait)
            wait = min(wait * 2, POLL_MAX_S)

    def sync_blocking(self, context_id: str | None = None, path: str | None = None, mode: str | None = None,
                      timeout_s: float = 300.0) -> ContextSyncResult:
        if bool(context_id and context_id.strip()) != bool(path and path.strip()):
            return ContextSyncResult(error_message="context_id and path must be provided together or both omitted")
        response = self.session._call("syncContext", {"sessionId": self.session.session_id,
                                                      "contextId": context_id or None, "path": path or None,
                                                      "mode": mode or None})
        rid = str(response.get("requestId") or "")
        if not _ok(response):
            return ContextSyncResult(request_id=rid, error_message=_error(response))
        ok, error = self._wait(context_id, path, timeout_s)
        return ContextSyncResult(request_id=rid, success=ok, error_message=error)

    async def sync(self, context_id: str | None = None, path: str | None = None, mode: str | None = None,
                   timeout_s: float = 300.0) -> ContextSyncResult:
        return await asyncio.to_thread(self.sync_blocking, context_id, path, mode, timeout_s)

    def wait_ready(self, timeout_s: float = 300.0) -> bool:
        """After create with context_syncs: wait until every download is Success or Failed."""
        ok, _ = self._wait(None, None, timeout_s, ("download",))
        return ok


# ---- file transfer -------------------------------------------------------------------------------


class FileTransfer:
    """Local file <-> sandbox file, through the session's internal context and pre-signed URLs."""

    def __init__(self, session: Session, manager: ContextManager, service: ContextService) -> None:
        self.session = session
        self.manager = manager
        self.service = service
        self.context_id: str | None = None
        self.context_path: str | None = None

    def _ensure(self) -> str:
        if self.context_id is None:
            response = self.session._call("getAndLoadInternalContext", {"sessionId": self.session.session_id,
                                                                        "contextTypes": '["file_transfer"]'})
            items = response.get("data") if _ok(response) else None
            if not isinstance(items, list) or not items:
                raise RuntimeError(_error(response, "no internal context"))
            self.context_id = str(items[0]["contextId"])
            self.context_path = str(items[0]["contextPath"])
        return self.context_id

    def transfer_path(self) -> str | None:
        self._ensure()
        return self.context_path

    @staticmethod
    def _dir(remote_path: str) -> str:
        return str(PurePosixPath(remote_path).parent)

    def upload(self, local_path: str, remote_path: str, *, wait_timeout: float = 300.0) -> UploadResult:
        if not os.path.isfile(local_path):
            return UploadResult(path=remote_path, error_message=f"Local file not found: {local_path}")
        try:
            context_id = self._ensure()
            url = self.service.get_file_upload_url(context_id, remote_path)
            if not url.success:
                return UploadResult(path=remote_path, error_message=url.error_message)
            size = os.path.getsize(local_path)
            with open(local_path, "rb") as handle, httpx.Client(timeout=300) as client:
                response = client.put(url.url, content=handle)
            if response.status_code not in (200, 201, 204):
                return UploadResult(path=remote_path, http_status=response.status_code,
                                    error_message=f"Upload failed with HTTP {response.status_code}")
            synced = self.manager.sync_blocking(context_id, self._dir(remote_path), "download",
                                                        wait_timeout)
            return UploadResult(request_id=synced.request_id, success=synced.success, path=remote_path,
                                bytes_sent=size, http_status=response.status_code,
                                etag=response.headers.get("etag"), error_message=synced.error_message)
        except (httpx.HTTPError, OSError, RuntimeError) as exc:
            return UploadResult(path=remote_path, error_message=str(exc))

    def download(self, remote_path: str, local_path: str, *, overwrite: bool = True,
                 wait_timeout: float = 300.0) -> DownloadResult:
        if os.path.exists(local_path) and not overwrite:
            return DownloadResult(path=remote_path, local_path=local_path,
                                  error_message=f"Destination exists and overwrite=False: {local_path}")
        try:
            context_id = self._ensure()
            synced = self.manager.sync_blocking(context_id, self._dir(remote_path), "upload", wait_timeout)
            if not synced.success:
                return DownloadResult(path=remote_path, local_path=local_path, error_message=synced.error_message)
            url = self.service.get_file_download_url(context_id, remote_path)
            if not url.success:
                return DownloadResult(path=remote_path, local_path=local_path, error_message=url.error_message)
            received = 0
            tmp = f"{local_path}.part"
            with httpx.Client(timeout=300) as client, client.stream("GET", url.url) as response:
                if response.status_code != 200:
                    return DownloadResult(path=remote_path, local_path=local_path, http_status=response.status_code,
                                          error_message=f"Download failed with HTTP {response.status_code}")
                with open(tmp, "wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        received += len(chunk)
            os.replace(tmp, local_path)
            return DownloadResult(request_id=synced.request_id, success=True, path=remote_path,
                                  local_path=local_path, bytes_received=received, http_status=200)
        except (httpx.HTTPError, OSError, RuntimeError) as exc:
            return DownloadResult(path=remote_path, local_path=local_path, error_message=str(exc))


def attach_agb(agb: Any) -> None:
    from agbox.server.contexts import CONTEXT_ROUTES
    from agbox.server.wire import ROUTES

    for op, route in CONTEXT_ROUTES.items():
        ROUTES.setdefault(op, route)
    agb.context = ContextService(agb)


def attach_session(session: Any) -> None:
    session.context = ContextManager(session)
    service = getattr(session.agb, "context", None)
    if not isinstance(service, ContextService):
        service = ContextService(session.agb)
    session.file_transfer = FileTransfer(session, session.context, service)
    file_module = getattr(session, "file", None)
    if file_module is not None:
        for name in ("upload", "download", "transfer_path"):
            if not hasattr(file_module, name):
                setattr(file_module, name, getattr(session.file_transfer, name))
