"""The async SDK (``AsyncAGB``), over HTTP against `agbox serve` and embedded: the sync SDK's main
scenarios awaited, every sync method present as a coroutine, and 100 concurrent tool calls."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agbox import AGB, AsyncAGB, AsyncSession, CreateSessionParams, Session
from agbox.client import aio
from agbox.client.code import Code
from agbox.client.command import Command
from agbox.client.file import FileSystem
from agbox.client.pty import Pty, PtyHandle
from tests.conftest import ServerProcess


@pytest.fixture(scope="module", params=["http", "embedded"])
def async_agb(request: pytest.FixtureRequest) -> Iterator[AsyncAGB]:
    """One async client per way in for the module (the embedded platform is shared with the sync tests)."""
    if request.param == "http":
        srv: ServerProcess = request.getfixturevalue("server")
        client = AsyncAGB(api_key=srv.api_key, endpoint=srv.endpoint)
    else:
        client = AsyncAGB(data_dir=request.getfixturevalue("embedded_dir"))
    yield client
    asyncio.run(client.close())


@contextlib.asynccontextmanager
async def created(agb: AsyncAGB, **params: Any) -> AsyncIterator[Any]:
    """A session for the block, deleted afterwards, also when the block fails."""
    result = await agb.create(CreateSessionParams(image_id="agb-code-space-1", **params))
    assert result.success, result.error_message
    try:
        yield result.session
    finally:
        await result.session.delete()


def run(coro: Any, timeout_s: float = 120) -> Any:
    """Run a test's coroutine on a fresh event loop, with a bound on the whole of it."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def test_every_sync_method_has_an_awaitable_twin() -> None:
    pairs = [(cls, twin) for cls, twin in aio._TWINS.items()]
    for sync_class in (AGB, Session, Command, FileSystem, Code, Pty, PtyHandle):
        assert sync_class in aio._TWINS, sync_class
    for sync_class, twin in pairs:
        names = aio.public_methods(sync_class)
        assert names, sync_class
        for name in names:
            method = getattr(twin, name, None)
            assert method is not None, f"{twin.__name__}.{name} is missing"
            assert inspect.iscoroutinefunction(method), f"{twin.__name__}.{name} is not a coroutine function"
            # Same parameters as the sync method, so call sites carry over unchanged.
            assert inspect.signature(method) == inspect.signature(getattr(sync_class, name)), name
    assert aio._TWINS[Session] is AsyncSession
    assert {"create", "get", "get_session", "list", "delete", "close"} <= set(dir(AsyncAGB))
    with pytest.raises(ValueError, match="max_concurrency"):
        AsyncAGB(endpoint="http://127.0.0.1:9", api_key="k", max_concurrency=0)


def test_session_api_scenario(async_agb: AsyncAGB) -> None:
    async def scenario() -> None:
        async with created(async_agb, labels={"suite": "async", "run": "1"}) as session:
            assert isinstance(session, AsyncSession)
            assert session.session_id.startswith("session-")
            assert (await session.get_labels()).data == {"suite": "async", "run": "1"}
            assert (await session.set_labels({"suite": "async", "run": "2"})).success
            assert (await session.get_labels()).data == {"suite": "async", "run": "2"}

            info = await session.info()
            assert info.success and info.data["session_id"] == session.session_id
            status = await session.get_status()
            assert status.success and status.status == "RUNNING"

            shell = await session.command.execute("echo hello; echo oops >&2", timeout_ms=5000)
            assert shell.success and (shell.stdout, shell.stderr) == ("hello\n", "oops\n")
            failed = await session.command.execute("exit 7", timeout_ms=5000)
            assert not failed.success and failed.exit_code == 7

            assert (await session.file.write("/tmp/async.txt", "written async\n")).success
            read = await session.file.read("/tmp/async.txt")
            assert read.success and read.content == "written async\n"

            code = await session.code.run("x = 6 * 7\nprint(x)", "python")
            assert code.success and code.result.strip() == "42", code

            metrics = await session.get_metrics()
            assert metrics.success and metrics.metrics is not None and metrics.metrics.mem_total > 0

            listed = await async_agb.list(labels={"suite": "async", "run": "2"})
            assert listed.success and session.session_id in listed.session_ids
            got = await async_agb.get(session.session_id)
            assert got.success and isinstance(got.session, AsyncSession)
            assert got.session.session_id == session.session_id

            deleted = await async_agb.delete(session)
            assert deleted.success, deleted.error_message
            after = await async_agb.get(session.session_id)
            assert not after.success and "not found" in after.error_message

    run(scenario())


