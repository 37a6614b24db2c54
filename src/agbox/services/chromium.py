"""Chromium's command line from an AGB ``BrowserOption`` (pure functions: no I/O, no sandbox).

``parse_option`` validates the option map the SDK sends (``BrowserOption.to_map()``) into a
``BrowserOption``; ``chromium_command`` turns it into the argv and environment of one Chromium. The
browser image runs it headless inside the session's sandbox (``display=None``); the desktop image
passes its X display and gets a visible window with the same options.

Why ``--no-sandbox``: Chromium's own sandbox needs new user namespaces (Debian ships no setuid
helper), and agbox sandboxes are made with ``--disable-userns`` plus a seccomp filter that refuses
namespace calls, so untrusted session code cannot reach the kernel's user-namespace surface.
Chromium therefore runs as the unprivileged session user inside the session's own sandbox, which
is the isolation boundary between a page and everything outside the session.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import random
from typing import Any

from agbox.errors import InvalidRequestError
from agbox.wirejson import loads

CHROMIUM = "/usr/lib/chromium/chromium"
PROFILE_DIR = "/tmp/agb_browser_data"
FINGERPRINT_DIR = "/tmp/agb_browser_fingerprint"
DEFAULT_EXTENSION_PATH = "/tmp/extensions/"
# The engine version the UA strings claim (the major of Debian's Chromium is what `navigator` shows
# anyway; generated fingerprints keep the reduced "<major>.0.0.0" form Chrome itself sends).
CHROME_MAJOR = 156
MAX_DIMENSION = 10000
# Flags a caller may not override through cmdArgs: agbox owns the DevTools endpoint and the profile.
RESERVED_FLAGS = ("--remote-debugging-", "--user-data-dir", "--remote-allow-origins")
OPERATING_SYSTEMS = ("windows", "macos", "linux", "android", "ios")
DEVICES = ("desktop", "mobile")

_UA_PLATFORM = {
    "windows": ("Windows NT 10.0; Win64; x64", "Win32"),
    "macos": ("Macintosh; Intel Mac OS X 10_15_7", "MacIntel"),
    "linux": ("X11; Linux x86_64", "Linux x86_64"),
    "android": ("Linux; Android 10; K", "Linux armv81"),
    "ios": ("iPhone; CPU iPhone OS 17_5 like Mac OS X", "iPhone"),
}


@dataclasses.dataclass(frozen=True)
class Size:
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class BrowserOption:
    use_stealth: bool = False
    user_agent: str | None = None
    viewport: Size | None = None
    screen: Size | None = None
    fingerprint_os: tuple[str, ...] = ()
    fingerprint_devices: tuple[str, ...] = ()
    fingerprint_locales: tuple[str, ...] = ()
    has_fingerprint_spec: bool = False
    fingerprint_raw: dict[str, Any] | None = None
    fingerprint_persist_path: str | None = None
    proxy_server: str | None = None
    extension_path: str | None = DEFAULT_EXTENSION_PATH
    cmd_args: tuple[str, ...] = ()
    default_navigate_url: str | None = None
    browser_type: str = "chromium"


# ---- parsing ---------------------------------------------------------------------------------


def _size(value: Any, key: str) -> Size | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"browserOption.{key} must be an object with width and height")
    dims = []
    for name in ("width", "height"):
        raw = value.get(name)
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_DIMENSION:
            raise InvalidRequestError(f"browserOption.{key}.{name} must be an integer between 1 and {MAX_DIMENSION}")
        dims.append(raw)
    return Size(dims[0], dims[1])


def _str_list(value: Any, key: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InvalidRequestError(f"browserOption.{key} must be a list of strings")
    if allowed is not None:
        for item in value:
            if item not in allowed:
                raise InvalidRequestError(f"browserOption.{key}: {item!r} is not one of {', '.join(allowed)}")
    return tuple(value)


def _optional_str(option: dict[str, Any], key: str) -> str | None:
    value = option.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(f"browserOption.{key} must be a string")
    return value


def _proxy(value: Any) -> str | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        raise InvalidRequestError("browserOption.proxies must be a list of at most one proxy object")
    proxy = value[0]
    kind = proxy.get("type")
    if kind != "custom":
        raise InvalidRequestError(f"browserOption.proxies: proxy type {kind!r} is not available on agbox "
                                  "(it has no managed proxy pool); use type 'custom' with a server")
    server = proxy.get("server")
    if not isinstance(server, str) or not server.strip() or any(c.isspace() or c in ",;" for c in server.strip()):
        raise InvalidRequestError("browserOption.proxies[0].server must be a proxy address such as "
                                  "'http://10.0.0.1:3128' or 'socks5://host:1080'")
    if proxy.get("username") or proxy.get("password"):
        raise InvalidRequestError("browserOption.proxies[0]: proxy username/password are not supported "
                                  "(Chromium takes no proxy credentials on its command line); use a proxy "
                                  "that admits the session without authentication")
    return server.strip()


def _raw_fingerprint(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError("browserOption.fingerprintRawData must be a base64 string")
    try:
        decoded = loads(base64.b64decode(value.encode("ascii"), validate=True).decode("utf-8"),
                        "browserOption.fingerprintRawData")
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise InvalidRequestError(f"browserOption.fingerprintRawData is not base64 of a JSON object: {exc}") from None
    return _check_fingerprint(decoded, "browserOption.fingerprintRawData")


def _check_fingerprint(decoded: Any, where: str) -> dict[str, Any]:
    if not isinstance(decoded, dict) or not isinstance(decoded.get("fingerprint"), dict):
        raise InvalidRequestError(f"{where} must be a JSON object with a 'fingerprint' object")
    navigator = decoded["fingerprint"].get("navigator")
    if not isinstance(navigator, dict) or not isinstance(navigator.get("userAgent"), str) \
            or not navigator["userAgent"].strip():
        raise InvalidRequestError(f"{where}: fingerprint.navigator.userAgent must be a non-empty string")
    return decoded


def parse_option(raw: Any) -> BrowserOption:
    """The ``browserOption`` query value (a JSON string) or an already-decoded map."""
    if raw is None or raw == "":
        option: Any = {}
    elif isinstance(raw, str):
        option = loads(raw, "browserOption")
    else:
        option = raw
    if not isinstance(option, dict):
        raise InvalidRequestError("browserOption must be a JSON object")
    stealth = option.get("useStealth", False)
    if not isinstance(stealth, bool):
        raise InvalidRequestError("browserOption.useStealth must be a boolean")
    spec = option.get("fingerprint")
    if spec is not None and not isinstance(spec, dict):
        raise InvalidRequestError("browserOption.fingerprint must be an object (devices, operatingSystems, locales)")
    spec = spec or {}
    cmd_args = _str_list(option.get("cmdArgs"), "cmdArgs")
    browser_type = option.get("browserType") or "chromium"
    if browser_type not in ("chrome", "chromium"):
        raise InvalidRequestError("browserOption.browserType must be 'chrome' or 'chromium'")
    persist = _optional_str(option, "fingerprintPersistPath")
    if persist is not None and not persist.startswith("/"):
        raise InvalidRequestError("browserOption.fingerprintPersistPath must be an absolute path")
    extension_path = _optional_str(option, "extensionPath")
    if extension_path is not None and not extension_path.startswith("/"):
        raise InvalidRequestError("browserOption.extensionPath must be an absolute path")
    return BrowserOption(
        use_stealth=stealth,
        user_agent=_optional_str(option, "userAgent") or None,
        viewport=_size(option.get("viewport"), "viewport"),
        screen=_size(option.get("screen"), "screen"),
        fingerprint_os=_str_list(spec.get("operatingSystems"), "fingerprint.operatingSystems", OPERATING_SYSTEMS),
        fingerprint_devices=_str_list(spec.get("devices"), "fingerprint.devices", DEVICES),
        fingerprint_locales=_str_list(spec.get("locales"), "fingerprint.locales"),
        has_fingerprint_spec=bool(option.get("fingerprint") is not None),
        fingerprint_raw=_raw_fingerprint(option.get("fingerprintRawData")),
        fingerprint_persist_path=persist,
        proxy_server=_proxy(option.get("proxies")),
        extension_path=extension_path,
        cmd_args=cmd_args,
        default_navigate_url=_optional_str(option, "defaultNavigateUrl") or None,
        browser_type=browser_type,
    )


def parse_persisted_fingerprint(text: str, path: str) -> dict[str, Any]:
    try:
        decoded = json.loads(text)
    except ValueError as exc:
        raise InvalidRequestError(f"the persisted fingerprint {path} is not valid JSON: {exc}") from None
    return _check_fingerprint(decoded, f"the persisted fingerprint {path}")


# ---- fingerprints ------------------------------------------------------------------------------


def generate_fingerprint(option: BrowserOption, rng: random.Random | None = None) -> dict[str, Any]:
    """A fingerprint in the SDK's ``FingerprintFormat`` shape for the requested OS, device and locale."""
    rng = rng or random.Random()
    devices = option.fingerprint_devices or ("desktop",)
    device = rng.choice(devices)
    systems = option.fingerprint_os or (("android", "ios") if device == "mobile" else ("windows", "macos", "linux"))
    system = rng.choice(systems)
    ua_part, platform = _UA_PLATFORM[system]
    mobile = " Mobile" if system in ("android", "ios") else ""
    user_agent = (f"Mozilla/5.0 ({ua_part}) AppleWebKit/537.36 (KHTML, like Gecko) "
                  f"Chrome/{CHROME_MAJOR}.0.0.0{mobile} Safari/537.36")
    locale = option.fingerprint_locales[0] if option.fingerprint_locales else "en-US"
    languages = [locale, *([locale.split("-")[0]] if "-" in locale else [])]
    width, height = rng.choice([(1920, 1080), (1536, 864), (1440, 900), (1366, 768)]) if not mobile else (412, 915)
    return {
        "fingerprint": {
            "screen": {"width": width, "height": height, "availWidth": width, "availHeight": height - 40,
                       "colorDepth": 24, "pixelDepth": 24, "devicePixelRatio": 1.0},
            "navigator": {"userAgent": user_agent, "platform": platform, "language": locale, "languages": languages,
                          "hardwareConcurrency": rng.choice([4, 8, 12]), "deviceMemory": 8, "maxTouchPoints": 5 if mobile else 0},
        },
        "headers": {"user-agent": user_agent, "accept-language": ",".join(languages)},
    }


