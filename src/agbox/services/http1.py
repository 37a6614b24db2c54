"""Just enough HTTP/1.1 for the link relay (services/links.py): parse a request or status head, tell
how its body is framed, move bodies through verbatim (``Content-Length``, chunked, until EOF) without
buffering them, plus the short plain-text answers the relay gives itself.

Bytes move on plain non-blocking sockets driven by the event loop's readiness callbacks
(``Channel``), not asyncio streams: a stream copies every byte twice more in Python (into its
buffer, out of it, into the transport's buffer). Heads and chunk-size lines are read into a small
buffer; body bytes go socket → pipe → socket with ``splice`` and never enter the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

RECV_SIZE = 64 * 1024
PIPE_SIZE = 1024 * 1024  # the default pipe-max-size; a bigger pipe means fewer splice calls per MB
SMALL_BODY = 16 * 1024   # below this a recv + send costs less than setting a pipe up
# While a body of known length streams, the socket counts as readable only once this much (or the
# rest of the body) has arrived: fewer, larger splices instead of a wake-up per few KiB.
BATCH = 128 * 1024
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class ProtocolError(Exception):
    pass


class HeadTooLarge(ProtocolError):
    pass


class UpstreamClosed(ProtocolError):
    """A kept-alive upstream connection ended before the first byte of an answer."""


class Incomplete(ProtocolError):
    """The peer closed before a whole head or line arrived; ``partial`` is what did."""

    def __init__(self, partial: bytes) -> None:
        super().__init__("connection closed early")
        self.partial = partial


def listen(host: str, port: int, on_accept: Callable[[], None]) -> socket.socket:
    """A non-blocking TCP listener on host:port (0 = any free port) whose readiness calls ``on_accept``
    on the running event loop; closed again if any step fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(socket.SOMAXCONN)
        listener.setblocking(False)
        asyncio.get_running_loop().add_reader(listener.fileno(), on_accept)
    except BaseException:
        listener.close()
        raise
    return listener


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Channel:
    """One connected non-blocking TCP socket: buffered reads of heads and lines, sends, and bodies
    moved to another channel with ``splice``. ``sent`` counts the bytes written to this socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.sent = 0
        self.answers = 0  # HTTP answers read from this socket (a reused connection may be stale)
        self._pipe: tuple[int, int] | None = None  # for bodies read from this socket
        # The read callback stays registered between waits (a request/answer exchange then costs no
        # epoll_ctl); readiness with nobody waiting unregisters it.
        self._read_waiter: asyncio.Future[None] | None = None
        self._reading = False
        # The last read took less than it could: the socket was empty then, so the next read waits
        # for readiness first instead of failing with EAGAIN (a syscall and an exception saved).
        self._drained = False
        self._lowat = 1

    def close(self) -> None:
        if self._reading and not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
        self._reading = False
        if self._pipe is not None:
            for end in self._pipe:
                os.close(end)
            self._pipe = None
        self.sock.close()

    def idle_alive(self) -> bool:
        """An idle connection still open, with nothing unexpected waiting to be read?"""
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # the peer closed, or sent bytes nobody asked for

    def shutdown(self) -> None:
        """Cut the connection at once (the peer sees the end); close() follows from its owner."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _on_readable(self) -> None:
        waiter, self._read_waiter = self._read_waiter, None
        if waiter is None:
            self.loop.remove_reader(self.fd)
            self._reading = False
        elif not waiter.done():
            waiter.set_result(None)

    async def readable(self) -> None:
        future = self.loop.create_future()
        self._read_waiter = future
        if not self._reading:
            self.loop.add_reader(self.fd, self._on_readable)
            self._reading = True
        try:
            await future
        finally:
            if self._read_waiter is future:
                self._read_waiter = None

    async def writable(self) -> None:
        future = self.loop.create_future()
        self.loop.add_writer(self.fd, _wake, future)
        try:
            await future
        finally:
            self.loop.remove_writer(self.fd)

    async def recv(self) -> bytes:
        """What has arrived (waiting for something), up to RECV_SIZE; b"" at the end."""
        if self._drained:
            self._drained = False
            await self.readable()
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                await self.readable()
                continue
            self._drained = len(data) < RECV_SIZE
            return data

    async def fill(self) -> bool:
        """Read what has arrived (waiting for something) into the buffer; False at the end."""
        data = await self.recv()
        if not data:
            return False
        self.buf += data
        return True

    async def read_until(self, separator: bytes, limit: int) -> bytes:
        """Bytes up to and including ``separator``; HeadTooLarge past ``limit``, Incomplete at the end."""
        start = 0
        while True:
            found = self.buf.find(separator, start)
            if found >= 0:
                end = found + len(separator)
                if end > limit:
                    raise HeadTooLarge(f"more than {limit} bytes before {separator!r}")
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if len(self.buf) > limit:
                raise HeadTooLarge(f"more than {limit} bytes before {separator!r}")
            start = max(0, len(self.buf) - len(separator) + 1)
            if not await self.fill():
                raise Incomplete(bytes(self.buf))

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
            except BlockingIOError:
                await self.writable()
                continue
            self.sent += n
            view = view[n:]

    def _pipe_ends(self) -> tuple[int, int]:
        if self._pipe is None:
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            with contextlib.suppress(OSError):  # a smaller pipe still works, in more calls
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            self._pipe = (read_end, write_end)
        return self._pipe

    async def copy_to(self, sink: Channel, length: int | None) -> None:
        """Move ``length`` bytes (None: until this side ends) to ``sink``; buffered bytes first."""
        if self.buf:
            take = len(self.buf) if length is None else min(length, len(self.buf))
            await sink.send(self.buf[:take])
            del self.buf[:take]
            if length is not None:
                length -= take
        if length is None:
            await self._copy_until_end(sink)
            return
        if length <= SMALL_BODY:
            while length > 0:
                if not await self.fill():
                    raise ProtocolError("connection closed in the middle of a body")
                take = min(length, len(self.buf))
                await sink.send(self.buf[:take])
                del self.buf[:take]
                length -= take
            return
        try:
            while length > 0:
                self._low_water(min(length, BATCH))
                moved = await self._splice_once(sink, length)
                if not moved:
                    raise ProtocolError("connection closed in the middle of a body")
                length -= moved
        finally:
            self._low_water(1)

    def _low_water(self, size: int) -> None:
        if size != self._lowat:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
                self._lowat = size

    async def _copy_until_end(self, sink: Channel) -> None:
        """Small pieces (a WebSocket message, an event) go through recv + send, which costs less than
        splice for them; once a read fills the whole buffer the stream is bulk, and splice takes it
        until a pipe-load comes back small again."""
        bulk = False
        while True:
            if bulk:
                moved = await self._splice_once(sink, PIPE_SIZE)
                if not moved:
                    return
                bulk = moved >= RECV_SIZE
                continue
            data = await self.recv()
            if not data:
                return
            await sink.send(data)
            bulk = len(data) == RECV_SIZE

    async def _splice_once(self, sink: Channel, most: int) -> int:
        """Move what has arrived (waiting for something), up to ``most`` and a pipe-load, through the
        pipe to ``sink``; the bytes moved, 0 at the end of this side."""
        read_end, write_end = self._pipe_ends()
        if self._drained:  # the last splice emptied the socket: no point trying before it is readable
            self._drained = False
            await self.readable()
        want = min(most, PIPE_SIZE)
        while True:
            try:
                moved = os.splice(self.fd, write_end, want, flags=SPLICE_FLAGS)
                break
            except BlockingIOError:
                await self.readable()
        self._drained = 0 < moved < want
        left = moved
        while left:
            try:
                out = os.splice(read_end, sink.fd, left, flags=SPLICE_FLAGS)
            except BlockingIOError:
                await sink.writable()
                continue
            left -= out
            sink.sent += out
        return moved

    async def pipe_to(self, sink: Channel) -> None:
        """One direction of a raw two-way relay: copy until the end, then half-close the sink."""
        with contextlib.suppress(OSError, ConnectionError, ProtocolError):
            await self.copy_to(sink, None)
            sink.sock.shutdown(socket.SHUT_WR)

    async def copy_chunked_to(self, sink: Channel, limit: int) -> None:
        """Pass a chunked body through verbatim, stopping after its last chunk and trailers."""
        while True:
            line = await self.read_until(b"\r\n", limit)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError("malformed chunk size") from None
            await sink.send(line)
            if size == 0:
                while True:
                    trailer = await self.read_until(b"\r\n", limit)
                    await sink.send(trailer)
                    if trailer == b"\r\n":
                        return
            await self.copy_to(sink, size + 2)


