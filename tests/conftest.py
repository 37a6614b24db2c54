"""Shared fixtures: a real `agbox serve` process, clients for both ways in, sessions that clean up.

Nothing here mocks the platform: sandboxes are real bubblewrap sandboxes, the database is real
SQLite, the official SDK talks real HTTP. Every wait is bounded and polls a condition.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

API_KEY = "test-key-0123456789"
# Tests send no traffic off this machine: sessions of every test server (and embedded platform) get a
# deny-all network unless a test builds its own stand-in internet (tests/standin_internet.py).
os.environ.setdefault("AGBOX_NETWORK_INTERNET", "off")
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.01, what: str = "") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(interval_s)


@dataclass
class ServerProcess:
    endpoint: str
    api_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait(10)
        return int(self.process.returncode)


def start_server(data_dir: Path, api_key: str = API_KEY, port: int | None = None,
                 extra_env: dict[str, str] | None = None, extra_args: list[str] | None = None,
                 ready_timeout_s: float = 90) -> ServerProcess:
    port = port or free_port()
    log_path = data_dir.parent / f"{data_dir.name}-server-{port}.log"
    env = {**os.environ, "AGBOX_API_KEY": api_key, **(extra_env or {})}
    env.pop("AGB_ENDPOINT", None)
    log_file = open(log_path, "ab")
    process = subprocess.Popen([sys.executable, "-m", "agbox", "serve", "--port", str(port), "--data-dir",
                                str(data_dir), "--log-level", "warning", *(extra_args or [])],
                               stdout=log_file, stderr=subprocess.STDOUT, env=env)
    log_file.close()
    server = ServerProcess(f"http://127.0.0.1:{port}", api_key, data_dir, process, log_path, port)

    def healthy() -> bool:
        if process.poll() is not None:
            pytest.fail(f"agbox serve exited early:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{server.endpoint}/health", timeout=1).status_code == 200
        return False

    try:
        wait_for(healthy, ready_timeout_s, what="agbox serve to answer /health")
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("serve") / "data")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(autouse=True)
def _clean_agb_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AGB_ENDPOINT", "AGB_API_KEY", "AGBOX_DATA_DIR", "AGBOX_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("embedded") / "data"
    yield path
    from agbox.client import backend

    for platform in list(backend._embedded.values()):
        platform.close()
    backend._embedded.clear()


@pytest.fixture(params=["http", "embedded"])
def agb(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Our SDK, once over HTTP against `agbox serve`, once embedded in this process."""
    from agbox import AGB

    if request.param == "http":
        srv: ServerProcess = request.getfixturevalue("server")
        client = AGB(api_key=srv.api_key, endpoint=srv.endpoint)
        yield client
        client.close()
    else:
        client = AGB(data_dir=request.getfixturevalue("embedded_dir"))
        yield client
        # The embedded platform stays up for the rest of the run (closed by embedded_dir).


@pytest.fixture
def official(server: ServerProcess) -> Any:
    """The unmodified official SDK (agbcloud-sdk from PyPI), pointed at `agbox serve`."""
    from agb import AGB as OfficialAGB
    from agb.config import Config

    return OfficialAGB(api_key=server.api_key, cfg=Config(endpoint=server.endpoint, timeout_ms=60000))


@pytest.fixture
def make_session(agb: Any) -> Iterator[Callable[..., Any]]:
    """Create sessions with our SDK; every one is deleted at teardown, also when the test fails."""
    from agbox import CreateSessionParams

    made: list[Any] = []

    def make(image_id: str = "agb-code-space-1", **kwargs: Any) -> Any:
        result = agb.create(CreateSessionParams(image_id=image_id, **kwargs))
        assert result.success, result.error_message
        made.append(result.session)
        return result.session

    yield make
    for session in made:
        with contextlib.suppress(Exception):
            session.delete()


@pytest.fixture
def official_session(official: Any) -> Iterator[Any]:
    from agb.session_params import CreateSessionParams as OfficialParams

    result = official.create(OfficialParams(image_id="agb-code-space-1"))
    assert result.success, result.error_message
    yield result.session
    with contextlib.suppress(Exception):
        official.delete(result.session)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One throwaway PostgreSQL server for the run (tests take a fresh database each: new_database())."""
    from tests.postgres import running_cluster

    with running_cluster() as cluster:
        yield cluster
