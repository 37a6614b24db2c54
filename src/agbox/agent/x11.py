"""A small read-only view of an X display through libX11 (ctypes, stdlib only).

Queries (window list, titles, pids, geometry, state, pointer) and screen capture happen here, in the
agent's own process: a query costs well under a millisecond instead of a helper program's start.
Every call opens its own connection (cheap over the unix socket), so request threads never share
Xlib state and a dead X server shows up as "cannot open display", not as a broken shared handle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct
import threading
from typing import Any

_lib: Any = None
_lib_lock = threading.Lock()

XA_CARDINAL = 6
XA_WINDOW = 33
XA_ATOM = 4
ANY_PROPERTY_TYPE = 0
Z_PIXMAP = 2
ALL_PLANES = 0xFFFFFFFF
IS_VIEWABLE = 2


class XWindowAttributes(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_int), ("y", ctypes.c_int), ("width", ctypes.c_int), ("height", ctypes.c_int),
        ("border_width", ctypes.c_int), ("depth", ctypes.c_int), ("visual", ctypes.c_void_p),
        ("root", ctypes.c_ulong), ("c_class", ctypes.c_int), ("bit_gravity", ctypes.c_int),
        ("win_gravity", ctypes.c_int), ("backing_store", ctypes.c_int), ("backing_planes", ctypes.c_ulong),
        ("backing_pixel", ctypes.c_ulong), ("save_under", ctypes.c_int), ("colormap", ctypes.c_ulong),
        ("map_installed", ctypes.c_int), ("map_state", ctypes.c_int), ("all_event_masks", ctypes.c_long),
        ("your_event_mask", ctypes.c_long), ("do_not_propagate_mask", ctypes.c_long),
        ("override_redirect", ctypes.c_int), ("screen", ctypes.c_void_p),
    ]


class _ImageFuncs(ctypes.Structure):
    _fields_ = [("create_image", ctypes.c_void_p),
                ("destroy_image", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)),
                ("get_pixel", ctypes.c_void_p), ("put_pixel", ctypes.c_void_p),
                ("sub_image", ctypes.c_void_p), ("add_pixel", ctypes.c_void_p)]


class XImage(ctypes.Structure):
    _fields_ = [
        ("width", ctypes.c_int), ("height", ctypes.c_int), ("xoffset", ctypes.c_int), ("format", ctypes.c_int),
        ("data", ctypes.c_void_p), ("byte_order", ctypes.c_int), ("bitmap_unit", ctypes.c_int),
        ("bitmap_bit_order", ctypes.c_int), ("bitmap_pad", ctypes.c_int), ("depth", ctypes.c_int),
        ("bytes_per_line", ctypes.c_int), ("bits_per_pixel", ctypes.c_int), ("red_mask", ctypes.c_ulong),
        ("green_mask", ctypes.c_ulong), ("blue_mask", ctypes.c_ulong), ("obdata", ctypes.c_void_p),
        ("f", _ImageFuncs),
    ]


# Xlib's default error handler exits the process; a window that vanished between two requests
# (BadWindow) must only fail that request.
_ERROR_HANDLER_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


@_ERROR_HANDLER_TYPE
def _ignore_error(display: int, event: int) -> int:
    return 0


class XError(Exception):
    pass


def _load() -> Any:
    global _lib
    with _lib_lock:
        if _lib is None:
            lib = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
            lib.XOpenDisplay.restype = ctypes.c_void_p
            lib.XOpenDisplay.argtypes = [ctypes.c_char_p]
            lib.XCloseDisplay.argtypes = [ctypes.c_void_p]
            lib.XDefaultRootWindow.restype = ctypes.c_ulong
            lib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
            lib.XDefaultScreen.argtypes = [ctypes.c_void_p]
            lib.XDisplayWidth.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.XInternAtom.restype = ctypes.c_ulong
            lib.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
            lib.XGetAtomName.restype = ctypes.c_void_p
            lib.XGetAtomName.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
            lib.XGetWindowProperty.argtypes = [
                ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_long, ctypes.c_long, ctypes.c_int,
                ctypes.c_ulong, ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_int),
                ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_void_p)]
            lib.XFree.argtypes = [ctypes.c_void_p]
            lib.XGetWindowAttributes.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(XWindowAttributes)]
            lib.XTranslateCoordinates.argtypes = [
                ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_int, ctypes.c_int,
                ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_ulong)]
            lib.XQueryPointer.argtypes = [
                ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_ulong),
                ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int),
                ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint)]
            lib.XGetImage.restype = ctypes.POINTER(XImage)
            lib.XGetImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_uint,
                                      ctypes.c_uint, ctypes.c_ulong, ctypes.c_int]
            lib.XDisplayKeycodes.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
            lib.XGetKeyboardMapping.restype = ctypes.POINTER(ctypes.c_ulong)
            lib.XGetKeyboardMapping.argtypes = [ctypes.c_void_p, ctypes.c_ubyte, ctypes.c_int,
                                                ctypes.POINTER(ctypes.c_int)]
            lib.XChangeKeyboardMapping.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                                   ctypes.POINTER(ctypes.c_ulong), ctypes.c_int]
            lib.XSetWindowBackground.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
            lib.XClearWindow.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
            lib.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.XChangeProperty.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                                            ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.XSetErrorHandler.argtypes = [ctypes.c_void_p]
            lib.XSetErrorHandler(ctypes.cast(_ignore_error, ctypes.c_void_p))
            _lib = lib
    return _lib


class Display:
    """One connection to an X display (use as a context manager)."""

    def __init__(self, name: str) -> None:
        self.lib = _load()
        self.handle = self.lib.XOpenDisplay(name.encode())
        if not self.handle:
            raise XError(f"cannot open X display {name}")
        self.root = int(self.lib.XDefaultRootWindow(self.handle))
        self._atoms: dict[str, int] = {}
        self._number = int(name.rsplit(":", 1)[1].split(".")[0] or 0)
        self._resources: ResourceClient | None = None

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.handle:
            self.lib.XCloseDisplay(self.handle)
            self.handle = None
        if self._resources is not None:
            self._resources.close()
            self._resources = None

    def client_pid(self, window: int) -> int:
        """The pid of the X client that created ``window`` (from the server, not from the app)."""
        if self._resources is None:
            self._resources = ResourceClient(self._number)
        return self._resources.pid_of(window)

    def atom(self, name: str) -> int:
        value = self._atoms.get(name)
        if value is None:
            value = int(self.lib.XInternAtom(self.handle, name.encode(), 0))
            self._atoms[name] = value
        return value

    def atom_name(self, atom: int) -> str:
        ptr = self.lib.XGetAtomName(self.handle, atom)
        if not ptr:
            return ""
        try:
            return ctypes.string_at(ptr).decode("latin-1")
        finally:
            self.lib.XFree(ptr)

    def screen_size(self) -> tuple[int, int]:
        screen = self.lib.XDefaultScreen(self.handle)
        return int(self.lib.XDisplayWidth(self.handle, screen)), int(self.lib.XDisplayHeight(self.handle, screen))

    def property(self, window: int, name: str, kind: int = ANY_PROPERTY_TYPE) -> tuple[int, int, bytes] | None:
        """(type, format, raw bytes) of a window property, or None when it is not set."""
        actual_type = ctypes.c_ulong()
        actual_format = ctypes.c_int()
        count = ctypes.c_ulong()
        after = ctypes.c_ulong()
        data = ctypes.c_void_p()
        status = self.lib.XGetWindowProperty(
            self.handle, window, self.atom(name), 0, 1 << 20, 0, kind, ctypes.byref(actual_type),
            ctypes.byref(actual_format), ctypes.byref(count), ctypes.byref(after), ctypes.byref(data))
        if status != 0 or not actual_type.value:
            if data.value:
                self.lib.XFree(data)
            return None
        try:
            # Format-32 items are C longs in memory (8 bytes here), whatever the protocol says.
            item = {8: 1, 16: 2, 32: ctypes.sizeof(ctypes.c_long)}.get(actual_format.value, 1)
            raw = ctypes.string_at(data.value, count.value * item) if data.value else b""
        finally:
            if data.value:
                self.lib.XFree(data)
        return actual_type.value, actual_format.value, raw

    def cardinals(self, window: int, name: str, kind: int = ANY_PROPERTY_TYPE) -> list[int]:
        prop = self.property(window, name, kind)
        if prop is None or prop[1] != 32:
            return []
        raw = prop[2]
        return list((ctypes.c_ulong * (len(raw) // ctypes.sizeof(ctypes.c_ulong))).from_buffer_copy(raw))

    def text(self, window: int, name: str) -> str:
        prop = self.property(window, name)
        if prop is None:
            return ""
        encoding = "utf-8" if prop[0] == self.atom("UTF8_STRING") else "latin-1"
        return prop[2].rstrip(b"\0").decode(encoding, "replace")

    def attributes(self, window: int) -> XWindowAttributes | None:
        attrs = XWindowAttributes()
        if not self.lib.XGetWindowAttributes(self.handle, window, ctypes.byref(attrs)):
            return None
        return attrs

    def position_on_root(self, window: int) -> tuple[int, int]:
        x = ctypes.c_int()
        y = ctypes.c_int()
        child = ctypes.c_ulong()
        self.lib.XTranslateCoordinates(self.handle, window, self.root, 0, 0, ctypes.byref(x), ctypes.byref(y),
                                       ctypes.byref(child))
        return x.value, y.value

    def pointer(self) -> tuple[int, int]:
        root = ctypes.c_ulong()
        child = ctypes.c_ulong()
        root_x, root_y, win_x, win_y = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        mask = ctypes.c_uint()
        self.lib.XQueryPointer(self.handle, self.root, ctypes.byref(root), ctypes.byref(child), ctypes.byref(root_x),
                               ctypes.byref(root_y), ctypes.byref(win_x), ctypes.byref(win_y), ctypes.byref(mask))
        return root_x.value, root_y.value

    def set_background(self, pixel: int) -> None:
        self.lib.XSetWindowBackground(self.handle, self.root, pixel)
        self.lib.XClearWindow(self.handle, self.root)
        self.lib.XSync(self.handle, 0)

    def keyboard_map(self) -> tuple[int, int, list[int]]:
        """(first keycode, keysyms per keycode, keysyms of every keycode in order)."""
        low, high = ctypes.c_int(), ctypes.c_int()
        self.lib.XDisplayKeycodes(self.handle, ctypes.byref(low), ctypes.byref(high))
        per = ctypes.c_int()
        count = high.value - low.value + 1
        table = self.lib.XGetKeyboardMapping(self.handle, low.value, count, ctypes.byref(per))
        try:
            return low.value, per.value, list(table[:count * per.value])
        finally:
            self.lib.XFree(table)

    def map_keysyms(self, keysyms: list[int]) -> None:
        """Give each keysym missing from the keyboard map a spare keycode of its own, for good.

        Typing tools otherwise map a scratch keycode per character and map it back right after the key
        event; a busy app that reads the map late then sees the old map and drops the character."""
        low, per, table = self.keyboard_map()
        present = set(table)
        missing = [k for k in dict.fromkeys(keysyms) if k not in present]
        if not missing:
            return
        spare = [low + i for i in range(len(table) // per) if not any(table[i * per:(i + 1) * per])]
        # Keycodes at the top of the range first: low ones are what real keyboards send. Beyond the spare
        # ones, the typing tool's own remapping still applies.
        spare.reverse()
        for keycode, keysym in zip(spare, missing, strict=False):
            levels = min(per, 2)  # the same symbol with and without Shift
            row = (ctypes.c_ulong * per)(*([keysym] * levels + [0] * (per - levels)))
            self.lib.XChangeKeyboardMapping(self.handle, keycode, per, row, 1)
        self.lib.XSync(self.handle, 0)

    def set_root_string(self, name: str, value: str) -> None:
        data = value.encode()
        self.lib.XChangeProperty(self.handle, self.root, self.atom(name), self.atom("STRING"), 8, 0, data, len(data))
        self.lib.XSync(self.handle, 0)

    def capture(self) -> tuple[int, int, int, bytes]:
        """The whole screen as (width, height, bytes per line, 32-bit BGRX pixels)."""
        width, height = self.screen_size()
        image = self.lib.XGetImage(self.handle, self.root, 0, 0, width, height, ALL_PLANES, Z_PIXMAP)
        if not image:
            raise XError("XGetImage failed")
        try:
            info = image.contents
            if info.bits_per_pixel != 32:
                raise XError(f"unsupported screen depth: {info.bits_per_pixel} bits per pixel")
            stride = info.bytes_per_line
            return info.width, info.height, stride, ctypes.string_at(info.data, stride * info.height)
        finally:
            image.contents.f.destroy_image(ctypes.cast(image, ctypes.c_void_p))


class ResourceClient:
    """A raw X protocol connection for one extension request libX11 has no binding for: X-Resource's
    QueryClientIds, which gives the pid of the client that made a window. Apps that do not set
    _NET_WM_PID (Tk, plain Xlib programs) still get their pid this way."""

    def __init__(self, display_number: int = 0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        try:
            self.sock.connect(f"/tmp/.X11-unix/X{display_number}")
            # Connection setup, little-endian, protocol 11.0, no authorization (the local server allows it).
            self.sock.sendall(struct.pack("<BxHHHHxx", ord("l"), 11, 0, 0, 0))
            head = self._read(8)
            if head[0] != 1:
                raise XError("the X server refused the connection")
            self._read(struct.unpack_from("<H", head, 6)[0] * 4)
            name = b"X-Resource"
            padded = name + b"\0" * (-len(name) % 4)
            self.sock.sendall(struct.pack("<BxHHxx", 98, 2 + len(padded) // 4, len(name)) + padded)
            reply = self._reply()
            self.opcode = reply[9] if reply[8] else 0
        except (OSError, struct.error) as exc:
            self.sock.close()
            raise XError(f"X-Resource query failed: {exc}") from None

    def _read(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise XError("the X server closed the connection")
            data += chunk
        return data

    def _reply(self) -> bytes:
        while True:
            head = self._read(32)
            if head[0] == 1:  # a reply; errors (0) and events are skipped
                return head + self._read(struct.unpack_from("<I", head, 4)[0] * 4)
            if head[0] == 0:
                raise XError(f"X error {head[1]}")

    def pid_of(self, window: int) -> int:
        if not self.opcode:
            return 0
        client_pid_mask = 2
        try:
            self.sock.sendall(struct.pack("<BBHIII", self.opcode, 4, 4, 1, window, client_pid_mask))
            reply = self._reply()
        except (OSError, XError):
            return 0
        count = struct.unpack_from("<I", reply, 8)[0]
        offset = 32
        for _ in range(count):
            _client, mask, length = struct.unpack_from("<III", reply, offset)
            offset += 12
            if mask & client_pid_mask and length >= 4:
                return int(struct.unpack_from("<I", reply, offset)[0])
            offset += length
        return 0

    def close(self) -> None:
        self.sock.close()
