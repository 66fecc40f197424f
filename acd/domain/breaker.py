"""Circuit breakers on carrier trunks, and the order in which an outbound leg tries trunks.

Pure: every method takes the time as a parameter, so the tests run without sleeping. The store
keeps each trunk's breaker as the value `dumps()` writes, and changes it together with the
trunk's channels in one atomic step (acd/runtime/trunks.py), so every controller judges one
breaker per trunk.

A breaker is `closed` (legs go through), `open` (none do) or `half_open` (a few probe legs go
through to see whether the trunk recovered). It opens, with the reason recorded:
- `failures`: over the sliding window, the share of failed legs reaches `failure_rate` (with at
  least `min_calls` legs in the window); a failed probe opens it again;
- `tripped`: by hand, until a supervisor resets it.
A full trunk is no failure: it takes legs up to `saturation` of its capacity and refuses the
ones above, whatever its breaker, and takes them again as soon as a channel is free.
After `open_for` seconds (a trip waits for its reset) it is half-open: `probes` legs may take a
channel, each holding a probe slot until its leg lets go of the channel; one failed probe opens
it again, `probes` successful ones close it, a cancelled probe frees its slot.

>>> b = Breaker("carrier-a", BreakerPolicy(window=60, min_calls=3, failure_rate=0.5))
>>> for i, t in enumerate((1.0, 2.0, 3.0)):
...     assert b.take(f"leg{i}", now=t)
...     b.release(f"leg{i}", now=t, success=False)
>>> b.state(now=3.0), b.reason
('open', 'failures')
>>> b.state(now=3.0 + b.policy.open_for)
'half_open'
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

State = Literal["closed", "open", "half_open"]
Role = Literal["primary", "standby"]
Reason = Literal["failures", "tripped"]

# The window is counted in this many buckets of window/BUCKETS seconds: the state stays small
# whatever the traffic. A bucket counts while it ends inside the window, so the window reaches
# back between `window` and `window` plus one bucket.
BUCKETS = 60

# Dial() statuses (DIALSTATUS, and NOPROGRESS from our dialplan: no ringing or early media
# within breaker.progress_timeout) that are the carrier's failure: it could not deliver the
# call (503 and other server failures map to CONGESTION or CHANUNAVAIL).
CARRIER_FAILURES = frozenset({"CONGESTION", "CHANUNAVAIL", "NOPROGRESS"})
# Statuses that say nothing about the carrier: never dialled ('', the caller hung up first),
# cancelled by our side while it rang, or a dial string we got wrong.
NO_NEWS = frozenset({"", "CANCEL", "INVALIDARGS"})


@dataclass(frozen=True)
class BreakerPolicy:
    window: float = 60.0  # seconds of outcomes the failure rate is computed over
    min_calls: int = 5  # fewer calls in the window never open the breaker
    failure_rate: float = 0.5  # opens at this share of failed calls in the window
    open_for: float = 30.0  # seconds open before probing
    probes: int = 1  # successful probe calls needed to close again
    saturation: float = 1.0  # the share of a trunk's capacity legs may use

    def __post_init__(self) -> None:
        if not (0 < self.failure_rate <= 1) or self.min_calls < 1 or self.probes < 1:
            raise ValueError("failure_rate in (0, 1], min_calls >= 1 and probes >= 1")
        if not (0 < self.saturation <= 1) or self.window <= 0:
            raise ValueError("saturation in (0, 1] and window > 0")

    @property
    def bucket(self) -> float:
        return self.window / BUCKETS

    def saturated_at(self, capacity: int) -> int:
        """Channels in use at which a trunk of `capacity` is full: it refuses further legs (at
        least 1).

        >>> BreakerPolicy(saturation=0.7).saturated_at(10), BreakerPolicy().saturated_at(30)
        (7, 30)
        """
        return max(1, math.ceil(self.saturation * capacity - 1e-9))


@dataclass
class Breaker:
    name: str
    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    opened_at: float | None = None
    reason: Reason | None = None  # why it is open or half-open (None when closed)
    tripped_by: str = ""
    probe_legs: list[str] = field(default_factory=list)  # legs holding a probe slot
    probe_successes: int = 0
    # [bucket number, legs, failed legs], oldest first; bucket number = floor(t / bucket width)
    buckets: list[list[int]] = field(default_factory=list)

    @property
    def tripped(self) -> bool:
        """Held open by hand until reset."""
        return self.reason == "tripped"

    def state(self, now: float) -> State:
        if self.tripped:
            return "open"
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at >= self.policy.open_for:
            return "half_open"
        return "open"

    def allows(self, now: float) -> bool:
        """Whether a leg may be placed now (half-open: while a probe slot is free)."""
        state = self.state(now)
        if state == "closed":
            return True
        return state == "half_open" and len(self.probe_legs) < self.policy.probes

    def take(self, leg: str, now: float, in_use: int = 0, capacity: int | None = None) -> bool:
        """The leg `leg` asks for a channel of this trunk, which has `in_use` of its `capacity`
        channels taken: whether it may have one. A full trunk (`saturation` of its capacity in
        use) refuses it: a capacity limit, which says nothing of the carrier's health, so the
        breaker does not change. If placed while half-open, it takes a probe slot."""
        if capacity is not None and in_use >= self.policy.saturated_at(capacity):
            return False
        if not self.allows(now):
            return False
        if self.state(now) == "half_open":
            self.probe_legs.append(leg)
        return True

    def release(self, leg: str, now: float, success: bool | None) -> None:
        """The leg `leg` let go of its channel. `success`: True when the carrier delivered it
        (answered, or a final answer from the far end that is not the carrier's failure, such
        as busy), False on a carrier failure, None when it says nothing about the trunk (never
        dialled, cancelled). A probe frees its slot; only a probe's outcome counts while
        half-open, and nothing counts while open (those legs were placed before it opened)."""
        probe = leg in self.probe_legs
        if probe:
            self.probe_legs.remove(leg)
        if success is None:
            return
        state = self.state(now)
        if state == "half_open":
            if not probe:
                return
            if not success:
                self._open(now, "failures")
                return
            self.probe_successes += 1
            if self.probe_successes >= self.policy.probes:
                self._close()
            return
        if state == "open":
            return
        self._count(success, now)
        calls, failed = self.window(now)
        if calls >= self.policy.min_calls and failed / calls >= self.policy.failure_rate:
            self._open(now, "failures")

    def window(self, now: float) -> tuple[int, int]:
        """(legs, failed legs) in the sliding window."""
        live = [b for b in self.buckets if self._in_window(b[0], now)]
        return sum(b[1] for b in live), sum(b[2] for b in live)

    def trip(self, now: float, who: str = "") -> None:
        self._open(now, "tripped")
        self.tripped_by = who

    def reset(self) -> None:
        self._close()

    def dumps(self) -> str:
        """The state as the store keeps it; '' for a closed breaker that counted nothing."""
        if self.opened_at is None and self.reason is None and not self.buckets:
            return ""
        return json.dumps(
            {
                "opened_at": self.opened_at,
                "reason": self.reason,
                "by": self.tripped_by,
                "probes": self.probe_legs,
                "successes": self.probe_successes,
                "bucket": self.policy.bucket,
                "buckets": self.buckets,
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, name: str, policy: BreakerPolicy, raw: str) -> Breaker:
        """A breaker from what `dumps` wrote ('' or absent: closed, nothing counted). Buckets of
        another width (the window was reconfigured) are dropped: the window starts afresh."""
        breaker = cls(name, policy)
        if not raw:
            return breaker
        data: dict[str, Any] = json.loads(raw)
        # Open only for a reason this code opens for: a breaker an older version opened because
        # its trunk was full loads closed (its window kept).
        reason = data.get("reason")
        known = reason in _REASONS
        opened = data.get("opened_at") if known else None
        breaker.opened_at = None if opened is None else float(opened)
        breaker.reason = cast("Reason", reason) if known else None
        breaker.tripped_by = str(data.get("by") or "")
        breaker.probe_legs = [str(leg) for leg in data.get("probes") or []] if known else []
        breaker.probe_successes = int(data.get("successes") or 0) if known else 0
        if data.get("bucket") == policy.bucket:
            breaker.buckets = [[int(n), int(c), int(f)] for n, c, f in data.get("buckets") or []]
        return breaker

    def _open(self, now: float, reason: Reason) -> None:
        self.opened_at = now
        self.reason = reason
        self.tripped_by = ""
        self.probe_successes = 0
        self.probe_legs = []
        self.buckets = []

    def _close(self) -> None:
        self.opened_at = None
        self.reason = None
        self.tripped_by = ""
        self.probe_successes = 0
        self.probe_legs = []
        self.buckets = []

    def _in_window(self, number: int, now: float) -> bool:
        return (number + 1) * self.policy.bucket > now - self.policy.window

    def _count(self, success: bool, now: float) -> None:
        self.buckets = [b for b in self.buckets if self._in_window(b[0], now)]
        number = math.floor(now / self.policy.bucket)
        for b in self.buckets:
            if b[0] == number:
                b[1] += 1
                b[2] += 0 if success else 1
                return
        # Controllers' clocks differ a little: an outcome may belong before the newest bucket.
        self.buckets.append([number, 1, 0 if success else 1])
        self.buckets.sort()


_REASONS = frozenset({"failures", "tripped"})


@dataclass(frozen=True)
class TrunkView:
    name: str
    role: Role
    capacity: int
    in_use: int = 0


def trunk_order(trunks: Sequence[TrunkView], prefer: str | None = None) -> list[TrunkView]:
    """The order in which an outbound leg tries trunks: the preferred one (a flow's transfer
    names one), then the primaries in configured order, then the standbys. The leg takes the
    first whose breaker lets it through and which has a free channel (`Breaker.take`).

    >>> views = [TrunkView("a", "primary", 2), TrunkView("s", "standby", 5),
    ...          TrunkView("b", "primary", 2)]
    >>> [t.name for t in trunk_order(views)], [t.name for t in trunk_order(views, prefer="s")]
    (['a', 'b', 's'], ['s', 'a', 'b'])
    """
    first = [t for t in trunks if t.name == prefer]
    rest = [t for role in ("primary", "standby") for t in trunks if t.role == role]
    return first + [t for t in rest if t.name != prefer]


def judge(dial_status: str) -> bool | None:
    """What a leg's Dial() status says about its carrier: False for the carrier's failure,
    None for nothing (never dialled, cancelled), True otherwise (it delivered the call: the
    customer answered, was busy or did not answer while it rang).

    >>> judge("CONGESTION"), judge("NOPROGRESS"), judge("NOANSWER"), judge("")
    (False, False, True, None)
    """
    if dial_status in NO_NEWS:
        return None
    return dial_status not in CARRIER_FAILURES


def failure_status(dial_status: str) -> bool:
    """Whether a Dial() status through a carrier counts against the carrier."""
    return judge(dial_status) is False


def summarise(breakers: Iterable[Breaker], now: float) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for b in breakers:
        calls, failures = b.window(now)
        out[b.name] = {
            "state": b.state(now),
            "reason": b.reason,
            "tripped": b.tripped,
            "probes_out": len(b.probe_legs),
            "window_calls": calls,
            "window_failures": failures,
        }
    return out
