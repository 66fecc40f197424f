"""The floor's load for the IVR, the governor and the status pages, at a cost that does not grow
with the size of the floor per call.

What is staffed and talking comes from every agent's hash (a read per agent), so it is read at most
once per `max_age` seconds and shared: the callers of a peak second all use the same read. How
many callers wait is one ZCARD per queue and stays fresh on every call (an overflow rule on the
queue length must see the caller just ahead).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence

from acd.adapters.store import LoadSnapshot, RedisStore

FLOOR_MAX_AGE = 1.0  # seconds an agents' count may be old


class LoadCache:
    def __init__(
        self,
        store: RedisStore,
        skills: Sequence[str],
        max_age: float = FLOOR_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._skills = list(skills)
        self._max_age = max_age
        self._clock = clock
        self._floor: LoadSnapshot | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()
        self.floor_reads = 0

    async def _agents(self) -> LoadSnapshot:
        """The last read of the agents, re-read when it is older than `max_age` (one read at a
        time: callers arriving meanwhile wait for it and share it)."""
        floor = self._floor
        if floor is not None and self._clock() - self._read_at < self._max_age:
            return floor
        async with self._lock:
            if self._floor is None or self._clock() - self._read_at >= self._max_age:
                self._floor = await self._store.load(self._skills)
                self._read_at = self._clock()
                self.floor_reads += 1
            return self._floor

    async def floor(self) -> LoadSnapshot:
        """The agents' counts alone (no queue depths: `waiting` is empty), at most `max_age`
        old: for a caller that reads its own queue's depth with other figures."""
        return await self._agents()

    def invalidate(self) -> None:
        """Forget the agents' count (an agent logged in or out here): the next read is fresh."""
        self._floor = None

    async def get(self, skills: Iterable[str] | None = None) -> LoadSnapshot:
        """The load of `skills` (default: every configured skill): fresh queue depths, agents
        counted at most `max_age` ago."""
        wanted = self._skills if skills is None else list(skills)
        floor = await self._agents()
        waiting = await self._store.queue_depths(wanted)
        return LoadSnapshot(
            waiting=waiting,
            talking=floor.talking,
            staffed=floor.staffed,
            staffed_by_skill={s: floor.staffed_by_skill.get(s, 0) for s in wanted},
        )
