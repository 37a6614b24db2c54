"""The session's browser: ``/browser/init``, the CDP link, ``stopChrome``, and the release hook.

One Chromium per session runs inside the session's sandbox as a long-lived child of the agent
(``agent/ops_browser.py``), so it dies with the sandbox. Its DevTools socket listens on the sandbox's
loopback; the CDP link is a link (``services/links.py``) to that port with its own secret, so every
connection is relayed into the sandbox's network namespace like any link, WebSocket upgrades and
permessage-deflate included (bytes pass through untouched).

Init answers like AGB: a second init while Chromium runs keeps it (same port, tabs, cookies); init
after ``stopChrome``, after a client's CDP ``Browser.close`` or after a crash starts a new one. A
browser that ended on its own is reported with how it ended (signal 9 = the memory limit, mostly).

Persistence: the profile (``persistentPath``, ``/tmp/agb_browser_data``) is what a ``BrowserContext``
binds; before a session's contexts are uploaded at release, Chromium is closed gracefully so its
cookie database is complete on disk. Fingerprints: ``fingerprintRawData`` > the file at
``fingerprintPersistPath`` (when no new spec is given) > one generated from ``fingerprint`` >
``userAgent``; a new fingerprint is written to ``fingerprintPersistPath`` when that is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agbox.errors import ConflictError, InvalidRequestError, SandboxError
from agbox.models import SessionRecord, SessionStatus
from agbox.runtime.channel import AgentError
from agbox.services.chromium import (
    PROFILE_DIR,
    BrowserOption,
    chromium_command,
    generate_fingerprint,
    parse_option,
    parse_persisted_fingerprint,
)
from agbox.services.links import LinkService
from agbox.tools.cdp import CdpConnection, CdpError, fillers_expired, flush_cookies
from agbox.wirejson import same_secret

if TYPE_CHECKING:
    from agbox.services.platform import Platform

log = logging.getLogger(__name__)

START_TIMEOUT_S = 45.0
# Chromium's own shutdown, then its helpers' last writes (agent: HELPERS_GRACE_S); slow under load.
STOP_GRACE_S = 10.0
HELPERS_GRACE_S = 10.0
AGENT_TIMEOUT_S = 10.0
BROWSER_TOOL_SET = "browser"
# Images with the computer tools have an X desktop on this display (agent/ops_desktop.py).
DESKTOP_TOOL_SET = "computer"
DESKTOP_DISPLAY = ":0"
LIVE_QUALITY = 60
LIVE_MAX_WIDTH = 1600
# How often the live view checks for another page to show while no frame comes.
LIVE_RETARGET_S = 1.0

FrameSink = Callable[[dict[str, Any]], Awaitable[None]]


def live_secret(token: str, session_id: str) -> str:
    """The secret of a session's live view: watching only, so it must not be the session token itself."""
    return hmac.new(token.encode(), f"agbox-live:{session_id}".encode(), hashlib.sha256).hexdigest()[:36]


class BrowserError(SandboxError):
    """The browser could not do what was asked (crashed, did not start)."""

    code = "BrowserError"


@dataclasses.dataclass
class BrowserState:
    port: int
    path: str
    pid: int
    profile_dir: str
    option: BrowserOption


