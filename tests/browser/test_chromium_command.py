"""BrowserOption → Chromium command line (pure functions; the browser tests run the result for real)."""

from __future__ import annotations

import base64
import json
import random

import pytest

from agbox.errors import InvalidRequestError
from agbox.services.chromium import chromium_command, fingerprint_user_agent, generate_fingerprint, parse_option
from tests.browser.helpers import EXAMPLE_USER_AGENT, example_fingerprint


def test_default_option_of_the_sdk() -> None:
    # BrowserOption().to_map() of the official SDK.
    option = parse_option('{"useStealth": false, "solveCaptchas": false, "extensionPath": "/tmp/extensions/"}')
    command = chromium_command(option)
    argv = command.argv
    assert argv[0] == "/usr/lib/chromium/chromium" and argv[-1] == "about:blank"
    assert "--user-data-dir=/tmp/agb_browser_data" in argv and "--password-store=basic" in argv
    assert "--remote-debugging-address=127.0.0.1" in argv and "--headless" in argv
    assert "--window-size=1920,1080" in argv and not any(a.startswith("--user-agent") for a in argv)
    assert command.env == {}


def test_options_map_to_flags() -> None:
    option = parse_option(json.dumps({
        "useStealth": True, "userAgent": "UA/1", "viewport": {"width": 1366, "height": 768},
        "screen": {"width": 1600, "height": 900}, "proxies": [{"type": "custom", "server": "http://10.0.0.1:3128"}],
        "cmdArgs": ["--ignore-certificate-errors", "--remote-debugging-port=1", "--user-data-dir=/x"],
        "defaultNavigateUrl": "chrome://version/", "browserType": "chrome", "fingerprint": {"locales": ["zh-CN"]}}))
    argv = chromium_command(option, extensions=["/tmp/extensions/a", "/tmp/extensions/b"]).argv
    assert "--disable-blink-features=AutomationControlled" in argv and "--user-agent=UA/1" in argv
    assert "--window-size=1366,768" in argv and "--screen-info={1600x900}" in argv
    assert "--proxy-server=http://10.0.0.1:3128" in argv and "--lang=zh-CN" in argv
    assert "--load-extension=/tmp/extensions/a,/tmp/extensions/b" in argv
    assert "--ignore-certificate-errors" in argv and argv[-1] == "chrome://version/"
    # agbox owns the DevTools port and the profile: callers cannot move them.
    assert "--remote-debugging-port=1" not in argv and "--user-data-dir=/x" not in argv


def test_desktop_display_gives_a_window() -> None:
    command = chromium_command(parse_option("{}"), display=":1")
    assert command.env["DISPLAY"] == ":1" and "--headless" not in command.argv
    assert "--start-maximized" in command.argv


def test_fingerprints() -> None:
    raw = base64.b64encode(json.dumps(example_fingerprint()).encode()).decode()
    option = parse_option({"fingerprintRawData": raw})
    assert option.fingerprint_raw is not None
    assert f"--user-agent={EXAMPLE_USER_AGENT}" in chromium_command(option, fingerprint=option.fingerprint_raw).argv
    spec = parse_option({"fingerprint": {"devices": ["desktop"], "operatingSystems": ["windows"], "locales": ["zh-CN"]}})
    generated = generate_fingerprint(spec, random.Random(1))
    assert "Windows NT 10.0" in fingerprint_user_agent(generated)
    assert generated["fingerprint"]["navigator"]["language"] == "zh-CN"


@pytest.mark.parametrize(("raw", "message"), [
    ("{", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"useStealth": "yes"}', "useStealth must be a boolean"),
    ('{"viewport": {"width": 0, "height": 10}}', "viewport.width"),
    ('{"browserType": "firefox"}', "'chrome' or 'chromium'"),
    ('{"proxies": [{"type": "managed", "strategy": "sticky"}]}', "not available on agbox"),
    ('{"proxies": [{"type": "custom", "server": "http://p:1", "username": "u"}]}', "username/password"),
    ('{"cmdArgs": "--x"}', "cmdArgs must be a list of strings"),
    ('{"fingerprint": {"operatingSystems": ["beos"]}}', "'beos' is not one of"),
    ('{"fingerprintRawData": "not base64!"}', "fingerprintRawData is not base64"),
    ('{"fingerprintPersistPath": "relative.json"}', "absolute path"),
])
def test_bad_options_are_named_precisely(raw: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        parse_option(raw)
