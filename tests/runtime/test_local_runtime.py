"""The local runtime directly: warm pool hand-over, distinct sandboxes, clean teardown."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from agbox.runtime.base import Limits, SandboxSpec
from agbox.runtime.local import LocalRuntime


async def _eventually(predicate: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_warm_pool_hands_over_started_sandboxes(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = LocalRuntime(tmp_path / "data", warm_pool_size=2)
        await runtime.start()
        try:
            spec = SandboxSpec("", "img", Limits(memory_bytes=256 * 1024 * 1024, pids=64))
            await runtime.prewarm(spec)
            key = runtime._pool_key(spec)
            await _eventually(lambda: len(runtime._pools.get(key, [])) == 2)
            warm_ids = {s.id for s in runtime._pools[key]}

            a = await runtime.create(SandboxSpec("session-a", "img", spec.limits))
            b = await runtime.create(SandboxSpec("session-b", "img", spec.limits))
            assert {a.details["sandbox_id"], b.details["sandbox_id"]} == warm_ids
            assert a.details["uid"] != b.details["uid"]
            await runtime.call(a, "shell", {"command": "echo a > /home/user/mine"}, timeout_s=10)
            seen = await runtime.call(b, "shell", {"command": "ls /home/user"}, timeout_s=10)
            assert seen["stdout"] == ""
            # The pool refills behind the hand-over.
            await _eventually(lambda: len(runtime._pools.get(key, [])) == 2)

            other = await runtime.create(SandboxSpec("session-c", "img", Limits(memory_bytes=128 * 1024 * 1024)))
            assert other.details["sandbox_id"] not in warm_ids  # a different spec is started on demand
            await runtime.destroy(a)
            assert not Path(runtime.sandbox_dir / str(a.details["sandbox_id"])).exists()
        finally:
            await runtime.close()
        assert not runtime.run_dir.exists()  # nothing of this runtime is left in /run

    asyncio.run(scenario())


def test_warm_pool_grows_with_the_create_rate_and_shrinks_after(tmp_path: Path, monkeypatch: object) -> None:
    from agbox.runtime import local

    monkeypatch.setattr(local, "TRIM_AFTER_S", 0.5)  # type: ignore[attr-defined]
    monkeypatch.setattr(local, "DEMAND_WINDOW_S", 5.0)  # type: ignore[attr-defined]  # a slow machine's creates count

    async def scenario() -> None:
        runtime = LocalRuntime(tmp_path / "data", warm_pool_size=1)
        await runtime.start()
        handles = []
        try:
            spec = SandboxSpec("", "img", Limits(memory_bytes=256 * 1024 * 1024, pids=64))
            key = runtime._pool_key(spec)
            assert runtime.pool_target(spec) == 1
            runtime._start_time_s = 2.0  # starts as slow as on a loaded machine: the target is then > 1
            # Six creates at once: one finds the warm sandbox, the others wait for starts under way or
            # start their own; every one gets a distinct, working sandbox.
            creates = [asyncio.ensure_future(runtime.create(SandboxSpec(f"session-{i}", "img", spec.limits)))
                       for i in range(6)]
            await asyncio.sleep(0)  # every create has asked for a sandbox
            # The recent rate asks for more than warm_pool_size started sandboxes...
            assert runtime.pool_target(spec) > 1
            handles = await asyncio.gather(*creates)
            assert len({h.details["sandbox_id"] for h in handles}) == 6
            answers = await asyncio.gather(*(runtime.call(h, "shell", {"command": "echo ok"}, timeout_s=20)
                                             for h in handles))
            assert [a["stdout"] for a in answers] == ["ok\n"] * 6
            await _eventually(lambda: len(runtime._pools.get(key, [])) > 1)
            # ...and once creates pause, the pool goes back to warm_pool_size.
            await _eventually(lambda: len(runtime._pools.get(key, [])) == 1 and not runtime._starting.get(key))
            await _eventually(lambda: runtime.pool_target(spec) == 1)  # the rate has decayed
        finally:
            for handle in handles:
                await runtime.destroy(handle)
            await runtime.close()
        assert not runtime.run_dir.exists()

    asyncio.run(scenario())


def test_sandbox_info_is_read_from_fd_numbers_past_1024(tmp_path: Path) -> None:
    # With hundreds of sessions the server's fd numbers pass select()'s 1024 limit.
    runtime = LocalRuntime(tmp_path / "data")
    read_end, write_end = os.pipe()
    high = 1500
    os.dup2(read_end, high)
    os.close(read_end)
    os.write(write_end, b'{\n    "child-pid": 4242\n}\n')
    os.close(write_end)
    assert runtime._await_info("sbx-test", high) == 4242