@dataclass
class Head:
    first: list[bytes]                      # request line (method, target, version) or status line
    headers: list[tuple[bytes, bytes]]      # original names and values, in order

    def get(self, name: bytes) -> bytes | None:
        found = None
        for key, value in self.headers:
            if key.lower() == name:
                found = value if found is None else found + b", " + value
        return found

    def tokens(self, name: bytes) -> set[bytes]:
        value = self.get(name) or b""
        return {t.strip().lower() for t in value.split(b",") if t.strip()}

    def encode(self, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
        lines = [b" ".join(self.first)]
        lines.extend(k + b": " + v for k, v in [*self.headers, *(extra or [])])
        return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_head(raw: bytes, request: bool) -> Head:
    lines = raw[:-4].split(b"\r\n") if raw.endswith(b"\r\n\r\n") else raw.rstrip(b"\r\n").split(b"\r\n")
    first = lines[0].split(b" ", 2)
    if len(first) < (3 if request else 2):
        raise ProtocolError(f"malformed {'request' if request else 'status'} line")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProtocolError("malformed header line")
        headers.append((name, value.strip()))
    return Head(first, headers)


def body_kind(head: Head) -> tuple[str, int]:
    """('chunked', 0), ('length', n) or ('none', 0) for a request; responses add 'eof' (see caller)."""
    te = head.get(b"transfer-encoding")
    if te is not None:
        if te.lower().split(b",")[-1].strip() != b"chunked":
            return "eof", 0
        return "chunked", 0
    length = head.get(b"content-length")
    if length is not None:
        values = {v.strip() for v in length.split(b",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise ProtocolError("invalid Content-Length")
        return "length", int(next(iter(values)))
    return "none", 0


def text_response(status: int, reason: str, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    body = (message.rstrip("\n") + "\n").encode()
    head = Head([b"HTTP/1.1", str(status).encode(), reason.encode()],
                [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Content-Length", str(len(body)).encode()),
                 (b"Connection", b"close"), (b"Cache-Control", b"no-store"), *(extra or [])])
    return head.encode() + body
