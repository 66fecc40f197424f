"""The post-peak report from journey events (acd/domain/report.py)."""

from __future__ import annotations

from acd.domain.report import Targets, build_report, csv_rows

T0 = 1_794_355_200.0  # 2026-11-11T00:00Z


def _call(uid: str, t: float, skill: str, outcome: str, waited: float, **extra: str) -> list:
    out = [
        {"event": "arrival", "uid": uid, "t": str(t), "caller_id": extra.get("caller", uid)},
        {"event": "queued", "uid": uid, "t": str(t + 5), "skill": skill},
        {
            "event": "hangup",
            "uid": uid,
            "t": str(t + 5 + waited + 60),
            "outcome": outcome,
            "skill": skill,
            "waited": str(waited),
            "talked": "60" if outcome == "answered" else "",
        },
    ]
    return out


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
    assert q["service_level"] == 0.6
    assert q["abandon_rate"] == 0.2
    assert q["asa"] == 35.0
    assert q["aht"] == 60.0
    assert q["meets"] == {"service_level": False, "answer_time": True, "abandon_rate": False}


def test_calls_are_counted_in_the_hour_and_window_they_queued() -> None:
    events = _call("a", T0 - 100, "orders", "answered", 5) + _call(
        "b", T0 + 3700, "presale", "abandoned", 30
    )
    report = build_report(events, T0, T0 + 7200, Targets())
    assert "orders" not in report["queues"]  # queued before the window
    assert [(h["hour"], h["queue"], h["abandoned"]) for h in report["hours"]] == [
        ("2026-11-11T01:00Z", "presale", 1)
    ]


def test_repeat_callers_within_a_day() -> None:
    events = (
        _call("a", T0 - 20 * 3600, "orders", "answered", 5, caller="139")
        + _call("b", T0 + 10, "orders", "answered", 5, caller="139")
        + _call("c", T0 + 20, "orders", "answered", 5, caller="138")
        + _call("d", T0 - 30 * 3600, "orders", "answered", 5, caller="137")
        + _call("e", T0 + 30, "orders", "answered", 5, caller="137")
    )
    overall = build_report(events, T0, T0 + 3600, Targets())["overall"]
    assert (overall["arrivals"], overall["repeat_callers"]) == (3, 1)


def test_callback_success_counts_concluded_callbacks_only() -> None:
    events = [
        {"event": "callback_attempt", "uid": "x", "t": str(T0 + i), "skill": "orders",
         "outcome": outcome}
        for i, outcome in enumerate(["retry", "answered", "again", "failed", "answered"])
    ]  # fmt: skip
    q = build_report(events, T0, T0 + 60, Targets())["queues"]["orders"]
    assert q["callback_success"] == round(2 / 3, 4)


def test_csv_rows_have_every_scope() -> None:
    report = build_report(_call("a", T0, "orders", "answered", 5), T0, T0 + 3600, Targets())
    rows = csv_rows(report)
    assert [r["scope"] for r in rows] == ["overall", "queue", "hour"]
    assert rows[1]["queue"] == "orders"
    assert rows[0]["callback_success"] == ""
