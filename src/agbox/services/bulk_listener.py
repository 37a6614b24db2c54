"""The bulk file listener: session files in and out at kernel speed, on a port of their own.

The main HTTP server (uvicorn, a pure-Python HTTP parser) costs 1-2 CPU seconds per GiB of file body
in parsing and copies. This listener serves only ``PUT/GET /files/<token>``, one request per
connection, on plain blocking sockets in worker threads: an upload moves socket → pipe → file with
``splice`` and a download file → socket with ``sendfile``; the body never enters the process.

Access is by a signed URL only (no API key on this port): ``file_url`` signs (session, owner, sandbox
path, method, write mode, expiry) with the server's URL secret (services/url_signing.py); a client
with an API key asks ``GET /sessions/{id}/files/url`` on the main port for one. Everything else is
the main route's (services/file_stream.py) rules, by the same code: the path resolves inside the
sandbox as its user (runtime/sandbox_files.py), an overwrite is a temp file renamed at the end, a
full disk is a 413 naming the limit, an ended session a 404.

The event loop only accepts, checks the token and the session, and counts the transfer as session
activity; every blocking step (reading the head, resolving the path, moving the body) runs in this
listener's own thread pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import struct
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from agbox.errors import (
    AccessDeniedError,
    AgboxError,
    ContextNotFoundError,
    InvalidRequestError,
    LimitExceededError,
    NotFoundError,
    SessionNotFoundError,
)
from agbox.models import SessionRecord
from agbox.runtime.sandbox_files import SandboxFiles, os_error, sandbox_path
from agbox.services.context_files import BlobStore, BlobWriter
from agbox.services.contexts import FILE_TRANSFER, MAX_OBJECT_BYTES, ContextService
from agbox.services.http1 import Head, ProtocolError, body_kind, listen, parse_head
from agbox.services.links import url_host
from agbox.services.sessions import SessionService
from agbox.services.url_signing import sign, verify
from agbox.settings import Settings

log = logging.getLogger(__name__)

URL_TTL_S = 900           # long enough to start a transfer; a running one is never cut by expiry
HEAD_LIMIT = 16 * 1024
IO_TIMEOUT_S = 60.0       # a peer silent this long (mid-head or mid-body) loses the connection
PIPE_SIZE = 1024 * 1024
WORKERS = 16              # transfers moving at once; more connections wait for a worker
MAX_CONNECTIONS = 128
DRAIN_LIMIT = 8 * 1024 ** 3  # of a refused upload's body, read so the client sees the answer (as files.py)
DRAIN_S = 10.0              # a draining client silent this long is cut off
PREFIX = "/files/"
OBJECT_PREFIX = "/context-objects/"
T = TypeVar("T")


class ClientGone(Exception):
    """The client closed or stalled mid-body: nobody is left to answer."""


def _envelope(request_id: str, status: int, data: Any = None, error: AgboxError | None = None) -> bytes:
    body = {"success": error is None, "code": error.code if error else "ok",
            "message": error.message[:2000] if error else "", "requestId": request_id,
            "httpStatusCode": status, "data": data}
    return json.dumps(body).encode()


def _reason(status: int) -> str:
    return {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 411: "Length Required", 413: "Content Too Large", 500: "Internal Server Error",
            505: "HTTP Version Not Supported"}.get(status, "Error")


def _head_bytes(status: int, request_id: str, length: int, content_type: str, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\nCache-Control: no-store\r\n"
            f"X-Request-Id: {request_id}\r\n{extra}\r\n").encode()


# ---- blocking steps (worker threads) ------------------------------------------------------------


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The request head (raw) and whatever body bytes arrived with it."""
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(buf[:end + 4]), bytes(buf[end + 4:])
        if len(buf) > HEAD_LIMIT:
            raise ProtocolError("request head too large")
        data = sock.recv(64 * 1024)
        if not data:
            raise ProtocolError("connection closed before a whole request head")
        buf += data


