"""A call's states and events (acd.domain.call), and its typed record."""

from __future__ import annotations

import pytest

from acd.domain.call import (
    TRANSITIONS,
    Call,
    CallEvent,
    CallState,
    IllegalCallTransition,
    sources,
    target,
    transition,
)

S, E = CallState, CallEvent


@pytest.mark.parametrize(
    ("state", "event", "after"),
    [
        (None, E.ENQUEUE, S.QUEUED),
        (S.QUEUED, E.OFFER, S.OFFERED),
        (S.QUEUED, E.LEAVE_FOR_CALLBACK, S.LEFT_FOR_CALLBACK),
        (S.OFFERED, E.ANSWER, S.CONNECTED),
        (S.OFFERED, E.REQUEUE, S.QUEUED),
        (S.CONNECTED, E.REQUEUE, S.QUEUED),
    ],
)
def test_allowed_transitions(state: CallState | None, event: CallEvent, after: CallState) -> None:
    """Each allowed move of a call lands where the table says."""
    assert transition(state, event) == after
    assert target(event) == after


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.QUEUED, E.ANSWER),  # nobody was offered it
        (S.OFFERED, E.OFFER),  # claimed twice
        (S.CONNECTED, E.LEAVE_FOR_CALLBACK),  # talking: too late for a callback
        (S.LEFT_FOR_CALLBACK, E.REQUEUE),
        (None, E.OFFER),
    ],
)
def test_illegal_transitions_name_event_and_state(
    state: CallState | None, event: CallEvent
) -> None:
    """A move the table does not have raises IllegalCallTransition with both names."""
    with pytest.raises(IllegalCallTransition) as info:
        transition(state, event)
    assert (info.value.state, info.value.event) == (state, event)


def test_every_event_has_one_target_and_its_sources() -> None:
    """What the scripts get: per event, the states it leaves from and the one it goes to."""
    assert {e: sorted(sources(e)) for e in CallEvent} == {
        E.ENQUEUE: [],
        E.OFFER: [S.QUEUED],
        E.ANSWER: [S.OFFERED],
        E.REQUEUE: [S.CONNECTED, S.OFFERED],
        E.LEAVE_FOR_CALLBACK: [S.QUEUED],
    }
    assert {state for state in TRANSITIONS if state is not None} <= set(CallState)


def test_the_record_reads_its_fields_typed() -> None:
    """Numbers become floats, an unknown state None, a bad number None; waited counts from the
    join and never goes below zero."""
    call = Call.from_fields(
        "cb-7-1",
        {"state": "connected", "skill": "orders", "agent": "7001", "kind": "callback",
         "callback": "7", "enqueued_at": "100.5", "answered_at": "110.0", "score": "70.5",
         "held_at": "oops", "number": "5550100"},
    )  # fmt: skip
    assert (call.state, call.skill, call.agent, call.is_callback, call.callback) == (
        S.CONNECTED, "orders", "7001", True, "7",
    )  # fmt: skip
    assert (call.score, call.held_at, call.fields["number"]) == (70.5, None, "5550100")
    assert call.waited(110.0) == 9.5
    assert call.waited(90.0) == 0.0
    assert call.talked(115.0) == 5.0
    odd = Call.from_fields("x", {"state": "teleported"})
    assert (odd.state, odd.waited(5.0), odd.talked(5.0)) == (None, 0.0, None)
