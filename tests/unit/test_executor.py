"""The dispatcher's executor: in order per key, concurrent across keys, exclusive jobs alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from acd.dispatch.executor import KeyedExecutor


@pytest.fixture
async def executor() -> AsyncIterator[KeyedExecutor]:
    ex = KeyedExecutor(limit=8)
    task = asyncio.create_task(ex.run())
    yield ex
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _settled(ex: KeyedExecutor, done: int) -> None:
    async with asyncio.timeout(5):
        while ex.stats().done < done:  # noqa: ASYNC110 - the executor has no event to wait on
            await asyncio.sleep(0)


async def test_one_key_runs_in_submission_order(executor: KeyedExecutor) -> None:
    """Jobs of one call run one at a time, in the order they came, however long each takes."""
    seen: list[int] = []
    running = 0

    def job(n: int, pause: float):
        async def run() -> None:
            nonlocal running
            running += 1
            assert running == 1
            await asyncio.sleep(pause)
            seen.append(n)
            running -= 1

        return run

    for n, pause in enumerate([0.03, 0.0, 0.02, 0.0, 0.01]):
        executor.submit(("call", "a"), job(n, pause))
    await _settled(executor, 5)
    assert seen == [0, 1, 2, 3, 4]


async def test_other_keys_do_not_wait_behind_a_slow_one(executor: KeyedExecutor) -> None:
    """A call stuck on a round trip holds up only its own later work."""
    release = asyncio.Event()
    order: list[str] = []

    async def slow() -> None:
        await release.wait()
        order.append("slow")

    async def after_slow() -> None:
        order.append("after-slow")

    async def quick(name: str) -> None:
        order.append(name)

    executor.submit(("call", "stuck"), slow)
    executor.submit(("call", "stuck"), after_slow)
    for name in ("b", "c", "d"):
        executor.submit(("call", name), lambda name=name: quick(name))
    await _settled(executor, 3)
    assert order == ["b", "c", "d"]
    assert executor.stats().running == 1
    release.set()
    await _settled(executor, 5)
    assert order == ["b", "c", "d", "slow", "after-slow"]


async def test_concurrency_is_bounded() -> None:
    """No more than `limit` jobs are inside their await at once."""
    ex = KeyedExecutor(limit=3)
    task = asyncio.create_task(ex.run())
    gate = asyncio.Event()

    async def wait() -> None:
        await gate.wait()

    for n in range(10):
        ex.submit(("call", str(n)), wait)
    await asyncio.sleep(0.01)
    assert ex.stats().running == 3
    gate.set()
    await _settled(ex, 10)
    assert ex.stats().peak_running == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_exclusive_job_waits_for_running_work_and_holds_later_work(
    executor: KeyedExecutor,
) -> None:
    """A resync starts after the work already running and before anything submitted later."""
    order: list[str] = []
    release = asyncio.Event()

    async def before() -> None:
        await release.wait()
        order.append("before")

    async def resync() -> None:
        order.append("resync-start")
        await asyncio.sleep(0.02)
        executor.submit(("call", "z"), lambda: note("during"))
        order.append("resync-end")

    async def note(name: str) -> None:
        order.append(name)

    executor.submit(("call", "x"), before)
    await asyncio.sleep(0)
    executor.submit_exclusive(resync)
    executor.submit(("call", "y"), lambda: note("after"))
    await asyncio.sleep(0.02)
    assert order == []
    release.set()
    await _settled(executor, 4)
    assert order == ["before", "resync-start", "resync-end", "after", "during"]


async def test_work_submitted_before_run_starts_is_kept() -> None:
    """Events that arrive before the loop runs are not lost."""
    ex = KeyedExecutor()
    seen: list[str] = []

    async def note() -> None:
        seen.append("x")

    ex.submit(("agent", "1001"), note)
    task = asyncio.create_task(ex.run())
    await _settled(ex, 1)
    assert seen == ["x"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_job_ends_the_run() -> None:
    """An unexpected error is a bug: it surfaces from run() instead of being swallowed."""
    ex = KeyedExecutor()

    async def boom() -> None:
        raise RuntimeError("bug")

    ex.submit(("call", "a"), boom)
    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.timeout(5):
            await ex.run()
    assert info.group_contains(RuntimeError)
