"""Just enough HTTP/1.1 for the link relay (services/links.py): parse a request or status head, tell
how its body is framed, and copy bodies through verbatim (``Content-Length``, chunked, until EOF)
without buffering them, plus the short plain-text answers the relay gives itself."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

CHUNK = 256 * 1024


class ProtocolError(Exception):
    pass


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


async def copy_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        data = await reader.read(min(n, CHUNK))
        if not data:
            raise ProtocolError("connection closed in the middle of a body")
        writer.write(data)
        n -= len(data)
        await writer.drain()


async def copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Pass a chunked body through verbatim, stopping after its last chunk and trailers."""
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError("malformed chunk size") from None
        if size == 0:
            while True:
                trailer = await reader.readuntil(b"\r\n")
                writer.write(trailer)
                if trailer == b"\r\n":
                    await writer.drain()
                    return
        await copy_exact(reader, writer, size + 2)


async def copy_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        data = await reader.read(CHUNK)
        if not data:
            return
        writer.write(data)
        await writer.drain()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction of a raw two-way relay: copy until EOF, then half-close."""
    with contextlib.suppress(OSError, ConnectionError):
        await copy_until_eof(reader, writer)
        if writer.can_write_eof():
            writer.write_eof()


def text_response(status: int, reason: str, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    body = (message.rstrip("\n") + "\n").encode()
    head = Head([b"HTTP/1.1", str(status).encode(), reason.encode()],
                [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Content-Length", str(len(body)).encode()),
                 (b"Connection", b"close"), (b"Cache-Control", b"no-store"), *(extra or [])])
    return head.encode() + body
