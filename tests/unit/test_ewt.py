"""The wait estimate: position by live handle time and staffing, Erlang C by arrival rate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acd.domain.ewt import NO_AGENT_SECONDS, erlang_c, estimated_wait


def test_erlang_c_matches_known_values() -> None:
    """Erlang C for textbook cases: 2 agents, 1 erlang -> 1/3; 10 agents, 8 erlangs -> 0.409."""
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(10, 8.0) == pytest.approx(0.4092, abs=1e-4)
    assert erlang_c(3, 3.0) == 1.0
    assert erlang_c(3, 0.0) == 0.0


def test_position_counts_completions_needed() -> None:
    """With 2 callers ahead, nobody free, 2 staffed agents at 60 s per call: 3 completions, one
    every 30 s -> 90 s; with a free agent for this caller, no wait."""
    assert estimated_wait(ahead=2, free=0, staffed=2, handle=60) == 90
    assert estimated_wait(ahead=0, free=1, staffed=2, handle=60) == 0
    assert estimated_wait(ahead=0, free=0, staffed=0, handle=60) == NO_AGENT_SECONDS


def test_a_busy_queue_estimates_from_load_when_that_is_longer() -> None:
    """An empty queue but agents busy with a high arrival rate: the Erlang C wait is used."""
    by_load = estimated_wait(ahead=0, free=0, staffed=10, handle=100, rate=0.08)
    assert by_load == pytest.approx(0.4092 * 100 / 2, rel=1e-3)
    assert by_load > estimated_wait(ahead=0, free=0, staffed=10, handle=100, rate=0.0)


@given(
    ahead=st.integers(0, 500),
    free=st.integers(0, 50),
    staffed=st.integers(1, 200),
    handle=st.floats(1, 3600),
    rate=st.floats(0, 10),
)
def test_more_callers_ahead_never_means_a_shorter_wait(
    ahead: int, free: int, staffed: int, handle: float, rate: float
) -> None:
    """The estimate is non-negative and grows with the number of callers ahead."""
    now = estimated_wait(ahead=ahead, free=free, staffed=staffed, handle=handle, rate=rate)
    later = estimated_wait(ahead=ahead + 1, free=free, staffed=staffed, handle=handle, rate=rate)
    assert 0 <= now <= later
