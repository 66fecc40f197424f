"""The post-peak report and the live service level from journey events (acd/domain/report.py),
with expectations computed by hand."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acd.domain.report import (
    CSV_FIELDS,
    LiveCount,
    Targets,
    build_report,
    csv_rows,
    live_counts,
    live_minutes,
    live_service_level,
)

T0 = 1_794_355_200.0  # 2026-11-11T00:00Z


def _call(
    uid: str, t: float, skill: str, outcome: str, waited: float, talked: float = 60, **extra: str
) -> list[dict[str, str]]:
    """A caller who arrives at t, queues 5 s later, waits, then talks (if answered) and hangs
    up."""
    answered = outcome == "answered"
    return [
        {"event": "arrival", "uid": uid, "t": str(t), "caller_id": extra.get("caller", uid)},
        {"event": "queued", "uid": uid, "t": str(t + 5), "skill": skill},
        {
            "event": "hangup",
            "uid": uid,
            "t": str(t + 5 + waited + (talked if answered else 0)),
            "outcome": outcome,
            "skill": skill,
            "waited": str(waited),
            "talked": str(talked) if answered else "",
        },
    ]


def test_service_level_abandons_and_short_abandons() -> None:
    """4 answered (3 within 20 s), 2 abandoned of which 1 short (3 s): the short one counts
    against nothing; SL 3/5, abandon rate 1/5, ASA the mean wait of the answered."""
    events = (
        _call("a", T0, "orders", "answered", 10)
        + _call("b", T0 + 10, "orders", "answered", 15)
        + _call("c", T0 + 20, "orders", "answered", 20)
        + _call("d", T0 + 30, "orders", "answered", 95)
        + _call("e", T0 + 40, "orders", "abandoned", 3)
        + _call("f", T0 + 50, "orders", "abandoned", 40)
    )
    q = build_report(events, T0, T0 + 3600, Targets())["queues"]["orders"]
    assert (q["offered"], q["answered"], q["abandoned"], q["short_abandoned"]) == (6, 4, 2, 1)
    assert q["answered_in_time"] == 3  # 10, 15 and 20 s: the target is "within", inclusive
    assert q["service_level"] == 0.6
    assert q["abandon_rate"] == 0.2
    assert q["asa"] == 35.0  # (10 + 15 + 20 + 95) / 4
    assert q["aht"] == 60.0
    assert q["meets"] == {"service_level": False, "answer_time": True, "abandon_rate": False}


def test_the_short_abandon_threshold_is_exclusive_and_configurable() -> None:
    """With short_abandon 10 s, abandons after 4.9 s and 9.9 s are short, one after exactly
    10 s is not: SL 1 answered in time / (1 + 3 - 2) = 0.5, abandon rate 1/2."""
    events = (
        _call("a", T0, "orders", "answered", 1)
        + _call("b", T0 + 1, "orders", "abandoned", 4.9)
        + _call("c", T0 + 2, "orders", "abandoned", 9.9)
        + _call("d", T0 + 3, "orders", "abandoned", 10)
    )
    q = build_report(events, T0, T0 + 3600, Targets(short_abandon=10))["queues"]["orders"]
    assert (q["abandoned"], q["short_abandoned"]) == (3, 2)
    assert (q["service_level"], q["abandon_rate"]) == (0.5, 0.5)


def test_a_caller_sent_to_the_fallback_counts_against_the_service_not_as_an_abandon() -> None:
    """2 answered in time and 1 sent to the fallback after the hold limit: SL 2/3, abandon
    rate 0/3."""
    events = (
        _call("a", T0, "payment", "answered", 2)
        + _call("b", T0 + 1, "payment", "answered", 3)
        + _call("c", T0 + 2, "payment", "fallback", 1800)
    )
    q = build_report(events, T0, T0 + 3600, Targets())["queues"]["payment"]
    assert (q["offered"], q["answered"], q["fallback"], q["abandoned"]) == (3, 2, 1, 0)
    assert q["service_level"] == round(2 / 3, 4)
    assert q["abandon_rate"] == 0.0
    assert q["meets"]["service_level"] is False  # 66.7% < 80%


def test_the_service_level_target_is_configurable() -> None:
    """Waits of 5, 12 and 25 s: 80/20 gives 2/3 (missed), 60/30 gives 3/3 (met), 90/10 1/3."""
    events = (
        _call("a", T0, "orders", "answered", 5)
        + _call("b", T0 + 1, "orders", "answered", 12)
        + _call("c", T0 + 2, "orders", "answered", 25)
    )

    def sl(service_seconds: float, service_target: float) -> tuple[Any, Any]:
        targets = Targets(service_seconds=service_seconds, service_target=service_target)
        q = build_report(events, T0, T0 + 3600, targets)["queues"]["orders"]
        return q["service_level"], q["meets"]["service_level"]

    assert sl(20, 0.8) == (round(2 / 3, 4), False)
    assert sl(30, 0.6) == (1.0, True)
    assert sl(10, 0.9) == (round(1 / 3, 4), False)


def test_calls_are_counted_in_the_hour_and_window_they_queued() -> None:
    """A call that queued before --from is left out; one that queued at 01:01 is in hour 01."""
    events = _call("a", T0 - 100, "orders", "answered", 5) + _call(
        "b", T0 + 3700, "presale", "abandoned", 30
    )
    report = build_report(events, T0, T0 + 7200, Targets())
    assert "orders" not in report["queues"]  # queued before the window
    assert [(h["hour"], h["queue"], h["abandoned"]) for h in report["hours"]] == [
        ("2026-11-11T01:00Z", "presale", 1)
    ]


def test_each_hour_has_its_arrivals_repeats_endings_and_queue_figures() -> None:
    """Hour 00: 3 arrivals (one repeat of 139), 2 queued (1 answered in 10 s, 1 abandoned after
    30 s), one ended in the menu; hour 01: 1 arrival answered in 30 s (out of the 20 s target).
    The calls' hangups fall in the hour they end."""
    events = (
        _call("a", T0, "orders", "answered", 10, talked=100, caller="139")
        + _call("b", T0 + 600, "presale", "abandoned", 30, caller="139")
        + [
            {"event": "arrival", "uid": "c", "t": str(T0 + 700), "caller_id": "150"},
            {"event": "hangup", "uid": "c", "t": str(T0 + 720), "outcome": "ivr"},
        ]
        + _call("d", T0 + 3600, "orders", "answered", 30, caller="151")
    )
    report = build_report(events, T0, T0 + 7200, Targets())
    h0, h1 = report["by_hour"]
    assert (h0["hour"], h0["arrivals"], h0["repeat_callers"], h0["repeat_rate"]) == (
        "2026-11-11T00:00Z", 3, 1, 0.3333,
    )  # fmt: skip
    assert (h0["offered"], h0["answered"], h0["abandoned"]) == (2, 1, 1)
    assert h0["service_level"] == 0.5
    assert h0["calls_ended"] == {"abandoned": 1, "answered": 1, "ivr": 1}
    assert h0["first_contact"] == 0.6667
    assert h0["meets"]["first_contact"] is False  # 66.7% < 75%
    assert (h1["arrivals"], h1["answered"], h1["service_level"], h1["asa"]) == (1, 1, 0.0, 30.0)
    assert h1["meets"] == {
        "service_level": False, "answer_time": True, "abandon_rate": True, "first_contact": True,
    }  # fmt: skip
    assert [(h["hour"], h["queue"]) for h in report["hours"]] == [
        ("2026-11-11T00:00Z", "orders"),
        ("2026-11-11T00:00Z", "presale"),
        ("2026-11-11T01:00Z", "orders"),
    ]


