"""The post-peak report: from journey events to the figures a contact centre is judged by.

Pure: events in (as read from the journey stream), figures out. Per queue and per hour (of the
time the caller queued, UTC) and overall:
- offered (callers who queued), answered, abandoned (hung up while waiting) and among them short
  abandons (waited less than `short_abandon`: not counted against the service), callbacks asked;
- service level: answered within `service_seconds` / (answered + abandoned - short abandons);
- average speed of answer (mean wait of the answered), average handle time (mean talk time);
- abandon rate: (abandoned - short abandons) / (answered + abandoned - short abandons);
- callback success: answered callback attempts / callbacks concluded;
- repeat callers: arrivals from a caller ID that had arrived within the 24 h before (a proxy for
  contacts the first call did not resolve);
each set against the targets (the seeds: answer within 2 minutes, abandon under 5%).

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


@dataclass(frozen=True)
class Targets:
    service_seconds: float = 20.0
    service_target: float = 0.8
    short_abandon: float = 5.0
    answer_target: float = 120.0
    abandon_target: float = 0.05


@dataclass
class _Tally:
    offered: int = 0
    answered: int = 0
    abandoned: int = 0
    short_abandoned: int = 0
    answered_in_time: int = 0
    callbacks_requested: int = 0
    callback_attempts: dict[str, int] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    talks: list[float] = field(default_factory=list)

    def figures(self, targets: Targets) -> dict[str, Any]:
        counted = self.answered + self.abandoned - self.short_abandoned
        concluded = sum(
            self.callback_attempts.get(o, 0) for o in ("answered", "failed", "expired", "unknown")
        )
        out: dict[str, Any] = {
            "offered": self.offered,
            "answered": self.answered,
            "abandoned": self.abandoned,
            "short_abandoned": self.short_abandoned,
            "callbacks_requested": self.callbacks_requested,
            "service_level": _ratio(self.answered_in_time, counted),
            "asa": _mean(self.waits),
            "aht": _mean(self.talks),
            "abandon_rate": _ratio(self.abandoned - self.short_abandoned, counted),
            "callback_success": _ratio(self.callback_attempts.get("answered", 0), concluded),
        }
        out["meets"] = {
            "service_level": None
            if out["service_level"] is None
            else out["service_level"] >= targets.service_target,
            "answer_time": None if out["asa"] is None else out["asa"] <= targets.answer_target,
            "abandon_rate": None
            if out["abandon_rate"] is None
            else out["abandon_rate"] < targets.abandon_target,
        }
        return out


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
    to 24 h) only serve to find repeat callers."""
    overall = _Tally()
    queues: dict[str, _Tally] = {}
    hours: dict[tuple[str, str], _Tally] = {}
    queued_at: dict[str, tuple[str, float]] = {}
    last_seen: dict[str, float] = {}
    arrivals = repeats = 0
    outcomes: dict[str, int] = {}

    def tallies(skill: str, t: float) -> list[_Tally]:
        return [
            overall,
            queues.setdefault(skill, _Tally()),
            hours.setdefault((_hour(t), skill), _Tally()),
        ]

    for e in sorted(events, key=lambda e: float(e.get("t") or 0)):
        t = float(e.get("t") or 0)
        kind, uid = e.get("event", ""), e.get("uid", "")
        inside = start <= t < end
        if kind == "arrival":
            caller = e.get("caller_id", "")
            if inside:
                arrivals += 1
                if caller and t - last_seen.get(caller, float("-inf")) <= REPEAT_WINDOW:
                    repeats += 1
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
        elif kind == "callback_attempt" and inside:
            outcome = e.get("outcome", "")
            for tally in tallies(e.get("skill", ""), t):
                tally.callback_attempts[outcome] = tally.callback_attempts.get(outcome, 0) + 1
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
        if kind == "hangup" and inside:
            outcome = e.get("outcome", "")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    return {
        "from": start,
        "to": end,
        "targets": {
            "service_level": f"{targets.service_target:.0%} in {targets.service_seconds:g} s",
            "answer_time": targets.answer_target,
            "abandon_rate": targets.abandon_target,
        },
        "overall": {
            **overall.figures(targets),
            "arrivals": arrivals,
            "calls_ended": outcomes,
            "repeat_callers": repeats,
            "repeat_rate": _ratio(repeats, arrivals),
        },
        "queues": {q: t.figures(targets) for q, t in sorted(queues.items())},
        "hours": [
            {"hour": hour, "queue": q, **t.figures(targets)}
            for (hour, q), t in sorted(hours.items())
        ],
    }


CSV_FIELDS = (
    "scope", "hour", "queue", "offered", "answered", "abandoned", "short_abandoned",
    "callbacks_requested", "service_level", "asa", "aht", "abandon_rate", "callback_success",
)  # fmt: skip


def csv_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = [{"scope": "overall", "hour": "", "queue": "", **report["overall"]}]
    rows += [{"scope": "queue", "hour": "", "queue": q, **f} for q, f in report["queues"].items()]
    rows += [{"scope": "hour", **h} for h in report["hours"]]
    return [{k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS} for row in rows]
