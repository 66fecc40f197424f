"""The overload governor: a level from 0 (normal) to 4 (failure or extreme) from live load.

Load is callers in the system (waiting + talking) per staffed agent; the levels follow the seeds'
four-level plan. A level rises at once when its threshold is reached, and falls one level at a time,
only after the load has stayed `hysteresis` below the current level's threshold for `cool_down`
seconds, so the centre's behaviour does not flap. A failure (the AMI link down) is level 4, but
only once the link has stayed down `failure_after` seconds: a reconnect of a second must not
overflow callers to the standby lines and then hold the floor there for the cool-down. Pure: time
is a parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_LEVEL = 4


@dataclass(frozen=True)
class GovernorState:
    level: int = 0
    below_since: float | None = None


@dataclass(frozen=True)
class GovernorPolicy:
    thresholds: tuple[float, float, float, float]
    hysteresis: float
    cool_down: float
    failure_after: float = 10.0  # seconds a link must stay down before it counts as a failure


def load_of(waiting: int, talking: int, staffed: int) -> float:
    """Callers per staffed agent; callers with nobody staffed is infinitely loaded."""
    callers = waiting + talking
    if staffed <= 0:
        return math.inf if callers else 0.0
    return callers / staffed


def target_level(load: float, policy: GovernorPolicy) -> int:
    return sum(1 for threshold in policy.thresholds if load >= threshold)


def next_state(
    state: GovernorState, load: float, now: float, policy: GovernorPolicy, *, failure: bool = False
) -> GovernorState:
    """The governor's state after observing `load` at time `now`.

    >>> p = GovernorPolicy((1.2, 1.4, 1.6, 2.0), hysteresis=0.1, cool_down=30)
    >>> s = next_state(GovernorState(), load=1.5, now=0, policy=p)   # rises at once
    >>> s.level
    2
    >>> s = next_state(s, load=1.0, now=10, policy=p)   # below 1.4 - 0.1: the cool-down starts
    >>> (s.level, s.below_since)
    (2, 10)
    >>> next_state(s, load=1.0, now=40, policy=p).level   # 30 s later: one level down
    1
    """
    target = MAX_LEVEL if failure else target_level(load, policy)
    if target >= state.level:
        return GovernorState(level=target)
    if load >= policy.thresholds[state.level - 1] - policy.hysteresis:
        return GovernorState(level=state.level)
    if state.below_since is None:
        return GovernorState(level=state.level, below_since=now)
    if now - state.below_since >= policy.cool_down:
        # One level down; the next step needs its own cool-down.
        return GovernorState(level=state.level - 1, below_since=now)
    return state


def link_down_since(previous: float | None, up: bool, now: float) -> float | None:
    """Since when a link has been down, after observing it `up` or not at `now` (None: up).

    >>> link_down_since(None, up=False, now=5.0), link_down_since(5.0, up=False, now=9.0)
    (5.0, 5.0)
    >>> link_down_since(5.0, up=True, now=9.0) is None
    True
    """
    if up:
        return None
    return now if previous is None else previous


def link_failed(down_since: float | None, now: float, policy: GovernorPolicy) -> bool:
    """Whether a link down since `down_since` counts as a failure at `now`.

    >>> p = GovernorPolicy((1.2, 1.4, 1.6, 2.0), 0.1, 30, failure_after=10)
    >>> link_failed(None, 100.0, p), link_failed(95.0, 100.0, p), link_failed(90.0, 100.0, p)
    (False, False, True)
    """
    return down_since is not None and now - down_since >= policy.failure_after