def test_repeat_callers_within_a_day() -> None:
    """139 called 20 h before (a repeat), 137 30 h before (not), 136 exactly 24 h before (a
    repeat: within 24 h, inclusive); 138 once. 2 repeats of 4 arrivals: first contact 50%."""
    events = (
        _call("a", T0 - 20 * 3600, "orders", "answered", 5, caller="139")
        + _call("b", T0 + 10, "orders", "answered", 5, caller="139")
        + _call("c", T0 + 20, "orders", "answered", 5, caller="138")
        + _call("d", T0 - 30 * 3600, "orders", "answered", 5, caller="137")
        + _call("e", T0 + 30, "orders", "answered", 5, caller="137")
        + _call("f", T0 + 40 - 24 * 3600, "orders", "answered", 5, caller="136")
        + _call("g", T0 + 40, "orders", "answered", 5, caller="136")
    )
    overall = build_report(events, T0, T0 + 3600, Targets())["overall"]
    assert (overall["arrivals"], overall["repeat_callers"]) == (4, 2)
    assert (overall["repeat_rate"], overall["first_contact"]) == (0.5, 0.5)
    assert overall["meets"]["first_contact"] is False


def test_callback_success_counts_concluded_callbacks_only() -> None:
    """Retries and not-dialled attempts conclude nothing; answered 2 of 3 concluded (answered,
    failed, answered) in orders; in presale one expired (its own event) and one attempt answered:
    1 of 2. Overall 3 of 5."""
    events = [
        {"event": "callback_attempt", "uid": "x", "t": str(T0 + i), "skill": "orders",
         "outcome": outcome}
        for i, outcome in enumerate(["retry", "answered", "again", "failed", "answered"])
    ] + [
        {"event": "callback_expired", "uid": "y", "t": str(T0 + 10), "skill": "presale"},
        {"event": "callback_attempt", "uid": "z", "t": str(T0 + 11), "skill": "presale",
         "outcome": "answered"},
    ]  # fmt: skip
    report = build_report(events, T0, T0 + 60, Targets())
    orders, presale = report["queues"]["orders"], report["queues"]["presale"]
    assert (orders["callbacks_answered"], orders["callbacks_concluded"]) == (2, 3)
    assert orders["callback_success"] == round(2 / 3, 4)
    assert presale["callback_success"] == 0.5
    assert report["overall"]["callback_success"] == 0.6


