"""Links (issue 4): ``get_link`` URLs reach real servers inside real sandboxes.

Inside sessions we run ``python3 -m http.server 30100`` and ``link_app.py`` (stdlib web app with a
WebSocket echo, SSE, upload/download) on 30101, then reach them through their links with httpx,
websockets, the official SDK and headless Chromium. Nothing is mocked; every wait polls.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerProcess, wait_for

APP = (Path(__file__).parent / "link_app.py").read_text()
CHROMIUM = "/usr/bin/chromium"
MB = 1024 * 1024


def start_servers(session: Any) -> None:
    """http.server on 30100 (serving /tmp/www with hello.txt) and link_app.py on 30101."""
    command = (
        "mkdir -p /tmp/www && echo hello-from-the-sandbox > /tmp/www/hello.txt && "
        "cat > /tmp/link_app.py <<'AGBOX_EOF'\n" + APP + "\nAGBOX_EOF\n"
        "cd /tmp/www && nohup python3 -m http.server 30100 >/tmp/h.log 2>&1 &\n"
        "nohup python3 /tmp/link_app.py 30101 >/tmp/app.log 2>&1 &\n"
    )
    result = session.command.execute(command, timeout_ms=10_000)
    assert result.success, result.error_message


def link(session: Any, port: int | None = None, protocol: str | None = None) -> str:
    result = session.get_link(protocol, port)
    assert result.success, result.error_message
    assert isinstance(result.data, str)
    return result.data


def wait_answering(url: str, timeout_s: float = 20) -> httpx.Response:
    def answered() -> httpx.Response | None:
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response
        return None

    response: httpx.Response = wait_for(answered, timeout_s, interval_s=0.05, what=f"{url} to answer 200")
    return response


def base(url: str) -> str:
    """scheme://host:port of a link, without its secret prefix."""
    return url.split("/_agbox/")[0]


def sha256_pattern(n: int) -> str:
    block = hashlib.sha256(b"agbox").digest() * (1 << 15)
    digest = hashlib.sha256()
    while n > 0:
        piece = block[:min(n, len(block))]
        digest.update(piece)
        n -= len(piece)
    return digest.hexdigest()


# ---- both ways in (HTTP and embedded) ------------------------------------------------------------


def test_http_server_listing_and_refusals(make_session: Any) -> None:
    session = make_session()
    start_servers(session)
    url = link(session, 30100)
    assert url.startswith("http://127.0.0.1:") and "/_agbox/" in url and url.endswith("/")
    listing = wait_answering(url)
    assert "Directory listing" in listing.text and "hello.txt" in listing.text
    assert httpx.get(url + "hello.txt").text == "hello-from-the-sandbox\n"
    # Same link each time, and no port = the default link (the first port of the range).
    assert link(session, 30100) == url
    assert link(session) == url
    assert link(session, 30100, "ws").startswith("ws://")

    # The secret set a cookie: absolute paths work without the prefix (what a browser does).
    with httpx.Client() as client:
        assert client.get(url).status_code == 200
        assert client.get(base(url) + "/hello.txt").text == "hello-from-the-sandbox\n"

    missing = httpx.get(base(url) + "/hello.txt")
    assert missing.status_code == 401 and "secret" in missing.text
    secret = url.split("/_agbox/")[1].rstrip("/")
    wrong = httpx.get(f"{base(url)}/_agbox/{'0' * len(secret)}/hello.txt")
    assert wrong.status_code == 403 and "wrong link secret" in wrong.text
    bad_cookie = httpx.get(base(url) + "/hello.txt", headers={"cookie": f"agbox_link_{url.split(':')[2].split('/')[0]}=x"})
    assert bad_cookie.status_code == 403

    for port, words in ((30099, "outside the link port range 30100-30199"),
                        (30200, "outside the link port range 30100-30199")):
        result = session.get_link(port=port)
        assert not result.success and words in result.error_message
    result = session.get_link("https", 30100)
    assert not result.success and "TLS" in result.error_message
    result = session.get_link("gopher", 30100)
    assert not result.success and "protocolType" in result.error_message

    # Nothing listening: a prompt 502 with a readable message.
    started = time.monotonic()
    empty = httpx.get(link(session, 30150), timeout=10)
    assert empty.status_code == 502 and "nothing is listening on port 30150" in empty.text
    assert time.monotonic() - started < 3


