"""``session.file``: the file system of a session, with the official SDK's method names and results.

Bytes (``write(path, bytes)``, ``read(path, format="bytes")``) and the streaming ``upload_stream`` /
``download_stream`` (from/to a local path or file object) travel as raw HTTP bodies on
``/sessions/{id}/files`` (client/bulk.py), at disk speed and in constant memory on the server. Text
travels as the official SDK's tool calls, in chunks much bigger than its 50 KiB: reads in byte ranges
(the server completes a character cut by a range end, so ranges concatenate exactly), writes in pieces
well below the server's request size limit. ``upload``/``download`` are the official SDK's pre-signed
URL path (client/file_transfer.py).
"""

from __future__ import annotations

import base64
import binascii
import builtins
import dataclasses
import io
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Literal, overload

from agbox.client.bulk import Bulk, BulkError, Progress, bytes_chunks, file_chunks, remaining_size
from agbox.client.file_transfer import DownloadResult, UploadResult
from agbox.client.results import ApiResponse, BoolResult, McpToolResult

if TYPE_CHECKING:
    from agbox.client.session import Session

# Per call: bytes of a read range, characters of a text write, bytes of a binary write (as base64 this
# is 4/3 bigger). Every request stays far below the server's default 64 MiB body limit even with the
# worst-case JSON escaping of text.
READ_CHUNK_BYTES = 16 * 1024 * 1024
WRITE_CHUNK_CHARS = 3 * 1024 * 1024
WRITE_CHUNK_BYTES = 16 * 1024 * 1024
# Per-call read timeout handed to call_mcp_tool (milliseconds).
CALL_TIMEOUT_MS = 300_000


# ---- result types (names and fields of the official SDK's agb.modules.file_system) -----------------

@dataclasses.dataclass
class FileChangeEvent:
    event_type: str = ""
    path: str = ""
    path_type: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"eventType": self.event_type, "path": self.path, "pathType": self.path_type}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileChangeEvent:
        return cls(event_type=str(data.get("eventType", "")), path=str(data.get("path", "")),
                   path_type=str(data.get("pathType", "")))


@dataclasses.dataclass
class FileInfoResult(ApiResponse):
    success: bool = False
    file_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    error_message: str = ""


@dataclasses.dataclass
class DirectoryListResult(ApiResponse):
    success: bool = False
    entries: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error_message: str = ""


@dataclasses.dataclass
class FileContentResult(ApiResponse):
    success: bool = False
    content: str = ""
    error_message: str = ""


@dataclasses.dataclass
class BinaryFileContentResult(ApiResponse):
    success: bool = False
    content: bytes = b""
    error_message: str = ""
    size: int | None = None


@dataclasses.dataclass
class MultipleFileContentResult(ApiResponse):
    success: bool = False
    contents: dict[str, str] = dataclasses.field(default_factory=dict)
    error_message: str = ""


@dataclasses.dataclass
class FileSearchResult(ApiResponse):
    success: bool = False
    matches: list[str] = dataclasses.field(default_factory=list)
    error_message: str = ""


@dataclasses.dataclass
class FileChangeResult(ApiResponse):
    success: bool = False
    events: list[FileChangeEvent] = dataclasses.field(default_factory=list)
    raw_data: str = ""
    error_message: str = ""

    def has_changes(self) -> bool:
        return bool(self.events)

    def _paths(self, kind: str) -> list[str]:
        return [e.path for e in self.events if e.event_type == kind and e.path_type == "file"]

    def get_modified_files(self) -> list[str]:
        return self._paths("modify")

    def get_created_files(self) -> list[str]:
        return self._paths("create")

    def get_deleted_files(self) -> list[str]:
        return self._paths("delete")


class _Opened:
    """``open(source)`` for a path, the object itself (left open) for a file object."""

    def __init__(self, source: str | os.PathLike[str] | IO[bytes], mode: str) -> None:
        self.source = source
        self.mode = mode
        self.handle: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        if hasattr(self.source, "read"):
            return self.source  # type: ignore[return-value]
        self.handle = open(os.fspath(self.source), self.mode)  # type: ignore[arg-type]
        return self.handle

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()


# ---- parsers of the tool texts ----------------------------------------------------------------------

