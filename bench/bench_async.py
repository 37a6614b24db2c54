"""Async SDK: 100 concurrent tool calls from one event loop.

Against ``agbox serve``, one live session: a batch of 100 ``shell true`` calls started together with
``asyncio.gather`` through ``AsyncAGB`` (its default pool of 64 threads), timed as a whole and per call.
Baselines in the same run, batches interleaved with the async ones: the same 100 calls one after another
with the sync SDK (what an asyncio agent would get by calling the sync client in turn), and the same 100
calls through the sync SDK from a plain ``ThreadPoolExecutor`` of 64 threads (what the async facade is
built on, so the difference is what the facade itself adds).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

import benchlib as B

FAMILY = "async_sdk"
CALLS = 100


def _check(result: Any) -> None:
    if not result.success:
        raise RuntimeError(f"shell true failed: {result.error_message}")


def run(quick: bool) -> list[dict[str, Any]]:
    from agbox import AsyncAGB, CreateSessionParams

    rounds = B.samples(quick, 10, 3)
    async_batch: list[float] = []
    async_calls: list[float] = []
    sequential_batch: list[float] = []
    threads_batch: list[float] = []
    with B.server("agbox-bench-async-") as srv:
        sync = srv.sdk()
        client = AsyncAGB(api_key=srv.api_key, endpoint=srv.endpoint, timeout_ms=120_000)
        pool = concurrent.futures.ThreadPoolExecutor(64)
        loop = asyncio.new_event_loop()
        try:
            created = sync.create(CreateSessionParams(image_id=B.IMAGE))
            if not created.success:
                raise RuntimeError(f"create failed: {created.error_message}")
            session = created.session
            async_session = loop.run_until_complete(client.get(session.session_id)).session

            async def timed_call() -> float:
                start = time.perf_counter()
                _check(await async_session.command.execute("true"))
                return time.perf_counter() - start

            async def batch() -> list[float]:
                return list(await asyncio.gather(*(timed_call() for _ in range(CALLS))))

            def sync_call() -> None:
                _check(session.command.execute("true"))

            B.say(f"async batches of {CALLS} vs sync sequential and 64 threads ({rounds} rounds, interleaved)")
            for i in range(rounds + 1):  # the first round warms every path up
                start = time.perf_counter()
                per_call = loop.run_until_complete(batch())
                elapsed_async = time.perf_counter() - start
                start = time.perf_counter()
                for _ in range(CALLS):
                    sync_call()
                elapsed_sequential = time.perf_counter() - start
                start = time.perf_counter()
                for future in [pool.submit(sync_call) for _ in range(CALLS)]:
                    future.result()
                elapsed_threads = time.perf_counter() - start
                if i:
                    async_batch.append(elapsed_async)
                    async_calls.extend(per_call)
                    sequential_batch.append(elapsed_sequential)
                    threads_batch.append(elapsed_threads)
            session.delete()
        finally:
            loop.run_until_complete(client.close())
            loop.close()
            pool.shutdown()
            sync.close()

    def rate(batches: list[float]) -> float:
        return CALLS / B.percentile(batches, 50)

    sequential_name = f"{CALLS} sync SDK calls in sequence (interleaved)"
    return [
        B.row(FAMILY, f"{CALLS} concurrent shell true via AsyncAGB (asyncio.gather), whole batch", async_batch,
              key="async.batch", baseline=sequential_name, baseline_s=sequential_batch,
              note=f"{rounds} batches over HTTP, one session; the sync SDK from 64 plain threads took "
                   f"{B.percentile(threads_batch, 50) * 1000:.0f} ms (p50)"),
        B.row(FAMILY, "one call inside the concurrent batch (AsyncAGB)", async_calls, key="async.call",
              note="each call's own latency while 99 others are in flight"),
        B.row(FAMILY, "calls/s, AsyncAGB 100 concurrent", unit="calls/s", value=rate(async_batch),
              baseline=sequential_name, baseline_value=rate(sequential_batch), key="async.rate",
              higher_is_better=True, note=f"sync SDK from 64 threads: {rate(threads_batch):.0f} calls/s"),
    ]
