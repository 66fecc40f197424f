"""Runs the dispatcher's work concurrently, in order for each key.

Work about one call (keyed by its uniqueid) or one agent runs in the order it was submitted, one
job at a time; work about different keys runs at once, at most `limit` jobs together. So a hangup
never overtakes the connect of the same caller, while a thousand callers' connects, claims and AMI
events do not wait in one line behind each other's round trips.

An exclusive job (the resync after an AMI reconnect) waits until running work is over; work
submitted meanwhile waits for it and then starts in submission order.

    executor = KeyedExecutor(limit=64)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(executor.run())
        executor.submit(("call", uid), lambda: connect(uid))
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import NamedTuple

Job = Callable[[], Awaitable[None]]


class ExecutorStats(NamedTuple):
    submitted: int
    done: int
    running: int  # jobs inside their await
    keys: int  # keys with work queued or running
    held: int  # jobs waiting behind an exclusive one
    peak_running: int


class KeyedExecutor:
    def __init__(self, limit: int = 64) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._slots = asyncio.Semaphore(limit)
        self._queues: dict[Hashable, deque[Job]] = {}
        self._held: deque[tuple[Hashable, Job]] = deque()
        self._exclusive: deque[Job] = deque()
        self._group: asyncio.TaskGroup | None = None
        self._wake = asyncio.Event()
        self._submitted = self._done = self._running = self._peak = 0

    def submit(self, key: Hashable, job: Job) -> None:
        """Run `job` after the jobs already submitted under `key` (synchronous: safe from AMI
        listeners). An exception other than cancellation ends `run()` (a bug, not an outcome:
        jobs handle the errors they expect)."""
        self._submitted += 1
        if self._group is None or self._exclusive:
            self._held.append((key, job))
            self._wake.set()
            return
        self._start(key, job)

    def submit_exclusive(self, job: Job) -> None:
        """Run `job` alone: once the running work is over, before anything submitted later."""
        self._submitted += 1
        self._exclusive.append(job)
        self._wake.set()

    def stats(self) -> ExecutorStats:
        return ExecutorStats(
            self._submitted,
            self._done,
            self._running,
            len(self._queues),
            len(self._held),
            self._peak,
        )

    def _start(self, key: Hashable, job: Job) -> None:
        queue = self._queues.get(key)
        if queue is not None:
            queue.append(job)  # its worker takes it after the ones before
            return
        assert self._group is not None
        self._queues[key] = deque([job])
        self._group.create_task(self._work(key))

    async def _work(self, key: Hashable) -> None:
        queue = self._queues[key]
        try:
            while queue:
                job = queue.popleft()
                async with self._slots:
                    self._running += 1
                    self._peak = max(self._peak, self._running)
                    try:
                        await job()
                    finally:
                        self._running -= 1
                        self._done += 1
        finally:
            del self._queues[key]
            if not self._queues:
                self._wake.set()

    async def run(self) -> None:
        """Own the jobs' tasks until cancelled."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                while True:
                    self._wake.clear()
                    if self._exclusive:
                        if not self._queues:
                            # Left in the line while it runs: what is submitted meanwhile waits.
                            try:
                                await self._exclusive[0]()
                            finally:
                                self._exclusive.popleft()
                                self._done += 1
                            continue
                    else:
                        while self._held:
                            key, job = self._held.popleft()
                            self._start(key, job)
                    await self._wake.wait()
            finally:
                self._group = None
