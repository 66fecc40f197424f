"""Trunk breakers and the order of trunks, with time as a parameter (no sleeps)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acd.domain.breaker import (
    Breaker,
    BreakerPolicy,
    TrunkView,
    failure_status,
    judge,
    summarise,
    trunk_order,
)

POLICY = BreakerPolicy(window=60, min_calls=3, failure_rate=0.5, open_for=30, probes=2)


def _leg(b: Breaker, leg: str, now: float, success: bool | None) -> None:
    """A leg placed and ended at `now` (on a trunk with channels to spare)."""
    assert b.take(leg, now, 0, 100)
    b.release(leg, now, success)


def _opened(policy: BreakerPolicy = POLICY) -> Breaker:
    """A breaker opened by three failures at t=0, 1, 2."""
    b = Breaker("a", policy)
    for i, t in enumerate((0.0, 1.0, 2.0)):
        _leg(b, f"f{i}", t, False)
    assert (b.state(2.0), b.reason) == ("open", "failures")
    return b


def test_it_opens_on_the_failure_rate_over_the_window_only() -> None:
    """Two failures of two legs are below min_calls; a third leg makes 2 of 3 failed, and it
    opens. Failures that left the window do not count."""
    b = Breaker("a", POLICY)
    _leg(b, "1", 0.0, False)
    _leg(b, "2", 1.0, False)
    assert b.state(1.0) == "closed"  # fewer than min_calls
    _leg(b, "3", 2.0, True)
    assert (b.state(2.0), b.reason) == ("open", "failures")
    c = Breaker("c", POLICY)
    _leg(c, "1", 0.0, False)
    _leg(c, "2", 1.0, False)
    _leg(c, "3", 70.0, True)  # the two failures left the window
    assert c.state(70.0) == "closed"
    assert c.window(70.0) == (1, 0)


def test_half_open_lets_only_the_probes_through_and_closes_on_their_success() -> None:
    """After open_for, exactly `probes` legs take a probe slot; both succeeding close it."""
    b = _opened()
    assert not b.allows(31.9)
    assert not b.take("early", 31.9, 0, 10)
    assert b.state(32.0) == "half_open"
    assert b.take("p1", 32.0, 0, 10)
    assert b.take("p2", 32.0, 1, 10)
    assert not b.take("p3", 32.0, 2, 10)  # both probes out
    assert b.probe_legs == ["p1", "p2"]
    b.release("p1", 33.0, True)
    assert b.state(33.0) == "half_open"
    b.release("p2", 34.0, True)
    assert (b.state(34.0), b.reason) == ("closed", None)
    assert b.window(34.0) == (0, 0)


def test_a_failed_probe_opens_it_again_for_the_full_time() -> None:
    """One failed probe: open again from its end, for open_for seconds."""
    b = _opened()
    assert b.take("p", 40.0, 0, 10)
    b.release("p", 41.0, False)
    assert (b.state(41.0), b.reason) == ("open", "failures")
    assert b.state(70.9) == "open"
    assert b.state(71.0) == "half_open"


def test_a_cancelled_probe_frees_its_slot_and_says_nothing() -> None:
    """A probe whose leg was never dialled frees its slot: the next leg is the probe."""
    b = _opened(BreakerPolicy(window=60, min_calls=3, failure_rate=0.5, open_for=30, probes=1))
    assert b.take("p", 40.0, 0, 10)
    assert not b.allows(40.0)
    b.release("p", 41.0, None)
    assert b.state(41.0) == "half_open"
    assert b.take("q", 41.0, 0, 10)
    b.release("q", 42.0, True)
    assert b.state(42.0) == "closed"


def test_legs_placed_before_it_opened_say_nothing_afterwards() -> None:
    """A leg that was up when the breaker opened neither counts while open nor counts as a
    probe while half-open; its release holds no slot."""
    b = Breaker("a", POLICY)
    assert b.take("old1", 0.0, 0, 10)
    assert b.take("old2", 0.0, 1, 10)
    b.trip(1.0)
    b.release("old1", 2.0, False)
    assert b.state(2.0) == "open"
    c = _opened()
    assert c.take("old", 1.5, 0, 10) is False  # open: refused
    assert c.take("p1", 32.0, 0, 10)
    c.release("other", 33.0, True)  # not a probe
    assert c.probe_successes == 0
    assert c.probe_legs == ["p1"]


def test_trip_holds_it_open_until_reset() -> None:
    """A trip opens it at once, for ever, until reset; the summary shows why."""
    b = Breaker("a", POLICY)
    b.trip(0.0, who="lee")
    assert b.state(1e6) == "open"
    assert not b.allows(1e6)
    assert summarise([b], 1e6)["a"] == {
        "state": "open",
        "reason": "tripped",
        "tripped": True,
        "probes_out": 0,
        "window_calls": 0,
        "window_failures": 0,
    }
    assert b.tripped_by == "lee"
    b.reset()
    assert b.state(1e6) == "closed"
    assert summarise([b], 1e6)["a"]["reason"] is None
    assert b.dumps() == ""


def test_a_full_trunk_refuses_legs_above_its_capacity_and_stays_closed() -> None:
    """A full trunk is a capacity limit, not a failure: it takes legs up to its capacity and
    refuses the next, its breaker closed; a freed channel takes a leg again at once (it used to
    open the breaker, and half-open let one probe leg through until that call ended)."""
    b = Breaker("a", BreakerPolicy(open_for=30, probes=1, saturation=1.0))
    assert b.take("1", 0.0, 0, 2)
    assert b.take("2", 0.0, 1, 2)
    assert (b.state(0.0), b.reason) == ("closed", None)
    assert not b.take("3", 0.0, 2, 2)  # full
    assert (b.state(0.0), b.reason) == ("closed", None)
    b.release("1", 1.0, True)
    assert b.take("3", 1.0, 1, 2)  # a channel is free: taken at once
    assert b.take("4", 1.0, 0, 2)  # and both of them, no probe
    assert b.state(1.0) == "closed"


def test_saturation_is_the_share_of_the_capacity_legs_may_use() -> None:
    """Saturation 0.7 of 10 channels: seven legs, the eighth refused; the breaker stays closed.
    A full trunk refuses a leg whatever its breaker says."""
    b = Breaker("a", BreakerPolicy(saturation=0.7))
    for n in range(7):
        assert b.take(str(n), 0.0, n, 10)
    assert not b.take("7", 0.0, 7, 10)
    assert (b.state(0.0), b.reason) == ("closed", None)
    assert not Breaker("c").take("x", 0.0, 10, 10)


def test_a_breaker_an_older_version_opened_for_saturation_loads_closed() -> None:
    raw = json.dumps({"opened_at": 5.0, "reason": "saturated", "by": "", "probes": ["p"],
                      "successes": 0, "bucket": POLICY.bucket, "buckets": [[0, 2, 0]]})  # fmt: skip
    b = Breaker.loads("a", POLICY, raw)
    assert (b.state(6.0), b.reason, b.probe_legs) == ("closed", None, [])
    assert b.window(6.0) == (2, 0)


def test_a_probe_may_take_the_last_channel() -> None:
    """While half-open the probe may take a trunk's last channel: it is judged by its outcome."""
    b = _opened(BreakerPolicy(min_calls=3, failure_rate=0.5, open_for=30, probes=1))
    assert b.take("p", 40.0, 0, 1)
    assert b.state(40.0) == "half_open"
    b.release("p", 41.0, True)
    assert b.state(41.0) == "closed"