def test_an_event_without_its_queue_counts_for_the_floor_only() -> None:
    """A callback that expired, recorded without its queue: one more concluded callback for the
    floor (1 answered of 2), none for a queue, and no nameless queue."""
    events = [
        {"event": "callback_attempt", "uid": "x", "t": str(T0), "skill": "orders",
         "outcome": "answered"},
        {"event": "callback_expired", "uid": "cb1", "t": str(T0 + 1)},
    ]  # fmt: skip
    report = build_report(events, T0, T0 + 60, Targets())
    assert list(report["queues"]) == ["orders"]
    assert report["queues"]["orders"]["callback_success"] == 1.0
    assert report["overall"]["callback_success"] == 0.5
    assert report["by_hour"][0]["callbacks_concluded"] == 2


def test_the_csv_carries_every_figure_of_the_json() -> None:
    """Every figure of the JSON's overall, queue, hour and queue-hour scopes is in the CSV row
    of that scope, with the same value (meets flags as yes/no, endings one column each), and
    the targets row sets each target in the column of its figure."""
    events = (
        _call("a", T0, "orders", "answered", 10, caller="139")
        + _call("b", T0 + 60, "orders", "abandoned", 2, caller="139")
        + _call("c", T0 + 3700, "presale", "answered", 45)
    )
    report = build_report(events, T0, T0 + 7200, Targets())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(csv_rows(report))
    rows = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert [(r["scope"], r["hour"], r["queue"]) for r in rows] == [
        ("targets", "", ""),
        ("overall", "", ""),
        ("queue", "", "orders"),
        ("queue", "", "presale"),
        ("hour", "2026-11-11T00:00Z", ""),
        ("hour", "2026-11-11T01:00Z", ""),
        ("queue_hour", "2026-11-11T00:00Z", "orders"),
        ("queue_hour", "2026-11-11T01:00Z", "presale"),
    ]
    scopes: list[tuple[dict[str, Any], dict[str, str]]] = [
        (report["overall"], rows[1]),
        (report["queues"]["orders"], rows[2]),
        (report["queues"]["presale"], rows[3]),
        (report["by_hour"][0], rows[4]),
        (report["by_hour"][1], rows[5]),
        (report["hours"][0], rows[6]),
        (report["hours"][1], rows[7]),
    ]
    for figures, row in scopes:
        for name, value in figures.items():
            if name == "meets":
                for target, met in value.items():
                    assert row[f"meets_{target}"] == {True: "yes", False: "no", None: ""}[met]
            elif name == "calls_ended":
                for outcome, n in value.items():
                    assert row[f"ended_{outcome}"] == str(n)
            else:
                assert row[name] == ("" if value is None else str(value)), name
    overall = rows[1]
    assert (overall["arrivals"], overall["repeat_callers"], overall["repeat_rate"]) == (
        "3", "1", "0.3333",
    )  # fmt: skip
    assert (overall["meets_first_contact"], overall["meets_abandon_rate"]) == ("no", "yes")
    assert (overall["ended_answered"], overall["ended_abandoned"], overall["ended_ivr"]) == (
        "2", "1", "0",
    )  # fmt: skip
    assert rows[2]["arrivals"] == ""  # arrivals are the floor's, not a queue's
    targets = rows[0]
    assert (targets["service_level"], targets["asa"], targets["abandon_rate"]) == (
        "0.8", "120.0", "0.05",
    )  # fmt: skip
    assert targets["first_contact"] == "0.75"


