"""The composition root: settings → store, runtime, images, tools, services. Used by the server and
by the embedded client alike; ``start``/``close`` bracket its life on one event loop."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from agbox.errors import AgboxError
from agbox.images import ImageCatalog
from agbox.runtime.base import Runtime
from agbox.services.keys import KeyService
from agbox.services.sessions import SessionService
from agbox.services.tools import ToolService
from agbox.settings import Settings
from agbox.store.base import Store
from agbox.store.sqlite import SqliteStore
from agbox.tools.registry import ToolRegistry

log = logging.getLogger(__name__)


def make_runtime(settings: Settings) -> Runtime:
    if settings.runtime == "local":
        from agbox.runtime.local import LocalRuntime
        from agbox.runtime.network import NetworkOptions

        network = NetworkOptions(settings.network_pool, settings.network_dns, settings.network_open_ranges,
                                 settings.network_internet, settings.network_deny_ranges) if settings.network else None
        return LocalRuntime(settings.data_dir, warm_pool_size=settings.warm_pool_size, network=network)
    raise AgboxError(f"unknown runtime {settings.runtime!r} (available: local)")


class Platform:
    def __init__(self, settings: Settings, runtime: Runtime | None = None, store: Store | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock_data_dir()
        self.store = store or SqliteStore(settings.data_dir / "agbox.db")
        self.runtime = runtime or make_runtime(settings)
        self.images = ImageCatalog(extra_dir=settings.images_dir)
        self.keys = KeyService(self.store)
        self.sessions = SessionService(settings, self.store, self.runtime, self.images)
        self.tools = ToolService(self.sessions, self.images, ToolRegistry())
        self.extensions: dict[str, Any] = {}
        # Called first in close(), e.g. to shut links' listeners (release hooks do not run at shutdown).
        self.close_hooks: list[Callable[[], None]] = []
        # Run after every session is released (so their auto-uploads finished), before the runtime stops.
        self.async_close_hooks: list[Callable[[], Awaitable[None]]] = []
        self.started = False

    def _lock_data_dir(self) -> int:
        path = self.settings.data_dir / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise AgboxError(f"data dir {self.settings.data_dir} is in use by another agbox process "
                             f"(pid {holder or '?'}); use another --data-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return fd

    async def start(self) -> None:
        await self.runtime.start()
        await self.sessions.recover()
        for image_id in self.settings.prewarm_images:
            await self.runtime.prewarm(self.sessions.spec_for(self.images.get(image_id), ""))
        self.sessions.start_lifecycle()
        self.started = True

    async def close(self) -> None:
        try:
            for hook in self.close_hooks:
                hook()
            await self.sessions.close()
            for async_hook in self.async_close_hooks:
                await async_hook()
            await self.runtime.close()
        finally:
            self.store.close()
            os.close(self._lock_fd)
            self.started = False
