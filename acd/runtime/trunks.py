"""The outbound trunks: a circuit breaker per trunk, channels in use, and the choice of trunk for
each outbound leg (acd/domain/breaker.py decides; Redis keeps the state).

Everything is shared by every controller: each trunk's breaker is one value in Redis
(P:trunk:NAME) and each leg holds a channel of its trunk (P:trunk_legs:NAME). A leg takes its
channel, and while half-open its probe slot, in one atomic step that checks the capacity and the
breaker together (RedisStore.commit_trunk: read, decide with the pure breaker, commit if nothing
changed meanwhile, else again); it lets go of both in one step too, whatever ended it (Dial's
outcome, a cancel, its channel's hangup, the reconcile after an AMI reconnect). An outcome is
counted by the step that releases the leg's channel, so it counts once, on whichever controller
saw it, and a supervisor's trip applies everywhere at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

import structlog

from acd.adapters.store import RedisStore, TrunkSnapshot
from acd.config import Settings
from acd.domain.breaker import Breaker, BreakerPolicy, TrunkView, judge, summarise, trunk_order
from acd.errors import AcdError, StoreUnavailable, UnknownName

log = structlog.get_logger(__name__)

# Conflicts mean another controller changed the trunk meanwhile (so someone progresses); this
# many in a row is something else.
MAX_ATTEMPTS = 100

# What a decision asks to commit: take or release the leg's channel, or change the state only;
# None: nothing to commit (refused, or nothing to do).
Decide = Callable[[Breaker, TrunkSnapshot, float], str | None]


class UnknownTrunk(UnknownName):
    code = "unknown_trunk"

    def __init__(self, name: str) -> None:
        super().__init__(f"no outbound trunk named {name!r}")
        self.name = name


class NoTrunkFree(AcdError):
    """No outbound trunk can take a leg now: every breaker is open or every trunk is full."""

    retriable = True

    def __init__(self, preferred: str = "") -> None:
        but = f" (preferred: {preferred})" if preferred else ""
        super().__init__(f"no outbound trunk can take the call{but}")


class TrunkBoard:
    def __init__(
        self, settings: Settings, store: RedisStore, clock: Callable[[], float] = time.time
    ) -> None:
        b = settings.breaker
        self.policy = BreakerPolicy(
            window=b.window,
            min_calls=b.min_calls,
            failure_rate=b.failure_rate,
            open_for=b.open_for,
            probes=b.probes,
            saturation=b.saturation,
        )
        self._trunks = [TrunkView(t.name, t.role, t.capacity) for t in settings.outbound_trunks()]
        self._store = store
        self._clock = clock
        self._node = settings.asterisk.node

    async def choose(
        self, uid: str, prefer: str | None = None, exclude: Collection[str] = ()
    ) -> str | None:
        """A channel for the outbound leg `uid`: on `prefer` (a flow's trunk) if its breaker lets
        the leg through and it has a free channel, else on the first such primary, else on the
        first such standby, never on one of `exclude` (trunks that already failed this caller).
        None when no trunk can take it. Held until `ended`, `cancelled` or `leg_gone`."""
        for trunk in trunk_order(self._trunks, prefer):
            if trunk.name in exclude:
                continue
            if await self._change(trunk.name, uid, _taking(uid, trunk.capacity)):
                return trunk.name
        return None

    async def ended(self, name: str, uid: str, dial_status: str) -> None:
        """The leg `uid` through `name` ended with Dial's status: its channel is free and the
        breaker learns from it ('' or CANCEL: it was never dialled, or cancelled, which says
        nothing about the trunk)."""
        await self._release(name, uid, judge(dial_status))

    async def cancelled(self, name: str, uid: str) -> None:
        """The leg `uid` was never placed through `name` after all."""
        await self._release(name, uid, None)

    async def leg_gone(self, uid: str, held: list[str] | None = None) -> list[str]:
        """The channel of leg `uid` hung up: release whatever trunk channel (and probe slot) it
        still holds, saying nothing about the trunk (an outcome came before, if there was
        one). `held`: the trunks it holds, when the caller read them already. Returns the
        trunks it held a channel of."""
        if held is None:
            held = await self._store.trunks_holding(uid, self.names())
        for name in held:
            await self._release(name, uid, None)
        if held:
            log.info("trunk.leg_gone", uniqueid=uid, trunks=held)
        return held

    async def reconcile(self, live: Iterable[str]) -> int:
        """Release the channels held by this node's legs that are no longer up (ended while
        nobody was listening), with their probe slots. Returns how many were released."""
        alive = set(live)
        released = 0
        for name in self.names():
            for uid, node in (await self._store.trunk_legs(name)).items():
                if node == self._node and uid not in alive:
                    released += await self._release(name, uid, None)
        return released

    async def trip(self, who: str, name: str) -> dict[str, Any]:
        self._get(name)
        await self._change(name, "", _tripping(who), audited=(who, "tripped"))
        log.warning("admin.trunk_tripped", who=who, trunk=name)
        return (await self.summary())[name]

    async def reset(self, who: str, name: str) -> dict[str, Any]:
        self._get(name)
        await self._change(name, "", _resetting, audited=(who, "reset"))
        log.info("admin.trunk_reset", who=who, trunk=name)
        return (await self.summary())[name]

    def names(self) -> list[str]:
        return [t.name for t in self._trunks]

    async def summary(self) -> dict[str, dict[str, Any]]:
        """Every trunk with its breaker (state, why, probes out, window statistics) and
        channels, the same on every controller."""
        snaps = await self._store.trunk_snapshots(self.names())
        now = self._clock()
        breakers = [Breaker.loads(t.name, self.policy, snaps[t.name].state) for t in self._trunks]
        out = summarise(breakers, now)
        for t in self._trunks:
            out[t.name].update(role=t.role, capacity=t.capacity, in_use=snaps[t.name].in_use)
        return out

    async def _release(self, name: str, uid: str, success: bool | None) -> bool:
        """Free leg `uid`'s channel of `name` (and its probe slot), the breaker learning
        `success` (see Breaker.release). False when the leg held no channel there: it was
        released already, and its outcome, if any, was counted then."""
        if name not in self.names():
            return False

        return await self._change(name, uid, _releasing(uid, success))

    async def _change(
        self, name: str, uid: str, decide: Decide, audited: tuple[str, str] | None = None
    ) -> bool:
        """Read trunk `name`, let `decide` change its breaker, commit both in one step; again on
        a conflict. Returns whether something was committed (or `decide` had nothing to
        change). `audited`: (who, what they did), a supervisor's change, committed with its
        audit entry (whatever it changed)."""
        for _ in range(MAX_ATTEMPTS):
            seen = await self._store.trunk_snapshot(name, uid)
            breaker = Breaker.loads(name, self.policy, seen.state)
            now = self._clock()
            before = (breaker.state(now), breaker.reason)
            op = decide(breaker, seen, now)
            if op is None:
                return False
            state = breaker.dumps()
            if state == seen.state and op == "" and audited is None:
                return True
            audit = None
            if audited is not None:
                who, did = audited
                audit = {"who": who, "what": f"trunk {name}", "before": str(before[0]),
                         "after": did, "at": repr(now)}  # fmt: skip
            if await self._store.commit_trunk(name, seen, state, op, uid, audit=audit):
                after = (breaker.state(now), breaker.reason)
                if after != before:
                    log.warning(
                        "trunk.breaker_changed",
                        trunk=name,
                        before=before[0],
                        after=after[0],
                        reason=after[1],
                        uniqueid=uid or None,
                    )
                return True
        raise StoreUnavailable(f"trunk {name}: {MAX_ATTEMPTS} conflicting changes in a row")

    def _get(self, name: str) -> TrunkView:
        for t in self._trunks:
            if t.name == name:
                return t
        raise UnknownTrunk(name)


def _taking(uid: str, capacity: int) -> Decide:
    def decide(b: Breaker, seen: TrunkSnapshot, now: float) -> str | None:
        if seen.held:
            return ""  # it holds one already (asked twice): nothing to change
        return "take" if b.take(uid, now, seen.in_use, capacity) else None

    return decide


def _releasing(uid: str, success: bool | None) -> Decide:
    def decide(b: Breaker, seen: TrunkSnapshot, now: float) -> str | None:
        if not seen.held:
            return None
        b.release(uid, now, success)
        return "release"

    return decide


def _tripping(who: str) -> Decide:
    def decide(b: Breaker, seen: TrunkSnapshot, now: float) -> str | None:
        b.trip(now, who)
        return ""

    return decide


def _resetting(b: Breaker, seen: TrunkSnapshot, now: float) -> str | None:
    b.reset()
    return ""
