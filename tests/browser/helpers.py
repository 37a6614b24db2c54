"""Helpers of the browser tests: a page served inside the session, PNG checks, a full-size fingerprint."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from tests.conftest import wait_for

PAGE_PORT = 8000
PAGE_HTML = ("<!doctype html><html><head><title>agbox test page</title></head>"
             "<body><h1 id='greeting'>Hello from inside the session</h1>"
             "<script>document.cookie = 'visited=yes; max-age=3600';</script></body></html>")


def serve_page(session: Any, html: str = PAGE_HTML, port: int = PAGE_PORT) -> str:
    """Serve ``html`` at http://127.0.0.1:<port>/ inside the session (python3 -m http.server, in the background)."""
    encoded = base64.b64encode(html.encode()).decode()
    started = session.command.execute(
        f"mkdir -p /tmp/site && echo {encoded} | base64 -d > /tmp/site/index.html && cd /tmp/site && "
        f"(setsid python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &)", timeout_ms=10000)
    assert started.exit_code == 0, started.stderr
    probe = f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1)'"
    wait_for(lambda: session.command.execute(probe, timeout_ms=5000).exit_code == 0, 15, 0.05,
             what="the page server inside the session")
    return f"http://127.0.0.1:{port}/"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG; fails the test if the bytes are not a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


EXAMPLE_USER_AGENT = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "Chrome/142.0.0.0 Safari/537.36")


def example_fingerprint() -> dict[str, Any]:
    """A fingerprint in the SDK's FingerprintFormat shape, as large as a real one (~10 KB as base64)."""
    fonts = ["Arial", "Arial Black", "Arial Narrow", "Calibri", "Cambria", "Cambria Math", "Comic Sans MS",
             "Consolas", "Courier", "Courier New", "Georgia", "Helvetica", "Impact", "Lucida Console",
             "Lucida Sans Unicode", "Microsoft Sans Serif", "MS Gothic", "MS PGothic", "MS Sans Serif",
             "MS Serif", "Palatino Linotype", "Segoe Print", "Segoe Script", "Segoe UI", "Segoe UI Light",
             "Segoe UI Semibold", "Segoe UI Symbol", "Tahoma", "Times", "Times New Roman", "Trebuchet MS",
             "Verdana", "Wingdings", "Menlo", "Monaco", "Avenir", "Avenir Next", "Futura", "Geneva",
             "Gill Sans", "Helvetica Neue", "Optima", "Skia", "Baskerville", "Didot", "American Typewriter"]
    brands = [{"brand": "Chromium", "version": "142"}, {"brand": "Google Chrome", "version": "142"},
              {"brand": "Not_A Brand", "version": "99"}]
    return {
        "fingerprint": {
            "screen": {"availHeight": 875, "availWidth": 1512, "availTop": 38, "availLeft": 0, "colorDepth": 30,
                       "height": 982, "pixelDepth": 30, "width": 1512, "devicePixelRatio": 2, "pageXOffset": 0,
                       "pageYOffset": 0, "innerHeight": 0, "outerHeight": 875, "outerWidth": 1512, "innerWidth": 0,
                       "screenX": 0, "clientWidth": 0, "clientHeight": 19, "hasHDR": True},
            "navigator": {
                "userAgent": EXAMPLE_USER_AGENT,
                "userAgentData": {"brands": brands, "mobile": False, "platform": "macOS", "architecture": "arm",
                                  "bitness": "64", "fullVersionList": brands, "model": "",
                                  "platformVersion": "15.1.0", "uaFullVersion": "142.0.7444.60"},
                "doNotTrack": "null", "appCodeName": "Mozilla", "appName": "Netscape",
                "appVersion": EXAMPLE_USER_AGENT[8:], "oscpu": "", "webdriver": "false", "language": "en-US",
                "languages": ["en-US", "en"], "platform": "MacIntel", "deviceMemory": 8, "hardwareConcurrency": 10,
                "product": "Gecko", "productSub": "20030107", "vendor": "Google Inc.", "vendorSub": "",
                "maxTouchPoints": 0,
                "extraProperties": {"vendorFlavors": ["chrome"], "isBluetoothSupported": False,
                                    "globalPrivacyControl": None, "pdfViewerEnabled": True, "installedApps": []},
            },
            "videoCodecs": {"ogg": "", "h264": "probably", "webm": "probably"},
            "audioCodecs": {"ogg": "probably", "mp3": "probably", "wav": "probably", "m4a": "maybe", "aac": "probably"},
            "pluginsData": {"plugins": json.dumps([{"name": f"PDF Viewer {i}", "description": "Portable Document Format",
                                                     "filename": "internal-pdf-viewer",
                                                     "mimeTypes": [{"type": "application/pdf", "suffixes": "pdf"}]}
                                                    for i in range(12)]),
                            "mimeTypes": json.dumps([f"Portable Document Format~~application/pdf~~pdf {i}"
                                                     for i in range(2)])},
            "battery": {"charging": "true", "chargingTime": "0", "dischargingTime": "null", "level": "1"},
            "videoCard": {"renderer": "ANGLE (Apple, ANGLE Metal Renderer: Apple M3 Pro, Unspecified Version)",
                          "vendor": "Google Inc. (Apple)"},
            "multimediaDevices": ["audioinput", "audiooutput", "videoinput"] * 4,
            "fonts": fonts,
            "mockWebRTC": False,
            "slim": False,
        },
        "headers": {"user-agent": EXAMPLE_USER_AGENT, "accept-language": "en-US,en;q=0.9",
                    "sec-ch-ua": '"Chromium";v="142", "Google Chrome";v="142", "Not_A Brand";v="99"',
                    "sec-ch-ua-mobile": "?0", "sec-ch-ua-platform": '"macOS"', "upgrade-insecure-requests": "1",
                    "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
                    "sec-fetch-site": "none", "sec-fetch-mode": "navigate", "sec-fetch-user": "?1",
                    "sec-fetch-dest": "document", "accept-encoding": "gzip, deflate, br, zstd"},
    }
