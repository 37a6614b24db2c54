"""The desktop of a computer-use sandbox: Xvfb + openbox, and the ``desktop_*`` ops on it.

The X server runs inside the sandbox, listening only on its unix socket ``/tmp/.X11-unix/X0`` (and
the abstract socket of the sandbox's own network namespace): no TCP, and no other sandbox can reach
either. Reads (windows, pointer, screen) go through libX11 directly (``x11.py``); input and window
manager requests use Debian's xdotool and wmctrl, which speak XTEST and EWMH correctly.
"""

from __future__ import annotations

import base64
import os
import shlex
import signal
import subprocess
import threading
import time
import zlib
from typing import Any

import x11
from common import Ctx, OpError, require_str

DISPLAY = ":0"
X_SOCKET_DIR = "/tmp/.X11-unix"
LOG_DIR = "/tmp/.agbox-desktop"
START_TIMEOUT_S = 15.0
# How long a window manager request may take to show in the window's state before we answer anyway.
SETTLE_TIMEOUT_S = 2.0
APP_WINDOW_WAIT_S = 3.0
BACKGROUND_RGB = 0x2E3440
X_RESOURCES = "*waitforwm:\tfalse\n"
DESKTOP_DIRS = ("/usr/share/applications", "/usr/local/share/applications")
# Field codes of the Exec key (Desktop Entry spec): dropped, since start_app passes no files or URLs.
FIELD_CODES = {"%f", "%F", "%u", "%U", "%d", "%D", "%n", "%N", "%i", "%c", "%k", "%v", "%m"}
# Categories that mark settings panels and system tools rather than applications a user works in.
SYSTEM_CATEGORIES = {"Settings", "DesktopSettings", "HardwareSettings", "PackageManager", "Monitor", "Security"}
HIDDEN_WINDOW_TYPES = {"_NET_WM_WINDOW_TYPE_DESKTOP", "_NET_WM_WINDOW_TYPE_DOCK"}

KEY_NAMES = {
    "ctrl": "Control_L", "control": "Control_L", "lctrl": "Control_L", "rctrl": "Control_R",
    "shift": "Shift_L", "lshift": "Shift_L", "rshift": "Shift_R",
    "alt": "Alt_L", "lalt": "Alt_L", "ralt": "Alt_R", "option": "Alt_L",
    "win": "Super_L", "super": "Super_L", "meta": "Super_L", "cmd": "Super_L", "command": "Super_L",
    "windows": "Super_L",
    "enter": "Return", "return": "Return", "esc": "Escape", "escape": "Escape",
    "backspace": "BackSpace", "del": "Delete", "delete": "Delete", "tab": "Tab", "space": "space",
    "insert": "Insert", "ins": "Insert", "home": "Home", "end": "End",
    "pageup": "Prior", "page_up": "Prior", "pgup": "Prior", "pagedown": "Next", "page_down": "Next", "pgdn": "Next",
    "up": "Up", "down": "Down", "left": "Left", "right": "Right",
    "arrowup": "Up", "arrowdown": "Down", "arrowleft": "Left", "arrowright": "Right",
    "capslock": "Caps_Lock", "numlock": "Num_Lock", "scrolllock": "Scroll_Lock",
    "printscreen": "Print", "print": "Print", "pause": "Pause", "menu": "Menu",
    "minus": "minus", "plus": "plus", "equal": "equal", "comma": "comma", "period": "period",
    "slash": "slash", "backslash": "backslash", "semicolon": "semicolon", "apostrophe": "apostrophe",
}
KEY_NAMES.update({f"f{n}": f"F{n}" for n in range(1, 25)})
BUTTONS = {"left": "1", "middle": "2", "right": "3"}
SCROLL_BUTTONS = {"up": "4", "down": "5", "left": "6", "right": "7"}


