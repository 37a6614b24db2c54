"""The composition root: settings → store, runtime, images, tools, services. Used by the server and
by the embedded client alike; ``start``/``close`` bracket its life on one event loop."""

from __future__ import annotations

import fcntl
import logging
import os

from agbox.errors import AgboxError
from agbox.images import ImageCatalog
from agbox.runtime.base import Runtime
from agbox.services.browser import BrowserService
from agbox.services.bulk_listener import BulkListener
from agbox.services.context_files import BlobStore, LocalBlobStore
from agbox.services.contexts import ContextService
from agbox.services.file_stream import FileStreams
from agbox.services.keys import KeyService
from agbox.services.limits import LimitService
from agbox.services.links import LinkService
from agbox.services.sessions import SessionService
from agbox.services.shared_blobs import SharedBlobStore, replica_id, shared_secret
from agbox.services.telemetry import Telemetry
from agbox.services.tools import ToolService
from agbox.services.url_signing import load_secret
from agbox.settings import Settings
from agbox.store.base import Store
from agbox.store.factory import open_context_store, open_store
from agbox.tools.registry import ToolRegistry

log = logging.getLogger(__name__)


def make_runtime(settings: Settings) -> Runtime:
    if settings.runtime == "local":
        from agbox.runtime.local import LocalRuntime
        from agbox.runtime.network import NetworkOptions

        network = NetworkOptions(settings.network_pool, settings.network_dns, settings.network_open_ranges,
                                 settings.network_internet, settings.network_deny_ranges) if settings.network else None
        return LocalRuntime(settings.data_dir, warm_pool_size=settings.warm_pool_size, network=network)
    if settings.runtime == "ray":
        from agbox.runtime.ray_cluster import RayRuntime

        if not settings.ray_address:
            raise AgboxError("the ray runtime needs --ray-address (host:port of the Ray head, or auto)")
        return RayRuntime(settings.ray_address, settings.data_dir, warm_pool_size=settings.warm_pool_size,
                          node_data_dir=settings.node_data_dir)
    raise AgboxError(f"unknown runtime {settings.runtime!r} (available: local, ray)")


class Platform:
    def __init__(self, settings: Settings, runtime: Runtime | None = None, store: Store | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock_data_dir()
        self.store = store or open_store(settings)
        self.runtime = runtime or make_runtime(settings)
        self.images = ImageCatalog(extra_dir=settings.images_dir)
        self.keys = KeyService(self.store, settings.key_cache_ttl_s)
        self.limits = LimitService(settings, self.store, settings.key_cache_ttl_s)
        self.sessions = SessionService(settings, self.store, self.runtime, self.images, self.limits)
        self.sessions.revoked_owners = self.keys.revoked_ids
        self.telemetry = Telemetry(self.store, self.runtime)
        self.tools = ToolService(self.sessions, self.images, ToolRegistry(), self.telemetry)
        self.links = LinkService(self)
        self.files = FileStreams(self.sessions)
        self.browser = BrowserService(self, self.links)
        contexts_dir = settings.data_dir / "contexts"
        blobs: BlobStore
        if settings.blob_dir is not None:  # shared by several control-plane replicas
            blobs = SharedBlobStore(settings.blob_dir, replica_id(settings.data_dir))
            secret = shared_secret(settings.blob_dir / "url-secret")
        else:
            blobs, secret = LocalBlobStore(contexts_dir), load_secret(contexts_dir / "url-secret")
        self.contexts = ContextService(settings, open_context_store(settings, self.store), blobs, self.sessions, secret)
        self.bulk = BulkListener(settings, self.sessions, self.contexts)
        self.contexts.object_base = lambda: self.bulk.base_url
        # At release, in this order before the sandbox goes: the session's links close, its Chromium
        # closes (so the profile on disk is complete), then its contexts upload.
        self.sessions.before_release.append(self.links.before_release)
        self.sessions.before_release.append(self.browser.before_release)
        self.sessions.before_release.append(self.contexts.before_release)
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
        self.contexts.start()
        self.bulk.start()
        self.started = True

    async def close(self) -> None:
        try:
            # Links first: release hooks do not run at shutdown, and open relays would keep sandboxes busy.
            self.links.close()
            self.bulk.close()
            await self.sessions.close()
            # After every session is released (so their auto-uploads finished), before the runtime stops.
            await self.contexts.close()
            await self.runtime.close()
        finally:
            self.contexts.store.close()
            self.store.close()
            os.close(self._lock_fd)
            self.started = False
