"""Hardening (issue 13): each defect a hostile client found, reproduced against a real `agbox serve`.

Every bad input gets a 4xx-class envelope with a clear message (never an InternalError / HTTP 500 and
never a traceback); revocation takes effect on a running server within two seconds; a failed create
leaves nothing behind; paging cannot loop; streams end with their session; the server works when
started as a background job of an interactive shell; logs stay quiet about clients that go away.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from agbox.server.operations import OPERATIONS
from tests.conftest import API_KEY, ServerProcess, free_port, start_server, wait_for

DEEP = 100_000


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.endpoint, headers={"authorization": f"Bearer {server.api_key}"},
                      timeout=60) as client:
        yield client


@pytest.fixture
def session(http: httpx.Client) -> Iterator[dict[str, Any]]:
    data = http.post("/mcp/createSession", params={"imageId": "agb-code-space-1"}, json={}).json()
    assert data["success"], data
    yield data["data"]
    http.post("/mcp/releaseSession", json={"sessionId": data["data"]["sessionId"]})


def agbox_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agbox", *args], capture_output=True, text=True, timeout=60)


def refused(body: dict[str, Any], words: str, code: str = "InvalidParameter") -> None:
    """A clear client error: success=false, a 4xx httpStatusCode, the expected code and words."""
    assert body["success"] is False, body
    assert body["code"] == code and 400 <= body["httpStatusCode"] < 500, body
    assert words in body["message"], body
    assert "Traceback" not in body["message"] and len(body["message"]) < 2100


def active_ids(http: httpx.Client) -> set[str]:
    listed = http.get("/sdk/ListSession", params={"maxResults": "1000"}).json()
    return {item["sessionId"] for item in listed["data"]}


# ---- 1. revocation ---------------------------------------------------------------------------------------


def test_revoked_key_stops_working_within_two_seconds(server: ServerProcess) -> None:
    made = agbox_cli("keys", "create", "--name", "doomed", "--data-dir", str(server.data_dir))
    key_id, key = made.stdout.strip().split("\t")
    with httpx.Client(base_url=server.endpoint, headers={"authorization": f"Bearer {key}"}, timeout=60) as client:
        created = client.post("/mcp/createSession", params={"imageId": "agb-code-space-1"}, json={}).json()
        assert created["success"], created
        session_id = created["data"]["sessionId"]
        assert client.post("/mcp/getSession", json={"sessionId": session_id}).json()["success"]  # key now cached
        assert agbox_cli("keys", "revoke", key_id, "--data-dir", str(server.data_dir)).returncode == 0
        revoked_at = time.monotonic()

        def refused_now() -> bool:
            return client.post("/mcp/getSessionInfo", json={"sessionId": session_id}).json()["code"] == "InvalidApiKey"

        wait_for(refused_now, 2.0, interval_s=0.02, what="the revoked key to be refused")
        assert time.monotonic() - revoked_at < 2.0
    # Its sessions are released by the server (not handed to anyone): FINISH, reason recorded.
    def finished() -> bool:
        listed = agbox_cli("sessions", "list", "--all", "--data-dir", str(server.data_dir)).stdout
        return any(line.startswith(session_id) and "FINISH" in line and "API key revoked" in line
                   for line in listed.splitlines())

    wait_for(finished, 10, interval_s=0.2, what="the revoked key's session to be released")


# ---- 2-4. hostile JSON, surrogates, numbers ---------------------------------------------------------------


def test_deeply_nested_json_is_refused_everywhere(server: ServerProcess, http: httpx.Client,
                                                 session: dict[str, Any]) -> None:
    deep = "[" * DEEP + "]" * DEEP
    body = '{"sessionId": ' + deep + "}"
    posts = sorted({o.path for o in OPERATIONS.values() if o.method == "POST" and o.auth == "apiKey"})
    assert len(posts) >= 19
    for path in posts:
        answer = http.post(path, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
        refused(answer.json(), "nested too deeply")
    link = httpx.post(f"{server.endpoint}/link/{session['sessionId']}/callTool", content=body,
                      headers={"X-Access-Token": session["token"], "content-type": "application/json"})
    assert link.status_code == 400, link.text[:300]
    refused(link.json(), "nested too deeply")
    # (a URL holds less: 2000 levels are already far past the limit)
    refused(http.get("/sdk/ListSession", params={"labels": "[" * 2000 + "]" * 2000}).json(), "nested too deeply")
    args = http.post("/mcp", json={"sessionId": session["sessionId"], "name": "shell", "args": deep}).json()
    refused(args, "nested too deeply")
    mcp = httpx.post(f"{server.endpoint}/sessions/{session['sessionId']}/mcp", content=body,
                     headers={"Authorization": f"Bearer {session['token']}", "content-type": "application/json",
                              "accept": "application/json, text/event-stream"})
    assert 400 <= mcp.status_code < 500, (mcp.status_code, mcp.text[:300])
    ws_url = session["wsUrl"]
    with ws_connect(ws_url, additional_headers={"X-Access-Token": session["token"]}, max_size=None) as ws:
        for _ in range(2):  # the socket survives the bad frame and answers the next one too
            ws.send('{"invocationId": "i1", "data": ' + deep + "}")
            frame = json.loads(ws.recv(timeout=10))
            assert frame["data"]["phase"] == "error" and "nested too deeply" in frame["data"]["error"], frame


def test_lone_surrogates_and_non_ascii_tokens(server: ServerProcess, http: httpx.Client,
                                               session: dict[str, Any]) -> None:
    def post(path: str, raw: str, **params: str) -> dict[str, Any]:
        answer = http.post(path, params=params, content=raw.encode(), headers={"content-type": "application/json"})
        assert answer.status_code == 200, answer.text[:300]
        return dict(answer.json())

    refused(post("/mcp/getSession", '{"sessionId": "\\ud800"}'), "surrogate")
    refused(post("/mcp/createSession", '{"labels": {"a": "\\udfff"}}', imageId="agb-code-space-1"), "surrogate")
    refused(post("/mcp/createSession", '{"labels": "{\\"a\\": \\"\\\\ud800\\"}"}', imageId="agb-code-space-1"),
            "surrogate")
    refused(post("/sdk/ModifyContext", '{"id": "x", "name": "\\ud800"}'), "surrogate")
    refused(post("/sdk/GetContextFileUploadUrl", '{"contextId": "\\ud83d", "filePath": "a"}'), "surrogate")
    # Non-ASCII session tokens are wrong tokens, not crashes.
    token_query = f"{server.endpoint}/link/{session['sessionId']}/callTool?token=%C3%A9t%C3%A9"
    answer = httpx.post(token_query, json={"tool": "shell", "args": {}})
    assert answer.status_code == 401 and answer.json()["code"] == "InvalidApiKey"
    answer = httpx.post(f"{server.endpoint}/link/{session['sessionId']}/callTool", json={"tool": "shell"},
                        headers={"X-Access-Token": "été".encode("latin-1")})
    assert answer.status_code == 401
    with pytest.raises(Exception) as closed:
        with ws_connect(session["wsUrl"] + "?token=%C3%A9", open_timeout=10) as ws:
            ws.recv(timeout=10)
    assert "1008" in str(closed.value) or "403" in str(closed.value), closed.value
    for method in ("GET", "PUT"):
        answer = httpx.request(method, f"{server.endpoint}/context-objects/%C3%A9t%C3%A9.%F0%9F%98%80", content=b"x")
        assert answer.status_code == 403, (method, answer.status_code, answer.text)


def test_non_finite_and_wrong_typed_numbers(http: httpx.Client, session: dict[str, Any]) -> None:
    def post(path: str, raw: str, **params: str) -> dict[str, Any]:
        return dict(http.post(path, params=params, content=raw.encode(),
                              headers={"content-type": "application/json"}).json())

    refused(post("/mcp/createSession", '{"timeout": Infinity}', imageId="agb-code-space-1"), "Infinity")
    refused(post("/mcp/createSession", '{"timeout": NaN}', imageId="agb-code-space-1"), "NaN")
    refused(post("/mcp/createSession", '{"timeout": 1e999}', imageId="agb-code-space-1"), "out of range")
    refused(post("/mcp/createSession", '{"timeout": 12.5}', imageId="agb-code-space-1"), "timeout must be an integer")
    refused(post("/mcp/createSession", '{"mcpPolicyId": ["a"]}', imageId="agb-code-space-1"),
            "mcpPolicyId must be a string")
    refused(post("/sdk/DescribeContextFiles", '{"contextId": "c", "pageNumber": Infinity}'), "Infinity")
    refused(post("/sdk/DescribeContextFiles", '{"contextId": "c", "pageNumber": "9e9"}'), "pageNumber")
    refused(post("/sdk/GetAndLoadInternalContext", json.dumps({"sessionId": session["sessionId"], "contextTypes": 5})),
            "contextTypes")
    refused(dict(http.get("/internet/getLink", params={"sessionId": session["sessionId"], "port": "1e3"}).json()),
            "port must be an integer")
    refused(dict(http.get("/sdk/ListSession", params={"maxResults": "99999999999999999999999"}).json()),
            "maxResults")


# ---- 5. create is all or nothing ---------------------------------------------------------------------------


def test_bad_persistence_list_creates_nothing(http: httpx.Client) -> None:
    before = active_ids(http)
    context = http.get("/sdk/GetContext", params={"name": "harden-ctx", "allowCreate": "true"}).json()["data"]
    bad_lists: list[Any] = [
        "not json", 5, {"contextId": context["id"]}, [5], [{"contextId": context["id"], "path": 7}],
        [{"contextId": "no-such-context", "path": "/home/user/x"}],
        [{"contextId": context["id"], "path": "/home/user/x", "policy": "{broken"}],
        [{"contextId": context["id"], "path": "/home/user/x", "policy": {"recyclePolicy": {"paths": 5}}}],
        [{"contextId": context["id"], "path": "/home/user/x"}, {"contextId": context["id"], "path": ""}],
    ]
    for bad in bad_lists:
        answer = http.post("/mcp/createSession", params={"imageId": "agb-code-space-1"},
                           json={"persistenceDataList": bad}).json()
        assert answer["success"] is False and answer["httpStatusCode"] in (400, 404), (bad, answer)
        assert active_ids(http) == before, f"{bad!r} left a session behind"


# ---- 6. paging --------------------------------------------------------------------------------------------


def test_forged_negative_page_token_is_refused(http: httpx.Client) -> None:
    for path in ("/sdk/ListSession", "/sdk/ListContexts"):
        refused(http.get(path, params={"nextToken": "LTE="}).json(), "nextToken")
        refused(http.get(path, params={"nextToken": "%%%"}).json(), "nextToken")
    # A token past the end (the listing shrank) is the last page: empty, no further token.
    answer = http.get("/sdk/ListSession", params={"nextToken": "OTk5OTk="}).json()
    assert answer["success"] and answer["data"] == [] and answer["nextToken"] == ""


# ---- 7. streams end with their session and are bounded -----------------------------------------------------


def test_mcp_get_stream_is_refused_and_websockets_end_with_the_session(server: ServerProcess, http: httpx.Client,
                                                                       session: dict[str, Any]) -> None:
    mcp_url = f"{server.endpoint}/sessions/{session['sessionId']}/mcp"
    answer = httpx.get(mcp_url, headers={"Authorization": f"Bearer {session['token']}",
                                         "Accept": "text/event-stream"}, timeout=10)
    assert answer.status_code == 405 and "stateless" in answer.json()["message"]
    headers = {"X-Access-Token": session["token"]}
    sockets = [ws_connect(session["wsUrl"], additional_headers=headers) for _ in range(8)]
    try:
        with pytest.raises(Exception) as too_many:
            with ws_connect(session["wsUrl"], additional_headers=headers) as extra:
                extra.recv(timeout=10)
        assert "too many open streams" in str(too_many.value), too_many.value
        http.post("/mcp/releaseSession", json={"sessionId": session["sessionId"]})
        for ws in sockets:
            with pytest.raises(Exception) as ended:
                ws.recv(timeout=10)
            assert "1001" in str(ended.value) or "session released" in str(ended.value), ended.value
    finally:
        for ws in sockets:
            ws.close()


# ---- 8. started as a background job of an interactive shell ------------------------------------------------


def test_server_started_with_a_bare_ampersand_in_a_terminal(tmp_path: Path) -> None:
    """`agbox serve &` typed into an interactive bash on a terminal with `stty tostop`: the server is a
    background job whose writes to the terminal would stop it (SIGTTOU), and its stdin is the terminal."""
    data_dir, port = tmp_path / "data", free_port()
    pid, fd = pty.fork()
    if pid == 0:  # the child: an interactive shell on the pty (job control on)
        os.environ["AGBOX_API_KEY"] = API_KEY
        os.environ.pop("AGB_ENDPOINT", None)
        os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
    output = bytearray()

    def drain() -> None:  # a terminal emulator reads everything the shell and its jobs write
        with contextlib.suppress(OSError):
            while chunk := os.read(fd, 65536):
                output.extend(chunk)

    threading.Thread(target=drain, daemon=True).start()
    server_pid = 0
    try:
        os.write(fd, f"stty tostop; cd {Path.cwd()}; {sys.executable} -m agbox serve --port {port} "
                     f"--data-dir {data_dir} &\n".encode())
        endpoint = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{endpoint}/health", timeout=1).status_code == 200
            return False

        wait_for(healthy, 30, interval_s=0.05, what=f"a background `agbox serve` to answer; terminal:\n{output!r}")
        server_pid = int((data_dir / "lock").read_text())
        with httpx.Client(base_url=endpoint, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
            created = client.post("/mcp/createSession", params={"imageId": "agb-code-space-1"}, json={}).json()
            session_id = created["data"]["sessionId"]
            command = ("mkdir -p /tmp/www && echo hello-bg > /tmp/www/hello.txt && cd /tmp/www && "
                       "nohup python3 -m http.server 30100 >/tmp/h.log 2>&1 &")
            ran = client.post("/mcp", json={"sessionId": session_id, "name": "shell",
                                            "args": json.dumps({"command": command, "timeout_ms": 10000})}).json()
            assert ran["success"], ran
            url = client.get("/internet/getLink", params={"sessionId": session_id, "port": "30100"}).json()["data"]["url"]

            def served() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return httpx.get(url + "hello.txt", timeout=5).text == "hello-bg\n"
                return False

            wait_for(served, 20, interval_s=0.05, what="the link to answer")
        state = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state != "T", "the server was stopped by a terminal signal"
    finally:
        if not server_pid and (data_dir / "lock").exists():
            with contextlib.suppress(ValueError):
                server_pid = int((data_dir / "lock").read_text())
        if server_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server_pid, signal.SIGTERM)
            wait_for(lambda: not Path(f"/proc/{server_pid}").exists() or
                     Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                     30, interval_s=0.05, what="the background server to stop")
        with contextlib.suppress(OSError):
            os.write(fd, b"exit\n")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)


# ---- 9. logs, cgroups, error text -------------------------------------------------------------------------


def cgroup_dirs(name: str) -> list[Path]:
    """Our parent groups: under a controller, possibly nested in this process's own group."""
    root = Path("/sys/fs/cgroup")
    return [p for depth in range(4) for p in root.glob("/".join(["*"] * depth + [name]))]



