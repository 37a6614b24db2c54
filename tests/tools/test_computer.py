"""The computer-use image through the unmodified official SDK: a real Xvfb + openbox desktop per session,
real Debian apps (xterm, l3afpad, a Tk probe), real input through XTEST, real screenshots."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agb import AGB as OfficialAGB
from agb.config import Config
from agb.session_params import CreateSessionParams
from PIL import Image

from tests.conftest import ServerProcess, wait_for

IMAGE = "agb-computer-use-ubuntu-2204"

# A small Tk app that reports what the mouse does to it in a log file (one event a line).
PROBE = r"""
import sys, tkinter as tk
log = open(sys.argv[1], "a", buffering=1)
root = tk.Tk()
root.title(sys.argv[2])
root.geometry("400x300+300+200")
canvas = tk.Canvas(root, bg="#00ff00", highlightthickness=0)
canvas.pack(fill="both", expand=True)
tk.Button(root, text="Press me", command=lambda: log.write("button\n")).place(x=10, y=10, width=120, height=40)
canvas.bind("<ButtonPress-1>", lambda e: log.write(f"down {e.x} {e.y}\n"))
canvas.bind("<ButtonRelease-1>", lambda e: log.write(f"up {e.x} {e.y}\n"))
canvas.bind("<Double-Button-1>", lambda e: log.write("double\n"))
canvas.bind("<Button-3>", lambda e: log.write("right\n"))
canvas.bind("<Button-2>", lambda e: log.write("middle\n"))
canvas.bind("<Button-4>", lambda e: log.write("wheel up\n"))
canvas.bind("<Button-5>", lambda e: log.write("wheel down\n"))
root.mainloop()
"""


def official_client(server: ServerProcess) -> Any:
    return OfficialAGB(api_key=server.api_key, cfg=Config(endpoint=server.endpoint, timeout_ms=60000))


@pytest.fixture(scope="module")
def desktop(server: ServerProcess) -> Iterator[Any]:
    client = official_client(server)
    created = client.create(CreateSessionParams(image_id=IMAGE))
    assert created.success, created.error_message
    yield created.session
    client.delete(created.session)


def windows(session: Any) -> list[Any]:
    listed = session.computer.window.list_root_windows()
    assert listed.success, listed.error_message
    return list(listed.windows)


def window_titled(session: Any, title: str) -> Any:
    return wait_for(lambda: next((w for w in windows(session) if w.title == title), None), 15,
                    what=f"a window titled {title!r}")


def read_text(session: Any, path: str) -> str:
    result = session.file.read(path)
    return str(result.content) if result.success else ""


def start_probe(session: Any, title: str) -> tuple[Any, str]:
    log = f"/tmp/{title}.log"
    assert session.file.write("/tmp/probe.py", PROBE).success
    started = session.computer.app.start(f"python3 /tmp/probe.py {log} {title}")
    assert started.success, started.error_message
    window = window_titled(session, title)
    assert window.pid == started.data[0].pid
    # Tk draws its widgets right after mapping: wait until the canvas colour is on screen.
    return window, log


def screenshot(session: Any) -> Image.Image:
    shot = session.computer.screen.beta_take_screenshot("png")
    assert shot.success and shot.mime_type == "image/png"
    image = Image.open(io.BytesIO(shot.data))
    assert image.format == "PNG" and image.size == (shot.width, shot.height)
    return image.convert("RGB")


def test_screen_size_and_screenshots(desktop: Any) -> None:
    size = desktop.computer.screen.get_size()
    assert size.success and size.data == {"width": 1920, "height": 1080, "dpiScalingFactor": 1.0}
    image = screenshot(desktop)
    assert image.size == (1920, 1080)
    jpeg = desktop.computer.screen.beta_take_screenshot("JPG")
    assert jpeg.success and jpeg.mime_type == "image/jpeg" and jpeg.data[:3] == b"\xff\xd8\xff"
    assert Image.open(io.BytesIO(jpeg.data)).size == (1920, 1080)
    with pytest.raises(ValueError):
        desktop.computer.screen.beta_take_screenshot("gif")
    # The raw tool text is the JSON the SDK checks strictly: base64 without whitespace.
    raw = desktop.call_mcp_tool("screenshot", {"format": "png"})
    payload = json.loads(raw.data)
    assert payload["type"] == "screenshot" and re.fullmatch(r"[A-Za-z0-9+/=]+", payload["data"])


def test_system_screenshot_url_serves_the_png_while_the_session_lives(server: ServerProcess) -> None:
    client = official_client(server)
    session = client.create(CreateSessionParams(image_id=IMAGE)).session
    try:
        # The SDK's screen.capture() refuses sessions with a link_url; the tool itself answers a URL.
        url = session.call_mcp_tool("system_screenshot", {}).data
        assert url.startswith(server.endpoint + "/desktop/")
        response = httpx.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (1920, 1080)
        assert httpx.get(url.replace(".png", "x.png")).status_code == 404
    finally:
        client.delete(session)
    assert httpx.get(url).status_code == 404


def test_apps_start_list_and_stop(desktop: Any) -> None:
    installed = desktop.computer.app.list_installed()
    assert installed.success, installed.error_message
    commands = {app.start_cmd for app in installed.data}
    assert {"xterm", "l3afpad", "pcmanfm", "/usr/bin/chromium"} <= commands
    assert "vim" not in commands  # a Terminal=true entry is a system/console app, filtered
    everything = desktop.computer.get_installed_apps(ignore_system_apps=False)  # deprecated spelling
    assert "vim" in {app.start_cmd for app in everything.data}

    editor = desktop.computer.app.start("l3afpad", work_directory="/tmp")
    assert editor.success, editor.error_message
    pid = editor.data[0].pid
    assert editor.data[0].pname == "l3afpad"
    window = wait_for(lambda: next((w for w in windows(desktop) if w.pid == pid), None), 15, what="the editor window")
    assert window.pname == "l3afpad" and window.width > 0 and window.height > 0
    assert pid in {p.pid for p in desktop.computer.app.get_visible().data}

    assert desktop.computer.app.stop_by_pid(pid).success
    assert pid not in {w.pid for w in windows(desktop)}
    assert not desktop.computer.app.stop_by_pid(pid).success

    second = desktop.computer.app.start("l3afpad").data[0].pid
    wait_for(lambda: second in {w.pid for w in windows(desktop)}, 15, what="the second editor window")
    assert desktop.computer.app.stop_by_pname("l3afpad").success
    assert second not in {p.pid for p in desktop.computer.app.get_visible().data}
    assert not desktop.computer.app.stop_by_pname("no-such-app").success
    missing = desktop.computer.app.start("/usr/bin/no-such-program")
    assert not missing.success and "no such program" in missing.error_message


def test_terminal_typing_and_key_chords(desktop: Any) -> None:
    started = desktop.computer.app.start("xterm -T agbox-term")
    assert started.success, started.error_message
    term = window_titled(desktop, "agbox-term")
    assert term.pid == started.data[0].pid and term.pname == "xterm"
    assert desktop.computer.window.activate(term.window_id).success
    assert desktop.computer.window.get_active_window().window.window_id == term.window_id

    keyboard = desktop.computer.keyboard
    assert keyboard.type("echo 'héllo wörld ✓ 日本語 Ωμέγα' > /tmp/typed.txt").success
    assert keyboard.press(["Enter"]).success
    wait_for(lambda: read_text(desktop, "/tmp/typed.txt"), 10, what="the typed command's file")
    assert read_text(desktop, "/tmp/typed.txt") == "héllo wörld ✓ 日本語 Ωμέγα\n"
    # Ctrl+C interrupts a running command: the next command runs at once instead of after 60 s.
    assert keyboard.type("sleep 60\n").success
    assert keyboard.press(["CTRL", "c"]).success
    assert keyboard.type("echo interrupted > /tmp/chord.txt\n").success
    wait_for(lambda: read_text(desktop, "/tmp/chord.txt") == "interrupted\n", 10, what="the command after Ctrl+C")
    # hold + release: Shift held down makes the letters capitals.
    assert keyboard.press(["shift"], hold=True).success
    assert keyboard.type("x").success
    assert keyboard.release(["Shift"]).success
    assert keyboard.type(" > /tmp/shifted.txt; echo $? >> /tmp/shifted.txt\n").success
    assert not keyboard.press([]).success
    assert desktop.computer.app.stop_by_pid(term.pid).success


def test_mouse_click_drag_scroll_on_a_tk_probe(desktop: Any) -> None:
    window, log = start_probe(desktop, "agbox-probe")
    x, y = window.absolute_upper_left_x, window.absolute_upper_left_y
    assert desktop.computer.window.activate(window.window_id).success
    mouse = desktop.computer.mouse
    # The button sits at (10..130, 10..50) inside the window.
    assert mouse.click(x + 60, y + 30).success
    wait_for(lambda: "button" in read_text(desktop, log), 10, what="the button's click")
    assert mouse.click(x + 200, y + 150, button="right").success
    assert mouse.click(x + 200, y + 150, button="middle").success
    assert mouse.click(x + 200, y + 150, button="double_left").success
    assert mouse.drag(x + 150, y + 100, x + 350, y + 250).success
    assert mouse.get_position().data == {"x": x + 350, "y": y + 250} or json.loads(
        desktop.call_mcp_tool("get_cursor_position", {}).data) == {"x": x + 350, "y": y + 250}
    assert mouse.scroll(x + 200, y + 150, direction="down", amount=3).success
    assert mouse.scroll(x + 200, y + 150, direction="up").success
    assert mouse.move(x + 5, y + 5).success
    assert json.loads(desktop.call_mcp_tool("get_cursor_position", {}).data) == {"x": x + 5, "y": y + 5}

    def events() -> list[str]:
        return read_text(desktop, log).splitlines()

    wait_for(lambda: events().count("wheel up") == 1, 10, what="the scroll events")
    seen = events()
    assert {"right", "middle", "double"} <= set(seen)
    assert seen.count("wheel down") == 3
    assert "down 150 100" in seen and "up 350 250" in seen  # the drag, in window coordinates
    with pytest.raises(ValueError):
        mouse.click(1, 1, button="side")
    outside = desktop.call_mcp_tool("click_mouse", {"x": 5000, "y": 5, "button": "left"})
    assert not outside.success and "outside" in outside.error_message

    # The probe's green canvas is on the screenshot where list_root_windows says the window is.
    image = screenshot(desktop)
    assert image.getpixel((x + 200, y + 200)) == (0, 255, 0)
    assert image.getpixel((5, 5)) != (0, 255, 0)
    assert desktop.computer.app.stop_by_pid(window.pid).success


def test_window_operations_change_geometry(desktop: Any) -> None:
    window, _ = start_probe(desktop, "agbox-geometry")
    ops = desktop.computer.window

    def current() -> Any:
        return next(w for w in windows(desktop) if w.window_id == window.window_id)

    assert ops.maximize(window.window_id).success
    big = current()
    assert big.width > 1800 and big.height > 900
    assert ops.restore(window.window_id).success
    assert (current().width, current().height) == (400, 300)
    assert ops.resize(window.window_id, 640, 480).success
    assert (current().width, current().height) == (640, 480)
    assert ops.fullscreen(window.window_id).success
    full = current()
    assert (full.absolute_upper_left_x, full.absolute_upper_left_y, full.width, full.height) == (0, 0, 1920, 1080)
    assert ops.restore(window.window_id).success
    assert ops.minimize(window.window_id).success
    assert window.pid not in {p.pid for p in desktop.computer.app.get_visible().data}
    assert ops.restore(window.window_id).success
    assert window.pid in {p.pid for p in desktop.computer.app.get_visible().data}
    assert ops.focus_mode(True).success and ops.focus_mode(False).success
    assert ops.close(window.window_id).success
    assert window.window_id not in {w.window_id for w in windows(desktop)}
    assert not ops.maximize(window.window_id).success
    assert not ops.activate("not-a-window").success


def test_two_desktops_cannot_see_each_other(server: ServerProcess, desktop: Any) -> None:
    client = official_client(server)
    other = client.create(CreateSessionParams(image_id=IMAGE)).session
    try:
        assert desktop.computer.app.start("xterm -T secret-of-a").success
        window_titled(desktop, "secret-of-a")
        assert "secret-of-a" not in {w.title for w in windows(other)}
        # Not through X either: the other sandbox's display :0 is its own server; no X port on TCP.
        probe = other.command.execute("DISPLAY=:0 wmctrl -l; ls /tmp/.X11-unix; grep -c ':17[0-9][0-9] .* 0A' "
                                      "/proc/net/tcp /proc/net/tcp6 || true", timeout_ms=10000)
        assert "secret-of-a" not in probe.stdout and "X0" in probe.stdout
        assert ":0\n" not in probe.stdout.replace("tcp:0\n", "").replace("tcp6:0\n", "")
    finally:
        client.delete(other)
        desktop.computer.app.stop_by_pname("xterm")


def test_desktop_size_create_option_and_bad_values(server: ServerProcess) -> None:
    headers = {"authorization": f"Bearer {server.api_key}"}
    bad = httpx.post(f"{server.endpoint}/mcp/createSession", headers=headers,
                     json={"imageId": IMAGE, "desktopSize": "huge"}).json()
    assert not bad["success"] and "desktopSize must look like" in bad["message"]
    made = httpx.post(f"{server.endpoint}/mcp/createSession", headers=headers,
                      json={"imageId": IMAGE, "desktopSize": "1280x720"}).json()
    assert made["success"], made
    client = official_client(server)
    session = client.get(made["data"]["sessionId"]).session
    try:
        assert session.computer.screen.get_size().data == {"width": 1280, "height": 720, "dpiScalingFactor": 1.0}
    finally:
        client.delete(session)


class Chromium:
    """Headless Chromium on the host, driven over its DevTools WebSocket (no extra client library)."""

    def __init__(self, tmp: Path) -> None:
        self.profile = tmp / "chromium-profile"
        self.process = subprocess.Popen(
            ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1280,760",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        wait_for(port_file.exists, 30, what="Chromium's DevTools port")
        port = wait_for(lambda: port_file.read_text().split("\n")[0].strip(), 10, what="the port number")
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
        self.page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.next_id = 0
        self.log: list[str] = []

    async def command(self, ws: Any, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return dict(message["result"])
            if message.get("method") in ("Log.entryAdded", "Runtime.exceptionThrown"):
                self.log.append(json.dumps(message["params"])[:300])

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)


# Counts the pixels of one colour on the noVNC canvas (the remote screen as the client drew it).
COUNT_COLOUR = """(() => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || !canvas.width) return -1;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] === %d && data[i + 1] === %d && data[i + 2] === %d) count++;
  }
  return count;
})()"""


def live_view(url: str, tmp: Path, colour: tuple[int, int, int]) -> tuple[str, int, Image.Image]:
    """Open ``url`` in headless Chromium; wait until the noVNC client shows ``colour``; return the page's
    status text, that colour's pixel count on the client's canvas, and a screenshot of the page."""
    import websockets

    browser = Chromium(tmp)

    async def run() -> tuple[str, int, Image.Image]:
        async with websockets.connect(browser.page_ws, max_size=None) as ws:
            await browser.command(ws, "Log.enable")
            await browser.command(ws, "Runtime.enable")
            await browser.command(ws, "Page.navigate", url=url)
            deadline = time.monotonic() + 45
            status, count = "", -1
            seen_log = 0
            while time.monotonic() < deadline and count < 10_000:
                await asyncio.sleep(0.2)
                # Sandboxes starting elsewhere add and remove host veths; Chromium aborts loads in flight
                # on such a change (ERR_NETWORK_CHANGED). That is the host browser's doing: load again.
                fresh, seen_log = browser.log[seen_log:], len(browser.log)
                if status != "live" and any("ERR_NETWORK_CHANGED" in line for line in fresh):
                    await browser.command(ws, "Page.navigate", url=url)
                    continue
                found = await browser.command(ws, "Runtime.evaluate", expression=COUNT_COLOUR % colour)
                count = int(found["result"].get("value", -1))
                text = await browser.command(ws, "Runtime.evaluate",
                                             expression="document.getElementById('status').textContent")
                status = str(text["result"].get("value", ""))
            shot = await browser.command(ws, "Page.captureScreenshot", format="png")
            if status != "live":
                status += "\n" + "\n".join(browser.log)
            return status, count, Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")

    try:
        return asyncio.run(run())
    finally:
        browser.close()


def test_live_view_shows_the_desktop_in_a_browser(server: ServerProcess, desktop: Any, tmp_path: Path) -> None:
    started = desktop.computer.app.start("xterm -bg '#ff00ff' -T live-view -geometry 120x40+100+100")
    assert started.success, started.error_message
    window_titled(desktop, "live-view")
    info = desktop.info()
    assert info.success and info.data["resource_type"] == "Desktop"
    url = info.data["resource_url"]
    assert url.startswith(f"{server.endpoint}/desktop/{desktop.session_id}/")
    status, magenta, page = live_view(url, tmp_path, (255, 0, 255))
    assert status == "live", f"{status} {magenta}\n{server.log()[-3000:]}"
    # The xterm's magenta background arrives through x11vnc, the relay and the noVNC client (a 120x40
    # xterm is ~700x500 pixels).
    assert magenta > 100_000, f"no magenta window on the live view ({magenta} pixels)"
    page.save(tmp_path / "live-view.png")

    view_only = json.loads(info.data["connection_properties"])["viewOnlyPage"]
    assert view_only != url and httpx.get(view_only).status_code == 200
    assert httpx.get(url.replace(desktop.session_id + "/", desktop.session_id + "/x")).status_code == 404
    assert desktop.computer.app.stop_by_pid(started.data[0].pid).success


async def rfb_pointer(ws_url: str, x: int, y: int) -> tuple[int, int]:
    """Speak RFB over the live view's WebSocket like noVNC does: handshake (no password), then move the
    pointer to (x, y). Returns the remote screen size from ServerInit."""
    import websockets

    buffer = bytearray()

    async def read(ws: Any, count: int) -> bytes:
        while len(buffer) < count:
            buffer.extend(await asyncio.wait_for(ws.recv(), 20))
        data = bytes(buffer[:count])
        del buffer[:count]
        return data

    async with websockets.connect(ws_url, subprotocols=["binary"], max_size=None) as ws:
        assert await read(ws, 12) == b"RFB 003.008\n"
        await ws.send(b"RFB 003.008\n")
        types = await read(ws, (await read(ws, 1))[0])
        assert 1 in types  # "None": the URL's secret is the credential, the VNC server is loopback-only
        await ws.send(b"\x01")
        assert await read(ws, 4) == b"\0\0\0\0"
        await ws.send(b"\x01")  # ClientInit, shared
        init = await read(ws, 24)
        await read(ws, int.from_bytes(init[20:24], "big"))
        await ws.send(bytes([5, 0]) + x.to_bytes(2, "big") + y.to_bytes(2, "big"))
        # RFB handles client messages in order: once a (non-incremental, 1x1) update request is answered,
        # the pointer event before it has been applied. A bounded read instead of a sleep.
        await ws.send(bytes([3, 0]) + (0).to_bytes(4, "big") + (1).to_bytes(2, "big") + (1).to_bytes(2, "big"))
        assert (await read(ws, 1))[0] == 0  # FramebufferUpdate
        return int.from_bytes(init[0:2], "big"), int.from_bytes(init[2:4], "big")


def test_live_view_takes_over_the_pointer_and_the_view_only_link_does_not(desktop: Any) -> None:
    properties = json.loads(desktop.info().data["connection_properties"])

    def cursor() -> dict[str, int]:
        return dict(json.loads(desktop.call_mcp_tool("get_cursor_position", {}).data))

    assert desktop.computer.mouse.move(10, 10).success
    assert asyncio.run(rfb_pointer(properties["viewOnlyUrl"], 700, 500)) == (1920, 1080)
    assert asyncio.run(rfb_pointer(properties["url"], 640, 480)) == (1920, 1080)
    wait_for(lambda: cursor() == {"x": 640, "y": 480}, 10, what="the VNC client's pointer on the desktop")
    assert asyncio.run(rfb_pointer(properties["viewOnlyUrl"], 700, 500)) == (1920, 1080)
    assert cursor() == {"x": 640, "y": 480}  # the view-only server ignored the pointer


def test_browser_init_opens_a_visible_chromium_on_the_desktop(desktop: Any) -> None:
    from agb.modules.browser import BrowserOption

    assert desktop.browser.initialize(BrowserOption())
    assert desktop.browser.get_endpoint_url().startswith("ws://")
    chromium = wait_for(lambda: next((w for w in windows(desktop) if w.pname == "chromium"), None), 20,
                        what="Chromium's window on the desktop")
    assert chromium.width > 600 and chromium.pid > 0
    assert desktop.computer.app.stop_by_pid(chromium.pid).success