def _scalar(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


def parse_file_info(text: str) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for line in text.split("\n"):
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = _scalar(value.strip())
    return info


def parse_listing(text: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for raw in text.split("\n"):
        line = raw.strip()
        for tag, is_dir in (("[DIR]", True), ("[FILE]", False)):
            if line.startswith(tag):
                entries.append({"name": line[len(tag):].strip(), "isDirectory": is_dir})
                break
    return entries


def parse_multiple(text: str) -> dict[str, str]:
    """Blocks ``<path>:<content>`` separated by ``---`` lines (the path ends at its first colon)."""
    contents: dict[str, str] = {}
    current: str | None = None
    lines: list[str] = []
    for line in text.split("\n") if text else []:
        if current is None and ":" in line:
            current, _, rest = line.partition(":")
            current = current.strip()
            lines = [rest.strip()] if rest.strip() else []
        elif line.strip() == "---":
            if current is not None:
                contents[current] = "\n".join(lines).strip()
            current, lines = None, []
        elif current is not None:
            lines.append(line)
    if current is not None:
        contents[current] = "\n".join(lines).strip()
    return contents


def parse_changes(text: str) -> list[FileChangeEvent]:
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        return []
    if not isinstance(data, list):
        return []
    return [FileChangeEvent.from_dict(item) for item in data if isinstance(item, dict)]


def _session_gone(result: McpToolResult) -> bool:
    """The session itself failed (not the tool): released, expired, unknown."""
    message = result.error_message.lower()
    return not result.data and any(word in message for word in ("not found", "has ended", "expired"))


class DirectoryWatcher(threading.Thread):
    """The thread ``watch_dir`` returns: set ``stop_event`` to stop; wait on ``ready_event`` after
    ``start()`` for the baseline to be in place before changing files."""

    def __init__(self, files: FileSystem, path: str, callback: Callable[[list[FileChangeEvent]], None],
                 interval: float, stop_event: threading.Event) -> None:
        super().__init__(name=f"DirectoryWatcher-{path.replace('/', '_')}", daemon=True)
        self.files = files
        self.path = path
        self.callback = callback
        self.interval = interval
        self.stop_event = stop_event
        self.ready_event = threading.Event()
        self.last_error = ""

    def run(self) -> None:
        baseline = False
        while not self.stop_event.is_set():
            raw = self.files.session.call_mcp_tool("get_file_change", {"path": self.path}, read_timeout=30_000)
            if not baseline:
                # As the official SDK: the first poll only sets the baseline, whatever it answered.
                baseline = True
                self.ready_event.set()
            elif raw.success:
                events = parse_changes(raw.data)
                if events:
                    try:
                        self.callback(events)
                    except Exception as exc:  # a failing callback must not end the watch
                        self.last_error = f"callback failed: {type(exc).__name__}: {exc}"
            if not raw.success:
                self.last_error = raw.error_message
                if _session_gone(raw):
                    self.stop_event.set()
                    break
            self.stop_event.wait(self.interval)
        self.ready_event.set()


class FileSystem:
    DEFAULT_CHUNK_SIZE = READ_CHUNK_BYTES

    def __init__(self, session: Session) -> None:
        self.session = session

    # Local file <-> sandbox file, as the official SDK's ``session.file`` offers them (file_transfer.py).
    def upload(self, local_path: str, remote_path: str, *, wait_timeout: float = 300.0,
               progress: Progress | None = None) -> UploadResult:
        return self.session.file_transfer.upload(local_path, remote_path, wait_timeout=wait_timeout,
                                                 progress=progress)

    def download(self, remote_path: str, local_path: str, *, overwrite: bool = True,
                 wait_timeout: float = 300.0, progress: Progress | None = None) -> DownloadResult:
        return self.session.file_transfer.download(remote_path, local_path, overwrite=overwrite,
                                                   wait_timeout=wait_timeout, progress=progress)

    # ---- raw streams (agbox's /sessions/{id}/files)
    def _bulk(self) -> Bulk | None:
        endpoint = self.session.agb._backend.bulk_endpoint()
        if endpoint is None:
            return None
        return Bulk(endpoint[0], endpoint[1], CALL_TIMEOUT_MS / 1000)

    def upload_stream(self, source: str | os.PathLike[str] | IO[bytes], remote_path: str, *,
                      mode: str = "overwrite", progress: Progress | None = None) -> UploadResult:
        """Stream a local file (a path, or a binary file object from its current position) into the
        session at ``remote_path``; ``progress(bytes_sent, total)`` is called as it goes. An overwrite
        is all or nothing: on any failure the previous file stays as it was."""
        bulk = self._bulk()
        if bulk is None:
            return UploadResult(path=remote_path, error_message="this AGB client is closed")
        try:
            with _Opened(source, "rb") as handle:
                size = remaining_size(handle)
                if size is None:  # a pipe or socket: spool it, the server needs the length up front
                    spool = tempfile.TemporaryFile()
                    shutil.copyfileobj(handle, spool, 1024 * 1024)
                    size = spool.tell()
                    spool.seek(0)
                    handle = spool
                data = bulk.upload(self.session.session_id, remote_path, file_chunks(handle, size), size,
                                   mode=mode, progress=progress)
        except BulkError as exc:
            return UploadResult(request_id=exc.request_id, path=remote_path, http_status=exc.status or None,
                                error_message=exc.message)
        except OSError as exc:
            return UploadResult(path=remote_path, error_message=f"cannot read {source!r}: {exc}")
        return UploadResult(success=True, path=remote_path, bytes_sent=size, http_status=200,
                            etag=None if not data else str(data.get("size")))

    def download_stream(self, remote_path: str, target: str | os.PathLike[str] | IO[bytes], *,
                        progress: Progress | None = None) -> DownloadResult:
        """Stream a session file into a local path (written to ``<path>.part``, renamed when complete)
        or a binary file object; ``progress(bytes_received, total)`` is called as it goes."""
        bulk = self._bulk()
        local = "" if hasattr(target, "write") else os.fspath(target)  # type: ignore[arg-type]
        if bulk is None:
            return DownloadResult(path=remote_path, local_path=local, error_message="this AGB client is closed")
        try:
            if local:
                part = f"{local}.part"
                try:
                    with open(part, "wb") as out:
                        received = bulk.download(self.session.session_id, remote_path, out, progress=progress)
                    os.replace(part, local)
                finally:
                    if os.path.exists(part):
                        os.unlink(part)
            else:
                received = bulk.download(self.session.session_id, remote_path, target,  # type: ignore[arg-type]
                                         progress=progress)
        except BulkError as exc:
            return DownloadResult(request_id=exc.request_id, path=remote_path, local_path=local,
                                  http_status=exc.status or None, error_message=exc.message)
        except OSError as exc:
            return DownloadResult(path=remote_path, local_path=local, error_message=f"cannot write {local}: {exc}")
        return DownloadResult(success=True, path=remote_path, local_path=local, bytes_received=received,
                              http_status=200)

    def transfer_path(self) -> str | None:
        return self.session.file_transfer.transfer_path()

    def _call(self, tool: str, args: dict[str, Any]) -> McpToolResult:
        return self.session.call_mcp_tool(tool, args, read_timeout=CALL_TIMEOUT_MS, connect_timeout=CALL_TIMEOUT_MS)

    def _bool(self, tool: str, args: dict[str, Any], fallback: str) -> BoolResult:
        result = self._call(tool, args)
        if result.success:
            return BoolResult(request_id=result.request_id, success=True, data=True)
        return BoolResult(request_id=result.request_id, success=False, error_message=result.error_message or fallback)

    # ---- simple operations
    def mkdir(self, path: str) -> BoolResult:
        return self._bool("create_directory", {"path": path}, "Failed to create directory")

    def edit(self, path: str, edits: list[dict[str, str]], dry_run: bool = False) -> BoolResult:
        return self._bool("edit_file", {"path": path, "edits": edits, "dryRun": dry_run}, "Failed to edit file")

    def move(self, source: str, destination: str) -> BoolResult:
        return self._bool("move_file", {"source": source, "destination": destination}, "Failed to move file")

    def remove(self, path: str) -> BoolResult:
        return self._bool("delete_file", {"path": path}, "Failed to delete file")

    def info(self, path: str) -> FileInfoResult:
        result = self._call("get_file_info", {"path": path})
        if not result.success:
            return FileInfoResult(request_id=result.request_id, success=False,
                                  error_message=result.error_message or "Failed to get file info")
        return FileInfoResult(request_id=result.request_id, success=True, file_info=parse_file_info(result.data))

    def list(self, path: str) -> DirectoryListResult:
        result = self._call("list_directory", {"path": path})
        if not result.success:
            return DirectoryListResult(request_id=result.request_id, success=False,
                                       error_message=result.error_message or "Failed to list directory")
        return DirectoryListResult(request_id=result.request_id, success=True, entries=parse_listing(result.data))

    def read_batch(self, paths: builtins.list[str]) -> MultipleFileContentResult:
        result = self._call("read_multiple_files", {"paths": paths})
        if not result.success:
            return MultipleFileContentResult(request_id=result.request_id, success=False,
                                             error_message=result.error_message or "Failed to read multiple files")
        return MultipleFileContentResult(request_id=result.request_id, success=True,
                                         contents=parse_multiple(result.data))

    def search(self, path: str, pattern: str, exclude_patterns: builtins.list[str] | None = None) -> FileSearchResult:
        args: dict[str, Any] = {"path": path, "pattern": pattern}
        if exclude_patterns:
            args["excludePatterns"] = exclude_patterns
        result = self._call("search_files", args)
        if not result.success:
            return FileSearchResult(request_id=result.request_id, success=False,
                                    error_message=result.error_message or "Failed to search files")
        text = result.data.strip()
        matches = text.split("\n") if text and text != "No matches found" else []
        return FileSearchResult(request_id=result.request_id, success=True, matches=matches)

    # ---- read
    @overload
    def read(self, path: str) -> FileContentResult: ...

    @overload
    def read(self, path: str, *, format: Literal["text"]) -> FileContentResult: ...

    @overload
    def read(self, path: str, *, format: Literal["bytes"]) -> BinaryFileContentResult: ...

    def read(self, path: str, *, format: str = "text") -> FileContentResult | BinaryFileContentResult:
        binary = format == "bytes"
        if format not in ("text", "bytes"):
            message = f"Invalid format: {format}. Must be 'text' or 'bytes'."
            return FileContentResult(success=False, error_message=message)
        if binary:
            sink = io.BytesIO()
            got = self.download_stream(path, sink)
            if not got.success:
                return BinaryFileContentResult(request_id=got.request_id, success=False,
                                               error_message=got.error_message)
            content = sink.getvalue()
            return BinaryFileContentResult(request_id=got.request_id, success=True, content=content, size=len(content))
        info = self.info(path)
        if not info.success or info.file_info.get("isDirectory", False) or not info.file_info:
            message = info.error_message if not info.success else f"Path does not exist or is a directory: {path}"
            if binary:
                return BinaryFileContentResult(request_id=info.request_id, success=False, error_message=message)
            return FileContentResult(request_id=info.request_id, success=False, error_message=message)
        size = int(info.file_info.get("size", 0) or 0)
        parts: builtins.list[str] = []
        offset = 0
        while offset < size:
            length = min(READ_CHUNK_BYTES, size - offset)
            args: dict[str, Any] = {"path": path, "offset": offset, "length": length}
            if binary:
                args["format"] = "binary"
            result = self._call("read_file", args)
            if not result.success:
                message = result.error_message or "Failed to read file"
                if binary:
                    return BinaryFileContentResult(request_id=result.request_id, success=False, error_message=message)
                return FileContentResult(request_id=result.request_id, success=False, error_message=message)
            parts.append(result.data)
            offset += length
        if not binary:
            return FileContentResult(request_id=info.request_id, success=True, content="".join(parts))
        try:
            data = b"".join(base64.b64decode(part) for part in parts)
        except (binascii.Error, ValueError) as exc:
            return BinaryFileContentResult(request_id=info.request_id, success=False,
                                           error_message=f"Failed to decode base64: {exc}")
        return BinaryFileContentResult(request_id=info.request_id, success=True, content=data, size=len(data))

    # ---- write
    def write(self, path: str, content: str | bytes, mode: str = "overwrite") -> BoolResult:
        """Write text, or bytes (an agbox extension: sent as base64 with ``format: "binary"``)."""
        if mode not in ("overwrite", "append"):
            return BoolResult(success=False,
                              error_message=f"Invalid write mode: {mode}. Must be 'overwrite' or 'append'.")
        binary = not isinstance(content, str)
        bulk = self._bulk() if binary else None
        if bulk is not None and not isinstance(content, str):
            try:
                bulk.upload(self.session.session_id, path, bytes_chunks(content), len(content), mode=mode)
            except BulkError as exc:
                return BoolResult(request_id=exc.request_id, success=False, error_message=exc.message)
            return BoolResult(success=True, data=True)
        step = WRITE_CHUNK_BYTES if binary else WRITE_CHUNK_CHARS
        total = len(content)
        offset = 0
        result = BoolResult(success=True, data=True)
        while True:
            piece = content[offset:offset + step]
            args: dict[str, Any] = {"path": path, "mode": mode if offset == 0 else "append"}
            if isinstance(piece, str):
                args["content"] = piece
            else:
                args["content"] = base64.b64encode(piece).decode("ascii")
                args["format"] = "binary"
            result = self._bool("write_file", args, "Failed to write file")
            if not result.success:
                return result
            offset += step
            if offset >= total:
                return result

    # ---- change tracking
    def _get_file_change(self, path: str) -> FileChangeResult:
        result = self.session.call_mcp_tool("get_file_change", {"path": path}, read_timeout=30_000)
        if not result.success:
            return FileChangeResult(request_id=result.request_id, success=False, raw_data=result.data,
                                    error_message=result.error_message or "Failed to get file change")
        return FileChangeResult(request_id=result.request_id, success=True, events=parse_changes(result.data),
                                raw_data=result.data)

    def watch_dir(self, path: str, callback: Callable[[builtins.list[FileChangeEvent]], None], interval: float = 1.0,
                  stop_event: threading.Event | None = None) -> DirectoryWatcher:
        """A (not yet started) thread polling ``get_file_change`` every ``interval`` seconds and calling
        ``callback`` with each non-empty batch of events; the first poll only sets the baseline."""
        return DirectoryWatcher(self, path, callback, interval, stop_event or threading.Event())

