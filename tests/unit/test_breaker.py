"""Trunk breakers and trunk choice, with time as a parameter (no sleeps)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acd.domain.breaker import (
    Breaker,
    BreakerPolicy,
    TrunkView,
    choose_trunk,
    failure_status,
    summarise,
)

POLICY = BreakerPolicy(window=60, min_calls=3, failure_rate=0.5, open_for=30, probes=2)


def test_it_opens_on_the_failure_rate_over_the_window_only() -> None:
    b = Breaker("a", POLICY)
    b.record(False, 0.0)
    b.record(False, 1.0)
    assert b.state(1.0) == "closed"  # fewer than min_calls
    b.record(True, 2.0)
    assert b.state(2.0) == "open"  # 2 of 3 failed
    c = Breaker("c", POLICY)
    c.record(False, 0.0)
    c.record(False, 1.0)
    c.record(True, 70.0)  # the two failures left the window
    assert c.state(70.0) == "closed"
    assert c.window(70.0) == (1, 0)


def test_half_open_lets_only_the_probes_through_and_closes_on_their_success() -> None:
    b = Breaker("a", POLICY)
    for t in (0.0, 1.0, 2.0):
        b.record(False, t)
    assert not b.allows(31.9)
    assert b.state(32.0) == "half_open"
    assert b.allows(32.0)
    b.placed(32.0)
    b.placed(32.0)
    assert not b.allows(32.0)  # both probes out
    b.record(True, 33.0)
    assert b.state(33.0) == "half_open"
    b.record(True, 34.0)
    assert b.state(34.0) == "closed"


def test_a_failed_probe_opens_it_again_for_the_full_time() -> None:
    b = Breaker("a", POLICY)
    for t in (0.0, 1.0, 2.0):
        b.record(False, t)
    b.placed(40.0)
    b.record(False, 41.0)
    assert b.state(41.0) == "open"
    assert b.state(70.9) == "open"
    assert b.state(71.0) == "half_open"


def test_trip_holds_it_open_until_reset() -> None:
    b = Breaker("a", POLICY)
    b.trip(0.0)
    assert b.state(1e6) == "open"
    assert not b.allows(1e6)
    b.reset()
    assert b.state(1e6) == "closed"
    assert summarise([b], 1e6)["a"] == {
        "state": "closed",
        "tripped": False,
        "window_calls": 0,
        "window_failures": 0,
    }


def test_trunk_choice_prefers_primaries_in_order_then_standby() -> None:
    views = [
        TrunkView("p1", "primary", 10, 0),
        TrunkView("p2", "primary", 10, 0),
        TrunkView("s1", "standby", 10, 0),
    ]
    breakers = {name: Breaker(name, POLICY) for name in ("p1", "p2", "s1")}
    assert choose_trunk(views, breakers, 0.0) == "p1"
    breakers["p1"].trip(0.0)
    assert choose_trunk(views, breakers, 0.0) == "p2"
    breakers["p2"].trip(0.0)
    assert choose_trunk(views, breakers, 0.0) == "s1"
    breakers["s1"].trip(0.0)
    assert choose_trunk(views, breakers, 0.0) is None


def test_a_full_trunk_is_passed_over() -> None:
    views = [TrunkView("p1", "primary", 2, 2), TrunkView("p2", "primary", 2, 1)]
    assert choose_trunk(views, {}, 0.0) == "p2"


@pytest.mark.parametrize(
    ("status", "failure"),
    [("CONGESTION", True), ("CHANUNAVAIL", True), ("BUSY", False), ("NOANSWER", False)],
)
def test_only_carrier_failures_count(status: str, failure: bool) -> None:
    assert failure_status(status) is failure


@given(st.lists(st.tuples(st.floats(0, 1000), st.booleans()), max_size=50))
def test_it_never_opens_below_the_failure_rate(outcomes: list[tuple[float, bool]]) -> None:
    """Whatever the sequence, the breaker only opens when the window it saw had at least
    min_calls calls and at least failure_rate of them failed."""
    b = Breaker("a", POLICY)
    seen: list[tuple[float, bool]] = []
    for t, ok in sorted(outcomes):
        was = b.state(t)
        b.record(ok, t)
        if was == "closed":
            seen = [(u, o) for u, o in seen if u > t - POLICY.window] + [(t, ok)]
            if b.state(t) == "open":
                failed = sum(1 for _, o in seen if not o)
                assert len(seen) >= POLICY.min_calls
                assert failed / len(seen) >= POLICY.failure_rate
                seen = []
        elif b.state(t) == "closed":
            seen = []
