"""A call in the queues: its states, the events that move it, and the typed record of one.

A call is a caller waiting for an agent, or a callback attempt (a virtual caller with no channel
until its agent is dialled). It joins its queue `queued`; a claim offers it to an agent
(`offered`); the agent answers (`connected`); an agent who does not answer, or a resync that finds
the caller back on hold, puts it back at the front (`queued`); a caller who takes a callback while
waiting leaves the queue (`left_for_callback`). Its hangup deletes it.

The table is the one the Lua scripts apply: the store hands each script the source and target
states of the events it applies (acd.adapters.store.lua_states), as it does with the agent table,
so that Python and Redis cannot disagree on what a call may do next.

    >>> transition(CallState.OFFERED, CallEvent.ANSWER)
    <CallState.CONNECTED: 'connected'>
    >>> sorted(sources(CallEvent.REQUEUE))
    [<CallState.CONNECTED: 'connected'>, <CallState.OFFERED: 'offered'>]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from acd.errors import AcdError


class CallState(StrEnum):
    QUEUED = "queued"
    OFFERED = "offered"  # claimed for an agent: being redirected to ring it
    CONNECTED = "connected"
    LEFT_FOR_CALLBACK = "left_for_callback"


class CallEvent(StrEnum):
    ENQUEUE = "enqueue"  # a caller (or a callback attempt) joins its queue: a new call
    OFFER = "offer"  # a claim pairs it with an agent
    ANSWER = "answer"
    REQUEUE = "requeue"
    LEAVE_FOR_CALLBACK = "leave_for_callback"


S, E = CallState, CallEvent

# ENQUEUE creates the call: it has no source state (`transition(None, ENQUEUE)`).
TRANSITIONS: dict[CallState | None, dict[CallEvent, CallState]] = {
    None: {E.ENQUEUE: S.QUEUED},
    S.QUEUED: {E.OFFER: S.OFFERED, E.LEAVE_FOR_CALLBACK: S.LEFT_FOR_CALLBACK},
    S.OFFERED: {E.ANSWER: S.CONNECTED, E.REQUEUE: S.QUEUED},
    # Connected, yet found back in the hold context by a resync (the agent's dial ended unseen).
    S.CONNECTED: {E.REQUEUE: S.QUEUED},
}
# Calls being put through to an agent (a resync checks that their channel still is).
WITH_AGENT = frozenset({S.OFFERED, S.CONNECTED})
_KNOWN = {state.value: state for state in CallState}


class IllegalCallTransition(AcdError):
    """`event` is not allowed in `state`."""

    def __init__(self, state: str | None, event: str) -> None:
        super().__init__(f"call event {event!r} is not allowed in state {state!r}")
        self.state = state
        self.event = event


def transition(state: CallState | None, event: CallEvent) -> CallState:
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalCallTransition(state, event) from None


def sources(event: CallEvent) -> frozenset[CallState]:
    """The states `event` may leave from (what the scripts check before they apply it)."""
    return frozenset(
        state for state, events in TRANSITIONS.items() if state is not None and event in events
    )


def target(event: CallEvent) -> CallState:
    """Where `event` leads (from any of its sources: one target per event)."""
    (state,) = {events[event] for events in TRANSITIONS.values() if event in events}
    return state


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Call:
    """One call as Redis holds it (P:call:UID), typed. `fields` keeps every stored field, for
    what has no attribute here (the flow's path, the callback's number)."""

    uid: str
    state: CallState | None  # None: a state this code does not know
    skill: str = ""
    node: str = ""  # the Asterisk node holding the caller's channel
    channel: str = ""  # '' for a callback attempt until its agent leg exists
    agent: str = ""  # the agent it is offered to, or talking to
    kind: str = ""  # 'callback' for a callback attempt
    callback: str = ""  # the callback an attempt belongs to
    trunk: str = ""  # the trunk a callback attempt dials its customer over
    caller_id: str = ""
    entry: str = ""
    score: float | None = None  # its place in the queue: join time minus head start
    enqueued_at: float | None = None  # when it joined (a callback: when its caller had)
    answered_at: float | None = None
    held_at: float | None = None  # when its channel last headed for the hold context
    ewt_at_join: float | None = None
    fields: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_fields(cls, uid: str, fields: Mapping[str, str]) -> Call:
        """The typed record of a call hash's fields.

        >>> c = Call.from_fields("c1", {"state": "queued", "skill": "presale",
        ...                              "enqueued_at": "100.0"})
        >>> c.state, c.skill, c.waited(104.5), c.is_callback
        (<CallState.QUEUED: 'queued'>, 'presale', 4.5, False)
        """
        get = fields.get
        raw = get("state", "")
        return cls(
            uid=uid,
            state=_KNOWN.get(raw),
            skill=get("skill", ""),
            node=get("node", ""),
            channel=get("channel", ""),
            agent=get("agent", ""),
            kind=get("kind", ""),
            callback=get("callback", ""),
            trunk=get("trunk", ""),
            caller_id=get("caller_id", ""),
            entry=get("entry", ""),
            score=_number(get("score")),
            enqueued_at=_number(get("enqueued_at")),
            answered_at=_number(get("answered_at")),
            held_at=_number(get("held_at")),
            ewt_at_join=_number(get("ewt_at_join")),
            fields=dict(fields),
        )

    @property
    def is_callback(self) -> bool:
        return self.kind == "callback"

    def waited(self, now: float) -> float:
        """Seconds since it joined its queue (0 when the join time is not known)."""
        return max(0.0, now - self.enqueued_at) if self.enqueued_at is not None else 0.0

    def talked(self, now: float) -> float | None:
        """Seconds since its agent answered (None: never answered)."""
        return max(0.0, now - self.answered_at) if self.answered_at is not None else None
