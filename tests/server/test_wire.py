"""Raw HTTP against the wire: envelopes, auth, malformed input, owner isolation."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.endpoint, headers={"authorization": f"Bearer {server.api_key}"},
                      timeout=30) as client:
        yield client


def create(http: httpx.Client, **body: Any) -> str:
    response = http.post("/mcp/createSession", params={"imageId": "agb-code-space-1"}, json=body)
    data = response.json()
    assert data["success"], data
    return str(data["data"]["sessionId"])


def release(http: httpx.Client, session_id: str) -> None:
    http.post("/mcp/releaseSession", json={"sessionId": session_id})


def assert_error(response: httpx.Response, code: str, words: str) -> dict[str, Any]:
    body = response.json()
    assert response.headers["content-type"].startswith("application/json")
    assert body["success"] is False and body["code"] == code, body
    assert words in body["message"], body
    assert body["requestId"].startswith("req-")
    assert "Traceback" not in response.text
    return dict(body)


def test_envelope_shape(http: httpx.Client) -> None:
    session_id = create(http, labels=json.dumps({"a": "b"}), timeout=120)
    try:
        body = http.post("/mcp/getSession", json={"sessionId": session_id}).json()
        assert set(body) >= {"success", "code", "message", "requestId", "httpStatusCode", "data"}
        assert body["code"] == "ok" and body["httpStatusCode"] == 200
        data = body["data"]
        assert data["appInstanceId"] and data["resourceId"] and data["resourceUrl"] and data["status"] == "RUNNING"
        listed = http.get("/sdk/ListSession", params={"labels": json.dumps({"a": "b"}), "maxResults": "5"}).json()
        assert {"nextToken", "maxResults", "count"} <= set(listed)
        assert {"sessionId": session_id, "sessionStatus": "RUNNING"} in listed["data"]
    finally:
        release(http, session_id)


def test_auth_errors(server: ServerProcess) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}):
        response = httpx.post(f"{server.endpoint}/mcp/createSession", params={"imageId": "agb-code-space-1"},
                              json={}, headers=headers)
        assert_error(response, "InvalidApiKey", "API key")


def test_malformed_and_wrong_types(http: httpx.Client) -> None:
    assert_error(http.post("/mcp/createSession", params={"imageId": "agb-code-space-1"}, content=b"{not json",
                           headers={"content-type": "application/json"}), "InvalidParameter", "malformed JSON")
    assert_error(http.post("/mcp/createSession", params={"imageId": "agb-code-space-1"}, json=[1, 2]),
                 "InvalidParameter", "must be an object")
    assert_error(http.post("/mcp/createSession", params={"imageId": "agb-code-space-1"}, json={"timeout": "soon"}),
                 "InvalidParameter", "timeout")
    assert_error(http.post("/mcp/createSession", params={"imageId": "agb-code-space-1"}, json={"labels": "[1]"}),
                 "InvalidParameter", "labels")
    huge = json.dumps({f"k{i}": "v" * 10 for i in range(10_000)})
    assert_error(http.post("/mcp/createSession", params={"imageId": "agb-code-space-1"}, json={"labels": huge}),
                 "InvalidParameter", "too many labels")
    assert_error(http.post("/mcp/getSession", json={"sessionId": 5}), "InvalidParameter", "sessionId")
    assert_error(http.post("/mcp", json={"sessionId": "session-x", "name": "shell", "args": "{}"}),
                 "InvalidMcpSession.NotFound", "not found")
    too_big = b'{"a":"' + b"x" * (65 * 1024 * 1024) + b'"}'
    assert_error(http.post("/mcp/createSession", params={"imageId": "agb-code-space-1"}, content=too_big),
                 "LimitExceeded", "exceeds the limit")
    response = http.get("/no/such/path")
    assert response.status_code == 404 and response.json()["success"] is False


def test_tool_args_errors_keep_the_session_usable(http: httpx.Client) -> None:
    session_id = create(http)
    try:
        bad = http.post("/mcp", json={"sessionId": session_id, "name": "shell", "args": "{oops"}).json()
        assert bad["success"] is False and "args is not valid JSON" in bad["message"]
        ok = http.post("/mcp", json={"sessionId": session_id, "name": "shell",
                                     "args": json.dumps({"command": "echo fine", "timeout_ms": 5000})}).json()
        assert ok["success"] and json.loads(ok["data"]["content"][0]["text"])["stdout"] == "fine\n"
    finally:
        release(http, session_id)


def test_another_keys_sessions_are_not_found(server: ServerProcess, http: httpx.Client) -> None:
    made = subprocess.run([sys.executable, "-m", "agbox", "keys", "create", "--name", "other",
                           "--data-dir", str(server.data_dir)], capture_output=True, text=True, check=True)
    other_key = made.stdout.split("\t")[1].strip()
    session_id = create(http)
    try:
        with httpx.Client(base_url=server.endpoint, headers={"authorization": f"Bearer {other_key}"}) as other:
            assert_error(other.post("/mcp/getSession", json={"sessionId": session_id}),
                         "InvalidMcpSession.NotFound", "not found")
            assert_error(other.post("/mcp", json={"sessionId": session_id, "name": "shell",
                                                  "args": json.dumps({"command": "id"})}),
                         "InvalidMcpSession.NotFound", "not found")
            assert_error(other.post("/mcp/releaseSessionAsync", json={"sessionId": session_id}),
                         "InvalidMcpSession.NotFound", "not found")
            listed = other.get("/sdk/ListSession", params={"maxResults": "100"}).json()
            assert session_id not in [item["sessionId"] for item in listed["data"]]
        # ... and the link route refuses a wrong token.
        refused = httpx.post(f"{server.endpoint}/link/{session_id}/callTool", json={"tool": "shell", "args": {}},
                             headers={"X-Access-Token": "nope"})
        assert refused.status_code == 401
    finally:
        release(http, session_id)
    status = http.post("/mcp/getSessionInfo", json={"sessionId": session_id}).json()
    assert status["data"]["status"] == "FINISH"
    assert_error(http.post("/mcp/getSession", json={"sessionId": session_id}), "InvalidMcpSession.NotFound", "not found")
