"""The sandboxes' resolver: a UDP socket per sandbox, made inside its network namespace at 127.0.0.53,
served by this process.

Queries the sandbox's policy allows are forwarded to the upstream servers from the host's namespace;
for names on an allow-list the answer's IPv4 addresses are admitted into the sandbox's firewall before
the answer is sent, so the first connection after a lookup already passes. Refused names get NXDOMAIN,
and AAAA questions an empty answer (sandboxes have no IPv6), so clients fail or fall back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, cast

from agbox.runtime.base import NetworkPolicy

log = logging.getLogger(__name__)

LISTEN_ADDRESS = "127.0.0.53"
TYPE_A, TYPE_AAAA = 1, 28
RCODE_SERVFAIL, RCODE_NXDOMAIN = 2, 3
UPSTREAM_TIMEOUT_S = 2.0
MAX_IN_FLIGHT = 64
_HEADER = struct.Struct("!HHHHHH")


class DnsFormatError(ValueError):
    pass


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The (possibly compressed) name at ``offset`` and the offset just after it in the message."""
    labels: list[str] = []
    end = -1
    for _hop in range(128):
        if offset >= len(data):
            raise DnsFormatError("name runs past the message")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DnsFormatError("truncated pointer")
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length == 0:
            return ".".join(labels).lower(), (end if end >= 0 else offset + 1)
        labels.append(data[offset + 1:offset + 1 + length].decode("ascii", errors="replace"))
        offset += 1 + length
    raise DnsFormatError("name has too many labels or a pointer loop")


def parse_question(query: bytes) -> tuple[str, int, int]:
    """(name, type, offset after the question) of a one-question query."""
    if len(query) < _HEADER.size:
        raise DnsFormatError("short message")
    _qid, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(query)
    if flags & 0x8000 or qdcount != 1:
        raise DnsFormatError("not a one-question query")
    name, offset = _read_name(query, _HEADER.size)
    if offset + 4 > len(query):
        raise DnsFormatError("truncated question")
    qtype, _qclass = struct.unpack_from("!HH", query, offset)
    return name, qtype, offset + 4


def empty_reply(query: bytes, question_end: int, rcode: int) -> bytes:
    """An answer with no records (NXDOMAIN, SERVFAIL, or NOERROR = no data) to ``query``."""
    qid, flags, _qd, _an, _ns, _ar = _HEADER.unpack_from(query)
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode  # QR, opcode+RD kept, RA, rcode
    return _HEADER.pack(qid, reply_flags, 1, 0, 0, 0) + query[_HEADER.size:question_end]


def ipv4_answers(reply: bytes) -> list[str]:
    """The IPv4 addresses in the answer section of a reply."""
    _qid, _flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(reply)
    offset = _HEADER.size
    for _ in range(qdcount):
        _name, offset = _read_name(reply, offset)
        offset += 4
    addresses: list[str] = []
    for _ in range(ancount):
        _name, offset = _read_name(reply, offset)
        if offset + 10 > len(reply):
            raise DnsFormatError("truncated record")
        rtype, _rclass, _ttl, length = struct.unpack_from("!HHIH", reply, offset)
        offset += 10
        if rtype == TYPE_A and length == 4 and offset + 4 <= len(reply):
            addresses.append(str(ipaddress.IPv4Address(reply[offset:offset + 4])))
        offset += length
    return addresses


def name_matches(name: str, patterns: tuple[str, ...]) -> bool:
    """``example.com`` matches itself only; ``*.example.com`` matches its subdomains only."""
    for pattern in patterns:
        if pattern.startswith("*."):
            if name.endswith(pattern[1:]):
                return True
        elif name == pattern:
            return True
    return False


def parse_upstream(value: str) -> tuple[str, int]:
    """``1.2.3.4`` or ``1.2.3.4:5353`` -> (address, port); ValueError for anything else."""
    host, _, port = value.strip().partition(":")
    ipaddress.IPv4Address(host)
    return host, int(port or 53)


class SandboxResolver(asyncio.DatagramProtocol):
    """Answers one sandbox's queries under its current policy."""

    def __init__(self, upstreams: tuple[tuple[str, int], ...], policy: NetworkPolicy,
                 admit: Callable[[list[str]], Awaitable[None]]) -> None:
        self.upstreams = upstreams
        self.policy = policy
        self._admit = admit
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(self._tasks) >= MAX_IN_FLIGHT:
            return  # the client retries; a flood costs this process nothing more
        task = asyncio.get_running_loop().create_task(self._answer(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        for task in list(self._tasks):
            task.cancel()

    def decide(self, name: str) -> tuple[bool, bool]:
        """(answer the name?, admit its addresses?). Allow entries beat deny entries."""
        policy = self.policy
        allowed = name_matches(name, policy.allow_domains)
        if allowed:
            return True, True
        if name_matches(name, policy.deny_domains):
            return False, False
        return policy.internet, False

    async def _answer(self, query: bytes, addr: Any) -> None:
        try:
            name, qtype, question_end = parse_question(query)
        except DnsFormatError:
            return
        answer, admit = self.decide(name)
        if not answer:
            reply = empty_reply(query, question_end, RCODE_NXDOMAIN)
        elif qtype == TYPE_AAAA:
            reply = empty_reply(query, question_end, 0)
        else:
            reply = await self._forward(query) or empty_reply(query, question_end, RCODE_SERVFAIL)
            if admit:
                try:
                    addresses = ipv4_answers(reply)
                except DnsFormatError:
                    addresses = []
                if addresses:
                    try:
                        await self._admit(addresses)
                    except Exception:
                        log.exception("admitting %s for %s failed", addresses, name)
                        reply = empty_reply(query, question_end, RCODE_SERVFAIL)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(reply, addr)

    async def _forward(self, query: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        for host, port in self.upstreams:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, (host, port))
                await loop.sock_sendall(sock, query)
                deadline = loop.time() + UPSTREAM_TIMEOUT_S
                while True:
                    reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), max(deadline - loop.time(), 0.001))
                    if len(reply) >= 2 and reply[:2] == query[:2]:
                        return reply
            except (OSError, TimeoutError):
                continue
            finally:
                with contextlib.suppress(OSError):
                    sock.close()
        return None
