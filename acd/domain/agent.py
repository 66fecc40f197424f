"""An agent's states and the events that move them, as a transition table.

The table is the single source of truth: the Redis store applies a transition with one atomic
compare-and-set (the agent must be in one of the event's source states), so controllers racing on
the same agent cannot both succeed. `transition(state, event)` raises `IllegalTransition` naming the
event and the state, for callers that check before they act (the admin API answers 409).
"""

from __future__ import annotations

from enum import StrEnum

from acd.errors import AcdError


class AgentState(StrEnum):
    LOGGED_OUT = "logged_out"
    AVAILABLE = "available"
    RESERVED = "reserved"  # claimed for a caller; the caller is being redirected to ring it
    RINGING = "ringing"
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"
    PAUSED = "paused"
    # Logged in, but its phone is in use outside the ACD (a call the ACD did not place, such as
    # one from the dialplan's fallback queue) or unreachable: offered nothing until it is free.
    DEVICE_BUSY = "device_busy"


class AgentEvent(StrEnum):
    LOGIN = "login"
    LOGOUT = "logout"
    PAUSE = "pause"
    RESUME = "resume"
    RESERVE = "reserve"
    RING = "ring"
    ANSWER = "answer"
    MISSED = "missed"  # rang and did not answer (or busy, unreachable): paused as missed
    RELEASE = "release"  # reservation given back without ringing (the caller hung up first)
    CALL_ENDED = "call_ended"
    WRAP_UP_DONE = "wrap_up_done"
    DEVICE_BUSY = "device_busy"  # Asterisk reports the phone in use, ringing or unreachable
    DEVICE_IDLE = "device_idle"  # ... and free again


S, E = AgentState, AgentEvent

TRANSITIONS: dict[AgentState, dict[AgentEvent, AgentState]] = {
    S.LOGGED_OUT: {E.LOGIN: S.AVAILABLE},
    S.AVAILABLE: {
        E.RESERVE: S.RESERVED,
        E.PAUSE: S.PAUSED,
        E.LOGOUT: S.LOGGED_OUT,
        E.DEVICE_BUSY: S.DEVICE_BUSY,
    },
    S.RESERVED: {
        E.RING: S.RINGING,
        E.ANSWER: S.ON_CALL,
        E.MISSED: S.PAUSED,
        E.RELEASE: S.AVAILABLE,
        E.CALL_ENDED: S.WRAP_UP,
    },
    S.RINGING: {
        E.ANSWER: S.ON_CALL,
        E.MISSED: S.PAUSED,
        E.RELEASE: S.AVAILABLE,
        E.CALL_ENDED: S.WRAP_UP,
    },
    S.ON_CALL: {E.CALL_ENDED: S.WRAP_UP},
    S.WRAP_UP: {
        E.WRAP_UP_DONE: S.AVAILABLE,
        E.PAUSE: S.PAUSED,
        E.LOGOUT: S.LOGGED_OUT,
    },
    S.PAUSED: {E.RESUME: S.AVAILABLE, E.LOGOUT: S.LOGGED_OUT, E.PAUSE: S.PAUSED},
    S.DEVICE_BUSY: {
        E.DEVICE_IDLE: S.AVAILABLE,
        E.DEVICE_BUSY: S.DEVICE_BUSY,
        E.PAUSE: S.PAUSED,
        E.LOGOUT: S.LOGGED_OUT,
    },
}

# States in which an agent holds a call (for load and status).
BUSY = frozenset({S.RESERVED, S.RINGING, S.ON_CALL})
# States in which an agent counts as staffed.
STAFFED = frozenset(set(AgentState) - {S.LOGGED_OUT})

# Asterisk device states (AMI DeviceStateChange) in which an agent's phone cannot take a call
# from us. Whatever moves an agent to `available` while its phone is in one of them (wrap-up
# over, resume, login) lands in `device_busy` instead (the store applies this in the same
# atomic step); a device state outside it (NOT_INUSE, UNKNOWN) frees it again.
BUSY_DEVICE_STATES = frozenset(
    {"INUSE", "BUSY", "RINGING", "RINGINUSE", "ONHOLD", "UNAVAILABLE", "INVALID"}
)


def device_event(device_state: str) -> AgentEvent:
    """The agent event an Asterisk device state of the agent's phone amounts to.

    >>> device_event("INUSE"), device_event("NOT_INUSE")
    (<AgentEvent.DEVICE_BUSY: 'device_busy'>, <AgentEvent.DEVICE_IDLE: 'device_idle'>)
    """
    return E.DEVICE_BUSY if device_state.upper() in BUSY_DEVICE_STATES else E.DEVICE_IDLE


def settle(target: AgentState, device_busy: bool) -> AgentState:
    """Where a transition lands given the phone: `available` with a busy phone is
    `device_busy`.

    >>> settle(AgentState.AVAILABLE, True), settle(AgentState.AVAILABLE, False)
    (<AgentState.DEVICE_BUSY: 'device_busy'>, <AgentState.AVAILABLE: 'available'>)
    """
    return S.DEVICE_BUSY if target == S.AVAILABLE and device_busy else target


class IllegalTransition(AcdError):
    """`event` is not allowed in `state`."""

    def __init__(self, state: str, event: str) -> None:
        super().__init__(f"agent event {event!r} is not allowed in state {state!r}")
        self.state = state
        self.event = event


def transition(state: AgentState, event: AgentEvent) -> AgentState:
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(state, event) from None


def sources(event: AgentEvent) -> tuple[AgentState, ...]:
    """The states `event` may leave from (what the atomic compare-and-set accepts)."""
    return tuple(state for state, events in TRANSITIONS.items() if event in events)


def target(event: AgentEvent, source: AgentState) -> AgentState:
    return TRANSITIONS[source][event]