class BrowserService:
    def __init__(self, platform: Platform, links: LinkService) -> None:
        self.platform = platform
        self.links = links
        self.states: dict[str, BrowserState] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ---- helpers ---------------------------------------------------------------------------------

    def _lock(self, session_id: str) -> asyncio.Lock:
        return self._locks.setdefault(session_id, asyncio.Lock())

    def _browser_session(self, owner: str, session_id: Any) -> SessionRecord:
        record = self.platform.sessions.get(owner, session_id)
        if record.status is not SessionStatus.RUNNING:
            raise ConflictError(f"session {record.id} is {record.status.value}; the browser needs a RUNNING session")
        image = self.platform.images.get(record.image_id)
        if BROWSER_TOOL_SET not in image.tool_sets:
            raise InvalidRequestError(f"image {image.id} has no browser; use a browser image such as agb-browser-use-1")
        return record

    async def _agent(self, record: SessionRecord, op: str, args: dict[str, Any], timeout_s: float = AGENT_TIMEOUT_S) -> Any:
        handle = self.platform.sessions.handle(record)
        try:
            return await self.platform.runtime.call(handle, op, args, timeout_s=timeout_s)
        except AgentError as exc:
            raise BrowserError(exc.message) from None

    async def status(self, record: SessionRecord) -> dict[str, Any]:
        """The agent's view of the browser; forgets a browser that has ended."""
        # (A browser that just ended may still have helpers finishing their writes: the agent waits for them.)
        status: dict[str, Any] = await self._agent(record, "browser_status", {},
                                                   timeout_s=HELPERS_GRACE_S + AGENT_TIMEOUT_S)
        if not status.get("running"):
            state = self.states.pop(record.id, None)
            if state is not None:
                self.links.close_link(record.id, state.port, devtools=True)
        return status

    # ---- init ------------------------------------------------------------------------------------

    async def init(self, owner: str, session_id: Any, persistent_path: Any, raw_option: Any) -> int:
        """Start (or keep) the session's Chromium; returns its DevTools port inside the sandbox."""
        record = self._browser_session(owner, session_id)
        profile_dir = persistent_path or PROFILE_DIR
        if not isinstance(profile_dir, str) or not profile_dir.startswith("/") or "\n" in profile_dir:
            raise InvalidRequestError("persistentPath must be an absolute path inside the session")
        option = parse_option(raw_option)
        async with self._lock(record.id):
            status = await self.status(record)
            if status.get("running"):
                state = self.states.get(record.id)
                if state is None:  # running but not recorded here (a record lost to a failed call): adopt it
                    state = BrowserState(int(status["port"]), str(status["path"]), int(status["pid"]), profile_dir, option)
                    self.states[record.id] = state
                return state.port
            fingerprint = await self._fingerprint(record, option)
            prepared = await self._agent(record, "browser_prepare", {"extension_path": option.extension_path})
            display = None
            if DESKTOP_TOOL_SET in self.platform.images.get(record.image_id).tool_sets:
                # On a desktop image the browser is a visible window of the session's desktop: wait for it.
                await self._agent(record, "desktop_screen_size", {})
                display = DESKTOP_DISPLAY
            command = chromium_command(option, profile_dir=profile_dir, extensions=prepared.get("extensions") or [],
                                       fingerprint=fingerprint, display=display)
            started = await self._agent(record, "browser_start", {
                "argv": command.argv, "env": command.env, "make_dirs": [profile_dir],
                "ready_timeout_s": START_TIMEOUT_S - 5}, timeout_s=START_TIMEOUT_S)
            state = BrowserState(int(started["port"]), str(started["path"]), int(started["pid"]), profile_dir, option)
            self.states[record.id] = state
            return state.port

    async def _fingerprint(self, record: SessionRecord, option: BrowserOption) -> dict[str, Any] | None:
        persist = option.fingerprint_persist_path
        if option.fingerprint_raw is not None:
            fingerprint: dict[str, Any] | None = option.fingerprint_raw
        elif persist and not option.has_fingerprint_spec:
            prepared = await self._agent(record, "browser_prepare", {"fingerprint_path": persist})
            text = prepared.get("fingerprint")
            return parse_persisted_fingerprint(text, persist) if text else None
        elif option.has_fingerprint_spec:
            fingerprint = generate_fingerprint(option)
        else:
            return None
        if persist and fingerprint is not None:
            await self._agent(record, "browser_write_file", {"path": persist, "text": json.dumps(fingerprint, indent=2)})
        return fingerprint

    # ---- CDP ---------------------------------------------------------------------------------------

    async def running_state(self, record: SessionRecord) -> BrowserState:
        """The state of a running browser, or a precise error: never initialized, stopped, or crashed."""
        status = await self.status(record)
        state = self.states.get(record.id)
        if status.get("running") and state is not None:
            return state
        if status.get("reason"):
            log_tail = str(status.get("log") or "").strip()[-800:]
            raise BrowserError(f"the browser of session {record.id} {status['reason']}; call /browser/init to start "
                               f"a new one" + (f". Its last log lines:\n{log_tail}" if log_tail else ""))
        raise ConflictError(f"the browser of session {record.id} is not running; call /browser/init first")

    async def cdp_url(self, owner: str, session_id: Any) -> str:
        """A browser-level ``ws://…/devtools/browser/<id>`` URL with its authorization inside."""
        record = self._browser_session(owner, session_id)
        state = await self.running_state(record)
        link = await self.links.open(record, state.port, devtools=True)
        protocol = "wss" if self.platform.settings.tls_enabled else "ws"
        return self.links.link_url(link, protocol, state.path)

    async def legacy_cdp_url(self, owner: str, session_id: Any) -> str | None:
        """SDKs up to 0.10 ask ``getLink`` without a port for the CDP URL: answer it when a browser runs."""
        if not isinstance(session_id, str) or session_id not in self.states:
            return None
        record = self.platform.sessions.get(owner, session_id)
        status = await self.status(record)
        if not status.get("running"):
            return None
        return await self.cdp_url(owner, session_id)

    # ---- stop --------------------------------------------------------------------------------------

    async def stop(self, record: SessionRecord) -> dict[str, Any]:
        async with self._lock(record.id):
            args: dict[str, Any] = {"grace_s": STOP_GRACE_S}
            state = self.states.get(record.id)
            if state is not None:
                args["changed_after"] = await flush_cookies(self.platform.runtime, self.platform.sessions.handle(record),
                                                            state.port, state.path)
            result: dict[str, Any] = await self._agent(record, "browser_stop", args,
                                                       timeout_s=STOP_GRACE_S + HELPERS_GRACE_S + AGENT_TIMEOUT_S)
            await fillers_expired(args.get("changed_after"))
            state = self.states.pop(record.id, None)
            if state is not None:
                self.links.close_link(record.id, state.port, devtools=True)
            return result

    async def before_release(self, record: SessionRecord) -> None:
        """Close Chromium gracefully so the profile (cookies) is complete before contexts upload it."""
        self._locks.pop(record.id, None)
        if record.id not in self.states:
            return
        try:
            await self.stop(record)
        except Exception as exc:  # the sandbox may already be gone
            log.info("stopping the browser of %s at release: %s", record.id, exc)
        self.states.pop(record.id, None)

    # ---- live view -----------------------------------------------------------------------------------

    def live_url(self, owner: str, session_id: Any) -> str:
        record = self._browser_session(owner, session_id)
        return f"{self.platform.settings.base_url}/sessions/{record.id}/browser/live?key={live_secret(record.token, record.id)}"

    def live_admits(self, session_id: str, key: str) -> SessionRecord | None:
        record = self.platform.store.get_session(session_id)
        if record is None or record.status is not SessionStatus.RUNNING or not key:
            return None
        return record if same_secret(key, live_secret(record.token, record.id)) else None

    async def screencast(self, record: SessionRecord, send: FrameSink) -> None:
        """Send the browser's active page as JPEG frames ({"data": base64, "url", "title", ...}) until the
        browser or the receiver goes away. "Active" follows what happens: a page that opens or navigates
        becomes the one shown (Chromium's target list has no order or focus to go by)."""
        state = await self.running_state(record)
        handle = self.platform.sessions.handle(record)
        cdp = await CdpConnection.open(self.platform.runtime, handle, state.port, state.path)
        frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=2)
        pages: dict[str, dict[str, Any]] = {}
        shown: dict[str, str] = {}
        wanted: list[str] = []

        def on_event(message: dict[str, Any]) -> None:
            method, params = message.get("method"), message.get("params") or {}
            if method == "Page.screencastFrame" and message.get("sessionId") == shown.get("session"):
                if frames.full():  # a slow viewer gets the newest frame, not a backlog
                    frames.get_nowait()
                frames.put_nowait(params)
            elif method in ("Target.targetCreated", "Target.targetInfoChanged"):
                info = params.get("targetInfo") or {}
                if info.get("type") == "page":
                    known = pages.get(info["targetId"])
                    pages[info["targetId"]] = info
                    # (setDiscoverTargets replays the existing targets as "created", in no order: not news.)
                    if known is None or info.get("url") != known.get("url"):
                        wanted.append(info["targetId"])
            elif method == "Target.targetDestroyed":
                pages.pop(params.get("targetId", ""), None)

        cdp.listen(on_event)
        try:
            for info in (await cdp.call("Target.getTargets"))["targetInfos"]:
                if info.get("type") == "page":
                    pages[info["targetId"]] = info
            # To begin with, any page that shows something rather than about:blank.
            wanted.extend(sorted(pages, key=lambda t: pages[t].get("url") not in ("about:blank", "")))
            await cdp.call("Target.setDiscoverTargets", {"discover": True})
            while not cdp.closed:
                target = next((t for t in reversed(wanted) if t in pages), None)
                wanted[:] = [target] if target else []
                if target is not None and target != shown.get("target"):
                    if shown.get("session"):
                        with contextlib.suppress(CdpError):
                            await cdp.call("Target.detachFromTarget", {"sessionId": shown["session"]})
                    attached = await cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})
                    shown.update(target=target, session=attached["sessionId"])
                    await cdp.call("Page.startScreencast", {"format": "jpeg", "quality": LIVE_QUALITY,
                                                           "maxWidth": LIVE_MAX_WIDTH, "everyNthFrame": 1},
                                   session_id=shown["session"])
                try:
                    frame = await asyncio.wait_for(frames.get(), LIVE_RETARGET_S)
                except TimeoutError:
                    continue
                await cdp.call("Page.screencastFrameAck", {"sessionId": frame["sessionId"]},
                               session_id=shown["session"])
                info = pages.get(shown.get("target", ""), {})
                metadata = frame.get("metadata") or {}
                await send({"data": frame["data"], "url": info.get("url", ""), "title": info.get("title", ""),
                            "width": metadata.get("deviceWidth"), "height": metadata.get("deviceHeight")})
        except CdpError:
            return
        finally:
            await cdp.close()