def _receive(files: SandboxFiles, path: str, append: bool, sock: socket.socket, early: bytes, chunked: bool,
             size: int) -> int:
    """The body (``early`` first, the rest straight from the socket) into the sandbox file; returns
    the file's size after the commit."""
    writer = files.create(path, append, None if chunked else size)
    try:
        if append or chunked:  # splice refuses a file opened O_APPEND; chunks need their framing read
            for piece in _Body(sock, early, chunked, size).pieces():
                writer.write(piece)
            return writer.commit()
        head = early[:size]
        if head:
            writer.write(head)
        left = size - len(head)
        if left:
            _splice_in(sock, writer.fd, left, lambda exc: os_error(exc, path, files.disk_limit))
            writer.written += left
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def _splice_in(sock: socket.socket, out: int, count: int, file_error: Callable[[OSError], Exception],
               moved_out: Callable[[int], None] = lambda n: None) -> None:
    """``count`` bytes from the socket to the file ``out`` through a pipe (``splice``: the bytes never
    enter this process); a socket failure is ClientGone, a file failure ``file_error(exc)``."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        while count:
            try:
                moved = os.splice(sock.fileno(), write_end, min(count, PIPE_SIZE), flags=os.SPLICE_F_MOVE)
            except OSError as exc:
                raise ClientGone(str(exc)) from exc
            if not moved:
                raise ClientGone("the client closed in the middle of the body")
            count -= moved
            while moved:
                try:
                    written = os.splice(read_end, out, moved, flags=os.SPLICE_F_MOVE)
                except OSError as exc:
                    raise file_error(exc) from exc
                moved -= written
                moved_out(written)
    finally:
        os.close(read_end)
        os.close(write_end)


class _Body:
    """A request body on a blocking socket, ``Content-Length`` or chunked: ``pieces`` yields views of
    one reused buffer (each valid until the next), never reading past the body's end."""

    def __init__(self, sock: socket.socket, early: bytes, chunked: bool, length: int) -> None:
        self.sock = sock
        self.buf = bytearray(early)
        self.chunked = chunked
        self.length = length
        self.buffer = bytearray(PIPE_SIZE)

    def _take(self, count: int) -> Iterator[memoryview]:
        if self.buf:
            piece = bytes(self.buf[:count])
            del self.buf[:count]
            count -= len(piece)
            yield memoryview(piece)
        view = memoryview(self.buffer)
        while count:
            n = _recv_into(self.sock, view[:min(count, PIPE_SIZE)])
            count -= n
            yield view[:n]

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            if len(self.buf) > 4096:
                raise ProtocolError("chunk-size line too long")
            n = _recv_into(self.sock, memoryview(self.buffer)[:64 * 1024])
            self.buf += self.buffer[:n]

    def pieces(self) -> Iterator[memoryview]:
        if not self.chunked:
            yield from self._take(self.length)
            return
        while True:
            line = self._line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError("malformed chunk size") from None
            if size == 0:
                while self._line():  # trailers, up to the empty line
                    pass
                return
            yield from self._take(size)
            if self._line():
                raise ProtocolError("a chunk's data is not followed by CRLF")


