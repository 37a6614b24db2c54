"""Where context file bytes live: a content-addressed blob store behind a small interface.

``LocalBlobStore`` keeps blobs under ``<data dir>/contexts/blobs/ab/<sha256>``. A blob is written to
``staging/`` first, hashed as it goes, fsync-ed, then renamed to its final name (and the directory
fsync-ed): a blob either exists complete or not at all. A blob becomes part of a context only when a
manifest transaction (store/contexts.py) references it, so a writer killed at any point leaves the
context's previous version untouched; its staging file is removed at the next start.

An S3-compatible store implements the same four calls: ``ingest`` = upload to a temporary key then
copy to ``blobs/<sha256>`` (or multipart-upload after hashing), ``open`` = GET, ``delete``, ``keys``.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import mmap
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from agbox.errors import LimitExceededError

CHUNK = 1024 * 1024
HASH_WINDOW = 16 * 1024 * 1024  # a multiple of the page size


class BlobWriter(abc.ABC):
    @abc.abstractmethod
    def write(self, chunk: bytes | bytearray | memoryview) -> None: ...

    @abc.abstractmethod
    def finish(self) -> tuple[str, int]:
        """Make the blob durable under its content key; returns (blob key, size)."""

    @abc.abstractmethod
    def abort(self) -> None: ...

    def direct_fd(self) -> int | None:
        """A file descriptor the caller may append bytes to itself (``sendfile``, ``splice``), each
        batch then reported with ``wrote_directly``; None when this store has none (then ``write``)."""
        return None

    def wrote_directly(self, count: int) -> None:
        raise NotImplementedError


class BlobStore(abc.ABC):
    @abc.abstractmethod
    def begin(self, limit: int | None = None, durable: bool = True) -> BlobWriter:
        """A writer for a new blob; ``durable=False`` (blobs of a session's internal transfer context,
        which die with the session) skips the fsync."""

    def ingest(self, chunks: Iterable[bytes], limit: int | None = None, durable: bool = True) -> tuple[str, int]:
        """Store a byte stream; returns (blob key, size). Durable when it returns (unless not asked)."""
        writer = self.begin(limit, durable)
        try:
            for chunk in chunks:
                writer.write(chunk)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    def ingest_fd(self, fd: int, durable: bool = True) -> tuple[str, int]:
        """Store the rest of an open file (from its current offset); in the kernel where the store
        allows it. Returns (blob key, size)."""
        writer = self.begin(None, durable)
        try:
            out = writer.direct_fd()
            if out is None:
                while data := os.read(fd, CHUNK):
                    writer.write(data)
            else:
                while moved := os.sendfile(out, fd, None, 1 << 30):
                    writer.wrote_directly(moved)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def keys(self, older_than: float | None = None) -> Iterator[str]:
        """Every blob key (optionally only blobs last written before ``older_than``)."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Drop leftovers of interrupted writes (called at start)."""


def read_chunks(handle: IO[bytes], size: int = CHUNK) -> Iterator[bytes]:
    while True:
        chunk = handle.read(size)
        if not chunk:
            return
        yield chunk


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.staging = root / "staging"
        for path in (root, self.blobs, self.staging):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o700)

    def _path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"bad blob key {key!r}")
        return self.blobs / key[:2] / key

    def begin(self, limit: int | None = None, durable: bool = True) -> BlobWriter:
        return _LocalWriter(self, limit, durable)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def keys(self, older_than: float | None = None) -> Iterator[str]:
        for sub in self.blobs.iterdir():
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                if older_than is not None and entry.stat().st_mtime >= older_than:
                    continue
                yield entry.name

    def cleanup(self) -> None:
        for entry in os.scandir(self.staging):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


class _LocalWriter(BlobWriter):
    def __init__(self, store: LocalBlobStore, limit: int | None, durable: bool = True) -> None:
        self.store = store
        self.limit = limit
        self.durable = durable
        self.tmp = store.staging / f"{int(time.time())}-{secrets.token_hex(8)}"
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.out = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()
        self.size = 0
        # Bytes were appended behind the digest's back (direct_fd): hash the whole file at the end,
        # from the page cache through a mapping (no copy into this process).
        self.hash_file = False

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            raise LimitExceededError(f"object exceeds the limit of {self.limit} bytes")
        if not self.hash_file:
            self.digest.update(chunk)
        self.out.write(chunk)

    def direct_fd(self) -> int | None:
        self.out.flush()
        self.hash_file = True
        return self.out.fileno()

    def wrote_directly(self, count: int) -> None:
        self.size += count
        if self.limit is not None and self.size > self.limit:
            raise LimitExceededError(f"object exceeds the limit of {self.limit} bytes")

    def _file_digest(self) -> str:
        """sha256 of the staged file, mapped a window at a time (the process's resident memory grows
        by one window, not by the file)."""
        digest = hashlib.sha256()
        fd = os.open(self.tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            for offset in range(0, size, HASH_WINDOW):
                with mmap.mmap(fd, min(HASH_WINDOW, size - offset), prot=mmap.PROT_READ, offset=offset) as window:
                    digest.update(window)
        finally:
            os.close(fd)
        return digest.hexdigest()

    def finish(self) -> tuple[str, int]:
        self.out.flush()
        if self.durable:
            os.fsync(self.out.fileno())
        self.out.close()
        key = self._file_digest() if self.hash_file else self.digest.hexdigest()
        final = self.store._path(key)
        if final.exists():
            os.utime(final)  # fresh again, so a concurrent garbage collection keeps it
            self.tmp.unlink()
        else:
            final.parent.mkdir(exist_ok=True)
            os.replace(self.tmp, final)
            if self.durable:
                _fsync_dir(final.parent)
        return key, self.size

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.out.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()
