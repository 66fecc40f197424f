"""The outbound trunks: a circuit breaker per trunk, channels in use, and the choice of trunk for
each outbound leg (acd/domain/breaker.py decides; this keeps the state).

Channels in use are shared by every controller: each leg holds a channel of its trunk in Redis
(P:trunk_legs:NAME, taken by one Lua script against the capacity), released when the leg ends and
reconciled with the live channels after every AMI (re)connect. Breakers judge the legs this
controller placed; a supervisor's trip is kept in Redis (P:trunk_trips), so it survives restarts
and applies to every controller (re-read each governor tick).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from acd.adapters.store import RedisStore
from acd.config import Settings
from acd.domain.breaker import Breaker, BreakerPolicy, failure_status, summarise
from acd.errors import AcdError

log = structlog.get_logger(__name__)


class UnknownTrunk(AcdError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no outbound trunk named {name!r}")
        self.name = name


class TrunkBoard:
    def __init__(
        self, settings: Settings, store: RedisStore, clock: Callable[[], float] = time.time
    ) -> None:
        b = settings.breaker
        policy = BreakerPolicy(
            window=b.window,
            min_calls=b.min_calls,
            failure_rate=b.failure_rate,
            open_for=b.open_for,
            probes=b.probes,
        )
        self._trunks = settings.outbound_trunks()
        self._store = store
        self._clock = clock
        self._node = settings.asterisk.node
        self.breakers = {t.name: Breaker(t.name, policy) for t in self._trunks}

    async def choose(self, uid: str) -> str | None:
        """A channel for the outbound leg `uid`: on the first primary whose breaker lets calls
        through and which has a free channel, else on the first such standby. None when no
        trunk can take it. Held until `ended` or `cancelled`."""
        now = self._clock()
        candidates = [
            (t.name, t.capacity)
            for role in ("primary", "standby")
            for t in self._trunks
            if t.role == role and self.breakers[t.name].allows(now)
        ]
        name = await self._store.claim_trunk(uid, candidates)
        if name is not None:
            self.breakers[name].placed(now)
        return name

    async def ended(self, name: str, uid: str, dial_status: str) -> None:
        """The leg `uid` through `name` ended with Dial's status: the breaker learns from it."""
        if name not in self.breakers:
            return
        await self._store.release_trunk(name, uid)
        now = self._clock()
        breaker = self.breakers[name]
        before = breaker.state(now)
        breaker.record(not failure_status(dial_status), now)
        after = breaker.state(now)
        if after != before:
            log.warning("trunk.breaker_changed", trunk=name, before=before, after=after)

    async def cancelled(self, name: str, uid: str) -> None:
        """The leg `uid` was never placed through `name` after all."""
        if name in self.breakers:
            await self._store.release_trunk(name, uid)
            self.breakers[name].cancel(self._clock())

    async def reconcile(self, live: Iterable[str]) -> int:
        """Release the channels held by this node's legs that are no longer up (ended while
        nobody was listening). Returns how many were released."""
        alive = set(live)
        released = 0
        for name in self.breakers:
            for uid, node in (await self._store.trunk_legs(name)).items():
                if node == self._node and uid not in alive:
                    released += await self._store.release_trunk(name, uid)
        return released

    async def sync_trips(self) -> None:
        """Apply the trips kept in Redis (set or cleared through any controller)."""
        trips = await self._store.trunk_trips()
        now = self._clock()
        for name, breaker in self.breakers.items():
            if name in trips and not breaker.tripped:
                breaker.trip(now)
            elif name not in trips and breaker.tripped:
                breaker.reset()

    async def trip(self, who: str, name: str) -> dict[str, Any]:
        breaker = self._get(name)
        before = breaker.state(self._clock())
        await self._store.set_trunk_trip(name, who, self._clock())
        breaker.trip(self._clock())
        await self._store.audit(who, f"trunk {name}", before, "tripped", self._clock())
        log.warning("admin.trunk_tripped", who=who, trunk=name)
        return (await self.summary())[name]

    async def reset(self, who: str, name: str) -> dict[str, Any]:
        breaker = self._get(name)
        before = breaker.state(self._clock())
        await self._store.clear_trunk_trip(name)
        breaker.reset()
        await self._store.audit(who, f"trunk {name}", before, "reset", self._clock())
        log.info("admin.trunk_reset", who=who, trunk=name)
        return (await self.summary())[name]

    def names(self) -> list[str]:
        return list(self.breakers)

    async def summary(self) -> dict[str, dict[str, Any]]:
        out = summarise(self.breakers.values(), self._clock())
        for t in self._trunks:
            legs = await self._store.trunk_legs(t.name)
            out[t.name].update(role=t.role, capacity=t.capacity, in_use=len(legs))
        return out

    def _get(self, name: str) -> Breaker:
        try:
            return self.breakers[name]
        except KeyError:
            raise UnknownTrunk(name) from None
