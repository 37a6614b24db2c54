"""Computer-use tools (mouse, keyboard, windows, apps, screen) on the session's own desktop.

Names, arguments and replies are those the official SDK's ``session.computer`` sends and parses. The
work happens in the sandbox (agent ``desktop_*`` ops, on the sandbox's Xvfb); this side checks the
argument types, so a wrong call gets a precise message before it reaches the sandbox.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import OrderedDict
from typing import Any

from agbox.errors import InvalidRequestError
from agbox.tools.base import ToolContext, ToolDef, ToolOutput, arg_int, arg_str, json_text, schema

OP_TIMEOUT_S = 60.0
UI_SERVER = "wuying_ui"
APP_SERVER = "wuying_app"
CAPTURE_SERVER = "wuying_capture"
# system_screenshot images kept per session for their URL (the newest ones).
KEPT_SCREENSHOTS = 8
DONE = "true"


def arg_bool(args: dict[str, Any], key: str, default: bool) -> bool:
    value = args.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequestError(f"argument '{key}' must be true or false, got {type(value).__name__}")
    return value


def arg_coord(args: dict[str, Any], key: str) -> int:
    if key not in args:
        raise InvalidRequestError(f"missing required argument '{key}'")
    return arg_int(args, key, 0)


def arg_choice(args: dict[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = args.get(key, default)
    if value not in choices:
        raise InvalidRequestError(f"argument '{key}' must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def arg_keys(args: dict[str, Any]) -> list[str]:
    keys = args.get("keys")
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
        raise InvalidRequestError("argument 'keys' must be a non-empty list of key names")
    return keys


def arg_window_id(args: dict[str, Any]) -> int | str:
    value = args.get("window_id")
    if value is None:
        raise InvalidRequestError("missing required argument 'window_id'")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequestError(f"argument 'window_id' must be an integer, got {type(value).__name__}")
    return value


async def _agent(ctx: ToolContext, op: str, args: dict[str, Any]) -> Any:
    return await ctx.agent(op, args, timeout_s=OP_TIMEOUT_S)


# ---- mouse -------------------------------------------------------------------------------------------

async def click_mouse(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    button = arg_choice(args, "button", "left", ("left", "right", "middle", "double_left"))
    await _agent(ctx, "desktop_click", {"x": arg_coord(args, "x"), "y": arg_coord(args, "y"), "button": button})
    return ToolOutput(DONE)


async def move_mouse(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    await _agent(ctx, "desktop_move", {"x": arg_coord(args, "x"), "y": arg_coord(args, "y")})
    return ToolOutput(DONE)


async def drag_mouse(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    button = arg_choice(args, "button", "left", ("left", "right", "middle"))
    await _agent(ctx, "desktop_drag", {
        "from_x": arg_coord(args, "from_x"), "from_y": arg_coord(args, "from_y"),
        "to_x": arg_coord(args, "to_x"), "to_y": arg_coord(args, "to_y"), "button": button})
    return ToolOutput(DONE)


async def scroll(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    direction = arg_choice(args, "direction", "up", ("up", "down", "left", "right"))
    amount = arg_int(args, "amount", 1, minimum=1, maximum=200)
    await _agent(ctx, "desktop_scroll", {"x": arg_coord(args, "x"), "y": arg_coord(args, "y"),
                                         "direction": direction, "amount": amount})
    return ToolOutput(DONE)


async def get_cursor_position(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    return ToolOutput(json_text(await _agent(ctx, "desktop_cursor", {})))


# ---- keyboard ----------------------------------------------------------------------------------------

async def input_text(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    text = args.get("text")
    if not isinstance(text, str):
        raise InvalidRequestError("argument 'text' must be a string")
    await _agent(ctx, "desktop_type", {"text": text})
    return ToolOutput(DONE)


async def press_keys(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    await _agent(ctx, "desktop_press", {"keys": arg_keys(args), "hold": arg_bool(args, "hold", False)})
    return ToolOutput(DONE)


async def release_keys(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    await _agent(ctx, "desktop_release", {"keys": arg_keys(args)})
    return ToolOutput(DONE)


# ---- windows -----------------------------------------------------------------------------------------

async def list_root_windows(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    arg_int(args, "timeout_ms", 3000, minimum=0)
    return ToolOutput(json_text(await _agent(ctx, "desktop_windows", {})))


async def get_active_window(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    window = await _agent(ctx, "desktop_active_window", {})
    if window is None:
        return ToolOutput("no window is active on the desktop", is_error=True)
    return ToolOutput(json_text(window))


def _window_tool(op: str) -> Any:
    async def handler(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
        await _agent(ctx, op, {"window_id": arg_window_id(args)})
        return ToolOutput(DONE)

    return handler


async def resize_window(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    width = arg_int(args, "width", 0, minimum=1, maximum=16384) if "width" in args else None
    height = arg_int(args, "height", 0, minimum=1, maximum=16384) if "height" in args else None
    if width is None or height is None:
        raise InvalidRequestError("arguments 'width' and 'height' are required")
    await _agent(ctx, "desktop_resize", {"window_id": arg_window_id(args), "width": width, "height": height})
    return ToolOutput(DONE)


async def focus_mode(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    if not isinstance(args.get("on"), bool):
        raise InvalidRequestError("argument 'on' must be true or false")
    await _agent(ctx, "desktop_focus_mode", {"on": args["on"]})
    return ToolOutput(DONE)


# ---- apps --------------------------------------------------------------------------------------------

async def get_installed_apps(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    # The SDK's deprecated method spells it ignore_system_app.
    ignore = arg_bool(args, "ignore_system_apps", arg_bool(args, "ignore_system_app", True))
    apps = await _agent(ctx, "desktop_apps", {"start_menu": arg_bool(args, "start_menu", True),
                                              "desktop": arg_bool(args, "desktop", False),
                                              "ignore_system_apps": ignore})
    return ToolOutput(json_text(apps))


async def start_app(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    payload: dict[str, Any] = {"start_cmd": arg_str(args, "start_cmd")}
    work_directory = arg_str(args, "work_directory", required=False)
    if work_directory:
        payload["work_directory"] = work_directory
    arg_str(args, "activity", required=False)  # an Android notion: accepted, meaningless on Linux
    return ToolOutput(json_text(await _agent(ctx, "desktop_start_app", payload)))


async def list_visible_apps(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    return ToolOutput(json_text(await _agent(ctx, "desktop_visible_apps", {})))


async def stop_app_by_pname(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    await _agent(ctx, "desktop_stop_pname", {"pname": arg_str(args, "pname")})
    return ToolOutput(DONE)


async def stop_app_by_pid(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    if "pid" not in args:
        raise InvalidRequestError("missing required argument 'pid'")
    await _agent(ctx, "desktop_stop_pid", {"pid": arg_int(args, "pid", 0, minimum=1)})
    return ToolOutput(DONE)


async def stop_app_by_cmd(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    await _agent(ctx, "desktop_stop_cmd", {"stop_cmd": arg_str(args, "stop_cmd")})
    return ToolOutput(DONE)


# ---- screen ------------------------------------------------------------------------------------------

async def get_screen_size(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    return ToolOutput(json_text(await _agent(ctx, "desktop_screen_size", {})))


async def screenshot(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    fmt = str(args.get("format") or "png").strip().lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in ("png", "jpeg"):
        raise InvalidRequestError(f"argument 'format' must be png or jpeg, got {args.get('format')!r}")
    shot = await _agent(ctx, "desktop_screenshot", {"format": fmt})
    # Key order as AGB's capture server writes it; data is strict base64 (no newlines).
    return ToolOutput(json_text({"type": "screenshot", "mime_type": shot["mime_type"], "width": shot["width"],
                                 "height": shot["height"], "data": shot["data"]}))


def screenshot_store(state: dict[str, Any]) -> OrderedDict[str, tuple[float, bytes]]:
    store = state.get("screenshots")
    if not isinstance(store, OrderedDict):
        store = OrderedDict()
        state["screenshots"] = store
    return store


async def system_screenshot(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    shot = await _agent(ctx, "desktop_screenshot", {"format": "png"})
    key = secrets.token_urlsafe(18)
    store = screenshot_store(ctx.state)
    store[key] = (time.time(), base64.b64decode(shot["data"]))
    while len(store) > KEPT_SCREENSHOTS:
        store.popitem(last=False)
    return ToolOutput(f"{ctx.settings.base_url}/desktop/{ctx.session_id}/screenshots/{key}.png")


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str], handler: Any,
          server: str = UI_SERVER) -> ToolDef:
    return ToolDef(name=name, description=description, input_schema=schema(properties, required), server=server,
                   handler=handler)


INT = {"type": "integer"}
WINDOW = {"window_id": {"type": "integer", "description": "A window_id from list_root_windows."}}
KEYS = {"keys": {"type": "array", "items": {"type": "string"},
                 "description": "Key names (Ctrl, Shift, Alt, Win, Enter, Esc, Tab, F1..F12, arrows) or characters."}}

TOOLS = [
    _tool("click_mouse", "Click at screen pixel (x, y); button left, right, middle or double_left.",
          {"x": INT, "y": INT, "button": {"type": "string", "enum": ["left", "right", "middle", "double_left"]}},
          ["x", "y"], click_mouse),
    _tool("move_mouse", "Move the pointer to screen pixel (x, y).", {"x": INT, "y": INT}, ["x", "y"], move_mouse),
    _tool("drag_mouse", "Press a button at (from_x, from_y), move to (to_x, to_y) and release it there.",
          {"from_x": INT, "from_y": INT, "to_x": INT, "to_y": INT,
           "button": {"type": "string", "enum": ["left", "right", "middle"]}},
          ["from_x", "from_y", "to_x", "to_y"], drag_mouse),
    _tool("scroll", "Scroll the wheel at (x, y): direction up, down, left or right, amount notches.",
          {"x": INT, "y": INT, "direction": {"type": "string", "enum": ["up", "down", "left", "right"]},
           "amount": {"type": "integer", "minimum": 1}}, ["x", "y"], scroll),
    _tool("get_cursor_position", "The pointer's position as JSON {x, y}.", {}, [], get_cursor_position),
    _tool("input_text", "Type text (any Unicode) into the focused window.", {"text": {"type": "string"}},
          ["text"], input_text),
    _tool("press_keys", "Press keys as a chord (down in order, up in reverse); hold=true leaves them down.",
          {**KEYS, "hold": {"type": "boolean"}}, ["keys"], press_keys),
    _tool("release_keys", "Release keys held by press_keys(hold=true).", KEYS, ["keys"], release_keys),
    _tool("list_root_windows", "The desktop's top-level application windows: id, title, position, size, pid, "
          "process name.", {"timeout_ms": INT}, [], list_root_windows),
    _tool("get_active_window", "The window that has the focus.", {}, [], get_active_window),
    _tool("activate_window", "Raise a window and give it the focus (also un-minimizes it).", WINDOW, ["window_id"],
          _window_tool("desktop_activate")),
    _tool("close_window", "Ask a window to close (as its close button does).", WINDOW, ["window_id"],
          _window_tool("desktop_close")),
    _tool("maximize_window", "Maximize a window.", WINDOW, ["window_id"], _window_tool("desktop_maximize")),
    _tool("minimize_window", "Minimize (iconify) a window.", WINDOW, ["window_id"], _window_tool("desktop_minimize")),
    _tool("restore_window", "Restore a minimized, maximized or fullscreen window to its normal state.", WINDOW,
          ["window_id"], _window_tool("desktop_restore")),
    _tool("fullscreen_window", "Make a window fullscreen.", WINDOW, ["window_id"], _window_tool("desktop_fullscreen")),
    _tool("resize_window", "Resize a window to width x height pixels.",
          {**WINDOW, "width": INT, "height": INT}, ["window_id", "width", "height"], resize_window),
    _tool("focus_mode", "Turn focus mode on or off.", {"on": {"type": "boolean"}}, ["on"], focus_mode),
    _tool("get_installed_apps", "Applications from .desktop entries (start menu; desktop shortcuts), optionally "
          "without system tools.", {"start_menu": {"type": "boolean"}, "desktop": {"type": "boolean"},
                                    "ignore_system_apps": {"type": "boolean"}}, [], get_installed_apps, APP_SERVER),
    _tool("start_app", "Start an application by its command; returns its process (the pid owns its window).",
          {"start_cmd": {"type": "string"}, "work_directory": {"type": "string"}, "activity": {"type": "string"}},
          ["start_cmd"], start_app, APP_SERVER),
    _tool("list_visible_apps", "Processes that own a visible window.", {}, [], list_visible_apps, APP_SERVER),
    _tool("stop_app_by_pname", "Stop every process with this name.", {"pname": {"type": "string"}}, ["pname"],
          stop_app_by_pname, APP_SERVER),
    _tool("stop_app_by_pid", "Stop the process with this pid (and its process group).", {"pid": INT}, ["pid"],
          stop_app_by_pid, APP_SERVER),
    _tool("stop_app_by_cmd", "Run a stop command (e.g. 'kill 1234') in the session.", {"stop_cmd": {"type": "string"}},
          ["stop_cmd"], stop_app_by_cmd, APP_SERVER),
    _tool("get_screen_size", "Screen width and height in pixels and the DPI scaling factor.", {}, [],
          get_screen_size),
    _tool("system_screenshot", "Capture the screen; returns the URL of the PNG image.", {}, [], system_screenshot),
    _tool("screenshot", "Capture the screen; returns JSON {type, mime_type, width, height, data (base64)}.",
          {"format": {"type": "string", "enum": ["png", "jpeg", "jpg"]}}, [], screenshot, CAPTURE_SERVER),
]
