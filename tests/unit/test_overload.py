"""The overload governor: rises at once, falls one level at a time after a cool-down."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from acd.domain.overload import (
    GovernorPolicy,
    GovernorState,
    link_down_since,
    link_failed,
    load_of,
    next_state,
    target_level,
)

POLICY = GovernorPolicy(thresholds=(1.2, 1.4, 1.6, 2.0), hysteresis=0.1, cool_down=30)


def test_load_counts_callers_per_staffed_agent() -> None:
    """Load is (waiting + talking) / staffed; callers with nobody staffed is infinite."""
    assert load_of(waiting=6, talking=4, staffed=5) == 2.0
    assert load_of(waiting=3, talking=0, staffed=0) == math.inf
    assert load_of(waiting=0, talking=0, staffed=0) == 0.0


def test_levels_follow_the_thresholds() -> None:
    """+20% is level 1, +40% level 2, +60% level 3, double level 4."""
    assert [target_level(x, POLICY) for x in (1.0, 1.2, 1.45, 1.6, 2.5, math.inf)] == [
        0,
        1,
        2,
        3,
        4,
        4,
    ]


def test_falling_needs_the_hysteresis_band_and_the_cool_down() -> None:
    """At level 2, a load just under 1.4 keeps it; under 1.3 for 30 s drops it to 1, and 30 s
    more (still low) to 0; a spike in between cancels the cool-down."""
    state = next_state(GovernorState(), 1.5, 0, POLICY)
    assert state.level == 2
    state = next_state(state, 1.35, 5, POLICY)
    assert (state.level, state.below_since) == (2, None)
    state = next_state(state, 1.0, 10, POLICY)
    assert (state.level, state.below_since) == (2, 10)
    assert next_state(state, 1.0, 39, POLICY).level == 2
    spiked = next_state(state, 1.45, 20, POLICY)
    assert (spiked.level, spiked.below_since) == (2, None)
    state = next_state(state, 1.0, 40, POLICY)
    assert state.level == 1
    state = next_state(state, 0.5, 69, POLICY)
    assert state.level == 1
    assert next_state(state, 0.5, 70, POLICY).level == 0


def test_a_failure_is_level_4() -> None:
    """A component failure (AMI down) puts the centre at level 4 whatever the load."""
    assert next_state(GovernorState(), 0.0, 0, POLICY, failure=True).level == 4


@given(st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=60))
def test_the_level_never_jumps_down_more_than_one_step(loads: list[float]) -> None:
    """Whatever the load sequence (one observation per second), the level falls at most one
    level per observation and never below what the load asks for."""
    state = GovernorState()
    for t, load in enumerate(loads):
        new = next_state(state, load, float(t), POLICY)
        assert new.level >= state.level - 1
        assert new.level >= target_level(load, POLICY) or new.level == state.level - 1
        state = new


FAILURE_POLICY = GovernorPolicy(
    thresholds=(1.2, 1.4, 1.6, 2.0), hysteresis=0.1, cool_down=30, failure_after=10
)


def _ticks(link: list[tuple[float, bool]], load: float = 0.5) -> list[int]:
    """The level after each governor tick, given (time, AMI link up) observations."""
    state, down_since, levels = GovernorState(), None, []
    for now, up in link:
        down_since = link_down_since(down_since, up, now)
        failure = link_failed(down_since, now, FAILURE_POLICY)
        state = next_state(state, load, now, FAILURE_POLICY, failure=failure)
        levels.append(state.level)
    return levels


def test_an_ami_blip_does_not_force_level_4() -> None:
    """The link down for one tick (a reconnect) and up again: the level never leaves 0."""
    assert _ticks([(0, True), (2, False), (4, True), (6, True)]) == [0, 0, 0, 0]


def test_a_link_down_for_failure_after_seconds_is_level_4() -> None:
    """Down from t=2: level 4 at t=12 (10 s later), not before; up again, the level falls
    through the cool-down like any other, one level at a time."""
    link = [(0, True), (2, False), (6, False), (11.9, False), (12, False), (14, True)]
    assert _ticks(link) == [0, 0, 0, 0, 4, 4]
    assert _ticks([*link, (44, True), (74, True)])[-2:] == [3, 2]


def test_each_outage_is_timed_from_its_own_start() -> None:
    """Two short outages 10 s apart do not add up to a failure."""
    link = [(0, False), (6, False), (8, True), (10, False), (16, False), (18, True)]
    assert _ticks(link) == [0, 0, 0, 0, 0, 0]


@given(
    st.lists(st.tuples(st.floats(min_value=0.1, max_value=5), st.booleans()), max_size=40),
    st.floats(min_value=0, max_value=30),
)
def test_a_failure_needs_the_link_down_without_a_break_for_failure_after(
    steps: list[tuple[float, bool]], failure_after: float
) -> None:
    """Whatever the observations, a failure is reported exactly when the link has been down
    at every observation of the last `failure_after` seconds, timed from the first one."""
    policy = GovernorPolicy((1.2, 1.4, 1.6, 2.0), 0.1, 30, failure_after=failure_after)
    now, down_since, first_down = 0.0, None, None
    for gap, up in steps:
        now += gap
        down_since = link_down_since(down_since, up, now)
        first_down = None if up else (now if first_down is None else first_down)
        assert down_since == first_down
        expected = first_down is not None and now - first_down >= failure_after
        assert link_failed(down_since, now, policy) is expected
