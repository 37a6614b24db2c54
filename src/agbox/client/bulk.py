"""Whole files to and from a session as raw HTTP bodies: on the server's bulk file port through a
signed URL from ``GET {endpoint}/sessions/{id}/files/url`` when it has one, else over
``PUT/GET {endpoint}/sessions/{id}/files``.

Uses the standard library's ``http.client`` with 1 MiB buffers rather than httpx: for bodies of
hundreds of megabytes httpx re-slices the unsent rest of a ``bytes`` body on every socket write and
reads in 64 KiB pieces, which caps it near 10 MB/s up and 150 MB/s down on loopback; ``http.client``
sends each chunk with one ``sendall`` and reads straight into a reused buffer.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import select
import socket
import stat
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import IO, Any

if sys.platform == "linux":  # downloads into a file splice there; elsewhere they go through a buffer
    import fcntl

CHUNK = 1024 * 1024
# Uploads smaller than this go straight to the main route (the signed-URL request would cost more
# than the bulk port saves).
DIRECT_BELOW = 4 * 1024 * 1024
# progress(bytes so far, total bytes or None when unknown)
Progress = Callable[[int, "int | None"], None]


class BulkError(Exception):
    """A transfer failed; ``message`` is the server's error message (or the transport's)."""

    def __init__(self, message: str, status: int = 0, request_id: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id


class Bulk:
    """Streams files of sessions through one endpoint with one API key (a connection per transfer)."""

    def __init__(self, endpoint: str, api_key: str, timeout_s: float = 300.0) -> None:
        parsed = urllib.parse.urlsplit(endpoint)
        self.https = parsed.scheme == "https"
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port
        self.prefix = parsed.path.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def _connection(self, https: bool | None = None, host: str | None = None,
                    port: int | None = None) -> http.client.HTTPConnection:
        secure = self.https if https is None else https
        where = (host or self.host, port if host else self.port)
        if secure:
            return http.client.HTTPSConnection(*where, timeout=self.timeout_s, blocksize=CHUNK)
        return http.client.HTTPConnection(*where, timeout=self.timeout_s, blocksize=CHUNK)

    def _signed(self, session_id: str, path: str, method: str,
                mode: str | None = None) -> tuple[http.client.HTTPConnection, str, bool]:
        """(connection, request target, needs the API key) for one transfer: a signed URL of the
        server's bulk file port when it has one for this session (one small request first; the body
        then moves in the kernel on the server), else the main route."""
        connection = self._connection()
        try:
            query = {"path": path, "method": method, **({"mode": mode} if mode else {})}
            connection.request("GET", f"{self.prefix}/sessions/{urllib.parse.quote(session_id, safe='')}/files/url?"
                               + urllib.parse.urlencode(query), headers={"Authorization": f"Bearer {self.api_key}"})
            response = connection.getresponse()
            if response.status != 200:
                raise self._failure(response)
            url = (json.loads(response.read()).get("data") or {}).get("url")
        finally:
            connection.close()
        if not url:
            return self._connection(), self._target(session_id, path, mode), True
        parsed = urllib.parse.urlsplit(url)
        target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        return self._connection(parsed.scheme == "https", parsed.hostname, parsed.port), target, False

    def _target(self, session_id: str, path: str, mode: str | None = None) -> str:
        query = {"path": path, **({"mode": mode} if mode else {})}
        return (f"{self.prefix}/sessions/{urllib.parse.quote(session_id, safe='')}/files?"
                + urllib.parse.urlencode(query))

    @staticmethod
    def _failure(response: http.client.HTTPResponse) -> BulkError:
        raw = response.read(1024 * 1024)
        request_id = response.getheader("x-request-id") or ""
        try:
            body = json.loads(raw)
            message = str(body.get("message") or f"HTTP {response.status}")
        except (ValueError, AttributeError):
            message = f"HTTP {response.status}: {raw[:200].decode('utf-8', 'replace')}"
        return BulkError(message, response.status, request_id)

    def upload(self, session_id: str, path: str, chunks: Iterable[bytes | memoryview], size: int, *,
               mode: str = "overwrite", progress: Progress | None = None) -> dict[str, Any]:
        """PUT ``size`` bytes from ``chunks``; returns the envelope's data ({path, size})."""
        try:
            if size < DIRECT_BELOW:  # one request on the main port beats asking for a URL first
                connection, target, keyed = self._connection(), self._target(session_id, path, mode), True
            else:
                connection, target, keyed = self._signed(session_id, path, "PUT", mode)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise BulkError(f"transfer failed: {type(exc).__name__}: {exc}") from exc
        try:
            connection.putrequest("PUT", target, skip_accept_encoding=True)
            if keyed:
                connection.putheader("Authorization", f"Bearer {self.api_key}")
            connection.putheader("Content-Type", "application/octet-stream")
            connection.putheader("Content-Length", str(size))
            connection.endheaders()
            sent = 0
            report = _Reporter(progress, size)
            try:
                for chunk in chunks:
                    connection.send(chunk)
                    sent += len(chunk)
                    report(sent)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered early (an error): its answer says why
            if sent != size:
                raise BulkError(f"the source gave {sent} bytes, {size} were announced")
            response = connection.getresponse()
            if response.status != 200:
                raise self._failure(response)
            body = json.loads(response.read())
            report(sent, final=True)
            return dict(body.get("data") or {})
        except (OSError, http.client.HTTPException) as exc:
            raise BulkError(f"transfer failed: {type(exc).__name__}: {exc}") from exc
        finally:
            connection.close()

    def download(self, session_id: str, path: str, sink: IO[bytes], *, progress: Progress | None = None) -> int:
        """GET the file into ``sink``; returns the bytes received (checked against Content-Length)."""
        try:
            connection, target, keyed = self._signed(session_id, path, "GET")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise BulkError(f"transfer failed: {type(exc).__name__}: {exc}") from exc
        try:
            connection.putrequest("GET", target, skip_accept_encoding=True)
            if keyed:
                connection.putheader("Authorization", f"Bearer {self.api_key}")
            connection.endheaders()
            response = connection.getresponse()
            if response.status != 200:
                raise self._failure(response)
            total = response.length
            report = _Reporter(progress, total)
            out = _splice_target(sink)
            if out is not None and total is not None and connection.sock is not None:
                received = _splice_body(response, connection.sock, sink, out, total, report)
                if received != total:
                    raise BulkError(f"the download ended after {received} of {total} bytes")
                report(received, final=True)
                return received
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            received = 0
            while True:
                n = response.readinto(buffer)
                if not n:
                    break
                sink.write(view[:n])
                received += n
                report(received)
            if total is not None and received != total:
                raise BulkError(f"the download ended after {received} of {total} bytes")
            report(received, final=True)
            return received
        except (OSError, http.client.HTTPException) as exc:
            raise BulkError(f"transfer failed: {type(exc).__name__}: {exc}") from exc
        finally:
            connection.close()