def test_ended_session_link_stops_at_once(make_session: Any) -> None:
    session = make_session()
    start_servers(session)
    url = link(session, 30101)
    wait_answering(url + "ping")
    with httpx.Client(timeout=10) as client, client.stream("GET", url + "sse") as stream:
        lines = stream.iter_lines()
        assert next(lines) == "data: one"
        assert session.delete().success
        # The open stream is cut, and new connections are refused.
        with pytest.raises((httpx.HTTPError, StopIteration)):
            while True:
                if next(lines) == "data: two":
                    pytest.fail("the stream of an ended session went on")
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "ping", timeout=5)


def test_sessions_do_not_reach_each_other(make_session: Any) -> None:
    a, b = make_session(), make_session()
    for session, word in ((a, "alpha"), (b, "beta")):
        result = session.command.execute(
            f"mkdir -p /tmp/w && echo {word} > /tmp/w/who.txt && cd /tmp/w && "
            "nohup python3 -m http.server 30100 >/tmp/h.log 2>&1 &", timeout_ms=10_000)
        assert result.success, result.error_message
    url_a, url_b = link(a, 30100), link(b, 30100)
    assert base(url_a) != base(url_b)
    assert wait_answering(url_a + "who.txt").text == "alpha\n"
    assert wait_answering(url_b + "who.txt").text == "beta\n"
    secret_a = url_a.split("/_agbox/")[1]
    assert httpx.get(f"{base(url_b)}/_agbox/{secret_a}who.txt").status_code == 403


# ---- the official SDK --------------------------------------------------------------------------


def test_official_sdk_get_link(official_session: Any) -> None:
    result = official_session.command.execute(
        "mkdir -p /tmp/www && echo official > /tmp/www/o.txt && cd /tmp/www && "
        "nohup python3 -m http.server 30100 >/tmp/h.log 2>&1 &", timeout_ms=10_000)
    assert result.success, result.error_message
    got = official_session.get_link(port=30100)
    assert got.success, got.error_message
    listing = wait_answering(got.data)
    assert "o.txt" in listing.text
    bad = official_session.get_link(port=31000)
    assert not bad.success


def test_mcp_get_link_path(server: ServerProcess, official_session: Any) -> None:
    response = httpx.get(f"{server.endpoint}/mcp/getLink", headers={"authorization": f"Bearer {server.api_key}"},
                         params={"sessionId": official_session.get_session_id(), "port": "30100"})
    body = response.json()
    assert body["success"] and body["data"]["url"].startswith("http://127.0.0.1:")


# ---- one app session over HTTP: browser, WebSocket, streaming, big bodies ----------------------------


