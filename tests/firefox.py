"""Debian's Firefox ESR driven over Marionette, its built-in remote protocol, for browser tests.

Playwright's own Firefox build cannot be installed here and geckodriver is not packaged, so this is a
small Marionette client of our own (the protocol: ``<length>:<json>`` frames; a command is
``[0, id, name, params]``, its answer ``[1, id, error, result]``). It knows the few WebDriver
commands the tests use.

The profile keeps Firefox off the network: DNS is disabled and every proxied scheme goes to a closed
loopback port, so the only hosts it can reach are loopback addresses (which bypass proxies); the
background services that would phone home are switched off besides.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

FIREFOX = shutil.which("firefox-esr") or "/usr/bin/firefox-esr"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

PREFS = {
    "marionette.port": 0,  # any free port; Firefox writes it to <profile>/MarionetteActivePort
    "network.dns.disabled": True,
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1", "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1", "network.proxy.ssl_port": 9,
    "network.proxy.socks": "127.0.0.1", "network.proxy.socks_port": 9,
    "network.proxy.share_proxy_settings": True,
    "network.trr.mode": 5,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.prefetch-next": False,
    "network.dns.disablePrefetch": True,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.newtabpage.enabled": False,
    "browser.region.network.url": "",
    "browser.search.update": False,
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "extensions.update.enabled": False,
    "extensions.blocklist.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "dom.push.connection.enabled": False,
    "geo.provider.network.url": "",
    "media.gmp-manager.url": "",
    "services.settings.server": "http://127.0.0.1:9/",
}


class Firefox:
    """A headless Firefox with a throwaway profile, and one Marionette connection to it."""

    def __init__(self, profile: Path, timeout_s: float = 60) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                                 for k, v in PREFS.items()))
        self.process = subprocess.Popen([FIREFOX, "--headless", "--marionette", "--no-remote", "--profile",
                                         str(profile), "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.next_id = 0
        try:
            port = self._active_port(profile / "MarionetteActivePort", timeout_s)
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
            self._receive()  # the greeting: {"applicationType": "gecko", "marionetteProtocol": 3}
            self.command("WebDriver:NewSession", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": False}}})
        except BaseException:
            self.close()
            raise

    def _active_port(self, path: Path, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while True:  # bounded wait for Firefox to start listening (no event to wait on)
            if path.exists() and path.read_text().strip():
                return int(path.read_text().strip())
            if self.process.poll() is not None:
                raise RuntimeError(f"firefox-esr exited with {self.process.returncode} before Marionette started")
            if time.monotonic() > deadline:
                raise TimeoutError("Firefox's Marionette port did not appear")
            time.sleep(0.05)

    def _receive(self) -> Any:
        head = b""
        while not head.endswith(b":"):
            byte = self.sock.recv(1)
            if not byte:
                raise ConnectionError("Marionette closed the connection")
            head += byte
        size = int(head[:-1])
        body = bytearray()
        while len(body) < size:
            piece = self.sock.recv(size - len(body))
            if not piece:
                raise ConnectionError("Marionette closed the connection")
            body += piece
        return json.loads(body)

    def command(self, name: str, params: dict[str, Any] | None = None) -> Any:
        self.next_id += 1
        data = json.dumps([0, self.next_id, name, params or {}]).encode()
        self.sock.sendall(str(len(data)).encode() + b":" + data)
        while True:
            kind, message_id, error, result = self._receive()
            if kind == 1 and message_id == self.next_id:
                if error:
                    raise AssertionError(f"{name}: {error.get('error')}: {error.get('message')}")
                return result

    # ---- the WebDriver commands the tests use -------------------------------------------------------

    def navigate(self, url: str) -> None:
        self.command("WebDriver:Navigate", {"url": url})

    def url(self) -> str:
        return str(self.command("WebDriver:GetCurrentURL")["value"])

    def find(self, css: str) -> str:
        return str(self.command("WebDriver:FindElement", {"using": "css selector", "value": css})["value"][ELEMENT])

    def type(self, css: str, text: str) -> None:
        self.command("WebDriver:ElementSendKeys", {"id": self.find(css), "text": text})

    def click(self, css: str) -> None:
        self.command("WebDriver:ElementClick", {"id": self.find(css)})

    def script(self, body: str, *args: Any) -> Any:
        return self.command("WebDriver:ExecuteScript", {"script": body, "args": list(args)})["value"]

    def wait_script(self, body: str, timeout_s: float = 30) -> Any:
        """Run ``body`` in the page until it returns a truthy value; that value."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = self.script(body)
            except AssertionError:  # e.g. the page is being replaced by a navigation
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting in Firefox for: {body}")
            time.sleep(0.05)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.command("WebDriver:TakeScreenshot", {"full": True})["value"])

    def close(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            try:
                self.command("Marionette:Quit", {"flags": ["eForceQuit"]})
            except (OSError, AssertionError, ValueError):
                pass
            sock.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
