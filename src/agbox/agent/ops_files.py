"""File ops: read/write/edit/list/info/move/delete/mkdir/read_multiple/search and inotify change tracking.

Stdlib only. Paths are the sandbox's own view (a mount namespace): whatever the sandbox cannot see
simply does not exist here. Relative paths are taken relative to the agent's working directory
(the sandbox user's home).
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import datetime
import difflib
import errno
import fnmatch
import os
import shutil
import stat
import struct
import threading
from typing import Any, Callable

from common import Ctx, OpError, require_str

# Reads without an explicit length stop here; callers read bigger files in ranges.
MAX_READ_BYTES = 64 * 1024 * 1024
# read_multiple_files: each file is cut off after this many bytes.
MAX_MULTI_READ_BYTES = 4 * 1024 * 1024
MAX_SEARCH_RESULTS = 100_000
MAX_WATCHERS = 64
MAX_WATCHED_DIRS = 8192


# ---- helpers ----------------------------------------------------------------------------------------

def _path(args: dict[str, Any], key: str = "path") -> str:
    return os.path.abspath(require_str(args, key))


def _os_error(exc: OSError, path: str) -> OpError:
    where = exc.filename if isinstance(exc.filename, str) and exc.filename else path
    messages = {
        errno.ENOENT: "No such file or directory",
        errno.EACCES: "Permission denied",
        errno.EPERM: "Operation not permitted",
        errno.EISDIR: "Is a directory",
        errno.ENOTDIR: "Not a directory",
        errno.EEXIST: "File exists",
        errno.ENOSPC: "No space left on device",
        errno.EDQUOT: "Disk quota exceeded",
        errno.EROFS: "Read-only file system",
        errno.ENOTEMPTY: "Directory not empty",
        errno.EXDEV: "Cross-device link",
        errno.ENAMETOOLONG: "File name too long",
        errno.ELOOP: "Too many levels of symbolic links",
    }
    text = messages.get(exc.errno or 0, exc.strerror or str(exc))
    kind = "not_found" if exc.errno == errno.ENOENT else "os"
    return OpError(kind, f"{text}: {where}")


def _guard(fn: Callable[[dict[str, Any], Ctx], Any]) -> Callable[[dict[str, Any], Ctx], Any]:
    """Turn OSErrors into OpErrors with a short, clean message naming the path."""

    def wrapper(args: dict[str, Any], ctx: Ctx) -> Any:
        try:
            return fn(args, ctx)
        except OSError as exc:
            path = args.get("path") or args.get("source") or ""
            raise _os_error(exc, str(path)) from None

    wrapper.__name__ = fn.__name__
    return wrapper


def _regular_file(path: str) -> os.stat_result:
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise OpError("is_directory", f"Is a directory, not a file: {path}")
    if not stat.S_ISREG(st.st_mode):
        raise OpError("invalid", f"Not a regular file: {path}")
    return st


def _int_arg(args: dict[str, Any], key: str, default: int) -> int:
    value = args.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OpError("invalid", f"'{key}' must be a non-negative integer")
    return value


def _iso(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# ---- UTF-8 aware byte ranges -------------------------------------------------------------------------
# A text read of a byte range returns the characters that *start* inside the range: a character cut
# by the range end is completed from the following bytes, and continuation bytes at the range start
# that belong to a character of the previous range are skipped. Consecutive ranges therefore
# concatenate to exactly the decoded file, whatever the chunk size a client chooses.

def _utf8_length(lead: int) -> int:
    if lead >= 0xF0 and lead <= 0xF7:
        return 4
    if lead >= 0xE0:
        return 3 if lead <= 0xEF else 1
    if lead >= 0xC0:
        return 2
    return 1


def _completion(before: bytes, after: bytes) -> tuple[int, int]:
    """How many bytes of ``after`` complete the last character begun in ``before``, and where in
    ``before`` that character starts (-1 when nothing needs completing)."""
    i = len(before) - 1
    while i >= 0 and (before[i] & 0xC0) == 0x80:
        i -= 1
    if i < 0 or before[i] < 0xC0:
        return 0, -1
    need = i + _utf8_length(before[i]) - len(before)
    if need <= 0:
        return 0, -1
    tail = after[:need]
    if len(tail) < need or any((b & 0xC0) != 0x80 for b in tail):
        return 0, -1
    return need, i


def _read_text_range(fd: int, offset: int, data: bytes) -> str:
    if not data:
        return ""
    skip = 0
    if offset > 0 and (data[0] & 0xC0) == 0x80:
        back = min(3, offset)
        skip, _ = _completion(os.pread(fd, back, offset - back), os.pread(fd, 3, offset))
        skip = min(skip, len(data))
    end = offset + len(data)
    back = min(3, end)
    window = os.pread(fd, back, end - back)
    more, lead = _completion(window, os.pread(fd, 3, end))
    if more and end - back + lead < offset + skip:
        more = 0  # that character began in an earlier range, which returned it whole
    extra = os.pread(fd, more, end) if more else b""
    return (data[skip:] + extra).decode("utf-8", "replace")


# ---- ops ----------------------------------------------------------------------------------------------

@_guard
def read(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    path = _path(args)
    offset = _int_arg(args, "offset", 0)
    length = _int_arg(args, "length", 0)
    binary = args.get("format") == "binary"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise OpError("is_directory", f"Is a directory, not a file: {path}")
        if not stat.S_ISREG(st.st_mode):
            raise OpError("invalid", f"Not a regular file: {path}")
        if length == 0:
            length = max(st.st_size - offset, 0)
            if length > MAX_READ_BYTES:
                raise OpError("too_large", f"File is too large to read at once ({st.st_size} bytes): {path}; "
                                           f"read it in ranges with offset and length (at most {MAX_READ_BYTES})")
        if length > MAX_READ_BYTES:
            raise OpError("too_large", f"'length' must be at most {MAX_READ_BYTES} bytes")
        parts = []
        remaining, position = length, offset
        while remaining > 0:
            piece = os.pread(fd, min(remaining, 8 * 1024 * 1024), position)
            if not piece:
                break
            parts.append(piece)
            remaining -= len(piece)
            position += len(piece)
        data = b"".join(parts)
        result: dict[str, Any] = {"size": st.st_size, "bytes": len(data)}
        if binary:
            result["data"] = base64.b64encode(data).decode("ascii")
        else:
            result["text"] = _read_text_range(fd, offset, data)
        return result
    finally:
        os.close(fd)


@_guard
def write(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    path = _path(args)
    content = args.get("content")
    if not isinstance(content, str):
        raise OpError("invalid", "'content' must be a string")
    mode = args.get("mode") or "overwrite"
    if mode not in ("overwrite", "append"):
        raise OpError("invalid", f"Invalid write mode: {mode}. Must be 'overwrite' or 'append'.")
    if args.get("format") == "binary":
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise OpError("invalid", f"'content' is not valid base64: {exc}") from None
    else:
        data = content.encode("utf-8", "surrogatepass")
    if os.path.isdir(path):
        raise OpError("is_directory", f"Is a directory, not a file: {path}")
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if mode == "append" else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    return {"path": path, "written": len(data), "size": size}


def _find_loose(text: str, old: str) -> tuple[int, int] | None:
    """Line-wise match ignoring leading/trailing whitespace; returns the character span in ``text``."""
    old_lines = [line.strip() for line in old.strip("\n").split("\n")]
    if not old_lines or old_lines == [""]:
        return None
    lines = text.split("\n")
    starts = []
    position = 0
    for line in lines:
        starts.append(position)
        position += len(line) + 1
    for i in range(len(lines) - len(old_lines) + 1):
        if all(lines[i + j].strip() == old_lines[j] for j in range(len(old_lines))):
            end_line = i + len(old_lines) - 1
            return starts[i], starts[end_line] + len(lines[end_line])
    return None


@_guard
def edit(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    path = _path(args)
    edits = args.get("edits")
    if not isinstance(edits, list) or not edits:
        raise OpError("invalid", "'edits' must be a non-empty list of {oldText, newText}")
    _regular_file(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        original = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OpError("invalid", f"File is not UTF-8 text: {path}") from None
    text = original
    for index, item in enumerate(edits):
        if not isinstance(item, dict):
            raise OpError("invalid", f"edit #{index + 1} must be an object with oldText and newText")
        old, new = item.get("oldText"), item.get("newText")
        if not isinstance(old, str) or not isinstance(new, str) or not old:
            raise OpError("invalid", f"edit #{index + 1}: 'oldText' must be a non-empty string and 'newText' a string")
        at = text.find(old)
        if at >= 0:
            text = text[:at] + new + text[at + len(old):]
            continue
        span = _find_loose(text, old)
        if span is None:
            raise OpError("no_match", f"Could not find the text of edit #{index + 1} in {path}:\n{old}")
        text = text[:span[0]] + new + text[span[1]:]
    diff = "".join(difflib.unified_diff(original.splitlines(keepends=True), text.splitlines(keepends=True),
                                        fromfile=path, tofile=path))
    dry_run = bool(args.get("dryRun"))
    if not dry_run and text != original:
        # In place (not a rename): the file keeps its inode, mode and owner; watchers see a modify.
        with open(path, "r+b") as handle:
            handle.write(text.encode("utf-8"))
            handle.truncate()
    return {"diff": diff, "dryRun": dry_run, "changed": text != original}


@_guard
def list_directory(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    path = _path(args)
    if not os.path.isdir(path):
        os.stat(path)  # raises for a missing path
        raise OpError("not_directory", f"Not a directory: {path}")
    entries = []
    with os.scandir(path) as scan:
        for entry in scan:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            entries.append({"name": entry.name, "isDirectory": is_dir})
    entries.sort(key=lambda e: (not e["isDirectory"], e["name"]))
    return {"entries": entries}


@_guard
def file_info(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    path = _path(args)
    st = os.stat(path)
    created = getattr(st, "st_birthtime", None) or st.st_ctime
    return {
        "size": st.st_size,
        "created": _iso(created),
        "modified": _iso(st.st_mtime),
        "accessed": _iso(st.st_atime),
        "isDirectory": stat.S_ISDIR(st.st_mode),
        "isFile": stat.S_ISREG(st.st_mode),
        "isSymlink": os.path.islink(path),
        "permissions": format(stat.S_IMODE(st.st_mode), "o")[-3:].rjust(3, "0"),
    }


@_guard
def move(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    source = _path(args, "source")
    destination = _path(args, "destination")
    if not os.path.lexists(source):
        raise OpError("not_found", f"No such file or directory: {source}")
    if os.path.lexists(destination):
        raise OpError("exists", f"Destination already exists: {destination}")
    parent = os.path.dirname(destination)
    if not os.path.isdir(parent):
        raise OpError("not_found", f"Destination directory does not exist: {parent}")
    if os.path.isdir(source) and (destination + "/").startswith(source.rstrip("/") + "/"):
        raise OpError("invalid", f"Cannot move a directory into itself: {source} -> {destination}")
    try:
        os.rename(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise _os_error(exc, source) from None
        shutil.move(source, destination)
    return {"source": source, "destination": destination}


@_guard
def delete(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    path = _path(args)
    if path == "/":
        raise OpError("invalid", "Refusing to delete /")
    if os.path.isdir(path) and not os.path.islink(path):
        errors: list[str] = []

        def failed(function: Any, failed_path: str, excinfo: Any) -> None:
            exc = excinfo[1] if isinstance(excinfo, tuple) else excinfo
            errors.append(_os_error(exc, failed_path).message if isinstance(exc, OSError) else str(exc))

        shutil.rmtree(path, onerror=failed)
        if errors:
            raise OpError("os", errors[0])
        return {"path": path, "directory": True}
    os.unlink(path)
    return {"path": path, "directory": False}


@_guard
def mkdir(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    path = _path(args)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OpError("exists", f"A file already exists at this path: {path}")
    existed = os.path.isdir(path)
    os.makedirs(path, exist_ok=True)
    return {"path": path, "created": not existed}


def read_multiple(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    paths = args.get("paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise OpError("invalid", "'paths' must be a list of non-empty strings")
    files = []
    for raw in paths:
        path = os.path.abspath(raw)
        try:
            _regular_file(path)
            with open(path, "rb") as handle:
                data = handle.read(MAX_MULTI_READ_BYTES + 1)
            truncated = len(data) > MAX_MULTI_READ_BYTES
            files.append({"path": raw, "content": data[:MAX_MULTI_READ_BYTES].decode("utf-8", "replace"),
                          "truncated": truncated})
        except OpError as exc:
            files.append({"path": raw, "error": exc.message})
        except OSError as exc:
            files.append({"path": raw, "error": _os_error(exc, path).message})
    return {"files": files}


def _has_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _matches(pattern: str, name: str, relative: str) -> bool:
    if not _has_glob(pattern):
        return pattern.lower() in name.lower()
    if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(relative, pattern):
        return True
    # "**/" may also match nothing: "**/*.py" matches "a.py" at the top.
    return pattern.startswith("**/") and _matches(pattern[3:], name, relative)


@_guard
def search(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    root = _path(args)
    pattern = require_str(args, "pattern")
    excludes = args.get("excludePatterns") or []
    if not isinstance(excludes, list) or not all(isinstance(p, str) for p in excludes):
        raise OpError("invalid", "'excludePatterns' must be a list of strings")
    recursive = args.get("recursive", True) is not False
    if not os.path.isdir(root):
        os.stat(root)
        raise OpError("not_directory", f"Not a directory: {root}")
    matches: list[str] = []
    truncated = False
    stack = [root]
    while stack and not truncated:
        if ctx.cancelled.is_set():
            raise OpError("cancelled", "search cancelled")
        directory = stack.pop()
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError:
            continue  # unreadable directories are skipped, as `find` would after its warning
        subdirs = []
        for entry in entries:
            relative = os.path.relpath(entry.path, root)
            if any(_matches(ex, entry.name, relative) for ex in excludes):
                continue
            if _matches(pattern, entry.name, relative):
                matches.append(entry.path)
                if len(matches) >= MAX_SEARCH_RESULTS:
                    truncated = True
                    break
            try:
                if recursive and entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
            except OSError:
                pass
        stack.extend(reversed(subdirs))
    return {"matches": matches, "truncated": truncated}


# ---- change tracking (inotify) -----------------------------------------------------------------------

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
WATCH_MASK = (IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
              | IN_DELETE_SELF | IN_MOVE_SELF)
EVENT_HEADER = struct.Struct("iIII")

_libc: Any = None


def _inotify() -> Any:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
        _libc = libc
    return _libc


class Watcher:
    """Kernel change notifications for one directory tree (or one file)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.fd = _inotify().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            code = ctypes.get_errno()
            raise OpError("os", f"inotify_init1 failed: {os.strerror(code)}")
        self.dirs: dict[int, str] = {}
        self.root_is_dir = os.path.isdir(root)
        self.overflowed = False
        if self.root_is_dir:
            self._watch_tree(root, None)
        else:
            self._add(root, file_only=True)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass

    def _add(self, path: str, file_only: bool = False) -> int:
        mask = WATCH_MASK | IN_DONT_FOLLOW | (0 if file_only else IN_ONLYDIR)
        wd = _inotify().inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            code = ctypes.get_errno()
            if path == self.root:
                raise _os_error(OSError(code, os.strerror(code), path), path)
            return -1
        self.dirs[wd] = path
        return wd

    def _watch_tree(self, top: str, found: list[dict[str, str]] | None) -> None:
        """Watch ``top`` and every directory under it; with ``found``, report what already exists
        there (entries created before the watch on a brand-new directory was in place)."""
        stack = [top]
        while stack:
            directory = stack.pop()
            if len(self.dirs) >= MAX_WATCHED_DIRS or self._add(directory) < 0:
                continue
            try:
                with os.scandir(directory) as scan:
                    entries = list(scan)
            except OSError:
                continue
            for entry in entries:
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if found is not None:
                    found.append({"eventType": "create", "path": entry.path,
                                  "pathType": "directory" if is_dir else "file"})
                if is_dir:
                    stack.append(entry.path)

    def drain(self) -> list[dict[str, str]]:
        with self.lock:
            events: list[dict[str, str]] = []
            while True:
                try:
                    buffer = os.read(self.fd, 256 * 1024)
                except BlockingIOError:
                    break
                if not buffer:
                    break
                self._parse(buffer, events)
            return _collapse(events)

    def _parse(self, buffer: bytes, events: list[dict[str, str]]) -> None:
        position = 0
        while position + EVENT_HEADER.size <= len(buffer):
            wd, mask, _cookie, size = EVENT_HEADER.unpack_from(buffer, position)
            raw_name = buffer[position + EVENT_HEADER.size:position + EVENT_HEADER.size + size].rstrip(b"\0")
            position += EVENT_HEADER.size + size
            if mask & IN_Q_OVERFLOW:
                self.overflowed = True
                continue
            base = self.dirs.get(wd)
            if base is None:
                continue
            if mask & IN_IGNORED:
                self.dirs.pop(wd, None)
                continue
            name = os.fsdecode(raw_name)
            path = os.path.join(base, name) if name else base
            kind = "directory" if mask & IN_ISDIR else "file"
            if not name:
                # An event on the watched object itself (the root file, or a watched directory).
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF) and base == self.root:
                    events.append({"eventType": "delete", "path": path,
                                   "pathType": "directory" if self.root_is_dir else "file"})
                elif mask & IN_MODIFY and not self.root_is_dir:
                    events.append({"eventType": "modify", "path": path, "pathType": "file"})
                continue
            if mask & (IN_CREATE | IN_MOVED_TO):
                events.append({"eventType": "create", "path": path, "pathType": kind})
                if mask & IN_ISDIR:
                    # Entries made before the new directory's watch was in place are reported too.
                    self._watch_tree(path, events)
            elif mask & (IN_DELETE | IN_MOVED_FROM):
                events.append({"eventType": "delete", "path": path, "pathType": kind})
            elif mask & IN_MODIFY:
                events.append({"eventType": "modify", "path": path, "pathType": kind})


