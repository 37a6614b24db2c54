"""``session.computer``: mouse, keyboard, windows, apps and screen of a desktop session.

Same names, arguments and results as the official SDK's ``session.computer`` (sub-controllers and the
deprecated flat methods); each call is one MCP tool of the computer-use image.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from agbox.client.results import ApiResponse, OperationResult

if TYPE_CHECKING:
    from agbox.client.session import Session

BUTTONS = ("left", "right", "middle", "double_left")
DRAG_BUTTONS = ("left", "right", "middle")
DIRECTIONS = ("up", "down", "left", "right")


@dataclasses.dataclass
class Window:
    window_id: int = 0
    title: str = ""
    absolute_upper_left_x: int | None = None
    absolute_upper_left_y: int | None = None
    width: int | None = None
    height: int | None = None
    pid: int | None = None
    pname: str | None = None
    child_windows: list[Window] = dataclasses.field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Window:
        children = [cls.from_dict(c) for c in data.get("child_windows") or [] if isinstance(c, dict)]
        return cls(window_id=data.get("window_id", 0), title=data.get("title", ""),
                   absolute_upper_left_x=data.get("absolute_upper_left_x"),
                   absolute_upper_left_y=data.get("absolute_upper_left_y"), width=data.get("width"),
                   height=data.get("height"), pid=data.get("pid"), pname=data.get("pname"), child_windows=children)


@dataclasses.dataclass
class Process:
    pname: str = ""
    pid: int = 0
    cmdline: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Process:
        return cls(pname=data.get("pname", ""), pid=data.get("pid", 0), cmdline=data.get("cmdline"))


@dataclasses.dataclass
class InstalledApp:
    name: str = ""
    start_cmd: str = ""
    stop_cmd: str | None = None
    work_directory: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstalledApp:
        return cls(name=data.get("name", ""), start_cmd=data.get("start_cmd", ""), stop_cmd=data.get("stop_cmd"),
                   work_directory=data.get("work_directory"))


@dataclasses.dataclass
class WindowListResult(ApiResponse):
    success: bool = False
    windows: list[Window] = dataclasses.field(default_factory=list)
    error_message: str = ""


@dataclasses.dataclass
class WindowInfoResult(ApiResponse):
    success: bool = False
    window: Window | None = None
    error_message: str = ""


@dataclasses.dataclass
class ProcessListResult(ApiResponse):
    success: bool = False
    data: list[Process] = dataclasses.field(default_factory=list)
    error_message: str = ""


@dataclasses.dataclass
class InstalledAppListResult(ApiResponse):
    success: bool = False
    data: list[InstalledApp] = dataclasses.field(default_factory=list)
    error_message: str = ""


@dataclasses.dataclass
class AppOperationResult(ApiResponse):
    success: bool = False
    error_message: str = ""


@dataclasses.dataclass
class ScreenshotResult(ApiResponse):
    success: bool = False
    error_message: str = ""
    type: str = ""
    data: bytes = b""
    mime_type: str = ""
    width: int | None = None
    height: int | None = None


class _Tools:
    def __init__(self, session: Session) -> None:
        self.session = session

    def _bool(self, tool: str, args: dict[str, Any], failure: str) -> OperationResult:
        result = self.session.call_mcp_tool(tool, args)
        if result.success:
            return OperationResult(request_id=result.request_id, success=True, data=True)
        return OperationResult(request_id=result.request_id, success=False,
                               error_message=result.error_message or failure)

    def _json(self, tool: str, args: dict[str, Any], failure: str) -> tuple[OperationResult, Any]:
        result = self.session.call_mcp_tool(tool, args)
        if not result.success:
            return OperationResult(request_id=result.request_id, success=False,
                                   error_message=result.error_message or failure), None
        try:
            value = json.loads(result.data) if result.data else None
        except ValueError as exc:
            return OperationResult(request_id=result.request_id, success=False,
                                   error_message=f"Failed to parse {tool} response: {exc}"), None
        return OperationResult(request_id=result.request_id, success=True, data=value), value


class MouseController(_Tools):
    def click(self, x: int, y: int, button: str = "left") -> OperationResult:
        if button not in BUTTONS:
            raise ValueError(f"Invalid button '{button}'. Must be one of {list(BUTTONS)}")
        return self._bool("click_mouse", {"x": x, "y": y, "button": button}, "Failed to click mouse")

    def move(self, x: int, y: int) -> OperationResult:
        return self._bool("move_mouse", {"x": x, "y": y}, "Failed to move mouse")

    def drag(self, from_x: int, from_y: int, to_x: int, to_y: int, button: str = "left") -> OperationResult:
        if button not in DRAG_BUTTONS:
            raise ValueError(f"Invalid button '{button}'. Must be one of {list(DRAG_BUTTONS)}")
        return self._bool("drag_mouse", {"from_x": from_x, "from_y": from_y, "to_x": to_x, "to_y": to_y,
                                         "button": button}, "Failed to drag mouse")

    def scroll(self, x: int, y: int, direction: str = "up", amount: int = 1) -> OperationResult:
        if direction not in DIRECTIONS:
            raise ValueError(f"Invalid direction '{direction}'. Must be one of {list(DIRECTIONS)}")
        return self._bool("scroll", {"x": x, "y": y, "direction": direction, "amount": amount}, "Failed to scroll")

    def get_position(self) -> OperationResult:
        return self._json("get_cursor_position", {}, "Failed to get cursor position")[0]


class KeyboardController(_Tools):
    def type(self, text: str) -> OperationResult:
        return self._bool("input_text", {"text": text}, "Failed to input text")

    def press(self, keys: list[str], hold: bool = False) -> OperationResult:
        return self._bool("press_keys", {"keys": keys, "hold": hold}, "Failed to press keys")

    def release(self, keys: list[str]) -> OperationResult:
        return self._bool("release_keys", {"keys": keys}, "Failed to release keys")


class WindowController(_Tools):
    def list_root_windows(self, timeout_ms: int = 3000) -> WindowListResult:
        result, value = self._json("list_root_windows", {"timeout_ms": timeout_ms}, "Failed to list windows")
        if not result.success:
            return WindowListResult(request_id=result.request_id, error_message=result.error_message)
        if not isinstance(value, list) or not all(isinstance(w, dict) for w in value):
            return WindowListResult(request_id=result.request_id, error_message="Failed to parse windows JSON")
        return WindowListResult(request_id=result.request_id, success=True,
                                windows=[Window.from_dict(w) for w in value])

    def get_active_window(self) -> WindowInfoResult:
        result, value = self._json("get_active_window", {}, "Failed to get active window")
        if not result.success:
            return WindowInfoResult(request_id=result.request_id, error_message=result.error_message)
        window = Window.from_dict(value) if isinstance(value, dict) else None
        return WindowInfoResult(request_id=result.request_id, success=True, window=window)

    def activate(self, window_id: int) -> OperationResult:
        return self._bool("activate_window", {"window_id": window_id}, "Failed to activate window")

    def close(self, window_id: int) -> OperationResult:
        return self._bool("close_window", {"window_id": window_id}, "Failed to close window")

    def maximize(self, window_id: int) -> OperationResult:
        return self._bool("maximize_window", {"window_id": window_id}, "Failed to maximize window")

    def minimize(self, window_id: int) -> OperationResult:
        return self._bool("minimize_window", {"window_id": window_id}, "Failed to minimize window")

    def restore(self, window_id: int) -> OperationResult:
        return self._bool("restore_window", {"window_id": window_id}, "Failed to restore window")

    def fullscreen(self, window_id: int) -> OperationResult:
        return self._bool("fullscreen_window", {"window_id": window_id}, "Failed to make window fullscreen")

    def resize(self, window_id: int, width: int, height: int) -> OperationResult:
        return self._bool("resize_window", {"window_id": window_id, "width": width, "height": height},
                          "Failed to resize window")

    def focus_mode(self, on: bool) -> OperationResult:
        return self._bool("focus_mode", {"on": on}, "Failed to set focus mode")


class ApplicationController(_Tools):
    def list_installed(self, start_menu: bool = True, desktop: bool = False,
                       ignore_system_apps: bool = True) -> InstalledAppListResult:
        result, value = self._json("get_installed_apps", {"start_menu": start_menu, "desktop": desktop,
                                                          "ignore_system_apps": ignore_system_apps},
                                   "Failed to get installed apps")
        if not result.success or not isinstance(value, list):
            return InstalledAppListResult(request_id=result.request_id,
                                          error_message=result.error_message or "Failed to parse apps JSON")
        return InstalledAppListResult(request_id=result.request_id, success=True,
                                      data=[InstalledApp.from_dict(a) for a in value if isinstance(a, dict)])

    def _processes(self, tool: str, args: dict[str, Any], failure: str) -> ProcessListResult:
        result, value = self._json(tool, args, failure)
        if not result.success or not isinstance(value, list):
            return ProcessListResult(request_id=result.request_id,
                                     error_message=result.error_message or "Failed to parse processes JSON")
        return ProcessListResult(request_id=result.request_id, success=True,
                                 data=[Process.from_dict(p) for p in value if isinstance(p, dict)])

    def start(self, start_cmd: str, work_directory: str = "", activity: str = "") -> ProcessListResult:
        args: dict[str, Any] = {"start_cmd": start_cmd}
        if work_directory:
            args["work_directory"] = work_directory
        if activity:
            args["activity"] = activity
        return self._processes("start_app", args, "Failed to start app")

    def get_visible(self) -> ProcessListResult:
        return self._processes("list_visible_apps", {}, "Failed to list visible apps")

    def _app_op(self, tool: str, args: dict[str, Any], failure: str) -> AppOperationResult:
        result = self._bool(tool, args, failure)
        return AppOperationResult(request_id=result.request_id, success=result.success,
                                  error_message=result.error_message)

    def stop_by_pname(self, pname: str) -> AppOperationResult:
        return self._app_op("stop_app_by_pname", {"pname": pname}, "Failed to stop app")

    def stop_by_pid(self, pid: int) -> AppOperationResult:
        return self._app_op("stop_app_by_pid", {"pid": pid}, "Failed to stop app")

    def stop_by_cmd(self, stop_cmd: str) -> AppOperationResult:
        return self._app_op("stop_app_by_cmd", {"stop_cmd": stop_cmd}, "Failed to stop app")


class ScreenController(_Tools):
    def capture(self) -> OperationResult:
        """A URL of a PNG of the screen (served by agbox while the session lives)."""
        result = self.session.call_mcp_tool("system_screenshot", {})
        return OperationResult(request_id=result.request_id, success=result.success,
                               data=result.data if result.success else None,
                               error_message="" if result.success else result.error_message or "Failed to take screenshot")

    def get_size(self) -> OperationResult:
        return self._json("get_screen_size", {}, "Failed to get screen size")[0]

    def beta_take_screenshot(self, format: str = "png") -> ScreenshotResult:
        fmt = (format or "").strip().lower()
        fmt = "jpeg" if fmt == "jpg" else fmt
        if fmt not in ("png", "jpeg"):
            raise ValueError("Invalid format: must be 'png', 'jpeg', or 'jpg'")
        result, value = self._json("screenshot", {"format": fmt}, "Failed to take screenshot")
        if not result.success:
            return ScreenshotResult(request_id=result.request_id, error_message=result.error_message)
        try:
            data = base64.b64decode(value["data"], validate=True)
        except (TypeError, KeyError, binascii.Error) as exc:
            return ScreenshotResult(request_id=result.request_id, error_message=f"Invalid screenshot data: {exc}")
        return ScreenshotResult(request_id=result.request_id, success=True, type=str(value.get("type", "")),
                                data=data, mime_type=str(value.get("mime_type", "")), width=value.get("width"),
                                height=value.get("height"))


class Computer:
    """The sub-controllers, plus the official SDK's deprecated flat methods."""

    def __init__(self, session: Session) -> None:
        self.mouse = MouseController(session)
        self.keyboard = KeyboardController(session)
        self.window = WindowController(session)
        self.app = ApplicationController(session)
        self.screen = ScreenController(session)

    # ---- deprecated flat methods (same tools)
    def click_mouse(self, x: int, y: int, button: str = "left") -> OperationResult:
        return self.mouse.click(x, y, button)

    def move_mouse(self, x: int, y: int) -> OperationResult:
        return self.mouse.move(x, y)

    def drag_mouse(self, from_x: int, from_y: int, to_x: int, to_y: int, button: str = "left") -> OperationResult:
        return self.mouse.drag(from_x, from_y, to_x, to_y, button)

    def scroll(self, x: int, y: int, direction: str = "up", amount: int = 1) -> OperationResult:
        return self.mouse.scroll(x, y, direction, amount)

    def get_cursor_position(self) -> OperationResult:
        return self.mouse.get_position()

    def input_text(self, text: str) -> OperationResult:
        return self.keyboard.type(text)

    def press_keys(self, keys: list[str], hold: bool = False) -> OperationResult:
        return self.keyboard.press(keys, hold)

    def release_keys(self, keys: list[str]) -> OperationResult:
        return self.keyboard.release(keys)

    def list_root_windows(self, timeout_ms: int = 3000) -> WindowListResult:
        return self.window.list_root_windows(timeout_ms)

    def get_active_window(self) -> WindowInfoResult:
        return self.window.get_active_window()

    def activate_window(self, window_id: int) -> OperationResult:
        return self.window.activate(window_id)

    def close_window(self, window_id: int) -> OperationResult:
        return self.window.close(window_id)

    def maximize_window(self, window_id: int) -> OperationResult:
        return self.window.maximize(window_id)

    def minimize_window(self, window_id: int) -> OperationResult:
        return self.window.minimize(window_id)

    def restore_window(self, window_id: int) -> OperationResult:
        return self.window.restore(window_id)

    def fullscreen_window(self, window_id: int) -> OperationResult:
        return self.window.fullscreen(window_id)

    def resize_window(self, window_id: int, width: int, height: int) -> OperationResult:
        return self.window.resize(window_id, width, height)

    def focus_mode(self, on: bool) -> OperationResult:
        return self.window.focus_mode(on)

    def get_installed_apps(self, start_menu: bool = True, desktop: bool = False,
                           ignore_system_apps: bool = True) -> InstalledAppListResult:
        return self.app.list_installed(start_menu, desktop, ignore_system_apps)

    def start_app(self, start_cmd: str, work_directory: str = "", activity: str = "") -> ProcessListResult:
        return self.app.start(start_cmd, work_directory, activity)

    def list_visible_apps(self) -> ProcessListResult:
        return self.app.get_visible()

    def stop_app_by_pname(self, pname: str) -> AppOperationResult:
        return self.app.stop_by_pname(pname)

    def stop_app_by_pid(self, pid: int) -> AppOperationResult:
        return self.app.stop_by_pid(pid)

    def stop_app_by_cmd(self, stop_cmd: str) -> AppOperationResult:
        return self.app.stop_by_cmd(stop_cmd)

    def get_screen_size(self) -> OperationResult:
        return self.screen.get_size()

    def screenshot(self) -> OperationResult:
        return self.screen.capture()