def _receive_blob(writer: BlobWriter, body: _Body) -> tuple[str, int]:
    """The body into a new blob; returns (blob key, size). A body of known length is spliced into
    the blob's file when the store allows (the store then hashes the file through a mapping), else
    it passes through in 1 MiB pieces of one reused buffer."""
    try:
        out = None if body.chunked else writer.direct_fd()
        if out is None:
            for piece in body.pieces():
                writer.write(piece)
            return writer.finish()
        head = bytes(body.buf[:body.length])
        if head:
            os.write(out, head)  # a few KiB that came with the request head
            writer.wrote_directly(len(head))
        _splice_in(body.sock, out, body.length - len(head), _blob_error, writer.wrote_directly)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def _blob_error(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return LimitExceededError("the server's context storage is full: nothing was stored")
    return AgboxError(f"could not store the object: {exc.strerror}")


def _recv_into(sock: socket.socket, view: memoryview) -> int:
    try:
        n = sock.recv_into(view)
    except OSError as exc:
        raise ClientGone(str(exc)) from exc
    if not n:
        raise ClientGone("the client closed in the middle of the body")
    return n


def _send_sandbox_file(files: SandboxFiles, path: str, sock: socket.socket, request_id: str) -> None:
    fd, size = files.open_read(path)
    _send_file(sock, fd, size, request_id)


def _send_blob(blobs: BlobStore, blob: str, size: int, sock: socket.socket, request_id: str) -> None:
    with blobs.open(blob) as handle:
        _send_file(sock, os.dup(handle.fileno()), size, request_id)


def _send_file(sock: socket.socket, fd: int, size: int, request_id: str) -> None:
    """The 200 head and ``size`` bytes of ``fd``, which it closes (a file that shrank meanwhile gives
    a short body)."""
    try:
        sock.sendall(_head_bytes(200, request_id, size, "application/octet-stream"))
        offset = 0
        while offset < size:
            sent = os.sendfile(sock.fileno(), fd, offset, min(size - offset, 1 << 30))
            if not sent:
                break
            offset += sent
    except OSError as exc:
        raise ClientGone(str(exc)) from exc
    finally:
        os.close(fd)


def _answer(sock: socket.socket, status: int, body: bytes, request_id: str, unread: bool, extra: str = "") -> None:
    """Send a JSON answer; with body bytes still unread, then read them away (up to DRAIN_LIMIT) so
    the client, still sending, gets the answer rather than a reset."""
    with contextlib.suppress(OSError):
        sock.sendall(_head_bytes(status, request_id, len(body), "application/json", extra) + body)
        if unread:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(DRAIN_S)  # from here on the socket only drains
            buffer = bytearray(PIPE_SIZE)
            drained = 0
            while drained < DRAIN_LIMIT:
                n = sock.recv_into(buffer)
                if not n:
                    break
                drained += n


# ---- the listener -------------------------------------------------------------------------------


class BulkListener:
    def __init__(self, settings: Settings, sessions: SessionService, contexts: ContextService) -> None:
        self.settings = settings
        self.sessions = sessions
        self.contexts = contexts
        self.secret = contexts.secret
        self.listener: socket.socket | None = None
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.open: set[socket.socket] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # held so that none is collected mid-transfer

    # ---- life -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on ``settings.host`` (port ``settings.bulk_port``; -1: stay off)."""
        if self.settings.bulk_port < 0 or self.listener is not None:
            return
        host = self.settings.host or "127.0.0.1"
        self.loop = asyncio.get_running_loop()
        self.listener = listener = listen(host, self.settings.bulk_port, self._accept)
        self.port = int(listener.getsockname()[1])
        self.pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="agbox-bulk")

    def close(self) -> None:
        if self.listener is not None:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
        for sock in list(self.open):  # wakes the workers blocked on these sockets
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    @property
    def base_url(self) -> str | None:
        if self.listener is None:
            return None
        if (self.settings.public_url or "").lower().startswith("https:"):
            return None  # clients come through a TLS proxy: no plain-HTTP URLs behind its back
        return f"http://{url_host(self.settings.public_url, self.settings.host)}:{self.port}"

    # ---- signing --------------------------------------------------------------------------------

    def file_url(self, owner: str, session_id: Any, path: Any, method: Any, mode: Any) -> tuple[str | None, int]:
        """(signed URL, expiry as Unix time) for one transfer of a session file; (None, 0) when this
        session's files are not reachable here (listener off, sandbox on another node): then the
        main route is the way."""
        if method not in ("GET", "PUT"):
            raise InvalidRequestError(f"method must be GET or PUT, not {str(method)[:20]!r}")
        append = _append(mode) if method == "PUT" else False
        checked = sandbox_path(path)
        record = self.sessions.get(owner, session_id, touch=False)
        base = self.base_url
        if base is None or self._files(record) is None:
            return None, 0
        expires = int(time.time()) + URL_TTL_S
        token = sign(self.secret, {"k": "file", "s": record.id, "o": owner, "p": checked, "m": method,
                                   "a": append, "e": expires})
        return f"{base}{PREFIX}{token}", expires

    def _files(self, record: SessionRecord) -> SandboxFiles | None:
        try:
            return self.sessions.runtime.files(self.sessions.handle(record))
        except AgboxError as exc:
            raise SessionNotFoundError(record.id, "its sandbox has ended") from exc

    def _claims(self, method: str, target: str) -> dict[str, Any]:
        path = urllib.parse.urlsplit(target).path
        if not path.startswith(PREFIX) or "/" in path[len(PREFIX):]:
            raise NotFoundError(f"no such route on the bulk file port: {path[:100]} (URLs here come from "
                                "GET /sessions/{id}/files/url)")
        try:
            claims = verify(self.secret, path[len(PREFIX):])
        except AgboxError:
            raise AccessDeniedError("invalid signed URL (bad signature): ask for a new one") from None
        if claims.get("k") != "file":
            raise AccessDeniedError("this signed URL is not for a session file")
        if claims.get("m") != method:
            raise AccessDeniedError(f"this signed URL is for {claims.get('m')}, not {method}")
        if time.time() > float(claims.get("e", 0)):
            raise AccessDeniedError("this signed URL has expired: ask for a new one")
        return claims

    # ---- serving --------------------------------------------------------------------------------

    def _accept(self) -> None:
        while self.listener is not None:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: keep listening
                log.warning("bulk listener could not accept: %s", exc)
                return
            if len(self.open) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(True)
            timeout = struct.pack("ll", int(IO_TIMEOUT_S), 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
            self.open.add(sock)
            assert self.loop is not None
            task = self.loop.create_task(self._serve(sock))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        if self.pool is None:
            raise ClientGone("the server is stopping")
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _serve(self, sock: socket.socket) -> None:
        request_id = "req-" + secrets.token_hex(8)
        try:
            try:
                raw, early = await self._blocking(_read_head, sock)
            except (OSError, ProtocolError, ClientGone):
                return
            unread = False
            extra = ""
            try:
                head = parse_head(raw, request=True)
                kind, length = body_kind(head)
                unread = kind == "chunked" or (kind == "length" and length > len(early))
                answer = await self._handle(sock, head, early, request_id)
                if answer is None:
                    return  # the file went out with its own head
                status, body = 200, _envelope(request_id, 200, answer)
                if "etag" in answer:  # a context object, as S3-style clients expect
                    extra = f'ETag: "{answer["etag"]}"\r\n'
                unread = False
            except (ClientGone, RuntimeError):
                return
            except ProtocolError as exc:
                error: AgboxError = InvalidRequestError(f"malformed request: {exc}")
                status, body = 400, _envelope(request_id, 400, error=error)
            except AgboxError as exc:
                status, body = exc.status_code, _envelope(request_id, exc.status_code, error=exc)
            except Exception:
                log.exception("bulk transfer %s failed", request_id)
                error = AgboxError(f"internal error; see the server log for request {request_id}")
                status, body = 500, _envelope(request_id, 500, error=error)
            with contextlib.suppress(ClientGone, RuntimeError):
                await self._blocking(_answer, sock, status, body, request_id, unread, extra)
        finally:
            self.open.discard(sock)
            sock.close()

    async def _handle(self, sock: socket.socket, head: Head, early: bytes, request_id: str) -> dict[str, Any] | None:
        method = head.first[0].decode("latin-1")
        if not head.first[2].startswith(b"HTTP/1."):
            raise InvalidRequestError("only HTTP/1.x is served here")
        if method not in ("GET", "PUT"):
            raise InvalidRequestError(f"method {method[:20]} is not served here (GET or PUT)")
        target = head.first[1].decode("latin-1")
        if urllib.parse.urlsplit(target).path.startswith(OBJECT_PREFIX):
            return await self._context_object(sock, head, early, request_id, method, target)
        claims = self._claims(method, target)
        session_id, path = str(claims.get("s")), str(claims.get("p"))
        record = self.sessions.get(str(claims.get("o")), session_id, touch=False)
        files = self._files(record)
        if files is None:
            raise InvalidRequestError("this session's files are not reachable on the bulk port; use "
                                      "/sessions/{id}/files on the main port")
        if method == "GET":
            with self.sessions.in_use(record.id):
                await self._blocking(_send_sandbox_file, files, path, sock, request_id)
            return None
        kind, size = _upload_kind(head)
        if files.disk_limit and size > files.disk_limit:
            raise LimitExceededError(f"{size} bytes do not fit the session's disk "
                                     f"({files.disk_limit // (1024 * 1024)} MiB): nothing was written")
        with self.sessions.in_use(record.id):
            written = await self._blocking(_receive, files, path, bool(claims.get("a")), sock, early,
                                           kind == "chunked", size)
        return {"path": path, "size": written}


    async def _context_object(self, sock: socket.socket, head: Head, early: bytes, request_id: str, method: str,
                              target: str) -> dict[str, Any] | None:
        """A pre-signed context object (server/contexts.py's route, same tokens and rules) with the
        body off the event loop: GET by ``sendfile`` from the blob, PUT hashed into a new blob."""
        token = urllib.parse.unquote(urllib.parse.urlsplit(target).path[len(OBJECT_PREFIX):])
        try:
            record, key = self.contexts.check_url(token, method)
        except ContextNotFoundError:
            raise
        except (AgboxError, ValueError) as exc:
            message = exc.message if isinstance(exc, AgboxError) else "invalid pre-signed URL"
            raise AccessDeniedError(message) from None
        if method == "GET":
            found = self.contexts.object_blob(record.id, key)
            await self._blocking(_send_blob, self.contexts.blobs, found.blob, found.size, sock, request_id)
            return None
        kind, size = _upload_kind(head)
        if size > MAX_OBJECT_BYTES:
            raise LimitExceededError(f"object exceeds the limit of {MAX_OBJECT_BYTES} bytes")
        # The internal transfer context of a session is a hop on the way into that session: no fsync.
        writer = self.contexts.blobs.begin(MAX_OBJECT_BYTES, durable=record.kind != FILE_TRANSFER)
        blob, stored = await self._blocking(_receive_blob, writer, _Body(sock, early, kind == "chunked", size))
        self.contexts.commit_object(record.id, key, blob, stored)
        return {"key": key, "size": stored, "etag": blob}


def _upload_kind(head: Head) -> tuple[str, int]:
    """("length", n) or ("chunked", 0); an upload without either is empty."""
    kind, size = body_kind(head)
    if kind == "eof":
        raise InvalidRequestError("unsupported Transfer-Encoding (only chunked)")
    return ("length", 0) if kind == "none" else (kind, size)


def _append(mode: Any) -> bool:
    if mode in (None, "", "overwrite"):
        return False
    if mode == "append":
        return True
    raise InvalidRequestError(f"Invalid write mode: {mode}. Must be 'overwrite' or 'append'.")
