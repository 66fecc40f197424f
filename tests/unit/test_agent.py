"""The agent state machine: a table, with illegal transitions named."""

from __future__ import annotations

import pytest

from acd.domain.agent import (
    TRANSITIONS,
    AgentEvent,
    AgentState,
    IllegalTransition,
    device_event,
    settle,
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


def test_a_phone_busy_elsewhere_takes_an_available_agent_out_until_it_is_free() -> None:
    """Device busy: available -> device_busy; idle again: back to available; a supervisor may
    still pause or log it out; an agent on one of our calls is not moved by its phone."""
    assert transition(AgentState.AVAILABLE, AgentEvent.DEVICE_BUSY) is AgentState.DEVICE_BUSY
    assert transition(AgentState.DEVICE_BUSY, AgentEvent.DEVICE_IDLE) is AgentState.AVAILABLE
    assert transition(AgentState.DEVICE_BUSY, AgentEvent.PAUSE) is AgentState.PAUSED
    assert transition(AgentState.DEVICE_BUSY, AgentEvent.LOGOUT) is AgentState.LOGGED_OUT
    for busy in (AgentState.RESERVED, AgentState.RINGING, AgentState.ON_CALL):
        with pytest.raises(IllegalTransition):
            transition(busy, AgentEvent.DEVICE_BUSY)


@pytest.mark.parametrize(
    ("device_state", "event"),
    [
        ("INUSE", AgentEvent.DEVICE_BUSY),
        ("RINGING", AgentEvent.DEVICE_BUSY),
        ("UNAVAILABLE", AgentEvent.DEVICE_BUSY),
        ("ONHOLD", AgentEvent.DEVICE_BUSY),
        ("NOT_INUSE", AgentEvent.DEVICE_IDLE),
        ("UNKNOWN", AgentEvent.DEVICE_IDLE),
    ],
)
def test_asterisk_device_states_map_to_agent_events(device_state: str, event: AgentEvent) -> None:
    """In use, ringing, on hold or unreachable is busy; not in use (or unknown) is free."""
    assert device_event(device_state) is event


def test_becoming_available_with_a_busy_phone_lands_in_device_busy() -> None:
    """Whatever would make the agent available while its phone is busy leaves it device_busy."""
    assert settle(AgentState.AVAILABLE, device_busy=True) is AgentState.DEVICE_BUSY
    assert settle(AgentState.AVAILABLE, device_busy=False) is AgentState.AVAILABLE
    assert settle(AgentState.PAUSED, device_busy=True) is AgentState.PAUSED