def test_quiet_logs_clean_stop_and_bounded_error_text(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", extra_args=["--log-level", "info"])
    try:
        with httpx.Client(base_url=srv.endpoint, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
            # A 10 MB id is not echoed back whole.
            answer = http.post("/mcp/getSession", json={"sessionId": "s" * 10_000_000})
            assert len(answer.content) < 4000, len(answer.content)
            refused(answer.json(), "sessionId is too long")
            created = http.post("/mcp/createSession", params={"imageId": "agb-code-space-1"}, json={}).json()
            session_id = created["data"]["sessionId"]
            # Tool errors speak of the problem, not of Python exception classes.
            for name, args in (("read_file", {"path": "/nope/missing"}), ("list_directory", {"path": "/nope"}),
                               ("get_file_info", {"path": "/nope"}), ("move_file", {"source": "/x", "destination": "/y"})):
                result = http.post("/mcp", json={"sessionId": session_id, "name": name, "args": json.dumps(args)}).json()
                text = result["data"]["content"][0]["text"]
                assert result["data"]["isError"], result
                assert not any(word in text for word in ("FileNotFoundError", "NotADirectoryError", "OSError",
                                                         "Errno", "Traceback")), text
        # A client that sends half a body and goes away.
        import socket

        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(b"POST /mcp/getSession HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode() +
                         b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"sess")
        httpx.get(f"{srv.endpoint}/health")  # the server is still there and has handled the disconnect
        ours = f"agbox-{hashlib.sha256(str(srv.data_dir).encode()).hexdigest()[:10]}"
        assert cgroup_dirs(ours), "the test does not look where the runtime puts cgroups"
        assert srv.stop() == 0
        log = srv.log()
        assert "Traceback" not in log and "Exception in ASGI" not in log and "ERROR" not in log, log
        leftover = cgroup_dirs(ours)
        assert not leftover, leftover
    finally:
        srv.stop(signal.SIGKILL)
