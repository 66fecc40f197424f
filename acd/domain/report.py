"""The post-peak report and the live service level: from journey events to the figures a contact
centre is judged by.

Pure: events in (as read from the journey stream), figures out. Per queue, per hour (of the time
the caller queued, UTC), per queue and hour, and overall:
- offered (callers who queued), answered, abandoned (hung up while waiting) and among them short
  abandons (waited less than `short_abandon`: not counted against the service), sent to the
  fallback (the hold limit passed: counted against the service), callbacks asked;
- service level: answered within `service_seconds` /
  (answered + abandoned - short abandons + sent to the fallback);
- average speed of answer (mean wait of the answered), average handle time (mean talk time);
- abandon rate: (abandoned - short abandons) / (answered + abandoned - short abandons + fallback);
- callback success: callbacks answered / callbacks concluded (answered, failed, expired, unknown);
- repeat callers: arrivals from a caller ID that had arrived within the 24 h before (a proxy for
  contacts the first call did not resolve; first contact = 1 - repeat rate);
each set against the targets (the seeds: answer within 2 minutes, abandon under 5%, first-contact
resolution over 75%; service level 80/20 by default).

The live service level (`/metrics`, `/status`, the wallboard, alerts) has the same definition,
over the last `window` seconds, from per-queue per-minute counters that every controller moves
as it records the journey event that causes them (`live_counts`).

>>> events = [
...     {"event": "arrival", "uid": "a", "t": "0", "caller_id": "1"},
...     {"event": "queued", "uid": "a", "t": "1", "skill": "orders"},
...     {"event": "hangup", "uid": "a", "t": "40", "outcome": "answered", "skill": "orders",
...      "waited": "9", "talked": "30"},
... ]
>>> r = build_report(events, start=0, end=3600, targets=Targets())
>>> q = r["queues"]["orders"]
>>> (q["offered"], q["answered"], q["service_level"], q["asa"], q["aht"])
(1, 1, 1.0, 9.0, 30.0)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

REPEAT_WINDOW = 24 * 3600.0
MINUTE = 60
# How calls end (the `outcome` of a hangup event); the CSV has a column for each, and one for
# anything else.
ENDINGS = ("answered", "abandoned", "callback", "fallback", "ivr")
# The per-minute counters of a queue behind the live service level.
LIVE_FIELDS = ("offered", "answered", "in_target", "abandoned", "short_abandoned", "fallback")
_CONCLUDED = ("answered", "failed", "expired", "unknown")


@dataclass(frozen=True)
class Targets:
    service_seconds: float = 20.0
    service_target: float = 0.8
    short_abandon: float = 5.0
    answer_target: float = 120.0
    abandon_target: float = 0.05
    first_contact_target: float = 0.75


def service_level(
    in_target: int, answered: int, abandoned: int, short_abandoned: int, fallback: int
) -> float | None:
    """Answered within the target, of the callers that count: answered, abandoned after the
    short-abandon threshold, and sent to the fallback. None when nobody counts.

    >>> service_level(in_target=3, answered=4, abandoned=2, short_abandoned=1, fallback=0)
    0.6
    """
    return _ratio(in_target, answered + abandoned - short_abandoned + fallback)


@dataclass
class _Tally:
    offered: int = 0
    answered: int = 0
    abandoned: int = 0
    short_abandoned: int = 0
    fallback: int = 0
    answered_in_time: int = 0
    callbacks_requested: int = 0
    callback_outcomes: dict[str, int] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    talks: list[float] = field(default_factory=list)

    def figures(self, targets: Targets) -> dict[str, Any]:
        counted = self.answered + self.abandoned - self.short_abandoned + self.fallback
        concluded = sum(self.callback_outcomes.get(o, 0) for o in _CONCLUDED)
        answered_cb = self.callback_outcomes.get("answered", 0)
        out: dict[str, Any] = {
            "offered": self.offered,
            "answered": self.answered,
            "answered_in_time": self.answered_in_time,
            "abandoned": self.abandoned,
            "short_abandoned": self.short_abandoned,
            "fallback": self.fallback,
            "callbacks_requested": self.callbacks_requested,
            "callbacks_answered": answered_cb,
            "callbacks_concluded": concluded,
            "service_level": service_level(
                self.answered_in_time,
                self.answered,
                self.abandoned,
                self.short_abandoned,
                self.fallback,
            ),
            "asa": _mean(self.waits),
            "aht": _mean(self.talks),
            "abandon_rate": _ratio(self.abandoned - self.short_abandoned, counted),
            "callback_success": _ratio(answered_cb, concluded),
        }
        out["meets"] = {
            "service_level": _at_least(out["service_level"], targets.service_target),
            "answer_time": None if out["asa"] is None else out["asa"] <= targets.answer_target,
            "abandon_rate": None
            if out["abandon_rate"] is None
            else out["abandon_rate"] < targets.abandon_target,
        }
        return out


@dataclass
class _Arrivals:
    """Who called (by arrival time) and how calls ended (by hangup time): figures of the whole
    floor, overall and per hour."""

    arrivals: int = 0
    repeats: int = 0
    ended: dict[str, int] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        repeat_rate = _ratio(self.repeats, self.arrivals)
        first_contact = None if repeat_rate is None else round(1 - repeat_rate, 4)
        return {
            "arrivals": self.arrivals,
            "repeat_callers": self.repeats,
            "repeat_rate": repeat_rate,
            "first_contact": first_contact,
            "calls_ended": dict(sorted(self.ended.items())),
        }


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def _ratio(n: int, d: int) -> float | None:
    return None if d <= 0 else round(n / d, 4)


def _mean(values: list[float]) -> float | None:
    return None if not values else round(sum(values) / len(values), 3)


def _hour(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(t))


def build_report(
    events: Iterable[Mapping[str, str]], start: float, end: float, targets: Targets
) -> dict[str, Any]:
    """Figures for the calls that arrived or queued in [start, end). Events before `start` (up
    to 24 h) only serve to find repeat callers; hangups after `end` tell how calls that queued
    inside ended."""
    overall = _Tally()
    queues: dict[str, _Tally] = {}
    queue_hours: dict[tuple[str, str], _Tally] = {}
    hours: dict[str, _Tally] = {}
    floor = _Arrivals()
    floor_hours: dict[str, _Arrivals] = {}
    queued_at: dict[str, tuple[str, float]] = {}
    last_seen: dict[str, float] = {}

    def tallies(skill: str, t: float) -> list[_Tally]:
        floor_wide = [overall, hours.setdefault(_hour(t), _Tally())]
        if not skill:  # an event that does not say its queue counts for the floor only
            return floor_wide
        return [
            *floor_wide,
            queues.setdefault(skill, _Tally()),
            queue_hours.setdefault((_hour(t), skill), _Tally()),
        ]

    def floors(t: float) -> list[_Arrivals]:
        return [floor, floor_hours.setdefault(_hour(t), _Arrivals())]

    for e in sorted(events, key=lambda e: float(e.get("t") or 0)):
        t = float(e.get("t") or 0)
        kind, uid = e.get("event", ""), e.get("uid", "")
        inside = start <= t < end
        if kind == "arrival":
            caller = e.get("caller_id", "")
            if inside:
                repeat = bool(caller) and t - last_seen.get(caller, -REPEAT_WINDOW - 1) <= (
                    REPEAT_WINDOW
                )
                for scope in floors(t):
                    scope.arrivals += 1
                    scope.repeats += repeat
            if caller:
                last_seen[caller] = t
        elif kind == "queued" and inside:
            skill = e.get("skill", "")
            queued_at[uid] = (skill, t)
            for tally in tallies(skill, t):
                tally.offered += 1
        elif kind == "callback_requested" and inside:
            for tally in tallies(e.get("skill", ""), t):
                tally.callbacks_requested += 1
        elif kind in ("callback_attempt", "callback_expired") and inside:
            outcome = "expired" if kind == "callback_expired" else e.get("outcome", "")
            for tally in tallies(e.get("skill", ""), t):
                tally.callback_outcomes[outcome] = tally.callback_outcomes.get(outcome, 0) + 1
        elif kind == "hangup" and uid in queued_at:
            skill, joined = queued_at.pop(uid)
            outcome = e.get("outcome", "")
            waited = float(e.get("waited") or 0)
            for tally in tallies(skill, joined):
                if outcome == "answered":
                    tally.answered += 1
                    tally.waits.append(waited)
                    tally.talks.append(float(e.get("talked") or 0))
                    if waited <= targets.service_seconds:
                        tally.answered_in_time += 1
                elif outcome == "abandoned":
                    tally.abandoned += 1
                    if waited < targets.short_abandon:
                        tally.short_abandoned += 1
                elif outcome == "fallback":
                    tally.fallback += 1
        if kind == "hangup" and inside:
            outcome = e.get("outcome", "")
            for scope in floors(t):
                scope.ended[outcome] = scope.ended.get(outcome, 0) + 1

    def whole(tally: _Tally, arrivals: _Arrivals) -> dict[str, Any]:
        out = {**tally.figures(targets), **arrivals.figures()}
        out["meets"]["first_contact"] = _at_least(
            out["first_contact"], targets.first_contact_target
        )
        return out

    return {
        "from": start,
        "to": end,
        "targets": {
            "service_level": f"{targets.service_target:.0%} in {targets.service_seconds:g} s",
            "service_seconds": targets.service_seconds,
            "service_target": targets.service_target,
            "short_abandon": targets.short_abandon,
            "answer_time": targets.answer_target,
            "abandon_rate": targets.abandon_target,
            "first_contact": targets.first_contact_target,
        },
        "overall": whole(overall, floor),
        "queues": {q: t.figures(targets) for q, t in sorted(queues.items())},
        "hours": [
            {"hour": hour, "queue": q, **t.figures(targets)}
            for (hour, q), t in sorted(queue_hours.items())
        ],
        "by_hour": [
            {"hour": hour, **whole(hours.get(hour, _Tally()), floor_hours.get(hour, _Arrivals()))}
            for hour in sorted(set(hours) | set(floor_hours))
        ],
    }


CSV_FIELDS = (
    "scope", "hour", "queue", "arrivals", "repeat_callers", "repeat_rate", "first_contact",
    "offered", "answered", "answered_in_time", "abandoned", "short_abandoned", "fallback",
    "callbacks_requested", "callbacks_answered", "callbacks_concluded",
    "service_level", "asa", "aht", "abandon_rate", "callback_success",
    "meets_service_level", "meets_answer_time", "meets_abandon_rate", "meets_first_contact",
    *(f"ended_{o}" for o in ENDINGS), "ended_other",
)  # fmt: skip


def csv_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every figure of the report as rows of CSV_FIELDS, scope by scope: `targets` (each target
    in the column of its figure), `overall`, `queue`, `hour` (the whole floor in that hour) and
    `queue_hour`. A figure a scope does not have (arrivals of a queue) or cannot have (a rate
    over no calls) is empty."""
    t = report["targets"]
    rows: list[dict[str, Any]] = [
        {
            "scope": "targets",
            "service_level": t["service_target"],
            "asa": t["answer_time"],
            "abandon_rate": t["abandon_rate"],
            "first_contact": t["first_contact"],
            "answered_in_time": f"<= {t['service_seconds']:g} s",
            "short_abandoned": f"< {t['short_abandon']:g} s",
        },
        {"scope": "overall", **report["overall"]},
    ]
    rows += [{"scope": "queue", "queue": q, **f} for q, f in report["queues"].items()]
    rows += [{"scope": "hour", **h} for h in report["by_hour"]]
    rows += [{"scope": "queue_hour", **h} for h in report["hours"]]
    out = []
    for row in rows:
        for name, met in (row.pop("meets", None) or {}).items():
            row[f"meets_{name}"] = met
        ended = row.pop("calls_ended", None)
        if ended is not None:
            for outcome in ENDINGS:
                row[f"ended_{outcome}"] = ended.get(outcome, 0)
            row["ended_other"] = sum(n for o, n in ended.items() if o not in ENDINGS)
        out.append({k: _cell(row.get(k)) for k in CSV_FIELDS})
    return out


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value


