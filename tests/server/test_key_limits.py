"""Limits per API key (issue 13), with two keys on one real `agbox serve`: the limited key gets a clear
error at each limit while the other key, doing the same things at the same time, is unaffected.
Limits are set with the CLI on the running server's data dir and take effect within a second."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerProcess, wait_for


def cli(server: ServerProcess, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "agbox", "keys", *args, "--data-dir", str(server.data_dir)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


class Tenant:
    def __init__(self, server: ServerProcess, key: str) -> None:
        self.http = httpx.Client(base_url=server.endpoint, headers={"authorization": f"Bearer {key}"}, timeout=60)
        self.sessions: list[dict[str, Any]] = []

    def create(self) -> dict[str, Any]:
        body = dict(self.http.post("/mcp/createSession", params={"imageId": "agb-code-space-1"}, json={}).json())
        if body["success"]:
            self.sessions.append(body["data"])
        return body

    def close(self) -> None:
        def released(session_id: str) -> bool:  # also once a throttled key may call again
            with contextlib.suppress(httpx.HTTPError):
                return self.http.post("/mcp/releaseSession", json={"sessionId": session_id}).status_code != 429
            return False

        for session in self.sessions:
            wait_for(lambda: released(session["sessionId"]), 10, interval_s=0.2, what="a release")
        self.http.close()


@pytest.fixture
def tenants(server: ServerProcess) -> Iterator[tuple[str, Tenant, Tenant]]:
    limited_id, limited_key = cli(server, "create", "--name", "limited", "--max-sessions", "2", "--max-cpus", "1.5",
                                  "--max-streams", "1", "--max-context-bytes", "1K").strip().split("\t")
    _, free_key = cli(server, "create", "--name", "free").strip().split("\t")
    limited, free = Tenant(server, limited_key), Tenant(server, free_key)
    try:
        yield limited_id, limited, free
    finally:
        limited.close()
        free.close()


def test_two_keys_one_at_its_limits(server: ServerProcess, tenants: tuple[str, Tenant, Tenant]) -> None:
    limited_id, limited, free = tenants
    assert "max_sessions=2" in cli(server, "list")

    # CPUs: each sandbox may use 1 CPU, the key 1.5 in all: the second create is refused.
    assert limited.create()["success"]
    refused = limited.create()
    assert refused["success"] is False and refused["code"] == "QuotaExceeded", refused
    assert "CPUs would be 2" in refused["message"] and "limit 1.5" in refused["message"]
    for _ in range(3):
        assert free.create()["success"]  # the other key is unaffected

    # Sessions: with CPUs raised, the count limit (2) is what stops the third.
    cli(server, "set", limited_id, "--max-cpus", "default")
    wait_for(lambda: limited.create()["success"], 5, interval_s=0.1, what="the raised CPU limit to apply")
    third = limited.create()
    assert third["code"] == "QuotaExceeded" and "at most 2" in third["message"], third

    # Streams: one open WebSocket for the limited key; the free key opens two.
    mine, theirs = limited.sessions[0], free.sessions[0]
    with ws_connect(mine["wsUrl"], additional_headers={"X-Access-Token": mine["token"]}):
        with pytest.raises(Exception) as closed:
            with ws_connect(mine["wsUrl"], additional_headers={"X-Access-Token": mine["token"]}) as second:
                second.recv(timeout=10)
        assert "open streams" in str(closed.value) and "at most 1" in str(closed.value), closed.value
        with ws_connect(theirs["wsUrl"], additional_headers={"X-Access-Token": theirs["token"]}), \
                ws_connect(theirs["wsUrl"], additional_headers={"X-Access-Token": theirs["token"]}):
            pass

    # Context storage: 1 KiB for the limited key.
    def put(tenant: Tenant, size: int) -> httpx.Response:
        context = tenant.http.get("/sdk/GetContext", params={"name": "quota", "allowCreate": "true"}).json()["data"]
        url = tenant.http.post("/sdk/GetContextFileUploadUrl", params={"contextId": context["id"],
                                                                       "filePath": "f.bin"}).json()["data"]["url"]
        return httpx.put(url, content=b"x" * size)

    assert put(limited, 1000).status_code == 200
    too_much = put(limited, 2000)
    assert too_much.status_code == 403 and "context storage would be" in too_much.json()["message"], too_much.text
    assert put(free, 100_000).status_code == 200

    # Requests per second: 3 for the limited key, set on the running server.
    cli(server, "set", limited_id, "--requests-per-s", "3")

    def throttled() -> httpx.Response | None:
        for _ in range(10):
            answer = limited.http.post("/mcp/getSessionInfo", json={"sessionId": mine["sessionId"]})
            if answer.status_code == 429:
                return answer
        return None

    answer: httpx.Response = wait_for(throttled, 5, what="the limited key to be throttled")
    body = answer.json()
    assert body["code"] == "Throttling" and "at most 3 per second" in body["message"], body
    assert int(answer.headers["retry-after"]) >= 1
    for _ in range(20):  # meanwhile the other key is not throttled at all
        assert free.http.post("/mcp/getSessionInfo", json={"sessionId": theirs["sessionId"]}).status_code == 200
    # The official SDK surfaces the throttling as a failed result with the message (it does not retry).
    from agb import AGB as OfficialAGB
    from agb.config import Config

    official = OfficialAGB(api_key=limited.http.headers["authorization"][7:],
                           cfg=Config(endpoint=server.endpoint, timeout_ms=60000))

    def sdk_sees_throttling() -> bool:
        result = official.list()
        return not result.success and "too many requests" in result.error_message

    wait_for(sdk_sees_throttling, 5, interval_s=0.0, what="the official SDK to report throttling")
    cli(server, "set", limited_id, "--requests-per-s", "default")
