"""``session.browser``: the session's Chromium, with the official SDK's names and results.

``initialize(BrowserOption(...))`` starts it (``/browser/init``), ``get_endpoint_url()`` returns the CDP
URL for Playwright's ``connect_over_cdp`` (asked anew on every call, as the official SDK does), and
``destroy()`` stops it (the ``stopChrome`` tool). Works over HTTP and embedded alike.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from agbox.client.session import Session

BROWSER_DATA_PATH = "/tmp/agb_browser_data"
BROWSER_FINGERPRINT_PERSIST_PATH = "/tmp/agb_browser_fingerprint"


class BrowserError(Exception):
    """A browser operation failed (same name as the official SDK's exception)."""


class BrowserViewport:
    def __init__(self, width: int = 1920, height: int = 1080) -> None:
        self.width = width
        self.height = height

    def to_map(self) -> dict[str, int]:
        return {"width": self.width, "height": self.height}


class BrowserScreen(BrowserViewport):
    pass


class BrowserFingerprint:
    DEVICES = ("desktop", "mobile")
    OPERATING_SYSTEMS = ("windows", "macos", "linux", "android", "ios")

    def __init__(self, devices: list[str] | None = None, operating_systems: list[str] | None = None,
                 locales: list[str] | None = None) -> None:
        for device in devices or []:
            if device not in self.DEVICES:
                raise ValueError(f"device must be one of {list(self.DEVICES)}")
        for system in operating_systems or []:
            if system not in self.OPERATING_SYSTEMS:
                raise ValueError(f"operating_system must be one of {list(self.OPERATING_SYSTEMS)}")
        self.devices = devices
        self.operating_systems = operating_systems
        self.locales = locales

    def to_map(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        if self.devices is not None:
            result["devices"] = self.devices
        if self.operating_systems is not None:
            result["operatingSystems"] = self.operating_systems
        if self.locales is not None:
            result["locales"] = self.locales
        return result


class BrowserProxy:
    """A proxy for the browser; agbox supports ``proxy_type="custom"`` (an address for ``--proxy-server``)."""

    def __init__(self, proxy_type: str, server: str | None = None, username: str | None = None,
                 password: str | None = None, strategy: str | None = None, pollsize: int = 10) -> None:
        if proxy_type not in ("custom", "built-in", "managed"):
            raise ValueError("proxy_type must be custom, built-in or managed")
        if proxy_type == "custom" and not server:
            raise ValueError("server is required for custom proxy type")
        self.type = proxy_type
        self.server = server
        self.username = username
        self.password = password
        self.strategy = strategy
        self.pollsize = pollsize

    def to_map(self) -> dict[str, Any]:
        result: dict[str, Any] = {"type": self.type}
        if self.type == "custom":
            result["server"] = self.server
            if self.username:
                result["username"] = self.username
            if self.password:
                result["password"] = self.password
        elif self.strategy:
            result["strategy"] = self.strategy
            if self.strategy == "polling":
                result["pollsize"] = self.pollsize
        return result


class BrowserOption:
    """Options of ``initialize``; ``to_map()`` gives the same keys as the official SDK."""

    def __init__(self, use_stealth: bool = False, user_agent: str | None = None, viewport: BrowserViewport | None = None,
                 screen: BrowserScreen | None = None, fingerprint: BrowserFingerprint | None = None,
                 fingerprint_format: dict[str, Any] | None = None, fingerprint_persistent: bool = False,
                 solve_captchas: bool = False, proxies: list[BrowserProxy] | None = None,
                 extension_path: str | None = "/tmp/extensions/", cmd_args: list[str] | None = None,
                 default_navigate_url: str | None = None,
                 browser_type: Literal["chrome", "chromium"] | None = None) -> None:
        if proxies is not None and len(proxies) > 1:
            raise ValueError("proxies list length must be limited to 1")
        if extension_path is not None and not extension_path.strip():
            raise ValueError("extension_path cannot be empty")
        if browser_type is not None and browser_type not in ("chrome", "chromium"):
            raise ValueError("browser_type must be 'chrome' or 'chromium'")
        self.use_stealth = use_stealth
        self.user_agent = user_agent
        self.viewport = viewport
        self.screen = screen
        self.fingerprint = fingerprint
        # A FingerprintFormat as plain JSON: {"fingerprint": {"navigator": {"userAgent": ...}, ...}, "headers": {...}}
        self.fingerprint_format = fingerprint_format
        self.fingerprint_persist_path = (f"{BROWSER_FINGERPRINT_PERSIST_PATH}/fingerprint.json"
                                         if fingerprint_persistent else None)
        self.solve_captchas = solve_captchas
        self.proxies = proxies
        self.extension_path = extension_path
        self.cmd_args = cmd_args
        self.default_navigate_url = default_navigate_url
        self.browser_type = browser_type

    def to_map(self) -> dict[str, Any]:
        result: dict[str, Any] = {"useStealth": self.use_stealth}
        if self.user_agent is not None:
            result["userAgent"] = self.user_agent
        if self.viewport is not None:
            result["viewport"] = self.viewport.to_map()
        if self.screen is not None:
            result["screen"] = self.screen.to_map()
        if self.fingerprint is not None:
            result["fingerprint"] = self.fingerprint.to_map()
        if self.fingerprint_format is not None:
            raw = json.dumps(self.fingerprint_format, indent=2).encode()
            result["fingerprintRawData"] = base64.b64encode(raw).decode()
        if self.fingerprint_persist_path is not None:
            result["fingerprintPersistPath"] = self.fingerprint_persist_path
        result["solveCaptchas"] = self.solve_captchas
        if self.proxies is not None:
            result["proxies"] = [proxy.to_map() for proxy in self.proxies]
        if self.extension_path is not None:
            result["extensionPath"] = self.extension_path
        if self.cmd_args is not None:
            result["cmdArgs"] = self.cmd_args
        if self.default_navigate_url is not None:
            result["defaultNavigateUrl"] = self.default_navigate_url
        if self.browser_type is not None:
            result["browserType"] = self.browser_type
        return result


class Browser:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._initialized = False
        self._option: BrowserOption | None = None
        self.endpoint_router_port: int | None = None
        # Why the last initialize() returned False (the official SDK only logs it).
        self.last_error = ""

    def initialize(self, option: BrowserOption) -> bool:
        if self._initialized:
            return True
        query = {"sessionId": self.session.session_id, "persistentPath": BROWSER_DATA_PATH,
                 "browserOption": json.dumps(option.to_map())}
        response = self.session._call("initBrowser", query, {})
        data = response.get("data")
        port = data.get("port") if isinstance(data, dict) else None
        if not response.get("success") or port is None:
            self.last_error = str(response.get("message") or "browser initialization failed")
            return False
        self._initialized = True
        self._option = option
        self.endpoint_router_port = int(port)
        self.last_error = ""
        return True

    async def initialize_async(self, option: BrowserOption) -> bool:
        return await asyncio.to_thread(self.initialize, option)

    def get_endpoint_url(self) -> str:
        if not self._initialized:
            raise BrowserError("Browser is not initialized. Cannot access endpoint URL.")
        response = self.session._call("getCdpLink", {"sessionId": self.session.session_id}, {})
        if not response.get("success"):
            raise BrowserError(f"Failed to get CDP link: {response.get('message') or 'Unknown error'}")
        data = response.get("data")
        url = data.get("url") if isinstance(data, dict) else None
        if not url:
            raise BrowserError("Failed to get CDP link: No URL in response")
        return str(url)

    def get_live_view_url(self) -> str:
        """agbox extension: a URL that shows this browser's screen live in any browser tab (watch only)."""
        response = self.session._call("getBrowserLiveView", {"sessionId": self.session.session_id}, {})
        data = response.get("data")
        if not response.get("success") or not isinstance(data, dict) or not data.get("url"):
            raise BrowserError(f"Failed to get the live view URL: {response.get('message') or 'Unknown error'}")
        return str(data["url"])

    def destroy(self) -> None:
        if not self._initialized:
            raise BrowserError("Browser is not initialized. Cannot destroy browser.")
        self.session.call_mcp_tool("stopChrome", {})

    def is_initialized(self) -> bool:
        return self._initialized

    def get_option(self) -> BrowserOption | None:
        return self._option

    async def screenshot(self, page: Any, full_page: bool = False, **options: Any) -> bytes:
        """A PNG of a Playwright ``page`` (local Playwright, as in the official SDK)."""
        if not self._initialized:
            raise BrowserError("Browser must be initialized before calling screenshot.")
        shot: bytes = await page.screenshot(full_page=full_page, **options)
        return shot

