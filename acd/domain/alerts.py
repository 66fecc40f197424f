"""Alert rules on live figures, edge-triggered: a rule fires when its figure has been past its
threshold for `for_seconds`, and resolves when it is back. Pure: time and figures are passed in.

>>> rule = AlertRule(name="presale-wait", figure="longest_wait", queue="presale", above=60)
>>> state = AlertState()
>>> step(rule, state, {"presale": {"longest_wait": 75.0}}, {}, now=0.0)
'firing'
>>> step(rule, state, {"presale": {"longest_wait": 75.0}}, {}, now=5.0) is None
True
>>> step(rule, state, {"presale": {"longest_wait": 10.0}}, {}, now=9.0)
'resolved'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

QUEUE_FIGURES = ("waiting", "longest_wait", "ewt", "service_level")
FLOOR_FIGURES = ("overload_level", "breakers_open")
Figure = Literal[
    "waiting", "longest_wait", "ewt", "service_level", "overload_level", "breakers_open"
]


@dataclass(frozen=True)
class AlertRule:
    name: str
    figure: Figure
    queue: str | None = None  # queue figures: one queue (None: any queue)
    above: float | None = None
    below: float | None = None
    for_seconds: float = 0.0


@dataclass
class AlertState:
    since: float | None = None  # when the figure went past the threshold
    firing: bool = False
    value: float | None = None


def _values(
    rule: AlertRule, queues: Mapping[str, Mapping[str, Any]], floor: Mapping[str, Any]
) -> list[float]:
    if rule.figure in FLOOR_FIGURES:
        v = floor.get(rule.figure)
        return [] if v is None else [float(v)]
    names = [rule.queue] if rule.queue else list(queues)
    out = []
    for name in names:
        v = queues.get(name, {}).get(rule.figure)
        if v is not None:
            out.append(float(v))
    return out


def breached(rule: AlertRule, values: list[float]) -> float | None:
    """The worst value past the threshold, or None."""
    if rule.above is not None:
        over = [v for v in values if v > rule.above]
        return max(over) if over else None
    if rule.below is not None:
        under = [v for v in values if v < rule.below]
        return min(under) if under else None
    return None


def step(
    rule: AlertRule,
    state: AlertState,
    queues: Mapping[str, Mapping[str, Any]],
    floor: Mapping[str, Any],
    now: float,
) -> Literal["firing", "resolved"] | None:
    """Advance one rule; returns 'firing' or 'resolved' on a change, else None."""
    value = breached(rule, _values(rule, queues, floor))
    state.value = value
    if value is None:
        state.since = None
        if state.firing:
            state.firing = False
            return "resolved"
        return None
    if state.since is None:
        state.since = now
    if not state.firing and now - state.since >= rule.for_seconds:
        state.firing = True
        return "firing"
    return None
