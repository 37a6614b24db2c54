"""Links: URLs that reach a server a program in a session listens on (``getLink``).

Design
------
Each (session, port) link gets its own listener on the server's host (``settings.host``), an
ephemeral TCP port, opened on demand by ``getLink`` and closed when the session is released. Every
connection to it is relayed to ``127.0.0.1:<port>`` *inside* the sandbox through
``Runtime.connect_port`` (a socket made in the sandbox's network namespace, connected to its
loopback: one hop, no helper process inside). Because the link has a host:port of its own, the app keeps its
own URL space: ``/static/x.js`` in the page loads ``/static/x.js`` of the app.

The URL a client gets is ``http://<host>:<listener port>/_agbox/<secret>/``. The secret is an HMAC
of the session's token and the port, so a link never reveals the session token (which would allow
tool calls) and one link's secret opens no other link. A request is admitted when

- its path starts with ``/_agbox/<secret>`` (the prefix is removed before the app sees it, and the
  response sets the cookie ``agbox_link_<listener port>=<secret>``), or
- it carries that cookie (so absolute paths, redirects and further page loads work in a browser).

Missing secret → 401, wrong secret → 403, ended session → 410, nothing listening → 502; all as short
plain-text messages. Our cookies are removed from every request before it reaches the app, so an
app never sees the secret of its own or of another session's link.

The relay speaks just enough HTTP/1.1 to do that (services/http1.py): it reads each request head, rewrites the target
and the ``Cookie`` header, and then streams the body as raw bytes (``Content-Length`` or chunked,
chunk framing passed through verbatim); responses pass through byte for byte (only a
``Set-Cookie`` line is added to the answer of a request that carried the secret in its path).
Bodies are never buffered, so large uploads and downloads and server-sent events stream. The relay
works on the raw sockets (``http1.Channel``): bodies move kernel to kernel with ``splice``. A ``101
Switching Protocols`` answer (WebSocket) turns the connection into a plain two-way byte pipe.
Requests on one connection are handled one after the other (no pipelining; browsers and httpx do
not pipeline).

Ports and protocols: ports must lie in ``[link_port_min, link_port_max]`` (30100-30199 by
default, as in AGB); no port means the session's default link, the first port of that range.
``protocolType`` http/ws (default http) or https/wss; the latter only when ``settings.tls_enabled``
(TLS terminated in front of agbox). The host of the URL is the host of ``settings.public_url`` when
set, else ``settings.host``; the port is the link's own listener port, so a reverse proxy in front
of agbox must pass those ports through (they are ephemeral ports of ``settings.host``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agbox.errors import AgboxError, ConflictError, InvalidRequestError
from agbox.models import SessionRecord, SessionStatus
from agbox.runtime.base import SandboxHandle
from agbox.services.http1 import (
    Channel,
    Head,
    HeadTooLarge,
    Incomplete,
    ProtocolError,
    UpstreamClosed,
    body_kind,
    listen,
    parse_head,
    text_response,
)
from agbox.wirejson import same_secret

if TYPE_CHECKING:
    from agbox.services.platform import Platform

log = logging.getLogger(__name__)

PREFIX = b"/_agbox/"
COOKIE_PREFIX = "agbox_link_"
PROTOCOLS = ("http", "https", "ws", "wss")
HEAD_LIMIT = 256 * 1024  # request and response heads, and chunk-size lines
CONNECT_TIMEOUT_S = 10.0
TOUCH_INTERVAL_S = 1.0
# Upstream connections kept open between client connections of one link (a browser or a client that
# opens a connection per request then skips the connect inside the sandbox, and the app its accept).
# Shorter than the shortest common keep-alive timeout of app servers (gunicorn: 2 s).
IDLE_UPSTREAMS = 4
IDLE_S = 1.5


def link_secret(token: str, session_id: str, port: int, purpose: str = "link") -> str:
    """The secret of one link: HMAC(session token, purpose + session id + port), URL-safe."""
    digest = hmac.new(token.encode(), f"agbox-{purpose}:{session_id}:{port}".encode(), hashlib.sha256).digest()
    return digest[:18].hex()


def parse_port(raw: object, low: int, high: int) -> int:
    """The port asked for; None/empty = the default link (the first port of the range)."""
    if raw is None or raw == "":
        return low
    try:
        port = int(str(raw).strip())
    except ValueError:
        raise InvalidRequestError(f"port must be an integer in the link port range {low}-{high}, "
                                  f"not {raw!r}") from None
    if not low <= port <= high:
        raise InvalidRequestError(f"port {port} is outside the link port range {low}-{high}")
    return port


def parse_protocol(raw: object, tls_enabled: bool) -> str:
    protocol = str(raw or "http").strip().lower()
    if protocol not in PROTOCOLS:
        raise InvalidRequestError(f"protocolType must be one of {', '.join(PROTOCOLS)}, not {raw!r}")
    if protocol in ("https", "wss") and not tls_enabled:
        raise InvalidRequestError(f"protocolType {protocol} needs TLS, and this server has no TLS configured "
                                  "(settings tls_enabled); use http or ws")
    return protocol


def url_host(public_url: str | None, host: str) -> str:
    """The host part of link URLs: that of the public URL if set, else the listen host."""
    if public_url:
        parsed = urllib.parse.urlsplit(public_url if "//" in public_url else "//" + public_url)
        if parsed.hostname:
            host = parsed.hostname
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    return host


# ---- one link ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Connection:
    """One client connection of a link and the upstream connection it uses, if any."""

    client: Channel
    task: asyncio.Task[None] | None = None
    upstream: Channel | None = None
    counted_in: int = 0   # bytes of ``upstream.sent`` / ``client.sent`` already added to the counters
    counted_out: int = 0

    def abort(self) -> None:
        """Cut both sides at once; the serving task closes the sockets as it ends."""
        for channel in (self.client, self.upstream):
            if channel is not None:
                channel.shutdown()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


@dataclass(eq=False)
class Link:
    service: LinkService
    session_id: str
    port: int
    secret: str
    # A DevTools link (the CDP URL): Chromium answers only requests whose Host is 127.0.0.1/localhost
    # and refuses WebSocket upgrades that carry an Origin, so both are rewritten on the way in.
    devtools: bool = False
    listener: socket.socket | None = None
    loop: asyncio.AbstractEventLoop | None = None
    listen_port: int = 0
    closed: bool = False
    connections: set[Connection] = field(default_factory=set)
    idle: list[tuple[Channel, float]] = field(default_factory=list)  # (upstream, idle since), newest last
    last_touch: float = 0.0

    @property
    def cookie_name(self) -> bytes:
        return f"{COOKIE_PREFIX}{self.listen_port}".encode()

    async def open(self, host: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.listener = listener = listen(host, 0, self._accept)
        self.listen_port = int(listener.getsockname()[1])

    def close(self) -> None:
        self.closed = True
        if self.listener is not None:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()
        for channel, _ in self.idle:
            channel.close()
        self.idle.clear()

    # ---- idle upstream connections -------------------------------------------------------------

    def _take_idle(self) -> Channel | None:
        now = time.monotonic()
        while self.idle:
            channel, since = self.idle.pop()
            if now - since < IDLE_S and channel.idle_alive():
                return channel
            channel.close()
        return None

    def _keep_idle(self, channel: Channel) -> None:
        """Keep an upstream connection whose last answer ended cleanly for the link's next client."""
        if self.closed or channel.buf or self.loop is None:
            channel.close()
            return
        self.idle.append((channel, time.monotonic()))
        while len(self.idle) > IDLE_UPSTREAMS:
            self.idle.pop(0)[0].close()
        self.loop.call_later(IDLE_S, self._prune_idle)

    def _prune_idle(self) -> None:
        now = time.monotonic()
        for channel, since in [entry for entry in self.idle if now - entry[1] >= IDLE_S]:
            self.idle.remove((channel, since))
            channel.close()

    def _accept(self) -> None:
        """Readiness callback of the listener: start serving every connection waiting in the backlog."""
        while self.listener is not None:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: keep the listener, drop this one
                log.warning("link %s:%d could not accept: %s", self.session_id, self.port, exc)
                return
            if self.closed:
                sock.close()
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(Channel(sock))
            self.connections.add(conn)
            assert self.loop is not None
            conn.task = self.loop.create_task(self._serve(conn))
            self.service.connection_opened()

    # ---- admission -------------------------------------------------------------------------

    def _admit(self, head: Head) -> tuple[int, str, bool]:
        """(status, message, came with the secret in its path); status 0 = admitted. Rewrites head."""
        target = head.first[1]
        if target.lower().startswith((b"http://", b"https://")):  # absolute-form: keep the path
            parts = urllib.parse.urlsplit(target)
            target = parts.path or b"/"
            if parts.query:
                target += b"?" + parts.query
        cookie_ok: bool | None = None
        kept: list[bytes] = []
        for key, value in head.headers:
            if key.lower() != b"cookie":
                continue
            for item in value.split(b";"):
                name, _, val = item.strip().partition(b"=")
                if name.startswith(COOKIE_PREFIX.encode()):
                    if name == self.cookie_name:
                        cookie_ok = cookie_ok or same_secret(val, self.secret)
                elif item.strip():
                    kept.append(item.strip())
        headers = [(k, v) for k, v in head.headers if k.lower() != b"cookie"]
        if kept:
            headers.append((b"Cookie", b"; ".join(kept)))
        if self.devtools:
            headers = [(k, v) for k, v in headers if k.lower() not in (b"host", b"origin")]
            headers.insert(0, (b"Host", f"127.0.0.1:{self.port}".encode()))
        head.headers = headers
        in_path = False
        if target.startswith(PREFIX):
            rest = target[len(PREFIX):]
            cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
            given, tail = rest[:cut], rest[cut:]
            if not same_secret(given, self.secret):
                return 403, "Forbidden: wrong link secret. Ask get_link for a fresh URL.", False
            in_path = True
            target = tail if tail.startswith(b"/") else b"/" + tail
        elif not cookie_ok:
            if cookie_ok is None:
                return 401, ("Unauthorized: this link needs its secret. Open the full URL returned by "
                             "get_link (it ends in /_agbox/<secret>/)."), False
            return 403, "Forbidden: wrong link secret. Ask get_link for a fresh URL.", False
        head.first[1] = target
        return 0, "", in_path

    def _active(self) -> bool:
        """May this request go through? A release on this replica closes the link at once (its first
        hook), which every request sees; the store is read at most once a second (a release by
        another replica sharing the store, and the session-activity touch), not on every request:
        that read was the biggest cost of a small keep-alive request."""
        if self.closed:
            return False
        now = time.monotonic()
        if now - self.last_touch < TOUCH_INTERVAL_S:
            return True
        try:
            record = self.service.platform.store.get_session(self.session_id)
        except Exception:  # the store is closed: the platform is stopping
            return False
        if record is None or record.status is not SessionStatus.RUNNING:
            return False
        self.last_touch = now  # link traffic counts as session activity
        with contextlib.suppress(Exception):
            self.service.platform.sessions.touch(record)
        return True

    # ---- relay -------------------------------------------------------------------------------

    async def _serve(self, conn: Connection) -> None:
        try:
            await self._relay(conn)
        except (ProtocolError, ConnectionError, OSError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("link %s:%d failed", self.session_id, self.port)
        finally:
            self.connections.discard(conn)
            self.service.count(conn)
            conn.client.close()
            if conn.upstream is not None:
                conn.upstream.close()

    async def _connect(self) -> socket.socket | str:
        sessions = self.service.platform.sessions
        handle: SandboxHandle | None = sessions.handles.get(self.session_id)
        if handle is None:
            # A session another control-plane replica created: its record says where it runs.
            record = self.service.platform.store.get_session(self.session_id)
            if record is None or record.status is not SessionStatus.RUNNING:
                return f"Session {self.session_id} has ended."
            try:
                handle = sessions.handle(record)
            except AgboxError:
                return f"Session {self.session_id} has ended."
        try:
            sock = await asyncio.wait_for(self.service.platform.runtime.connect_port(handle, self.port),
                                          CONNECT_TIMEOUT_S)
        except TimeoutError:
            return f"Bad Gateway: port {self.port} inside session {self.session_id} did not accept a connection " \
                   f"within {CONNECT_TIMEOUT_S:g} s."
        except ConnectionRefusedError:
            return f"Bad Gateway: nothing is listening on port {self.port} inside session {self.session_id} " \
                   "(connection refused). Start the server on 127.0.0.1 or 0.0.0.0 and try again."
        except Exception as exc:
            return f"Bad Gateway: could not reach port {self.port} inside session {self.session_id}: {exc}"
        # Without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms to small exchanges.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    async def _relay(self, conn: Connection) -> None:
        client = conn.client
        while True:
            try:
                raw = await client.read_until(b"\r\n\r\n", HEAD_LIMIT)
            except Incomplete as exc:
                if exc.partial.strip():
                    await client.send(text_response(400, "Bad Request", "Bad Request: incomplete request head."))
                elif conn.upstream is not None:  # the client left between requests: the upstream is clean
                    self._release_upstream(conn)
                return
            except HeadTooLarge:
                await client.send(text_response(431, "Request Header Fields Too Large",
                                                f"The request head exceeds {HEAD_LIMIT} bytes."))
                return
            try:
                head = parse_head(raw, request=True)
                req_body, req_length = body_kind(head)
            except ProtocolError as exc:
                await client.send(text_response(400, "Bad Request", f"Bad Request: {exc}."))
                return
            if req_body == "eof":
                await client.send(text_response(400, "Bad Request", "Bad Request: unsupported Transfer-Encoding."))
                return
            status, message, in_path = self._admit(head)
            if status:
                reason = "Unauthorized" if status == 401 else "Forbidden"
                await client.send(text_response(status, reason, message))
                return
            if not self._active():
                await client.send(text_response(410, "Gone", f"Gone: session {self.session_id} has ended; "
                                                             "its links no longer work."))
                return
            method = head.first[0].upper()
            if method == b"CONNECT":
                await client.send(text_response(405, "Method Not Allowed", "CONNECT is not supported on links."))
                return
            if conn.upstream is None:
                conn.upstream = self._take_idle()
                conn.counted_in = conn.upstream.sent if conn.upstream is not None else 0
            if conn.upstream is None and not await self._open_upstream(conn):
                return
            assert conn.upstream is not None
            upstream = conn.upstream
            connection = head.tokens(b"connection")
            http11 = head.first[2].upper() == b"HTTP/1.1"
            req_close = b"close" in connection or (not http11 and b"keep-alive" not in connection)
            upgrade = b"upgrade" in connection and head.get(b"upgrade") is not None
            if b"close" in connection and http11 and not upgrade:
                # Connection is hop-by-hop: the client's connection ends after this answer, the
                # upstream one may serve the link's next client.
                head.headers = [(k, v) for k, v in head.headers if k.lower() != b"connection"]
                if connection - {b"close"}:
                    head.headers.append((b"Connection", b", ".join(sorted(connection - {b"close"}))))
            encoded = head.encode()
            if req_body == "none":  # the common case: no second task
                try:
                    try:
                        await upstream.send(encoded)
                    except ConnectionError:
                        if not upstream.answers:
                            raise
                        raise UpstreamClosed("the kept-alive upstream connection was closed") from None
                    resp_status, resp_close = await self._response(upstream, client, method, in_path,
                                                                   quiet_close=upstream.answers > 0)
                except UpstreamClosed:
                    # A kept-alive upstream the app had closed meanwhile: once more on a new one
                    # (safe: nothing of the answer was relayed, and the request has no body).
                    self.service.count(conn)
                    upstream.close()
                    conn.upstream = None
                    if not await self._open_upstream(conn):
                        return
                    assert conn.upstream is not None
                    upstream = conn.upstream
                    await upstream.send(encoded)
                    resp_status, resp_close = await self._response(upstream, client, method, in_path)
            else:
                await upstream.send(encoded)
                body_task = asyncio.create_task(self._request_body(client, upstream, req_body, req_length))
                resp_task = asyncio.create_task(self._response(upstream, client, method, in_path))
                try:
                    done, _ = await asyncio.wait({body_task, resp_task}, return_when=asyncio.FIRST_EXCEPTION)
                    if resp_task.done() and resp_task.exception() is None and not body_task.done():
                        # The app answered without reading the whole request body: the connection
                        # cannot be reused; stop here after the answer went out.
                        return
                    for task in done:
                        task.result()  # raises the first failure: both sides get closed
                    resp_status, resp_close = resp_task.result()
                finally:
                    for task in (body_task, resp_task):
                        if not task.done():
                            task.cancel()
                            with contextlib.suppress(BaseException):
                                await task
            self.service.count(conn)
            if resp_status == 101 and upgrade:
                await asyncio.gather(client.pipe_to(upstream), upstream.pipe_to(client))
                return
            if resp_status == 101 or resp_close or not http11:
                # The client was told (or will see) the end of the connection: end both sides.
                return
            if req_close:
                self._release_upstream(conn)
                return

    def _release_upstream(self, conn: Connection) -> None:
        """The client connection ends after a clean answer: its upstream goes to the idle pool."""
        upstream = conn.upstream
        if upstream is not None:
            self.service.count(conn)
            conn.upstream = None
            self._keep_idle(upstream)

    async def _open_upstream(self, conn: Connection) -> bool:
        """Connect conn.upstream to the app; False (after answering the client) when that fails."""
        got = await self._connect()
        if isinstance(got, str):
            code, reason = (410, "Gone") if got.startswith("Session") else (502, "Bad Gateway")
            await conn.client.send(text_response(code, reason, got))
            return False
        if self.closed:  # released while connecting
            got.close()
            return False
        conn.upstream = Channel(got)
        conn.counted_in = 0
        return True

    async def _request_body(self, client: Channel, upstream: Channel, kind: str, length: int) -> None:
        if kind == "length":
            await client.copy_to(upstream, length)
        elif kind == "chunked":
            await client.copy_chunked_to(upstream, HEAD_LIMIT)

    async def _response(self, upstream: Channel, client: Channel, method: bytes,
                        in_path: bool, quiet_close: bool = False) -> tuple[int, bool]:
        """Relay one response (after any 1xx interim answers); (status, close the connection after).
        ``quiet_close``: an upstream that ends before its first byte raises UpstreamClosed (no 502)."""
        upstream.answers += 1
        while True:
            try:
                raw = await upstream.read_until(b"\r\n\r\n", HEAD_LIMIT)
            except (Incomplete, ConnectionError) as exc:
                if quiet_close and not (exc.partial if isinstance(exc, Incomplete) else upstream.buf):
                    raise UpstreamClosed("the kept-alive upstream connection was closed") from None
                if isinstance(exc, ConnectionError):
                    raise
                await client.send(text_response(502, "Bad Gateway", f"Bad Gateway: the server on port {self.port} "
                                                "closed the connection without a complete answer."))
                raise ProtocolError("upstream closed") from None
            head = parse_head(raw, request=False)
            try:
                status = int(head.first[1])
            except ValueError:
                raise ProtocolError("malformed status code") from None
            if 100 <= status < 200 and status != 101:
                await client.send(raw)
                continue
            break
        if in_path:
            raw = head.encode([(b"Set-Cookie", self.cookie_name + b"=" + self.secret.encode()
                                + b"; Path=/; HttpOnly; SameSite=Lax")])
        connection = head.tokens(b"connection")
        close = b"close" in connection or (
            head.first[0].upper() == b"HTTP/1.0" and b"keep-alive" not in connection)
        if status == 101:
            await client.send(raw)
            return status, True
        if method == b"HEAD" or status in (204, 304):
            await client.send(raw)
            return status, close
        kind, length = body_kind(head)
        if kind == "length" and len(upstream.buf) >= length:  # small answers: head and body in one send
            body = upstream.buf[:length]
            del upstream.buf[:length]
            await client.send(raw + body)
            return status, close
        await client.send(raw)
        if kind == "length":
            await upstream.copy_to(client, length)
        elif kind == "chunked":
            await upstream.copy_chunked_to(client, HEAD_LIMIT)
        else:  # delimited by the end of the connection
            await upstream.copy_to(client, None)
            close = True
        return status, close


# ---- the service -------------------------------------------------------------------------------


class LinkService:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.links: dict[tuple[str, int, bool], Link] = {}
        self._lock = asyncio.Lock()
        telemetry = platform.telemetry
        self._to_sandbox = telemetry.link_bytes.labels("to_sandbox")
        self._to_client = telemetry.link_bytes.labels("to_client")
        self._connections = telemetry.link_connections
        telemetry.before_scrape.append(self.count_open)

    def connection_opened(self) -> None:
        self._connections.inc()

    def count_open(self) -> None:
        """Bring the byte counters up to date with connections still open (WebSockets live long)."""
        for link in self.links.values():
            for conn in link.connections:
                self.count(conn)

    def count(self, conn: Connection) -> None:
        """Add the bytes a connection relayed since the last call to the Prometheus counters (called
        once per request and at the end, not per chunk, so counting costs nothing on the data path)."""
        to_sandbox = conn.upstream.sent if conn.upstream is not None else 0
        to_client = conn.client.sent
        if to_sandbox > conn.counted_in:
            self._to_sandbox.inc(to_sandbox - conn.counted_in)
            conn.counted_in = to_sandbox
        if to_client > conn.counted_out:
            self._to_client.inc(to_client - conn.counted_out)
            conn.counted_out = to_client

    async def get_link(self, owner: str, session_id: object, protocol_type: object, port: object) -> str:
        settings = self.platform.settings
        record = self.platform.sessions.get(owner, session_id)
        if record.status is not SessionStatus.RUNNING:
            raise ConflictError(f"session {record.id} is {record.status.value}; links need a RUNNING session")
        protocol = parse_protocol(protocol_type, settings.tls_enabled)
        number = parse_port(port, settings.link_port_min, settings.link_port_max)
        link = await self.open(record, number)
        return self.link_url(link, protocol)

    def session_links(self, session_id: str) -> list[tuple[int, str]]:
        """(sandbox port, URL) of the port links a session has open (not its DevTools link)."""
        return sorted((port, self.link_url(link, "http")) for (owner_session, port, devtools), link
                      in self.links.items() if owner_session == session_id and not devtools and not link.closed)

    async def open(self, record: SessionRecord, port: int, *, devtools: bool = False) -> Link:
        async with self._lock:
            key = (record.id, port, devtools)
            link = self.links.get(key)
            if link is None or link.closed:
                secret = link_secret(record.token, record.id, port, "cdp" if devtools else "link")
                link = Link(self, record.id, port, secret, devtools=devtools)
                await link.open(self.platform.settings.host)
                self.links[key] = link
            return link

    def link_url(self, link: Link, protocol: str, path: str = "/") -> str:
        host = url_host(self.platform.settings.public_url, self.platform.settings.host)
        return f"{protocol}://{host}:{link.listen_port}{PREFIX.decode()}{link.secret}{path}"

    def close_link(self, session_id: str, port: int, *, devtools: bool = False) -> None:
        link = self.links.pop((session_id, port, devtools), None)
        if link is not None:
            link.close()

    def close_session(self, session_id: str) -> None:
        for key in [k for k in self.links if k[0] == session_id]:
            self.links.pop(key).close()

    async def before_release(self, record: SessionRecord) -> None:
        self.close_session(record.id)

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.links.clear()