def test_bad_input_gives_results_not_exceptions(async_agb: AsyncAGB) -> None:
    async def scenario() -> None:
        assert (await async_agb.create(None)).error_message == "params is required and cannot be None"
        assert not (await async_agb.get("")).success
        missing = await async_agb.get("session-does-not-exist")
        assert not missing.success and "not found" in missing.error_message
        assert not (await async_agb.list(page=0)).success

    run(scenario())


def test_terminal_through_the_async_session(async_agb: AsyncAGB) -> None:
    async def scenario() -> None:
        async with created(async_agb) as session:
            terminal = await session.pty.create(["sh", "-c", "echo ready; read line; echo got-$line; exit 3"])
            try:
                assert terminal.pid > 1
                assert await terminal.wait_for_output("ready"), terminal.output
                await terminal.send_input("async\n")
                ended = await terminal.wait(30)
                assert ended.exit_code == 3
                assert b"got-async" in terminal.output
            finally:
                await terminal.close()

    run(scenario())


def test_calls_overlap(async_agb: AsyncAGB) -> None:
    """Ten calls that can only all succeed if they run at the same time: each marks its arrival, then
    waits (bounded, on a condition) until all ten have arrived."""
    wait_for_all = ("mkdir -p /tmp/meet; touch /tmp/meet/$N; for _ in $(seq 600); do "
                    "[ $(ls /tmp/meet | wc -l) -ge 10 ] && exit 0; sleep 0.05; done; exit 1")

    async def scenario() -> list[Any]:
        async with created(async_agb) as session:
            return list(await asyncio.gather(*(
                session.command.execute(wait_for_all, timeout_ms=60000, envs={"N": str(i)}) for i in range(10))))

    results = run(scenario())
    assert [r.exit_code for r in results] == [0] * 10, [r.stderr for r in results]


def test_closed_client_says_so(server: ServerProcess) -> None:
    async def scenario() -> None:
        client = AsyncAGB(api_key=server.api_key, endpoint=server.endpoint, max_concurrency=2)
        assert (await client.list()).success
        await client.close()
        with pytest.raises(RuntimeError, match="this AsyncAGB client is closed"):
            await client.list()

    run(scenario())


def test_hundred_concurrent_tool_calls_from_one_loop(async_agb: AsyncAGB) -> None:
    async def scenario() -> list[Any]:
        async with created(async_agb) as session:
            calls = [session.command.execute(f"echo call-{i}", timeout_ms=30000) for i in range(100)]
            return list(await asyncio.gather(*calls))

    results = run(scenario(), timeout_s=180)
    assert len(results) == 100
    for i, result in enumerate(results):
        assert result.success, result.error_message
        assert result.stdout == f"call-{i}\n"


def test_the_typed_stub_is_generated_from_the_sync_classes() -> None:
    """aio_types.pyi (what type checkers see of the twins) is the generator's output for today's sync classes."""
    from pathlib import Path

    from agbox.client import aio_stubgen

    stub = Path(aio_stubgen.__file__).with_name("aio_types.pyi")
    assert stub.read_text() == aio_stubgen.Stub().render(), \
        "stale: python -m agbox.client.aio_stubgen > src/agbox/client/aio_types.pyi"
    text = stub.read_text()
    for sync_class, twin in aio._TWINS.items():
        for name in aio.public_methods(sync_class):
            assert f"async def {name}(" in text.split(f"class {twin.__name__}(AsyncTwin):")[1].split("\nclass ")[0]
    assert "async def create(self, params: CreateSessionParams | None = ...) -> AsyncSessionResult" in text