def _collapse(events: list[dict[str, str]]) -> list[dict[str, str]]:
    """Drop an event identical to the previous event of the same path (one write = many IN_MODIFY)."""
    last: dict[str, tuple[str, str]] = {}
    result = []
    for event in events:
        key = (event["eventType"], event["pathType"])
        if last.get(event["path"]) == key:
            continue
        last[event["path"]] = key
        result.append(event)
    return result


_watchers: dict[str, Watcher] = {}
_watchers_lock = threading.Lock()


@_guard
def file_changes(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    """Changes under ``path`` since the previous call for that path; the first call sets the baseline."""
    path = _path(args)
    with _watchers_lock:
        watcher = _watchers.get(path)
        if watcher is not None and not watcher.dirs:
            # The watched object is gone (every watch ignored): start over when it is back.
            watcher.close()
            del _watchers[path]
            watcher = None
        if watcher is None:
            if not os.path.lexists(path):
                raise OpError("not_found", f"No such file or directory: {path}")
            if len(_watchers) >= MAX_WATCHERS:
                oldest = next(iter(_watchers))
                _watchers.pop(oldest).close()
            _watchers[path] = Watcher(path)
            return {"events": [], "baseline": True}
    events = watcher.drain()
    return {"events": events, "baseline": False, "overflow": watcher.overflowed}


OPS = {
    "fs_read": read,
    "fs_write": write,
    "fs_edit": edit,
    "fs_list": list_directory,
    "fs_info": file_info,
    "fs_move": move,
    "fs_delete": delete,
    "fs_mkdir": mkdir,
    "fs_read_multiple": read_multiple,
    "fs_search": search,
    "fs_changes": file_changes,
}
