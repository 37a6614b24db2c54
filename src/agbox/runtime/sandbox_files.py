"""Host-side access to one sandbox's file tree, for bulk transfers at disk speed.

The server opens files of a running sandbox itself instead of sending base64 through the agent pipe.
Two rules keep that as safe as the agent doing it:

- **Paths resolve inside the sandbox.** Every path is resolved by ``openat2`` relative to the
  sandbox's root directory (``/proc/<sandbox pid>/root``) with ``RESOLVE_IN_ROOT`` (absolute symlinks
  and ``..`` stay inside that root) and ``RESOLVE_NO_MAGICLINKS`` (no ``/proc/<pid>/fd``-style jumps).
  Files on proc/sys-like filesystems and anything but regular files and directories are refused.
- **The kernel checks permissions as the sandbox's user.** The calling thread's filesystem ids are
  switched to the sandbox's host uid/gid (``setfsuid``/``setfsgid`` are per thread) for each open, so
  a file the sandbox user could not read or write cannot be reached either, new files belong to that
  user, and the root-only capabilities for files are off while a sandbox path is resolved.

All functions here block; callers run them in worker threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from typing import IO, Any

from agbox.errors import InvalidRequestError, LimitExceededError, NotFoundError, SandboxError

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
# Filesystems whose "files" are kernel interfaces, never user data.
_PSEUDO_FS = {0x9FA0: "proc", 0x62656572: "sysfs", 0x1CD1: "devpts", 0x27E0EB: "cgroup", 0x63677270: "cgroup2",
              0x64626720: "debugfs", 0x73636673: "securityfs", 0xCAFE4A11: "bpf"}
MAX_PATH = 4096
SANDBOX_HOME = "/home/user"


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Statfs(ctypes.Structure):
    # struct statfs on 64-bit Linux: f_type first, the rest is not read here.
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


def _openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = int(_libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


def _fs_type(fd: int) -> int:
    buf = _Statfs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(buf.f_type) & 0xFFFFFFFF


def sandbox_path(path: Any) -> str:
    """A checked sandbox path (absolute, or relative to the sandbox user's home)."""
    if not isinstance(path, str) or not path.strip():
        raise InvalidRequestError("path is required")
    if "\x00" in path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise InvalidRequestError(f"path must be at most {MAX_PATH} bytes without NUL characters")
    full = path if path.startswith("/") else f"{SANDBOX_HOME}/{path}"
    parts = [p for p in full.split("/") if p not in ("", ".")]
    if not parts:
        raise InvalidRequestError("path must name a file, not /")
    return "/" + "/".join(parts)


def os_error(exc: OSError, path: str, disk_limit: int | None = None) -> Exception:
    """An OSError met inside a sandbox as a typed agbox error naming the sandbox path."""
    code = exc.errno
    if code == errno.ENOSPC or code == errno.EDQUOT:
        limit = f" of {disk_limit // (1024 * 1024)} MiB" if disk_limit else ""
        return LimitExceededError(f"the session's disk is full (its limit{limit} is reached) writing {path}: "
                                  "nothing was written")
    if code == errno.ENOENT:
        return NotFoundError(f"No such file or directory: {path}")  # the file tools' wording
    if code == errno.EFBIG:
        return LimitExceededError(f"file too large for the session's file system: {path}")
    if code in (errno.EACCES, errno.EPERM):
        return InvalidRequestError(f"permission denied in the session: {path}")
    if code == errno.EROFS:
        return InvalidRequestError(f"read-only location in the session: {path}")
    if code == errno.EISDIR:
        return InvalidRequestError(f"is a directory, not a file: {path}")
    if code == errno.ENOTDIR:
        return InvalidRequestError(f"a parent of {path} is not a directory")
    if code == errno.ELOOP:
        return InvalidRequestError(f"too many symbolic links (or a link the server may not follow) in {path}")
    if code == errno.EXDEV:
        return InvalidRequestError(f"path leaves the session's file tree: {path}")
    if code == errno.EIO:
        return SandboxError(f"the session's disk went away during the transfer of {path} (has the session ended?)")
    return SandboxError(f"{os.strerror(code or 0)} for {path} in the session")


class SandboxFiles:
    """Files of one running sandbox: ``pid`` is a process inside it, ``uid``/``gid`` its host ids."""

    def __init__(self, pid: int, uid: int, gid: int, disk_limit: int | None = None,
                 root_device: int | None = None) -> None:
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.disk_limit = disk_limit
        # The device of the sandbox's root file system (its disk layer): checked on every open of
        # /proc/<pid>/root, so a pid reused after the sandbox died can never lead to another root.
        self.root_device = root_device

    def _open_root(self) -> int:
        try:
            root = os.open(f"/proc/{self.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxError("the session's sandbox has ended") from exc
        if self.root_device is not None and os.fstat(root).st_dev != self.root_device:
            os.close(root)
            raise SandboxError("the session's sandbox has ended")
        return root

    @contextlib.contextmanager
    def identity(self) -> Iterator[None]:
        """This thread's filesystem ids are the sandbox user's until the block ends."""
        _libc.setfsgid(self.gid)
        _libc.setfsuid(self.uid)
        try:
            if _libc.setfsuid(-1) != self.uid or _libc.setfsgid(-1) != self.gid:
                raise SandboxError("could not take the sandbox user's file identity")
            yield
        finally:
            _libc.setfsuid(0)
            _libc.setfsgid(0)

    @contextlib.contextmanager
    def _as_user(self) -> Iterator[int]:
        """On this thread: the sandbox root's fd, with the filesystem ids of the sandbox's user."""
        root = self._open_root()
        try:
            with self.identity():
                yield root
        finally:
            os.close(root)

    @staticmethod
    def _check_fs(fd: int, path: str) -> None:
        kind = _PSEUDO_FS.get(_fs_type(fd))
        if kind is not None:
            raise InvalidRequestError(f"{path} is on the sandbox's {kind} file system, not a file transfers may touch")

    # ---- reading ---------------------------------------------------------------------------------

    def open_read(self, path: str) -> tuple[int, int]:
        """(fd, size) of a regular file; the caller closes the fd."""
        with self._as_user() as root:
            try:
                probe = _openat2(root, path, os.O_PATH)
            except OSError as exc:
                raise os_error(exc, path) from exc
            try:
                st = os.fstat(probe)
                if stat.S_ISDIR(st.st_mode):
                    raise InvalidRequestError(f"is a directory, not a file: {path}")
                if not stat.S_ISREG(st.st_mode):
                    raise InvalidRequestError(f"not a regular file: {path}")
                self._check_fs(probe, path)
                try:  # reopen the very inode that was checked (our own /proc, not the sandbox's)
                    fd = os.open(f"/proc/self/fd/{probe}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
                except OSError as exc:
                    raise os_error(exc, path) from exc
            finally:
                os.close(probe)
        return fd, os.fstat(fd).st_size

    # ---- writing ---------------------------------------------------------------------------------

    def _parent(self, root: int, path: str) -> int:
        """An fd of ``path``'s parent directory, made (with its parents, mode 0755) when missing."""
        parts = path.strip("/").split("/")[:-1]
        current = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root)
        done = ""
        try:
            for part in parts:
                done = f"{done}/{part}"
                try:
                    nxt = _openat2(root, done, os.O_PATH | os.O_DIRECTORY)
                except FileNotFoundError:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=current)
                    nxt = _openat2(root, done, os.O_PATH | os.O_DIRECTORY)
                os.close(current)
                current = nxt
            self._check_fs(current, path)
            return current
        except OSError as exc:
            os.close(current)
            raise os_error(exc, path, self.disk_limit) from exc
        except BaseException:
            os.close(current)
            raise

    def create(self, path: str, append: bool, size: int | None = None) -> FileWriter:
        """A writer for ``path``: overwrite = a new file renamed over the old at commit (a failed write
        leaves the old file as it was; a symlink at ``path`` is replaced, not followed); append = the
        existing file, cut back to its old size if the write fails. An overwrite of ``size`` bytes that
        fits the disk only in the old file's place (not next to it) rewrites the old file in place
        (emptied if the write then fails)."""
        with self._as_user() as root:
            parent = self._parent(root, path)
            name = path.rsplit("/", 1)[-1]
            try:
                if append:
                    fd = _openat2(root, path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY,
                                  0o644)
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        os.close(fd)
                        raise InvalidRequestError(f"not a regular file: {path}")
                    os.set_blocking(fd, True)
                    return FileWriter(self, fd, parent, path, None, name, st.st_size)
                mode = 0o644
                old: os.stat_result | None = None
                with contextlib.suppress(OSError):
                    old = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if old is not None and stat.S_ISDIR(old.st_mode):
                    raise InvalidRequestError(f"is a directory, not a file: {path}")
                if old is not None and stat.S_ISREG(old.st_mode):
                    mode = stat.S_IMODE(old.st_mode)
                    in_place = self._rewrite_in_place(parent, name, old, size)
                    if in_place is not None:
                        return FileWriter(self, in_place, parent, path, None, name, 0)
                temp = f".{name[:200]}.agbox-{secrets.token_hex(6)}"
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=parent)
                os.fchmod(fd, mode)
                return FileWriter(self, fd, parent, path, temp, name, 0)
            except OSError as exc:
                os.close(parent)
                raise os_error(exc, path, self.disk_limit) from exc
            except BaseException:
                os.close(parent)
                raise

    @staticmethod
    def _rewrite_in_place(parent: int, name: str, old: os.stat_result, size: int | None) -> int | None:
        """An fd of the old file, emptied, when ``size`` bytes fit only in its place; else None."""
        if size is None:
            return None
        vfs = os.statvfs(parent)
        free = vfs.f_bavail * vfs.f_frsize
        margin = 4 * 1024 * 1024 + size // 64  # ext4 metadata for the new file's extents
        if size + margin <= free or size + margin > free + old.st_blocks * 512:
            return None  # fits next to the old file, or not even in its place: the normal way
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=parent)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (old.st_dev, old.st_ino):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        return fd

    # ---- trees (contexts) ------------------------------------------------------------------------

    def mkdirs(self, path: str) -> None:
        with self._as_user() as root:
            os.close(self._parent(root, path.rstrip("/") + "/x"))

    def put(self, path: str, source: IO[bytes], size: int, mtime: float, mode: int = 0o644) -> None:
        """Copy ``size`` bytes of ``source`` to ``path`` (replacing it); in the kernel for a real file."""
        writer = self.create(path, append=False, size=size)
        try:
            try:
                fd = source.fileno()
            except (AttributeError, OSError, ValueError):
                fd = -1
            if fd >= 0:
                writer.copy_from(fd, size)
            else:
                while data := source.read(1024 * 1024):
                    writer.write(data)
            os.fchmod(writer.fd, mode & 0o777 or 0o644)
            os.utime(writer.fd, (mtime, mtime))
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def walk(self, root_path: str, descend: Callable[[str], bool] = lambda rel_dir: True,
             ) -> Iterator[tuple[str, int, os.stat_result]]:
        """(path relative to ``root_path``, open fd, stat) of each regular file under ``root_path``
        (in directories ``descend`` accepts), never following a symlink and never leaving its file
        system. Each fd is closed when the next item is asked for. Nothing when ``root_path`` is
        missing or not a directory. Sandbox paths are opened as the sandbox's user; the consumer
        runs with its own identity between items."""
        root = self._open_root()
        try:
            with self.identity():
                top = _openat2(root, root_path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        finally:
            os.close(root)
        try:
            self._check_fs(top, root_path)
            device = os.fstat(top).st_dev
        except BaseException:
            os.close(top)
            raise
        stack: list[tuple[int, str]] = [(top, "")]
        try:
            while stack:
                fd, rel_dir = stack.pop()
                try:
                    with self.identity():
                        names = sorted(os.listdir(fd))
                    subdirs = []
                    for name in names:
                        rel = f"{rel_dir}/{name}" if rel_dir else name
                        with self.identity():
                            entry = self._open_entry(fd, name, device, descend, rel)
                        if entry is None:
                            continue
                        child, st = entry
                        if stat.S_ISDIR(st.st_mode):
                            subdirs.append((child, rel))
                            continue
                        try:
                            yield rel, child, st
                        finally:
                            os.close(child)
                    stack.extend(reversed(subdirs))
                finally:
                    os.close(fd)
        finally:
            for fd, _ in stack:  # left open only when the consumer stopped early
                os.close(fd)

    @staticmethod
    def _open_entry(fd: int, name: str, device: int, descend: Callable[[str], bool],
                    rel: str) -> tuple[int, os.stat_result] | None:
        """An fd (blocking) and stat of a directory or regular file ``name`` in ``fd`` on ``device``;
        None for anything else. Looks before it opens: no device, FIFO or other mount is opened."""
        try:
            seen = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if seen.st_dev != device or not (stat.S_ISDIR(seen.st_mode) or stat.S_ISREG(seen.st_mode)):
                return None
            if stat.S_ISDIR(seen.st_mode) and not descend(rel):
                return None
            child = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return None  # a vanished file, no permission: not part of the tree
        st = os.fstat(child)
        if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
            os.close(child)  # swapped between the look and the open
            return None
        os.set_blocking(child, True)
        return child, st


class FileWriter:
    """An open file being written in a sandbox; ``commit`` makes it visible, ``abort`` undoes it."""

    def __init__(self, files: SandboxFiles, fd: int, parent: int, path: str, temp: str | None, name: str,
                 start_size: int) -> None:
        self.files = files
        self.fd = fd
        self.parent = parent
        self.path = path
        self.temp = temp
        self.name = name
        self.start_size = start_size
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.written += n
        except OSError as exc:
            raise os_error(exc, self.path, self.files.disk_limit) from exc

    def write_all(self, chunks: list[bytes]) -> None:
        """Write the chunks in order (``writev``: no joining copy)."""
        views = [memoryview(c) for c in chunks if c]
        try:
            while views:
                n = os.writev(self.fd, views[:512])
                self.written += n
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                if n:
                    views[0] = views[0][n:]
        except OSError as exc:
            raise os_error(exc, self.path, self.files.disk_limit) from exc

    def copy_from(self, source: int, size: int) -> None:
        offset = 0
        try:
            while offset < size:
                n = os.sendfile(self.fd, source, offset, min(size - offset, 1 << 30))
                if n == 0:
                    break
                offset += n
                self.written += n
        except OSError as exc:
            raise os_error(exc, self.path, self.files.disk_limit) from exc

    def commit(self) -> int:
        """Make the written file visible at its path; returns the file's size."""
        try:
            size = os.fstat(self.fd).st_size
            if self.temp is not None:
                with self.files.identity():
                    os.rename(self.temp, self.name, src_dir_fd=self.parent, dst_dir_fd=self.parent)
                self.temp = None
        except OSError as exc:
            self.abort()
            raise os_error(exc, self.path, self.files.disk_limit) from exc
        self._close()
        return size

    def abort(self) -> None:
        with contextlib.suppress(OSError), self.files.identity():
            if self.temp is not None:
                os.unlink(self.temp, dir_fd=self.parent)
                self.temp = None
            elif self.fd >= 0:
                os.ftruncate(self.fd, self.start_size)
        self._close()

    def _close(self) -> None:
        for fd in (self.fd, self.parent):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.parent = -1
