"""Sessions: creation, lookup by owner, labels, listing, and the lifecycle (idle release, lifetime cap).

State machine (wire names):

    CREATING ──sandbox ready──▶ RUNNING ──release / idle / lifetime / sandbox died──▶ DELETING ──▶ FINISH
        └──────────────── sandbox failed to start ─────────────────────────────────────────────────▲

Only CREATING and RUNNING sessions are "active": listed, callable. A FINISH session answers
getSessionInfo with FINISH (so the official SDK's delete poll ends) and is "not found" to
everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from agbox.errors import AgboxError, InvalidRequestError, LimitExceededError, SessionNotFoundError
from agbox.images import Image, ImageCatalog
from agbox.models import ACTIVE_STATUSES, SessionRecord, SessionStatus
from agbox.runtime.base import Runtime, SandboxHandle, SandboxSpec
from agbox.services.limits import LimitService
from agbox.services.network import parse_policy
from agbox.services.paging import paginate
from agbox.settings import Settings
from agbox.store.base import Store
from agbox.wirejson import check_text, loads

log = logging.getLogger(__name__)

ReleaseHook = Callable[[SessionRecord], Awaitable[None]]


def new_session_id() -> str:
    return "session-" + secrets.token_hex(10)


def validate_labels(labels: Any, settings: Settings) -> dict[str, str]:
    if labels is None or labels == "":
        return {}
    if isinstance(labels, str):
        labels = loads(labels, "labels", max_bytes=settings.max_label_count * settings.max_label_bytes * 2)
    if not isinstance(labels, dict):
        raise InvalidRequestError("labels must be a JSON object of string keys and values")
    if len(labels) > settings.max_label_count:
        raise InvalidRequestError(f"too many labels: {len(labels)} (at most {settings.max_label_count})")
    clean: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not key.strip():
            raise InvalidRequestError("label keys must be non-empty strings")
        if not isinstance(value, str):
            raise InvalidRequestError(f"label {key!r} must have a string value")
        check_text(key, "a label key")
        check_text(value, f"label {key!r}")
        if len(key.encode()) + len(value.encode()) > settings.max_label_bytes:
            raise InvalidRequestError(f"label {key!r} is too long (key and value at most {settings.max_label_bytes} bytes)")
        clean[key] = value
    return clean


def validate_desktop_size(value: Any) -> str:
    """``WIDTHxHEIGHT`` or ``WIDTHxHEIGHTxDEPTH`` (depth 16 or 24) within what Xvfb handles well."""
    match = re.fullmatch(r"(\d{2,5})x(\d{2,5})(?:x(16|24))?", value.strip().lower()) if isinstance(value, str) else None
    if match is None:
        raise InvalidRequestError(f"desktopSize must look like 1920x1080 or 1920x1080x24, got {value!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if not (64 <= width <= 7680 and 64 <= height <= 4320):
        raise InvalidRequestError(f"desktopSize must be between 64x64 and 7680x4320, got {value!r}")
    return f"{width}x{height}x{match.group(3) or 24}"


class SessionService:
    def __init__(self, settings: Settings, store: Store, runtime: Runtime, images: ImageCatalog,
                 limits: LimitService | None = None) -> None:
        self.settings = settings
        self.limits = limits or LimitService(settings, store)
        self.store = store
        self.runtime = runtime
        self.images = images
        self.handles: dict[str, SandboxHandle] = {}
        self.tool_state: dict[str, dict[str, Any]] = {}
        self.before_release: list[ReleaseHook] = []
        self.after_create: list[ReleaseHook] = []
        self._releasing: dict[str, asyncio.Task[None]] = {}
        self._lifecycle_task: asyncio.Task[None] | None = None
        self._in_flight: dict[str, int] = {}
        # Ids of revoked API keys (read from the store each sweep): their sessions are released.
        self.revoked_owners: Callable[[], set[str]] = set

    # ---- start / stop ----------------------------------------------------------------------------

    async def recover(self) -> None:
        """After a restart: re-attach to live sandboxes, and end (truthfully) the ones that are gone."""
        for record in self.store.sessions(statuses=[*ACTIVE_STATUSES, SessionStatus.DELETING]):
            if not self.runtime.manages(record.node):
                continue
            handle = SandboxHandle(record.id, record.node, record.handle)
            alive = False
            with contextlib.suppress(Exception):
                alive = record.status is SessionStatus.RUNNING and await self.runtime.reattach(handle)
            if alive:
                self.handles[record.id] = handle
                continue
            reason = "server restarted"
            if self.runtime.sessions_outlive_control_plane:
                # A release that a stopped replica left half-done is finished here; a sandbox that is
                # gone says why (e.g. its node was lost).
                reason = "released by API" if record.status is SessionStatus.DELETING else self.runtime.end_reason(handle)
                with contextlib.suppress(Exception):
                    await self.runtime.destroy(handle)
            self.store.set_status(record.id, SessionStatus.FINISH, time.time(), reason)

    def start_lifecycle(self) -> None:
        self._lifecycle_task = asyncio.create_task(self._lifecycle_loop(), name="agbox-lifecycle")

    async def close(self) -> None:
        if self._lifecycle_task is not None:
            self._lifecycle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lifecycle_task
        if self.runtime.sessions_outlive_control_plane:
            self.handles.clear()
        for record in self.store.sessions(statuses=[*ACTIVE_STATUSES, SessionStatus.DELETING]):
            if self.runtime.sessions_outlive_control_plane or not self.runtime.manages(record.node):
                continue
            # Graceful stop: release hooks run (auto-upload of contexts), as on any release.
            await self._release_now(record, "server stopped")
        for task in list(self._releasing.values()):
            with contextlib.suppress(Exception):
                await task

    # ---- create ----------------------------------------------------------------------------------

    async def create(self, owner: str, image_id: str | None, labels: Any = None, idle_timeout_s: Any = None,
                     policy_id: str | None = None, desktop_size: Any = None, network: Any = None) -> SessionRecord:
        image = self.images.get(image_id)
        if desktop_size not in (None, ""):
            desktop_size = validate_desktop_size(desktop_size)
        clean_labels = validate_labels(labels, self.settings)
        network_policy = self._network_policy(network)
        if idle_timeout_s in (None, "", 0):
            idle = self.settings.default_idle_timeout_s
        else:
            if isinstance(idle_timeout_s, float | bool):
                raise InvalidRequestError("timeout must be an integer number of seconds")
            try:
                idle = int(idle_timeout_s)
            except (TypeError, ValueError) as exc:
                raise InvalidRequestError("timeout must be an integer number of seconds") from exc
            if idle < 1:
                raise InvalidRequestError("timeout must be at least 1 second")
            idle = min(idle, self.settings.max_lifetime_s)
        if policy_id is not None and not isinstance(policy_id, str):
            raise InvalidRequestError("mcpPolicyId must be a string")
        active = self.store.session_images(ACTIVE_STATUSES)
        if len(active) >= self.settings.max_sessions:
            raise LimitExceededError(f"too many active sessions on this server ({len(active)}); release some first")
        # No await between this check and put_session below: concurrent creates cannot both slip in.
        self.limits.check_new_session(owner, [self._footprint(i) for o, i in active if o == owner],
                                      image.limits.memory_bytes, image.limits.cpus)
        now = time.time()
        record = SessionRecord(
            id=new_session_id(), owner=owner, image_id=image.id, status=SessionStatus.CREATING,
            labels=clean_labels, created_at=now, last_active_at=now, idle_timeout_s=idle,
            expires_at=now + self.settings.max_lifetime_s, token=secrets.token_urlsafe(24),
            node=getattr(self.runtime, "node", self.runtime.name), policy_id=policy_id or "",
        )
        self.store.put_session(record)
        spec = dataclasses.replace(self.spec_for(image, record.id, desktop_size or None), network=network_policy)
        try:
            handle = await self.runtime.create(spec)
        except BaseException as exc:
            self.store.set_status(record.id, SessionStatus.FINISH, time.time(), f"failed to start: {exc}")
            raise
        self.handles[record.id] = handle
        record.node, record.handle, record.status = handle.node, handle.details, SessionStatus.RUNNING
        record.last_active_at = time.time()
        self.store.put_session(record)
        for hook in self.after_create:
            await hook(record)
        return record

    def _network_policy(self, raw: Any) -> Any:
        if not self.runtime.offers_network:
            if raw not in (None, ""):
                raise InvalidRequestError("networking is off on this server (AGBOX_NETWORK=off, or a runtime "
                                          "without networking): sessions have no network, so networkPolicy "
                                          "cannot be applied")
            return None
        return parse_policy(raw, self.settings.network_internet)

    async def set_network_policy(self, owner: str, session_id: Any, raw: Any) -> dict[str, Any]:
        """Replace a running session's policy (from now on, also for its open connections)."""
        record = self.get(owner, session_id)
        if raw in (None, ""):
            raise InvalidRequestError("networkPolicy is required")
        policy = self._network_policy(raw)
        return await self.runtime.set_network_policy(self.handle(record), policy)

    def network_info(self, record: SessionRecord) -> dict[str, Any] | None:
        handle = self.handles.get(record.id)
        return self.runtime.network_info(handle) if handle is not None else None

    def _footprint(self, image_id: str) -> tuple[int, float]:
        """(memory bytes, cpus) a session's sandbox of this image may use."""
        try:
            limits = self.images.get(image_id).limits
        except AgboxError:  # an image removed since: count nothing rather than fail every create
            return 0, 0.0
        return limits.memory_bytes, limits.cpus

    def spec_for(self, image: Image, session_id: str, desktop_size: str | None = None) -> SandboxSpec:
        env = dict(image.env)
        if "computer" in image.tool_sets:
            # The sandbox's agent starts an X desktop of this size (warm-pooled per size like any spec).
            env["AGBOX_DESKTOP_SIZE"] = desktop_size or self.settings.desktop_size
        return SandboxSpec(session_id=session_id, image_id=image.id, limits=image.limits, env=env,
                           ro_binds=image.ro_binds)

    # ---- lookup ----------------------------------------------------------------------------------

    def get(self, owner: str, session_id: Any, *, touch: bool = True) -> SessionRecord:
        """An active session of this owner; another owner's session is 'not found' too."""
        if not isinstance(session_id, str) or not session_id:
            raise InvalidRequestError("sessionId is required")
        record = self.store.get_session(session_id)
        if record is None or record.owner != owner:
            raise SessionNotFoundError(session_id)
        if record.status not in ACTIVE_STATUSES:
            raise SessionNotFoundError(session_id, record.finish_reason)
        if touch:
            self.touch(record)
        return record

    def status(self, owner: str, session_id: Any) -> SessionStatus:
        """Status without counting as activity (the SDK polls it while waiting)."""
        if not isinstance(session_id, str) or not session_id:
            raise InvalidRequestError("sessionId is required")
        record = self.store.get_session(session_id)
        if record is None or record.owner != owner:
            raise SessionNotFoundError(session_id)
        return record.status

    def touch(self, record: SessionRecord) -> None:
        now = time.time()
        record.last_active_at = now
        self.store.touch_session(record.id, now)

    @contextlib.contextmanager
    def in_use(self, session_id: str) -> Iterator[None]:
        """Mark a call as running: an idle timer cannot release a session mid-call, and the call's end
        counts as activity too (a 10-minute command in a session with a 5-minute idle timeout)."""
        self._in_flight[session_id] = self._in_flight.get(session_id, 0) + 1
        try:
            yield
        finally:
            left = self._in_flight[session_id] - 1
            if left:
                self._in_flight[session_id] = left
            else:
                del self._in_flight[session_id]
            self.store.touch_session(session_id, time.time())

    def handle(self, record: SessionRecord) -> SandboxHandle:
        handle = self.handles.get(record.id)
        if handle is None:
            # Created by another control-plane replica: the record says where the sandbox is.
            if record.status is not SessionStatus.RUNNING or not self.runtime.manages(record.node):
                raise SessionNotFoundError(record.id)
            handle = self.handles[record.id] = SandboxHandle(record.id, record.node, record.handle)
        return handle

    def set_labels(self, owner: str, session_id: Any, labels: Any) -> None:
        record = self.get(owner, session_id)
        clean = validate_labels(labels, self.settings)
        if not clean:
            raise InvalidRequestError("labels cannot be empty")
        self.store.set_labels(record.id, clean)

    def list(self, owner: str, labels: Any, max_results: Any, next_token: Any) -> tuple[list[SessionRecord], str, int, int]:
        wanted = validate_labels(labels, self.settings)
        matches = [r for r in self.store.sessions(owner=owner, statuses=ACTIVE_STATUSES)
                   if all(r.labels.get(k) == v for k, v in wanted.items())]
        page, token, limit = paginate(matches, max_results, next_token)
        return page, token, limit, len(matches)

    # ---- release ---------------------------------------------------------------------------------

    async def release_async(self, owner: str, session_id: Any, grace_s: float = 0.5) -> None:
        """Start the release; wait up to ``grace_s`` for it, so that a client's first status poll
        usually already sees FINISH (the official SDK polls at once, then every second)."""
        record = self.get(owner, session_id, touch=False)
        self._start_release(record, "released by API")
        task = self._releasing.get(record.id)
        if task is not None:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(task), grace_s)

    async def release(self, owner: str, session_id: Any) -> None:
        record = self.get(owner, session_id, touch=False)
        self._start_release(record, "released by API")
        task = self._releasing.get(record.id)
        if task is not None:
            await asyncio.shield(task)

    def end(self, session_id: str, reason: str) -> None:
        """End a session whose sandbox is gone, with the cause as its reason (release runs in the background)."""
        record = self.store.get_session(session_id)
        if record is not None and record.status in ACTIVE_STATUSES:
            self._start_release(record, reason)

    def _start_release(self, record: SessionRecord, reason: str) -> None:
        if record.id in self._releasing:
            return
        if not self.store.claim_release(record.id, reason):
            return  # already being released (by another replica sharing the store, or earlier)
        record.status = SessionStatus.DELETING
        task = asyncio.create_task(self._release_now(record, reason), name=f"release-{record.id}")
        self._releasing[record.id] = task
        task.add_done_callback(lambda _t: self._releasing.pop(record.id, None))

    async def _release_now(self, record: SessionRecord, reason: str, run_hooks: bool = True) -> None:
        try:
            if run_hooks:
                for hook in self.before_release:
                    try:
                        await hook(record)
                    except Exception:  # a failed upload must not keep the sandbox alive
                        log.exception("before-release hook failed for %s", record.id)
            handle = self.handles.pop(record.id, None) or SandboxHandle(record.id, record.node, record.handle)
            try:
                await self.runtime.destroy(handle)
            except Exception:
                log.exception("destroying sandbox of %s failed", record.id)
        finally:
            self.tool_state.pop(record.id, None)
            self.store.set_status(record.id, SessionStatus.FINISH, time.time(), reason)

    # ---- lifecycle -------------------------------------------------------------------------------

    async def _lifecycle_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval_s)
            try:
                self.sweep()
            except Exception:
                log.exception("lifecycle sweep failed")

    def sweep(self) -> None:
        now = time.time()
        revoked = self.revoked_owners()
        for record in self.store.sessions(statuses=[SessionStatus.RUNNING]):
            if record.id in self._releasing or not self.runtime.manages(record.node):
                continue
            handle = self.handles.get(record.id) or SandboxHandle(record.id, record.node, record.handle)
            if record.owner in revoked:
                self._start_release(record, "API key revoked")
            elif not self.runtime.alive(handle):
                self._start_release(record, self.runtime.end_reason(handle))
            elif now - record.last_active_at >= record.idle_timeout_s and record.id not in self._in_flight \
                    and not self.runtime.busy(handle):
                self._start_release(record, f"idle for {record.idle_timeout_s} s")
            elif now >= record.expires_at:
                self._start_release(record, "maximum lifetime reached")
