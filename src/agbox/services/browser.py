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
import dataclasses
import json
import logging
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

if TYPE_CHECKING:
    from agbox.services.platform import Platform

log = logging.getLogger(__name__)

START_TIMEOUT_S = 45.0
STOP_GRACE_S = 5.0
AGENT_TIMEOUT_S = 10.0
BROWSER_TOOL_SET = "browser"


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
        status: dict[str, Any] = await self._agent(record, "browser_status", {})
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
                if state is None:  # started by an earlier process of ours? keep what runs
                    state = BrowserState(int(status["port"]), str(status["path"]), int(status["pid"]), profile_dir, option)
                    self.states[record.id] = state
                return state.port
            fingerprint = await self._fingerprint(record, option)
            prepared = await self._agent(record, "browser_prepare", {"extension_path": option.extension_path})
            command = chromium_command(option, profile_dir=profile_dir, extensions=prepared.get("extensions") or [],
                                       fingerprint=fingerprint)
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
            result: dict[str, Any] = await self._agent(record, "browser_stop", {"grace_s": STOP_GRACE_S},
                                                       timeout_s=STOP_GRACE_S + AGENT_TIMEOUT_S)
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