@pytest.fixture(scope="module")
def app_url(server: ServerProcess) -> Iterator[str]:
    from agbox import AGB, CreateSessionParams

    client = AGB(api_key=server.api_key, endpoint=server.endpoint)
    result = client.create(CreateSessionParams(image_id="agb-code-space-1"))
    assert result.success, result.error_message
    session = result.session
    try:
        start_servers(session)
        url = link(session, 30101)
        wait_answering(url + "ping")
        yield url
    finally:
        session.delete()
        client.close()


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")
def test_chromium_renders_app_with_absolute_paths(app_url: str, make_session: Any, tmp_path: Path) -> None:
    # The page loads /static/x.js by an absolute path; the script rewrites the heading.
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", app_url + "app/", tmp=tmp_path)
    assert "absolute-path-ok" in dom.stdout, dom.stderr[-2000:]
    # And a screenshot of the http.server listing (the demo).
    session = make_session()
    start_servers(session)
    listing = link(session, 30100)
    wait_answering(listing)
    shot = tmp_path / "listing.png"
    done = chromium(f"--screenshot={shot}", "--window-size=800,600", listing, tmp=tmp_path)
    assert shot.exists(), done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_websocket_echo(app_url: str) -> None:
    ws_url = "ws://" + app_url.split("://", 1)[1] + "ws"
    with ws_connect(ws_url, max_size=8 * MB, open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        blob = os.urandom(MB)
        ws.send(blob)
        assert ws.recv(timeout=10) == blob
        ws.ping().wait(10)


def test_sse_streams_before_the_response_ends(app_url: str) -> None:
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", app_url + "sse") as stream:
            lines = stream.iter_lines()
            assert next(lines) == "data: one"  # arrived while the response is still open
            assert client.post(app_url + "release").text == "released"
            rest = [line for line in lines if line]
        assert rest == ["data: two"]


def test_headers_status_redirects_pass_through(app_url: str) -> None:
    with httpx.Client(timeout=10) as client:
        redirect = client.get(app_url + "redirect")
        assert redirect.status_code == 302 and redirect.headers["location"] == "/static/x.js"
        assert client.get(base(app_url) + redirect.headers["location"]).status_code == 200
        assert client.get(app_url + "nothing-here").status_code == 404
        echoed = client.get(app_url + "headers?x=1", headers={"x-custom": "v1", "cookie": "app=1; agbox_link_1=zz"})
        seen = {k.lower(): v for k, v in echoed.json()["headers"]}
        assert echoed.json()["path"] == "/headers?x=1"
        assert seen["x-custom"] == "v1"
        # The app sees its own cookies, never link secrets (its own or another link's).
        assert seen["cookie"] == "app=1"
        # Keep-alive: many requests over one connection.
        for _ in range(20):
            assert client.get(app_url + "ping").text == "pong"


def test_new_client_connections_reuse_the_upstream_and_survive_its_close(app_url: str) -> None:
    # A client that opens a connection per request (Connection: close) still gets one upstream
    # connection: the relay keeps it for the link's next client (no connect inside the sandbox).
    def one_shot(path: str) -> httpx.Response:
        with httpx.Client(timeout=10, headers={"connection": "close"}) as client:
            return client.get(app_url + path)

    first, second = one_shot("peer"), one_shot("peer")
    assert first.status_code == second.status_code == 200
    assert first.text == second.text
    # The app closes its side without saying so (as a keep-alive timeout does): the next request,
    # on the same client connection or a new one, goes out again on a fresh upstream connection.
    with httpx.Client(timeout=10) as client:
        assert client.get(app_url + "drop").text == "dropped"
        again = client.get(app_url + "peer")
        assert again.status_code == 200 and again.text != first.text
        assert client.get(app_url + "drop").text == "dropped"
    assert one_shot("ping").text == "pong"
    assert one_shot("drop").text == "dropped"
    assert one_shot("ping").text == "pong"


def test_large_download_and_upload_intact(app_url: str) -> None:
    size = int(os.environ.get("AGBOX_LINK_TEST_MB", "64")) * MB
    digest, total = hashlib.sha256(), 0
    with httpx.stream("GET", f"{app_url}bytes?n={size}", timeout=60) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes(MB):
            digest.update(chunk)
            total += len(chunk)
    assert total == size and digest.hexdigest() == sha256_pattern(size)

    payload = os.urandom(size)
    answer = httpx.post(app_url + "upload", content=payload, timeout=60).json()
    assert answer == {"sha256": hashlib.sha256(payload).hexdigest(), "length": size}

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for start in range(0, 16 * MB, MB):
            yield payload[start:start + MB]

    answer = httpx.put(app_url + "upload", content=chunks(), timeout=60).json()
    assert answer == {"sha256": hashlib.sha256(payload[:16 * MB]).hexdigest(), "length": 16 * MB}


def test_chunked_and_until_close_answers_intact(app_url: str) -> None:
    # Both other ways a body can end: chunk framing passed through (and its pieces spliced), and the
    # end of the connection (recv/send for small reads, splice once reads come back full).
    size = 8 * MB + 333
    for route in ("bytes-chunked", "bytes-eof"):
        digest, total = hashlib.sha256(), 0
        with httpx.stream("GET", f"{app_url}{route}?n={size}", timeout=60) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes(MB):
                digest.update(chunk)
                total += len(chunk)
        assert (route, total, digest.hexdigest()) == (route, size, sha256_pattern(size))


def test_link_json_error_is_not_html(app_url: str) -> None:
    # A refused request is short plain text, readable by people and tools.
    response = httpx.get(base(app_url) + "/ping")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/plain")
    assert json.dumps(response.text)




def test_links_honour_public_url(tmp_path: Path) -> None:
    from agbox import AGB, CreateSessionParams
    from tests.conftest import free_port, start_server

    port = free_port()
    srv = start_server(tmp_path / "data", port=port, extra_env={"AGBOX_PUBLIC_URL": f"http://localhost:{port}/"})
    client = AGB(api_key=srv.api_key, endpoint=srv.endpoint)
    try:
        session = client.create(CreateSessionParams(image_id="agb-code-space-1")).session
        result = session.command.execute("cd /tmp && nohup python3 -m http.server 30100 >/tmp/h.log 2>&1 &",
                                         timeout_ms=10_000)
        assert result.success, result.error_message
        url = link(session, 30100)
        assert url.startswith("http://localhost:")
        assert "Directory listing" in wait_answering(url).text
        session.delete()
    finally:
        client.close()
        srv.stop()