def _splice_target(sink: IO[bytes]) -> int | None:
    """The fd of ``sink`` when the body can be spliced straight into it (a regular file, not opened
    for appending, on Linux); None otherwise."""
    if sys.platform != "linux":
        return None
    try:
        fd = sink.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode) or fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            return None
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return None
    return fd


def _splice_body(response: http.client.HTTPResponse, sock: socket.socket, sink: IO[bytes], out: int, total: int,
                 report: _Reporter) -> int:
    """A body of ``total`` bytes into the file ``out``: the bytes already buffered with the head
    first, then socket → pipe → file in the kernel (no copy through this process)."""
    fp = response.fp
    early = fp.peek(total)[:total] if total else b""  # buffered bytes (one read if none yet)
    if early:
        fp.read(len(early))
        sink.write(early)
    sink.flush()
    received = len(early)
    report(received)
    fd = sock.fileno()
    timeout = sock.gettimeout()
    read_end, write_end = os.pipe()
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, CHUNK)
        while received < total:
            try:
                moved = os.splice(fd, write_end, min(total - received, CHUNK),
                                  flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:  # a socket with a timeout is non-blocking underneath
                if not select.select([fd], [], [], timeout)[0]:
                    raise TimeoutError("the server sent nothing for too long") from None
                continue
            if not moved:
                break
            received += moved
            while moved:
                moved -= os.splice(read_end, out, moved, flags=os.SPLICE_F_MOVE)
            report(received)
    finally:
        os.close(read_end)
        os.close(write_end)
    return received


class _Reporter:
    """Calls ``progress`` at most ~10 times a second (and once at the end)."""

    def __init__(self, progress: Progress | None, total: int | None) -> None:
        self.progress = progress
        self.total = total
        self.last = 0.0

    def __call__(self, done: int, final: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if final or now - self.last >= 0.1:
            self.last = now
            self.progress(done, self.total)


def file_chunks(handle: IO[bytes], size: int | None = None) -> Iterable[bytes]:
    """Chunks of an open binary file (at most ``size`` bytes when given)."""
    left = size
    while left is None or left > 0:
        data = handle.read(CHUNK if left is None else min(CHUNK, left))
        if not data:
            return
        if left is not None:
            left -= len(data)
        yield data


def bytes_chunks(data: bytes | bytearray | memoryview) -> Iterable[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        yield view[start:start + CHUNK]


def remaining_size(handle: IO[bytes]) -> int | None:
    """Bytes from the current position to the end of a seekable file; None otherwise."""
    try:
        position = handle.tell()
        end = os.fstat(handle.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        try:
            position = handle.tell()
            end = handle.seek(0, os.SEEK_END)
            handle.seek(position)
        except (OSError, AttributeError, ValueError):
            return None
    return max(end - position, 0)