# -- the live service level ---------------------------------------------------------------------


@dataclass(frozen=True)
class LiveCount:
    """Increments of one queue's counters for the minute `minute` (epoch seconds // 60)."""

    skill: str
    minute: int
    counts: Mapping[str, int]


def live_minutes(now: float, window: float) -> range:
    """The minutes whose counters make the live figure at `now`: the last `window` seconds, in
    whole minutes, the current one included.

    >>> live_minutes(now=7230.0, window=180)
    range(118, 121)
    """
    return range(int((now - window) // MINUTE) + 1, int(now // MINUTE) + 1)


def live_counts(
    event: str, fields: Mapping[str, Any], now: float, targets: Targets, window: float
) -> list[LiveCount]:
    """The counters a journey event moves, in the minute the caller queued (as the report counts
    calls in the hour they queued): `queued` offers a call, `answer` answers it (within the
    target or not), a `hangup` as abandoned concludes it (short or not), and so does `fallback`
    (the hold limit passed: the dialplan's fallback queue takes the caller; its later hangup,
    as fallback, moves nothing). The hangup of an answered call moves nothing: its `answer`
    counted it. Events of calls that queued before the window move nothing. The minute is the
    event's less `waited` (0 when an event does not say).

    >>> live_counts("answer", {"skill": "orders", "waited": "30"}, 600.0, Targets(), 3600)
    [LiveCount(skill='orders', minute=9, counts={'answered': 1})]
    """
    skill = str(fields.get("skill") or "")
    if not skill:
        return []
    waited = float(fields.get("waited") or 0.0)
    counts: dict[str, int] = {}
    if event == "queued":
        counts = {"offered": 1}
    elif event == "answer":
        counts = {"answered": 1}
        if waited <= targets.service_seconds:
            counts["in_target"] = 1
    elif event == "hangup" and fields.get("outcome") == "abandoned":
        counts = {"abandoned": 1}
        if waited < targets.short_abandon:
            counts["short_abandoned"] = 1
    elif event == "fallback":
        counts = {"fallback": 1}
    if not counts:
        return []
    minute = int((now - (0.0 if event == "queued" else waited)) // MINUTE)
    if minute not in live_minutes(now, window):
        return []
    return [LiveCount(skill, minute, counts)]


def live_service_level(counts: Mapping[str, int]) -> float | None:
    """The live figure from a queue's counters summed over the window (same definition as the
    report's)."""
    return service_level(
        counts.get("in_target", 0),
        counts.get("answered", 0),
        counts.get("abandoned", 0),
        counts.get("short_abandoned", 0),
        counts.get("fallback", 0),
    )