# -- the live service level ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "fields", "now", "expected"),
    [
        ("queued", {"skill": "orders"}, 610.0, [LiveCount("orders", 10, {"offered": 1})]),
        # answered 15 s after queueing at 595: minute 9, within 20 s
        (
            "answer",
            {"skill": "orders", "waited": "15"},
            610.0,
            [LiveCount("orders", 9, {"answered": 1, "in_target": 1})],
        ),
        ("answer", {"skill": "orders", "waited": "25"}, 610.0,
         [LiveCount("orders", 9, {"answered": 1})]),
        ("hangup", {"skill": "orders", "outcome": "abandoned", "waited": "4.9"}, 610.0,
         [LiveCount("orders", 10, {"abandoned": 1, "short_abandoned": 1})]),
        ("hangup", {"skill": "orders", "outcome": "abandoned", "waited": "5"}, 610.0,
         [LiveCount("orders", 10, {"abandoned": 1})]),
        ("fallback", {"skill": "orders", "waited": "300"}, 610.0,
         [LiveCount("orders", 5, {"fallback": 1})]),
        ("fallback", {"skill": "orders"}, 610.0, [LiveCount("orders", 10, {"fallback": 1})]),
        # the fallback event counted it
        ("hangup", {"skill": "orders", "outcome": "fallback", "waited": "300"}, 610.0, []),
        # counted at its answer; how it ended moves nothing
        ("hangup", {"skill": "orders", "outcome": "answered", "waited": "3"}, 610.0, []),
        ("hangup", {"skill": "orders", "outcome": "callback", "waited": "3"}, 610.0, []),
        ("hangup", {"outcome": "ivr"}, 610.0, []),
        ("ring", {"skill": "orders"}, 610.0, []),
        # queued 3700 s ago: before the hour
        ("answer", {"skill": "orders", "waited": "3700"}, 7200.0, []),
    ],
)  # fmt: skip
def test_which_live_counters_an_event_moves(
    event: str, fields: dict[str, str], now: float, expected: list[LiveCount]
) -> None:
    """Each journey event moves the counters of the minute its caller queued in."""
    assert live_counts(event, fields, now, Targets(), window=3600) == expected


def test_the_live_window_is_whole_minutes_up_to_now() -> None:
    """At 12:00:30 with a 1 h window: the minutes 11:01 to 12:00 (60 of them)."""
    minutes = live_minutes(T0 + 12 * 3600 + 30, 3600)
    assert len(minutes) == 60
    assert minutes[0] * 60 == T0 + 11 * 3600 + 60
    assert minutes[-1] * 60 == T0 + 12 * 3600


def test_the_live_figure_has_the_reports_definition() -> None:
    """8 in time of 10 answered, 3 abandoned of which 2 short, 1 sent to the fallback:
    8 / (10 + 3 - 2 + 1) = 0.6667."""
    counts = {"offered": 15, "answered": 10, "in_target": 8, "abandoned": 3,
              "short_abandoned": 2, "fallback": 1}  # fmt: skip
    assert live_service_level(counts) == 0.6667
    assert live_service_level({"offered": 3}) is None  # nobody concluded yet


_calls = st.lists(
    st.tuples(
        st.floats(60, 3000),  # queued at, seconds into the hour (its first minute is out)
        st.floats(0, 120),  # waited
        st.sampled_from(["answered", "abandoned", "callback", "fallback"]),
        st.sampled_from(["orders", "presale"]),
    ),
    max_size=30,
)


@given(_calls)
def test_the_live_counters_and_the_report_agree(calls: list[tuple[float, float, str, str]]) -> None:
    """For any calls of one hour, the live service level summed from the counters their events
    moved equals the report's, per queue."""
    targets, now = Targets(), T0 + 3600
    events: list[dict[str, str]] = []
    totals: dict[str, dict[str, int]] = {}
    for i, (queued, waited, outcome, skill) in enumerate(calls):
        uid, t = f"c{i}", T0 + queued
        timeline = [("queued", t, {"skill": skill})]
        if outcome in ("answered", "fallback"):
            event = "answer" if outcome == "answered" else "fallback"
            timeline.append((event, t + waited, {"skill": skill, "waited": str(waited)}))
        timeline.append(
            ("hangup", t + waited + 30,
             {"skill": skill, "outcome": outcome, "waited": str(waited), "talked": "30"})
        )  # fmt: skip
        for event, at, fields in timeline:
            events.append({"event": event, "uid": uid, "t": str(at), **fields})
            for count in live_counts(event, fields, at, targets, window=3600):
                assert count.minute in live_minutes(now, 3600)
                sums = totals.setdefault(count.skill, {})
                for name, n in count.counts.items():
                    sums[name] = sums.get(name, 0) + n
    report = build_report(events, T0, now, targets)
    for skill, figures in report["queues"].items():
        assert live_service_level(totals.get(skill, {})) == figures["service_level"]