def test_the_state_survives_dumps_and_loads() -> None:
    """What the store keeps is the whole breaker: probe slots, reason, window."""
    b = _opened()
    assert b.take("p1", 32.0, 0, 10)
    again = Breaker.loads("a", POLICY, b.dumps())
    assert again == b
    c = Breaker("c", POLICY)
    _leg(c, "1", 5.0, False)
    assert Breaker.loads("c", POLICY, c.dumps()).window(5.0) == (1, 1)
    # Another window width: the counts start afresh (they were buckets of another size).
    wider = BreakerPolicy(window=120, min_calls=3)
    assert Breaker.loads("c", wider, c.dumps()).window(5.0) == (0, 0)
    assert Breaker.loads("d", POLICY, "") == Breaker("d", POLICY)


def test_trunk_order_prefers_the_named_trunk_then_primaries_then_standby() -> None:
    """Primaries in configured order before standbys; a preferred trunk comes first."""
    views = [
        TrunkView("s1", "standby", 10),
        TrunkView("p1", "primary", 10),
        TrunkView("p2", "primary", 10),
    ]
    assert [t.name for t in trunk_order(views)] == ["p1", "p2", "s1"]
    assert [t.name for t in trunk_order(views, "p2")] == ["p2", "p1", "s1"]
    assert [t.name for t in trunk_order(views, "unknown")] == ["p1", "p2", "s1"]


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        ("CONGESTION", False),
        ("CHANUNAVAIL", False),
        ("NOPROGRESS", False),
        ("BUSY", True),
        ("NOANSWER", True),
        ("ANSWER", True),
        ("", None),
        ("CANCEL", None),
    ],
)
def test_only_carrier_failures_count_against_it(status: str, verdict: bool | None) -> None:
    """503s, no route and no progress in time are the carrier's; a busy or unanswered customer
    is not; a leg never dialled or cancelled says nothing."""
    assert judge(status) is verdict
    assert failure_status(status) is (verdict is False)


