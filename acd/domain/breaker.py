"""Circuit breakers on carrier trunks, and the choice of trunk for an outbound leg.

Pure: every method takes the time as a parameter, so the tests run without sleeping.

A breaker is `closed` (calls go through), `open` (none do) or `half_open` (a few probe calls go
through to see whether the trunk recovered). It opens when, over a sliding window, the failure
rate of the last calls reaches a threshold (with at least `min_calls` calls in the window), or at
once when a supervisor trips it. After `open_for` seconds it lets `probes` calls through; one
failed probe opens it again, `probes` successes close it.

>>> b = Breaker("carrier-a", BreakerPolicy(window=60, min_calls=3, failure_rate=0.5))
>>> for t in (1.0, 2.0, 3.0):
...     b.record(False, now=t)
>>> b.state(now=3.0)
'open'
>>> b.state(now=3.0 + b.policy.open_for)
'half_open'
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

State = Literal["closed", "open", "half_open"]
Role = Literal["primary", "standby"]


@dataclass(frozen=True)
class BreakerPolicy:
    window: float = 60.0  # seconds of outcomes the failure rate is computed over
    min_calls: int = 5  # fewer calls in the window never open the breaker
    failure_rate: float = 0.5  # opens at this share of failed calls in the window
    open_for: float = 30.0  # seconds open before probing
    probes: int = 1  # successful probe calls needed to close again

    def __post_init__(self) -> None:
        if not (0 < self.failure_rate <= 1) or self.min_calls < 1 or self.probes < 1:
            raise ValueError("failure_rate in (0, 1], min_calls >= 1 and probes >= 1")


@dataclass
class Breaker:
    name: str
    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    _outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    _opened_at: float | None = None
    _probe_successes: int = 0
    _probes_out: int = 0
    tripped: bool = False  # held open by hand until reset

    def state(self, now: float) -> State:
        if self.tripped:
            return "open"
        if self._opened_at is None:
            return "closed"
        if now - self._opened_at >= self.policy.open_for:
            return "half_open"
        return "open"

    def allows(self, now: float) -> bool:
        """Whether a call may be placed now (half-open: while probes are not all out)."""
        state = self.state(now)
        if state == "closed":
            return True
        return state == "half_open" and self._probes_out < self.policy.probes

    def placed(self, now: float) -> None:
        """A call was placed through this trunk (counts probes while half-open)."""
        if self.state(now) == "half_open":
            self._probes_out += 1

    def cancel(self, now: float) -> None:
        """A call placed through this trunk never reached it (e.g. the agent of a callback did
        not answer): it frees its probe slot and says nothing about the trunk."""
        if self.state(now) == "half_open":
            self._probes_out = max(0, self._probes_out - 1)

    def record(self, success: bool, now: float) -> None:
        """The outcome of a call through this trunk: success is any answer or a final response
        from the far end that is not the carrier's failure (e.g. the customer was busy)."""
        state = self.state(now)
        if state == "half_open":
            self._probes_out = max(0, self._probes_out - 1)
            if not success:
                self._open(now)
                return
            self._probe_successes += 1
            if self._probe_successes >= self.policy.probes:
                self._close()
            return
        if state == "open":
            return  # a call placed before the breaker opened: no news
        self._outcomes.append((now, success))
        self._expire(now)
        total = len(self._outcomes)
        failed = sum(1 for _, ok in self._outcomes if not ok)
        if total >= self.policy.min_calls and failed / total >= self.policy.failure_rate:
            self._open(now)

    def window(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the sliding window."""
        self._expire(now)
        return len(self._outcomes), sum(1 for _, ok in self._outcomes if not ok)

    def trip(self, now: float) -> None:
        self.tripped = True
        self._opened_at = now

    def reset(self) -> None:
        self.tripped = False
        self._close()

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._probe_successes = 0
        self._probes_out = 0
        self._outcomes.clear()

    def _close(self) -> None:
        self._opened_at = None
        self._probe_successes = 0
        self._probes_out = 0
        self._outcomes.clear()

    def _expire(self, now: float) -> None:
        while self._outcomes and self._outcomes[0][0] <= now - self.policy.window:
            self._outcomes.popleft()


@dataclass(frozen=True)
class TrunkView:
    name: str
    role: Role
    capacity: int
    in_use: int


def choose_trunk(
    trunks: Sequence[TrunkView], breakers: dict[str, Breaker], now: float
) -> str | None:
    """The trunk an outbound leg takes: the first primary (in configured order) whose breaker lets
    calls through and which has a free channel; when no primary can, the first such standby.
    None when no trunk can take the call.

    >>> views = [TrunkView("a", "primary", 2, 2), TrunkView("s", "standby", 5, 0)]
    >>> choose_trunk(views, {}, now=0.0)  # the primary is full: saturation moves to standby
    's'
    """
    for role in ("primary", "standby"):
        for trunk in trunks:
            if trunk.role != role or trunk.in_use >= trunk.capacity:
                continue
            breaker = breakers.get(trunk.name)
            if breaker is None or breaker.allows(now):
                return trunk.name
    return None


def failure_status(dial_status: str) -> bool:
    """Whether a Dial() status through a carrier counts against the carrier: it could not
    deliver the call (503 and other server failures map to CONGESTION or CHANUNAVAIL), not that
    the customer did not answer or was busy."""
    return dial_status in {"CONGESTION", "CHANUNAVAIL"}


def summarise(breakers: Iterable[Breaker], now: float) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for b in breakers:
        calls, failures = b.window(now)
        out[b.name] = {
            "state": b.state(now),
            "tripped": b.tripped,
            "window_calls": calls,
            "window_failures": failures,
        }
    return out
