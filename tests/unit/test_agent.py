"""The agent state machine: a table, with illegal transitions named."""

from __future__ import annotations

import pytest

from acd.domain.agent import (
    TRANSITIONS,
    AgentEvent,
    AgentState,
    IllegalTransition,
    sources,
    target,
    transition,
)


def test_every_event_leads_to_one_state_whatever_its_source() -> None:
    """An event's target does not depend on the source state (the store's compare-and-set
    relies on it)."""
    for event in AgentEvent:
        targets = {target(event, s) for s in sources(event)}
        assert len(targets) == 1, (event, targets)


def test_a_call_cycle_with_wrap_up() -> None:
    """Login, reserve, ring, answer, call end, wrap-up done: back to available."""
    state = AgentState.LOGGED_OUT
    for event in (
        AgentEvent.LOGIN,
        AgentEvent.RESERVE,
        AgentEvent.RING,
        AgentEvent.ANSWER,
        AgentEvent.CALL_ENDED,
        AgentEvent.WRAP_UP_DONE,
    ):
        state = transition(state, event)
    assert state is AgentState.AVAILABLE


def test_an_illegal_transition_names_event_and_state() -> None:
    """Pausing an agent on a call is refused with a typed error naming both."""
    with pytest.raises(IllegalTransition) as info:
        transition(AgentState.ON_CALL, AgentEvent.PAUSE)
    assert (info.value.state, info.value.event) == ("on_call", "pause")
    assert "pause" in str(info.value)
    assert "on_call" in str(info.value)


def test_a_missed_ring_pauses_and_nothing_leaves_logged_out_but_login() -> None:
    """Missed goes to paused; logged out accepts only login."""
    assert transition(AgentState.RINGING, AgentEvent.MISSED) is AgentState.PAUSED
    assert set(TRANSITIONS[AgentState.LOGGED_OUT]) == {AgentEvent.LOGIN}
