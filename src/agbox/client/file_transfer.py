"""``session.file.upload/download`` (FileTransfer): local file <-> sandbox file through the session's
internal ``file_transfer`` context (bound at ``/``, so a sandbox path is the context key) and
pre-signed URLs, as the official SDK does it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

import httpx

from agbox.client.bulk import Progress
from agbox.client.envelopes import error_of, succeeded
from agbox.client.results import ApiResponse

if TYPE_CHECKING:
    from agbox.client.context import ContextService
    from agbox.client.context_manager import ContextManager
    from agbox.client.session import Session


CHUNK = 1024 * 1024


def _chunks(handle: BinaryIO, size: int, progress: Progress | None) -> Iterator[bytes]:
    # 1 MiB pieces: httpx sends a large single body piece by re-slicing it on every socket write.
    sent = 0
    while True:
        data = handle.read(CHUNK)
        if not data:
            return
        yield data
        sent += len(data)
        if progress is not None:
            progress(sent, size)


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
            items = response.get("data") if succeeded(response) else None
            if not isinstance(items, list) or not items:
                raise RuntimeError(error_of(response, "no internal context"))
            self.context_id = str(items[0]["contextId"])
            self.context_path = str(items[0]["contextPath"])
        return self.context_id

    def transfer_path(self) -> str | None:
        self._ensure()
        return self.context_path

    @staticmethod
    def _dir(remote_path: str) -> str:
        return str(PurePosixPath(remote_path).parent)

    def upload(self, local_path: str, remote_path: str, *, wait_timeout: float = 300.0,
               progress: Progress | None = None) -> UploadResult:
        if not os.path.isfile(local_path):
            return UploadResult(path=remote_path, error_message=f"Local file not found: {local_path}")
        try:
            context_id = self._ensure()
            url = self.service.get_file_upload_url(context_id, remote_path)
            if not url.success:
                return UploadResult(path=remote_path, error_message=url.error_message)
            size = os.path.getsize(local_path)
            with open(local_path, "rb") as handle, httpx.Client(timeout=300) as client:
                response = client.put(url.url, content=_chunks(handle, size, progress),
                                      headers={"content-length": str(size)})
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
                 wait_timeout: float = 300.0, progress: Progress | None = None) -> DownloadResult:
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
                total = int(response.headers.get("content-length") or 0) or None
                with open(tmp, "wb") as out:
                    for chunk in response.iter_raw(CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        if progress is not None:
                            progress(received, total)
            os.replace(tmp, local_path)
            return DownloadResult(request_id=synced.request_id, success=True, path=remote_path,
                                  local_path=local_path, bytes_received=received, http_status=200)
        except (httpx.HTTPError, OSError, RuntimeError) as exc:
            return DownloadResult(path=remote_path, local_path=local_path, error_message=str(exc))
