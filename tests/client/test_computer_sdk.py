"""Our SDK's ``session.computer`` (same names as the official SDK's), over HTTP and embedded."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from tests.conftest import wait_for


def test_computer_api_over_both_backends(make_session: Any) -> None:
    session = make_session("agb-computer-use-ubuntu-2204", desktop_size="1024x768")
    computer = session.computer
    assert computer.screen.get_size().data == {"width": 1024, "height": 768, "dpiScalingFactor": 1.0}
    assert computer.get_screen_size().data["width"] == 1024  # deprecated flat method, same tool

    started = computer.app.start("xterm -T sdk-term", work_directory="/tmp")
    assert started.success, started.error_message
    pid = started.data[0].pid
    window = wait_for(lambda: next((w for w in computer.window.list_root_windows().windows if w.pid == pid), None),
                      15, what="the xterm window")
    assert window.title == "sdk-term" and window.pname == "xterm"
    assert computer.window.activate(window.window_id).success
    assert computer.get_active_window().window.window_id == window.window_id
    assert computer.keyboard.type("pwd > out.txt\n").success
    wait_for(lambda: session.file.read("/tmp/out.txt").content == "/tmp\n", 10, what="the typed command's output")

    assert computer.window.maximize(window.window_id).success
    grown = next(w for w in computer.list_root_windows().windows if w.window_id == window.window_id)
    assert grown.width > 900 and grown.height > 600
    assert computer.mouse.move(100, 200).success and computer.mouse.get_position().data == {"x": 100, "y": 200}
    with pytest.raises(ValueError):
        computer.mouse.scroll(1, 1, direction="sideways")

    shot = computer.screen.beta_take_screenshot("jpg")
    assert shot.success and shot.mime_type == "image/jpeg"
    assert Image.open(io.BytesIO(shot.data)).size == (1024, 768)
    url = computer.screen.capture()
    assert url.success and "/screenshots/" in url.data

    info = session.info().data
    assert info["resource_type"] == "Desktop" and info["resource_url"].endswith(info["auth_code"] + "/")
    assert "xterm" in {a.start_cmd for a in computer.app.list_installed().data}
    assert pid in {p.pid for p in computer.list_visible_apps().data}
    assert computer.app.stop_by_pid(pid).success
    assert pid not in {p.pid for p in computer.app.get_visible().data}
    assert not computer.app.stop_by_pname("no-such-app").success