@given(st.lists(st.tuples(st.floats(0, 1000), st.booleans()), max_size=50))
def test_it_never_opens_below_the_failure_rate(outcomes: list[tuple[float, bool]]) -> None:
    """Whatever the sequence, the breaker only opens when the legs it counted (those whose
    bucket ends inside the window) were at least min_calls, at least failure_rate of them
    failed, and every leg of the window proper was among them."""
    b = Breaker("a", POLICY)
    width = POLICY.bucket
    seen: list[tuple[float, bool]] = []
    for i, (t, ok) in enumerate(sorted(outcomes)):
        was = b.state(t)
        if not b.take(str(i), t, 0, 100):
            continue  # open, or half-open with its probes out
        b.release(str(i), t, ok)
        if was != "closed":
            if b.state(t) == "closed":
                seen = []
            continue
        seen.append((t, ok))
        counted = [(u, o) for u, o in seen if (math.floor(u / width) + 1) * width > t - 60]
        assert all((u, o) in counted for u, o in seen if u > t - 60)
        assert b.window(t) == (len(counted), sum(1 for _, o in counted if not o)) or (
            b.state(t) == "open"
        )
        if b.state(t) == "open":
            failed = sum(1 for _, o in counted if not o)
            assert len(counted) >= POLICY.min_calls
            assert failed / len(counted) >= POLICY.failure_rate
            seen = []


ops = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.integers(0, 5), st.floats(0, 5)),
        st.tuples(st.just("ok"), st.integers(0, 5), st.floats(0, 5)),
        st.tuples(st.just("fail"), st.integers(0, 5), st.floats(0, 5)),
        st.tuples(st.just("cancel"), st.integers(0, 5), st.floats(0, 5)),
        st.tuples(st.just("trip"), st.just(0), st.floats(0, 5)),
        st.tuples(st.just("reset"), st.just(0), st.floats(0, 5)),
    ),
    max_size=40,
)


@given(ops)
def test_a_breaker_kept_in_the_store_behaves_as_one_kept_in_memory(
    steps: list[tuple[str, int, float]],
) -> None:
    """Dumping and loading the breaker between every step (what the store does) changes no
    decision and no state; probe slots never exceed `probes` and legs out never exceed the
    capacity."""
    policy = BreakerPolicy(window=10, min_calls=2, failure_rate=0.5, open_for=3, probes=2)
    memory = Breaker("a", policy)
    raw = ""
    held: set[int] = set()
    now = 0.0
    for op, leg, dt in steps:
        now += dt
        stored = Breaker.loads("a", policy, raw)
        results = []
        for b in (memory, stored):
            if op == "take":
                results.append(leg not in held and b.take(str(leg), now, len(held), 4))
            elif op in ("ok", "fail", "cancel") and leg in held:
                b.release(str(leg), now, {"ok": True, "fail": False}.get(op))
            elif op == "trip":
                b.trip(now)
            elif op == "reset":
                b.reset()
        if op == "take" and results[0]:
            held.add(leg)
        elif op in ("ok", "fail", "cancel"):
            held.discard(leg)
        assert results[:1] == results[1:]
        assert stored == memory
        assert stored.state(now) == memory.state(now)
        assert len(memory.probe_legs) <= policy.probes
        assert set(memory.probe_legs) <= {str(leg) for leg in held}
        raw = stored.dumps()
