"""``session.context`` (ContextManager), with the official SDK's names: ``info``, ``sync`` (async, like the
official SDK), and ``sync_blocking``/``wait_ready`` used by ``Session.delete(sync_context=True)`` and
``AGB.create``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import TYPE_CHECKING

from agbox.client.envelopes import error_of, succeeded
from agbox.client.results import ApiResponse

if TYPE_CHECKING:
    from agbox.client.session import Session

POLL_START_S = 0.05
POLL_MAX_S = 1.0


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
        if not succeeded(response) or not isinstance(data, dict):
            return ContextInfoResult(request_id=rid, error_message=error_of(response))
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
        if not succeeded(response):
            return ContextSyncResult(request_id=rid, error_message=error_of(response))
        ok, error = self._wait(context_id, path, timeout_s)
        return ContextSyncResult(request_id=rid, success=ok, error_message=error)

    async def sync(self, context_id: str | None = None, path: str | None = None, mode: str | None = None,
                   timeout_s: float = 300.0) -> ContextSyncResult:
        return await asyncio.to_thread(self.sync_blocking, context_id, path, mode, timeout_s)

    def wait_ready(self, timeout_s: float = 300.0) -> bool:
        """After create with context_syncs: wait until every download is Success or Failed."""
        ok, _ = self._wait(None, None, timeout_s, ("download",))
        return ok