def fingerprint_user_agent(fingerprint: dict[str, Any]) -> str:
    return str(fingerprint["fingerprint"]["navigator"]["userAgent"])


def fingerprint_locale(fingerprint: dict[str, Any]) -> str | None:
    navigator = fingerprint["fingerprint"]["navigator"]
    language = navigator.get("language")
    if isinstance(language, str) and language:
        return language
    languages = navigator.get("languages")
    if isinstance(languages, list) and languages and isinstance(languages[0], str):
        return languages[0]
    return None


def fingerprint_screen(fingerprint: dict[str, Any]) -> Size | None:
    screen = fingerprint["fingerprint"].get("screen")
    if isinstance(screen, dict):
        width, height = screen.get("width"), screen.get("height")
        if isinstance(width, int) and isinstance(height, int) and 0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION:
            return Size(width, height)
    return None


def headless_user_agent() -> str:
    """Chromium's own UA without the 'HeadlessChrome' token that gives headless browsing away."""
    return f"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{CHROME_MAJOR}.0.0.0 Safari/537.36"


# ---- the command line ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChromiumCommand:
    argv: list[str]
    env: dict[str, str]


def chromium_command(option: BrowserOption, *, profile_dir: str = PROFILE_DIR, display: str | None = None,
                     extensions: list[str] | tuple[str, ...] = (), fingerprint: dict[str, Any] | None = None,
                     debugging_port: int = 0, binary: str = CHROMIUM) -> ChromiumCommand:
    """argv and extra environment for one Chromium.

    ``display=None`` runs headless; a display (``":1"``) gives a visible window there. DevTools listens
    on ``127.0.0.1:<debugging_port>`` (0 = a free port, printed by Chromium as "DevTools listening on").
    ``extensions`` are unpacked extension directories; ``fingerprint`` (FingerprintFormat JSON) sets the
    user agent, language and screen.
    """
    user_agent = option.user_agent
    locale = option.fingerprint_locales[0] if option.fingerprint_locales else None
    screen = option.screen
    if fingerprint is not None:
        user_agent = fingerprint_user_agent(fingerprint)
        locale = fingerprint_locale(fingerprint) or locale
        screen = screen or fingerprint_screen(fingerprint)
    if user_agent is None and option.use_stealth and display is None:
        user_agent = headless_user_agent()
    viewport = option.viewport or screen or Size(1920, 1080)
    argv = [
        binary,
        f"--user-data-dir={profile_dir}",
        f"--remote-debugging-port={debugging_port}", "--remote-debugging-address=127.0.0.1",
        "--no-sandbox", "--no-first-run", "--no-default-browser-check", "--password-store=basic",
        "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-breakpad", "--disable-crash-reporter", "--disable-gpu",
        "--disable-features=Translate,MediaRouter,OptimizationHints", "--metrics-recording-only",
    ]
    env: dict[str, str] = {}
    if display is None or option.viewport is not None:
        argv.append(f"--window-size={viewport.width},{viewport.height}")
    if display is None:
        argv.append("--headless")
        argv.append(f"--screen-info={{{(screen or viewport).width}x{(screen or viewport).height}}}")
    else:
        env["DISPLAY"] = display
        argv.append("--window-position=0,0")
        if option.viewport is None:
            argv.append("--start-maximized")
    if option.use_stealth:
        argv.append("--disable-blink-features=AutomationControlled")
    if user_agent:
        argv.append(f"--user-agent={user_agent}")
    if locale:
        accept = f"{locale},{locale.split('-')[0]}" if "-" in locale else locale
        argv += [f"--lang={locale}", f"--accept-lang={accept}"]
        env["LANGUAGE"] = locale.replace("-", "_")
    if option.proxy_server:
        argv.append(f"--proxy-server={option.proxy_server}")
    if extensions:
        joined = ",".join(extensions)
        argv += [f"--load-extension={joined}", f"--disable-extensions-except={joined}"]
    argv += [arg for arg in option.cmd_args if not arg.startswith(RESERVED_FLAGS)]
    argv.append(option.default_navigate_url or "about:blank")
    return ChromiumCommand(argv, env)
