"""How the SDK reaches a platform: over AGB's HTTP wire, or embedded in this process.

Both backends take an operation name, query and body, and return the AGB envelope as a dict, so the
SDK above them is written once against the wire format.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import concurrent.futures.thread  # noqa: F401  (registers its exit hook before ours, see below)
import contextlib
import logging
import secrets
import socket
import threading
from pathlib import Path
from typing import Any

import httpx

from agbox.server.wire import ROUTES

log = logging.getLogger(__name__)


class Backend(abc.ABC):
    embedded: bool = False

    @abc.abstractmethod
    def call(self, op: str, query: dict[str, Any] | None = None, body: dict[str, Any] | None = None,
             timeout_s: float | None = None) -> dict[str, Any]: ...

    def http(self) -> httpx.Client | None:
        return None

    def bulk_endpoint(self) -> tuple[str, str] | None:
        """(base URL, API key) for raw file streams (``/sessions/{id}/files``), None when closed."""
        return None

    def close(self) -> None:
        return None


CLOSED = "this AGB client is closed"


def _transport_error(message: str) -> dict[str, Any]:
    return {"success": False, "code": "TransportError", "message": message, "requestId": "", "httpStatusCode": 0,
            "data": None}


class HttpBackend(Backend):
    def __init__(self, endpoint: str, api_key: str, timeout_s: float) -> None:
        if not endpoint.startswith(("http://", "https://")):
            endpoint = "https://" + endpoint
        self.endpoint = endpoint.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._client = httpx.Client(timeout=timeout_s, headers={"authorization": f"Bearer {api_key}"})

    def http(self) -> httpx.Client:
        return self._client

    def bulk_endpoint(self) -> tuple[str, str] | None:
        return None if self._client.is_closed else (self.endpoint, self.api_key)

    def call(self, op: str, query: dict[str, Any] | None = None, body: dict[str, Any] | None = None,
             timeout_s: float | None = None) -> dict[str, Any]:
        method, path = ROUTES[op]
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if self._client.is_closed:
            return _transport_error(CLOSED)
        try:
            response = self._client.request(method, self.endpoint + path, params=params,
                                            json=(body or {}) if method == "POST" else None,
                                            timeout=timeout_s or self.timeout_s)
        except httpx.HTTPError as exc:
            return _transport_error(f"{type(exc).__name__}: {exc}")
        try:
            value = response.json()
        except ValueError:
            return _transport_error(f"HTTP {response.status_code}: the server did not answer with JSON")
        if not isinstance(value, dict):
            return _transport_error(f"HTTP {response.status_code}: unexpected response")
        value.setdefault("requestId", response.headers.get("x-request-id", ""))
        return value

    def close(self) -> None:
        self._client.close()


class EmbeddedPlatform:
    """The whole platform on a private event loop in a background thread of this process."""

    def __init__(self, data_dir: Path) -> None:
        import uvicorn

        from agbox.server.app import create_app
        from agbox.services.platform import Platform
        from agbox.settings import Settings

        # A loopback listener for what must be reachable by URL (links, session MCP endpoints,
        # streams, pre-signed URLs); the SDK's own calls skip HTTP and go straight to the wire layer.
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto is TCP,
        # and without it Nagle + delayed ACK add ~40 ms to every loopback request.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.bind(("127.0.0.1", 0))
        port = int(self._socket.getsockname()[1])
        self.settings = Settings.from_env(data_dir=data_dir, host="127.0.0.1", port=port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="agbox-embedded", daemon=True)
        self.thread.start()
        self.platform = Platform(self.settings)
        _, self.key = self.platform.keys.create("embedded", "embedded-" + secrets.token_hex(16))
        self.run(self.platform.start())
        self.app = create_app(self.platform, manage_platform=False)
        self.wire = self.app.state.wire
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                h11_max_incomplete_event_size=256 * 1024)
        self.server = uvicorn.Server(config)
        self._serving = asyncio.run_coroutine_threadsafe(self.server.serve(sockets=[self._socket]), self.loop)
        self.users = 0
        self.closed = False

    def run(self, coro: Any, timeout_s: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                self._serving.result(10)
            self.run(self.platform.close(), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


_embedded: dict[Path, EmbeddedPlatform] = {}
_embedded_lock = threading.Lock()


def _close_all_embedded() -> None:
    """Stop every embedded platform a script left open (every sandbox ends, nothing is printed)."""
    with _embedded_lock:
        platforms = list(_embedded.values())
        _embedded.clear()
    for platform in platforms:
        try:
            platform.close()
        except Exception:  # at interpreter exit there is no one left to report to but the log
            log.warning("closing the embedded platform at exit failed", exc_info=True)


# The platform must close before ``concurrent.futures`` shuts its executors down at exit (it does so
# from a threading-exit hook, which runs before ``atexit``): the runtime's clean-up runs in executor
# threads. Threading-exit hooks run last-registered first, so this one runs before the executors'
# (their module is imported above, so its hook is registered before this one).
# ``atexit`` stays as the fallback for interpreters without the hook.
_register_thread_exit = getattr(threading, "_register_atexit", None)
if _register_thread_exit is not None:
    _register_thread_exit(_close_all_embedded)
atexit.register(_close_all_embedded)


class EmbeddedBackend(Backend):
    embedded = True

    def __init__(self, data_dir: Path) -> None:
        with _embedded_lock:
            platform = _embedded.get(data_dir)
            if platform is None:
                platform = _embedded[data_dir] = EmbeddedPlatform(data_dir)
            platform.users += 1
        self.platform = platform
        self.data_dir = data_dir
        self._closed = False

    def bulk_endpoint(self) -> tuple[str, str] | None:
        # File streams go through the loopback listener: raw bytes over a local socket beat passing
        # them through the platform's event loop thread by thread.
        if self._closed or self.platform.closed:
            return None
        return f"http://127.0.0.1:{self.platform.settings.port}", self.platform.key

    def call(self, op: str, query: dict[str, Any] | None = None, body: dict[str, Any] | None = None,
             timeout_s: float | None = None) -> dict[str, Any]:
        if self._closed or self.platform.closed:
            return _transport_error(CLOSED)
        params = {k: v for k, v in (query or {}).items() if v is not None}
        params.update(body or {})
        result: dict[str, Any] = self.platform.run(self.platform.wire.dispatch(op, self.platform.key, params))
        return result

    def close(self) -> None:
        """Stop the embedded platform when its last client closes (every sandbox ends)."""
        with _embedded_lock:
            if self._closed:
                return
            self._closed = True
            self.platform.users -= 1
            if self.platform.users > 0 or _embedded.get(self.data_dir) is not self.platform:
                return
            del _embedded[self.data_dir]
        self.platform.close()
