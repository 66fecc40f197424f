"""The outbound trunks of this controller: a circuit breaker per trunk, channels in use, and the
choice of trunk for each outbound leg (acd/domain/breaker.py decides; this keeps the state).

Breakers judge the calls this controller places; a supervisor's trip is kept in Redis
(P:trunk_trips), so it survives restarts and applies to every controller (re-read each tick).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from acd.adapters.store import RedisStore
from acd.config import Settings
from acd.domain.breaker import (
    Breaker,
    BreakerPolicy,
    TrunkView,
    choose_trunk,
    failure_status,
    summarise,
)
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
        self.breakers = {t.name: Breaker(t.name, policy) for t in self._trunks}
        self.in_use = {t.name: 0 for t in self._trunks}

    def choose(self) -> str | None:
        """The trunk for a new outbound leg (counted in use until `ended` or `cancelled`)."""
        now = self._clock()
        views = [TrunkView(t.name, t.role, t.capacity, self.in_use[t.name]) for t in self._trunks]
        name = choose_trunk(views, self.breakers, now)
        if name is not None:
            self.in_use[name] += 1
            self.breakers[name].placed(now)
        return name

    def ended(self, name: str, dial_status: str) -> None:
        """The leg through `name` ended with Dial's status: the breaker learns from it."""
        if name not in self.breakers:
            return
        now = self._clock()
        self.in_use[name] = max(0, self.in_use[name] - 1)
        breaker = self.breakers[name]
        before = breaker.state(now)
        breaker.record(not failure_status(dial_status), now)
        after = breaker.state(now)
        if after != before:
            log.warning("trunk.breaker_changed", trunk=name, before=before, after=after)

    def cancelled(self, name: str) -> None:
        """The leg through `name` was never placed after all."""
        if name in self.breakers:
            self.in_use[name] = max(0, self.in_use[name] - 1)
            self.breakers[name].cancel(self._clock())

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
        return self.summary()[name]

    async def reset(self, who: str, name: str) -> dict[str, Any]:
        breaker = self._get(name)
        before = breaker.state(self._clock())
        await self._store.clear_trunk_trip(name)
        breaker.reset()
        await self._store.audit(who, f"trunk {name}", before, "reset", self._clock())
        log.info("admin.trunk_reset", who=who, trunk=name)
        return self.summary()[name]

    def summary(self) -> dict[str, dict[str, Any]]:
        out = summarise(self.breakers.values(), self._clock())
        for t in self._trunks:
            out[t.name].update(role=t.role, capacity=t.capacity, in_use=self.in_use[t.name])
        return out

    def _get(self, name: str) -> Breaker:
        try:
            return self.breakers[name]
        except KeyError:
            raise UnknownTrunk(name) from None