class _Desktop:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.error: str | None = None
        self.size = ""
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # Apps started through start_app, by pid (reaped by a waiter thread each).
        self.apps: dict[int, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()
        self.focus_mode = False


DESKTOP = _Desktop()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["DISPLAY"] = DISPLAY
    return env


def _log(name: str) -> int:
    os.makedirs(LOG_DIR, exist_ok=True)
    return os.open(os.path.join(LOG_DIR, f"{name}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def _spawn(argv: list[str], name: str, cwd: str | None = None) -> subprocess.Popen[bytes]:
    log_fd = _log(name)
    try:
        return subprocess.Popen(argv, env=_env(), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                start_new_session=True)
    finally:
        os.close(log_fd)


def _wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)
        interval_s = min(interval_s * 1.5, 0.1)


def parse_size(size: str) -> tuple[int, int, int]:
    parts = size.lower().split("x")
    try:
        width, height = int(parts[0]), int(parts[1])
        depth = int(parts[2]) if len(parts) > 2 else 24
    except (ValueError, IndexError):
        raise OpError("invalid", f"desktop size must look like 1920x1080x24, got {size!r}") from None
    if not (64 <= width <= 7680 and 64 <= height <= 4320) or depth not in (16, 24):
        raise OpError("invalid", f"desktop size out of range: {size!r}")
    return width, height, depth


def start_desktop(size: str) -> None:
    """Start the X server and the window manager; sets DESKTOP.ready (DESKTOP.error on failure)."""
    try:
        width, height, depth = parse_size(size)
        DESKTOP.size = f"{width}x{height}x{depth}"
        os.environ["DISPLAY"] = DISPLAY  # shell commands of the session see the desktop too
        os.makedirs(X_SOCKET_DIR, mode=0o1777, exist_ok=True)
        os.chmod(X_SOCKET_DIR, 0o1777)
        ready_r, ready_w = os.pipe()
        log_fd = _log("Xvfb")
        try:
            # -displayfd: Xvfb writes the display number once it accepts connections (no polling).
            DESKTOP.processes["Xvfb"] = subprocess.Popen(
                ["Xvfb", DISPLAY, "-screen", "0", DESKTOP.size, "-nolisten", "tcp", "-dpi", "96", "-noreset",
                 "-displayfd", str(ready_w)],
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, pass_fds=(ready_w,), start_new_session=True)
        finally:
            os.close(ready_w)
            os.close(log_fd)
        with os.fdopen(ready_r, "rb") as ready:
            if not ready.readline().strip():
                raise OpError("desktop", f"Xvfb did not start: {_tail('Xvfb')}")
        with x11.Display(DISPLAY) as display:
            display.set_background(BACKGROUND_RGB)
            # Xt apps (xterm) otherwise wait 5 s for the window manager to confirm their first resize.
            display.set_root_string("RESOURCE_MANAGER", X_RESOURCES)
        DESKTOP.processes["openbox"] = _spawn(["openbox", "--sm-disable"], "openbox")
        # openbox announces itself (_NET_SUPPORTING_WM_CHECK) first thing; _NET_CLIENT_LIST comes once it has
        # loaded its theme and taken over the screen, right before its event loop.
        def wm_ready() -> bool:
            with x11.Display(DISPLAY) as display:
                return display.property(display.root, "_NET_CLIENT_LIST") is not None

        if not _wait_until(wm_ready, START_TIMEOUT_S):
            raise OpError("desktop", f"the window manager did not start: {_tail('openbox')}")
    except (OpError, OSError, x11.XError) as exc:
        DESKTOP.error = getattr(exc, "message", None) or str(exc)
    finally:
        DESKTOP.ready.set()


def _tail(name: str) -> str:
    try:
        with open(os.path.join(LOG_DIR, f"{name}.log"), "rb") as f:
            return f.read()[-400:].decode("utf-8", "replace").strip() or "no output"
    except OSError:
        return "no output"


def _need_desktop() -> None:
    if not DESKTOP.ready.wait(START_TIMEOUT_S):
        raise OpError("desktop", "the desktop is still starting")
    if DESKTOP.error is not None:
        raise OpError("desktop", f"the desktop failed to start: {DESKTOP.error}")
    if not DESKTOP.size:
        raise OpError("desktop", "this session has no desktop")


def _display() -> x11.Display:
    _need_desktop()
    try:
        return x11.Display(DISPLAY)
    except x11.XError as exc:
        raise OpError("desktop", f"the desktop is not running: {exc}") from None


def _run(argv: list[str], what: str, timeout_s: float = 30.0) -> str:
    _need_desktop()
    try:
        done = subprocess.run(argv, env=_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise OpError("desktop", f"{what}: {argv[0]} did not finish in {timeout_s:.0f} s") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip() or f"exit code {done.returncode}"
        raise OpError("desktop", f"{what}: {detail}")
    return done.stdout.decode("utf-8", "replace")


def _int(args: dict[str, Any], key: str, minimum: int | None = None) -> int:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OpError("invalid", f"'{key}' must be an integer")
    if minimum is not None and value < minimum:
        raise OpError("invalid", f"'{key}' must be >= {minimum}")
    return value


# ---- mouse -------------------------------------------------------------------------------------------
# No "mousemove --sync": it waits for a motion event, which never comes when the pointer is already there
# (xdotool then hangs for seconds). The X server handles one client's requests in order anyway.

def _point(args: dict[str, Any], xkey: str = "x", ykey: str = "y") -> tuple[str, str]:
    x, y = _int(args, xkey), _int(args, ykey)
    with _display() as display:
        width, height = display.screen_size()
    if not (0 <= x < width and 0 <= y < height):
        raise OpError("invalid", f"point ({x}, {y}) is outside the {width}x{height} screen")
    return str(x), str(y)


def click(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    x, y = _point(args)
    button = args.get("button", "left")
    if button == "double_left":
        _run(["xdotool", "mousemove", x, y, "click", "--repeat", "2", "--delay", "80", "1"], "click")
    elif button in BUTTONS:
        _run(["xdotool", "mousemove", x, y, "click", BUTTONS[button]], "click")
    else:
        raise OpError("invalid", f"button must be one of left, right, middle, double_left; got {button!r}")
    return {"ok": True}


def move(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    x, y = _point(args)
    _run(["xdotool", "mousemove", x, y], "move mouse")
    return {"ok": True}


def drag(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    x1, y1 = _point(args, "from_x", "from_y")
    x2, y2 = _point(args, "to_x", "to_y")
    button = BUTTONS.get(args.get("button", "left"))
    if button is None:
        raise OpError("invalid", f"button must be one of left, right, middle; got {args.get('button')!r}")
    # A stop half-way gives toolkits the motion they need to recognise a drag.
    mid_x, mid_y = str((int(x1) + int(x2)) // 2), str((int(y1) + int(y2)) // 2)
    _run(["xdotool", "mousemove", x1, y1, "mousedown", button, "sleep", "0.05",
          "mousemove", mid_x, mid_y, "sleep", "0.05", "mousemove", x2, y2, "sleep", "0.05",
          "mouseup", button], "drag mouse")
    return {"ok": True}


def scroll(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    x, y = _point(args)
    direction = args.get("direction", "up")
    button = SCROLL_BUTTONS.get(direction)
    if button is None:
        raise OpError("invalid", f"direction must be one of up, down, left, right; got {direction!r}")
    amount = _int(args, "amount", minimum=1) if "amount" in args else 1
    _run(["xdotool", "mousemove", x, y, "click", "--repeat", str(min(amount, 200)), "--delay", "10",
          button], "scroll")
    return {"ok": True}


def cursor(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    with _display() as display:
        x, y = display.pointer()
    return {"x": x, "y": y}


# ---- keyboard ----------------------------------------------------------------------------------------

def type_text(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    text = args.get("text")
    if not isinstance(text, str):
        raise OpError("invalid", "'text' must be a string")
    if text:
        # Characters beyond the US keyboard get keycodes of their own first (see x11.map_keysyms).
        extra = [keysym_of(ch) for ch in text if ord(ch) > 0x7E]
        if extra:
            with _display() as display:
                display.map_keysyms(extra)
        _run(["xdotool", "type", "--clearmodifiers", "--delay", "8", "--", text], "type text",
             timeout_s=30 + len(text) * 0.05)
    return {"ok": True}


def keysym_of(char: str) -> int:
    """The X keysym of a character: Latin-1 keysyms equal the code point, others are 0x01000000 + it."""
    code = ord(char)
    return code if 0xA0 <= code <= 0xFF else 0x01000000 | code


def keysym(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise OpError("invalid", "every key must be a non-empty string")
    if len(name) == 1:
        return name
    mapped = KEY_NAMES.get(name.lower().replace(" ", ""))
    if mapped is not None:
        return mapped
    return name  # an X keysym name as such (e.g. "KP_Enter", "XF86AudioMute")


def _keys(args: dict[str, Any]) -> list[str]:
    keys = args.get("keys")
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not keys:
        raise OpError("invalid", "'keys' must be a non-empty list of key names")
    return [keysym(k) for k in keys]


def press(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    keys = _keys(args)
    argv = ["xdotool"]
    for key in keys:
        argv += ["keydown", key]
    if not args.get("hold"):
        for key in reversed(keys):
            argv += ["keyup", key]
    _run(argv, "press keys")
    return {"ok": True}


def release(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    argv = ["xdotool"]
    for key in reversed(_keys(args)):
        argv += ["keyup", key]
    _run(argv, "release keys")
    return {"ok": True}


# ---- windows -----------------------------------------------------------------------------------------

def _pname(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return " ".join(part.decode("utf-8", "replace") for part in f.read().split(b"\0") if part)
    except OSError:
        return ""


def _window(display: x11.Display, window: int) -> dict[str, Any] | None:
    attrs = display.attributes(window)
    if attrs is None:
        return None
    types = {display.atom_name(a) for a in display.cardinals(window, "_NET_WM_WINDOW_TYPE")}
    if types & HIDDEN_WINDOW_TYPES:
        return None
    states = [display.atom_name(a) for a in display.cardinals(window, "_NET_WM_STATE")]
    x, y = display.position_on_root(window)
    pids = display.cardinals(window, "_NET_WM_PID")
    pid = int(pids[0]) if pids else 0
    if not pid:  # Tk and plain Xlib apps do not set _NET_WM_PID; the server knows its client's pid
        try:
            pid = display.client_pid(window)
        except x11.XError:
            pid = 0
    title = display.text(window, "_NET_WM_NAME") or display.text(window, "WM_NAME")
    return {
        "window_id": window, "title": title,
        "absolute_upper_left_x": x, "absolute_upper_left_y": y, "width": attrs.width, "height": attrs.height,
        "pid": pid, "pname": _pname(pid) if pid else "", "child_windows": [],
        # Extra keys (ignored by the SDK's parser): what the window manager says about the window.
        "visible": attrs.map_state == x11.IS_VIEWABLE and "_NET_WM_STATE_HIDDEN" not in states,
        "states": [s.removeprefix("_NET_WM_STATE_").lower() for s in states],
    }


def windows() -> list[dict[str, Any]]:
    with _display() as display:
        found = []
        for window in display.cardinals(display.root, "_NET_CLIENT_LIST"):
            info = _window(display, int(window))
            if info is not None:
                found.append(info)
        return found


def list_windows(args: dict[str, Any], ctx: Ctx) -> list[dict[str, Any]]:
    return windows()


def active_window(args: dict[str, Any], ctx: Ctx) -> dict[str, Any] | None:
    with _display() as display:
        active = display.cardinals(display.root, "_NET_ACTIVE_WINDOW")
        if not active or not active[0]:
            return None
        return _window(display, int(active[0]))


def window_id(args: dict[str, Any]) -> int:
    raw = args.get("window_id")
    if isinstance(raw, bool):
        raw = None
    value: int | None = None
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip().lower()
        try:
            value = int(text, 16) if text.startswith("0x") else int(text)
        except ValueError:
            value = None
    if value is None or value <= 0:
        raise OpError("invalid", f"'window_id' must be a window id from list_root_windows, got {raw!r}")
    return value


def _known_window(args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    wid = window_id(args)
    with _display() as display:
        if wid not in {int(w) for w in display.cardinals(display.root, "_NET_CLIENT_LIST")}:
            raise OpError("not_found", f"no window {wid} on the desktop")
        info = _window(display, wid)
    if info is None:
        raise OpError("not_found", f"no window {wid} on the desktop")
    return wid, info


def _settle(wid: int, check: Any) -> None:
    """Wait (bounded) until the window manager has applied a request, so the next read sees it."""
    def applied() -> bool:
        with _display() as display:
            info = _window(display, wid)
            return info is not None and bool(check(info))

    _wait_until(applied, SETTLE_TIMEOUT_S)


def _wmctrl_state(wid: int, action: str, states: str) -> None:
    _run(["wmctrl", "-i", "-r", hex(wid), "-b", f"{action},{states}"], "change window state")


def activate(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    wid, _ = _known_window(args)
    _run(["wmctrl", "-i", "-a", hex(wid)], "activate window")

    def is_active() -> bool:
        with _display() as display:
            return display.cardinals(display.root, "_NET_ACTIVE_WINDOW")[:1] == [wid]

    _wait_until(is_active, SETTLE_TIMEOUT_S)
    return {"ok": True}


def close_window(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    wid, _ = _known_window(args)
    _run(["wmctrl", "-i", "-c", hex(wid)], "close window")

    def gone() -> bool:
        with _display() as display:
            return wid not in {int(w) for w in display.cardinals(display.root, "_NET_CLIENT_LIST")}

    _wait_until(gone, SETTLE_TIMEOUT_S)
    return {"ok": True}


def maximize(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    wid, _ = _known_window(args)
    _wmctrl_state(wid, "add", "maximized_vert,maximized_horz")
    _settle(wid, lambda w: "maximized_horz" in w["states"] and "maximized_vert" in w["states"])
    return {"ok": True}


def minimize(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    wid, _ = _known_window(args)
    _run(["xdotool", "windowminimize", str(wid)], "minimize window")
    _settle(wid, lambda w: not w["visible"])
    return {"ok": True}


def restore(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    wid, info = _known_window(args)
    if "fullscreen" in info["states"]:
        _wmctrl_state(wid, "remove", "fullscreen")
    if "maximized_horz" in info["states"] or "maximized_vert" in info["states"]:
        _wmctrl_state(wid, "remove", "maximized_vert,maximized_horz")
    if not info["visible"]:
        _run(["wmctrl", "-i", "-a", hex(wid)], "restore window")
    _settle(wid, lambda w: w["visible"] and not {"fullscreen", "maximized_horz", "maximized_vert"} & set(w["states"]))
    return {"ok": True}


def fullscreen(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    wid, _ = _known_window(args)
    _wmctrl_state(wid, "add", "fullscreen")
    _settle(wid, lambda w: "fullscreen" in w["states"])
    return {"ok": True}


def resize(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    wid, info = _known_window(args)
    width, height = _int(args, "width", minimum=1), _int(args, "height", minimum=1)
    if {"fullscreen", "maximized_horz", "maximized_vert"} & set(info["states"]):
        _wmctrl_state(wid, "remove", "fullscreen,maximized_vert,maximized_horz")
    _run(["xdotool", "windowsize", str(wid), str(width), str(height)], "resize window")
    _settle(wid, lambda w: (w["width"], w["height"]) != (info["width"], info["height"]))
    return {"ok": True}


def focus_mode(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    on = args.get("on")
    if not isinstance(on, bool):
        raise OpError("invalid", "'on' must be true or false")
    DESKTOP.focus_mode = on
    return {"ok": True, "on": on}


# ---- apps ------------------------------------------------------------------------------------------

def _desktop_entry(path: str) -> dict[str, str]:
    """The [Desktop Entry] group of a .desktop file (unlocalised keys)."""
    entry: dict[str, str] = {}
    in_group = False
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if line.startswith("["):
                    in_group = line == "[Desktop Entry]"
                elif in_group and "=" in line and not line.startswith("#"):
                    key, value = line.split("=", 1)
                    entry.setdefault(key.strip(), value.strip())
    except OSError:
        return {}
    return entry


def exec_argv(command: str) -> list[str]:
    """The argv of an Exec line or a start command, without field codes."""
    try:
        parts = shlex.split(command)
    except ValueError as exc:
        raise OpError("invalid", f"cannot parse command {command!r}: {exc}") from None
    return [p for p in parts if p not in FIELD_CODES]


def _is_system_app(entry: dict[str, str]) -> bool:
    if entry.get("NoDisplay", "").lower() == "true" or entry.get("Hidden", "").lower() == "true":
        return True
    if entry.get("Terminal", "").lower() == "true":  # console programs (vim, htop) have no window
        return True
    if entry.get("OnlyShowIn"):  # meant for one particular desktop environment's own panels
        return True
    categories = {c for c in entry.get("Categories", "").split(";") if c}
    return bool(categories & SYSTEM_CATEGORIES)


def installed_apps(args: dict[str, Any], ctx: Ctx) -> list[dict[str, Any]]:
    start_menu = args.get("start_menu", True) is not False
    on_desktop = bool(args.get("desktop", False))
    ignore_system = args.get("ignore_system_apps", args.get("ignore_system_app", True)) is not False
    dirs: list[str] = []
    if start_menu:
        dirs += [*DESKTOP_DIRS, os.path.expanduser("~/.local/share/applications")]
    if on_desktop:
        dirs.append(os.path.expanduser("~/Desktop"))
    apps: list[dict[str, Any]] = []
    seen: set[str] = set()
    for directory in dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".desktop") or name in seen:
                continue
            entry = _desktop_entry(os.path.join(directory, name))
            if entry.get("Type", "Application") != "Application" or not entry.get("Exec") or not entry.get("Name"):
                continue
            if ignore_system and _is_system_app(entry):
                continue
            seen.add(name)
            argv = exec_argv(entry["Exec"])
            apps.append({"name": entry["Name"], "start_cmd": shlex.join(argv), "stop_cmd": None,
                         "work_directory": entry.get("Path") or None})
    return apps


def _process(pid: int) -> dict[str, Any]:
    return {"pname": _pname(pid), "pid": pid, "cmdline": _cmdline(pid)}


def _reap(proc: subprocess.Popen[bytes]) -> None:
    proc.wait()
    with DESKTOP.lock:
        DESKTOP.apps.pop(proc.pid, None)


def start_app(args: dict[str, Any], ctx: Ctx) -> list[dict[str, Any]]:
    command = require_str(args, "start_cmd")
    cwd = args.get("work_directory") or None
    if cwd is not None and (not isinstance(cwd, str) or not os.path.isdir(cwd)):
        raise OpError("invalid", f"work_directory does not exist or is not a directory: {cwd}")
    _need_desktop()
    argv = exec_argv(command)
    if not argv:
        raise OpError("invalid", "start_cmd is empty")
    # The program itself is exec'd (no shell in between), so its pid is the one that owns its window.
    # Shell syntax (pipes, redirections, variables) still works, through a shell that execs the command.
    if any(ch in command for ch in "|&;<>$`()") or "=" in argv[0]:
        argv = ["/bin/sh", "-c", "exec " + command]
    try:
        proc = _spawn(argv, f"app-{os.path.basename(argv[0])}", cwd=cwd)
    except FileNotFoundError:
        raise OpError("not_found", f"no such program: {argv[0]}") from None
    except PermissionError:
        raise OpError("invalid", f"not executable: {argv[0]}") from None
    with DESKTOP.lock:
        DESKTOP.apps[proc.pid] = proc
    threading.Thread(target=_reap, args=(proc,), daemon=True).start()

    def has_window_or_ended() -> bool:
        return proc.poll() is not None or any(w["pid"] == proc.pid for w in windows())

    # Answer once the app shows its window, so the caller's next call finds it.
    _wait_until(has_window_or_ended, APP_WINDOW_WAIT_S, interval_s=0.02)
    if proc.poll() is not None and proc.returncode != 0:
        raise OpError("app", f"{argv[0]} exited with code {proc.returncode}: {_tail('app-' + os.path.basename(argv[0]))}")
    return [_process(proc.pid)]


def visible_apps(args: dict[str, Any], ctx: Ctx) -> list[dict[str, Any]]:
    pids: list[int] = []
    for window in windows():
        if window["visible"] and window["pid"] and window["pid"] not in pids:
            pids.append(window["pid"])
    return [_process(pid) for pid in pids]


def _protected_pids() -> set[int]:
    return {os.getpid(), os.getppid(), 1} | {p.pid for p in DESKTOP.processes.values()}


def _stop(pid: int) -> None:
    """SIGTERM (to the app's process group if it leads one), SIGKILL if it is still there after 3 s."""
    def send(sig: int) -> None:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def ended() -> bool:
        proc = DESKTOP.apps.get(pid)
        if proc is not None:
            return proc.poll() is not None
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except (OSError, IndexError):
            return True

    send(signal.SIGTERM)
    if not _wait_until(ended, 3.0):
        send(signal.SIGKILL)
        _wait_until(ended, 3.0)


def stop_by_pid(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    pid = _int(args, "pid", minimum=1)
    if pid in _protected_pids():
        raise OpError("invalid", f"process {pid} is part of the desktop and cannot be stopped")
    if not os.path.exists(f"/proc/{pid}"):
        raise OpError("not_found", f"no process {pid}")
    _stop(pid)
    return {"ok": True}


def stop_by_pname(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    pname = require_str(args, "pname")
    protected = _protected_pids()
    targets = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in protected:
            pid = int(entry)
            argv0 = _cmdline(pid).split(" ", 1)[0]
            if _pname(pid) == pname or (argv0 and os.path.basename(argv0) == pname):
                targets.append(pid)
    if not targets:
        raise OpError("not_found", f"no process named {pname!r}")
    for pid in targets:
        _stop(pid)
    return {"ok": True, "stopped": targets}


def stop_by_cmd(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    command = require_str(args, "stop_cmd")
    done = subprocess.run(["/bin/sh", "-c", command], env=_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=60)
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip()
        raise OpError("app", f"stop command exited with code {done.returncode}: {detail}")
    return {"ok": True}


# ---- screen ------------------------------------------------------------------------------------------

def screen_size(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    with _display() as display:
        width, height = display.screen_size()
    return {"width": width, "height": height, "dpiScalingFactor": 1.0}


def _rgb(width: int, height: int, stride: int, bgrx: bytes) -> bytes:
    """Tightly packed RGB rows from 32-bit BGRX rows (slice copies run in C)."""
    if stride != width * 4:
        bgrx = b"".join(bgrx[row * stride: row * stride + width * 4] for row in range(height))
    rgb = bytearray(width * height * 3)
    rgb[0::3] = bgrx[2::4]
    rgb[1::3] = bgrx[1::4]
    rgb[2::3] = bgrx[0::4]
    return bytes(rgb)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


ADLER_BASE = 65521


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """Adler-32 of A+B from those of A and B (zlib's adler32_combine; Python's zlib lacks it)."""
    s1 = ((first & 0xFFFF) + (second & 0xFFFF) - 1) % ADLER_BASE
    s2 = ((first >> 16) + (second >> 16) + second_length * ((first & 0xFFFF) - 1)) % ADLER_BASE
    return (s2 << 16) | s1


class PngEncoder:
    """PNG of a screen capture, compressed in horizontal bands that are kept between captures.

    Each band is an independent raw-deflate segment (ended by a full flush), so the bands of a screen
    that did not change since the previous capture are reused as they are and only changed bands are
    converted and compressed again; the zlib stream's Adler-32 is combined from the bands' own.
    """

    BAND_ROWS = 16

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.shape: tuple[int, int, int] = (0, 0, 0)
        # Per band: (its BGRX bytes, compressed segment, Adler-32 and length of its filtered rows).
        self.bands: list[tuple[bytes, bytes, int, int]] = []

    def encode(self, width: int, height: int, stride: int, bgrx: bytes) -> bytes:
        with self.lock:
            if self.shape != (width, height, stride):
                self.shape = (width, height, stride)
                self.bands = []
            band_bytes = self.BAND_ROWS * stride
            segments = []
            adler = 1
            for index, top in enumerate(range(0, height, self.BAND_ROWS)):
                raw = bgrx[top * stride: top * stride + band_bytes]
                cached = self.bands[index] if index < len(self.bands) else None
                if cached is None or cached[0] != raw:
                    rows = min(self.BAND_ROWS, height - top)
                    rgb = _rgb(width, rows, stride, raw)
                    line = width * 3
                    filtered = b"".join(b"\0" + rgb[y * line:(y + 1) * line] for y in range(rows))
                    # Level 1: a 1080p screen in tens of milliseconds; desktops compress well anyway.
                    packer = zlib.compressobj(1, zlib.DEFLATED, -15)
                    cached = (raw, packer.compress(filtered) + packer.flush(zlib.Z_FULL_FLUSH),
                              zlib.adler32(filtered), len(filtered))
                    if index < len(self.bands):
                        self.bands[index] = cached
                    else:
                        self.bands.append(cached)
                segments.append(cached[1])
                adler = adler32_combine(adler, cached[2], cached[3])
        # zlib header (deflate, 32 KiB window, fastest), the bands, an empty final block, the checksum.
        stream = b"\x78\x01" + b"".join(segments) + b"\x03\x00" + adler.to_bytes(4, "big")
        header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
        return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream)
                + _png_chunk(b"IEND", b""))


PNG = PngEncoder()


def encode_jpeg(width: int, height: int, rgb: bytes, quality: int) -> bytes:
    ppm = f"P6\n{width} {height}\n255\n".encode() + rgb
    done = subprocess.run(["cjpeg", "-quality", str(quality)], input=ppm, capture_output=True,
                          timeout=30)
    if done.returncode != 0 or not done.stdout.startswith(b"\xff\xd8\xff"):
        raise OpError("desktop", f"JPEG encoding failed: {done.stderr.decode('utf-8', 'replace').strip()}")
    return done.stdout


def screenshot(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    fmt = str(args.get("format") or "png").strip().lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in ("png", "jpeg"):
        raise OpError("invalid", f"format must be png or jpeg, got {args.get('format')!r}")
    with _display() as display:
        width, height, stride, pixels = display.capture()
    if fmt == "png":
        image = PNG.encode(width, height, stride, pixels)
    else:
        image = encode_jpeg(width, height, _rgb(width, height, stride, pixels), int(args.get("quality") or 85))
    return {"type": "screenshot", "mime_type": f"image/{fmt}", "width": width, "height": height,
            "data": base64.b64encode(image).decode("ascii")}


# ---- live view ---------------------------------------------------------------------------------------

VNC_PORTS = {"control": 5900, "view": 5901}


def vnc(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    """Start (once) a VNC server on the desktop, on the sandbox's loopback only; return its port.

    Two servers: one that takes mouse and keyboard, one view-only (for sharing a read-only link).
    """
    mode = args.get("mode", "control")
    if mode not in VNC_PORTS:
        raise OpError("invalid", "mode must be control or view")
    _need_desktop()
    port = VNC_PORTS[mode]
    name = f"x11vnc-{mode}"
    with DESKTOP.lock:
        proc = DESKTOP.processes.get(name)
        if proc is None or proc.poll() is not None:
            argv = ["x11vnc", "-display", DISPLAY, "-localhost", "-rfbport", str(port), "-forever", "-shared",
                    "-nopw", "-noxdamage", "-quiet", "-nossl", "-noipv6"]
            if mode == "view":
                argv.append("-viewonly")
            proc = _spawn(argv, name)
            DESKTOP.processes[name] = proc

    def listening() -> bool:
        if proc.poll() is not None:
            raise OpError("desktop", f"x11vnc exited: {_tail(name)}")
        try:
            with open("/proc/net/tcp") as f:
                return any(line.split()[1] == f"0100007F:{port:04X}" and line.split()[3] == "0A" for line in f
                           if line.strip() and not line.lstrip().startswith("sl"))
        except OSError:
            return False

    if not _wait_until(listening, 10.0):
        raise OpError("desktop", f"x11vnc did not start listening: {_tail(name)}")
    return {"port": port}


OPS = {
    "desktop_click": click, "desktop_move": move, "desktop_drag": drag, "desktop_scroll": scroll,
    "desktop_cursor": cursor, "desktop_type": type_text, "desktop_press": press, "desktop_release": release,
    "desktop_windows": list_windows, "desktop_active_window": active_window, "desktop_activate": activate,
    "desktop_close": close_window, "desktop_maximize": maximize, "desktop_minimize": minimize,
    "desktop_restore": restore, "desktop_fullscreen": fullscreen, "desktop_resize": resize,
    "desktop_focus_mode": focus_mode, "desktop_apps": installed_apps, "desktop_start_app": start_app,
    "desktop_visible_apps": visible_apps, "desktop_stop_pid": stop_by_pid, "desktop_stop_pname": stop_by_pname,
    "desktop_stop_cmd": stop_by_cmd, "desktop_screen_size": screen_size, "desktop_screenshot": screenshot,
    "desktop_vnc": vnc,
}
