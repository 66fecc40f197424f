"""Dispatch decisions without I/O: what a call's events mean, as plain values the dispatcher
acts on (acd.dispatch.service does the Redis and AMI work). Table-driven tests beside them:
tests/unit/test_dispatch_policy.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from acd.domain.agent import AgentState
from acd.domain.call import Call, CallState


def device_of(channel: str) -> str:
    """The device a channel belongs to: 'PJSIP/agent-7001-0000001a' -> 'PJSIP/agent-7001'."""
    device, sep, _ = channel.rpartition("-")
    return device if sep else channel


def is_agent_leg(channel: str, uid: str, agent_devices: Mapping[str, str]) -> bool:
    """An inbound caller's agent leg (the channel Dial made to an agent's phone): it never holds
    a call, a journey or a trunk channel of its own, so its events ask nothing of Redis. A
    callback attempt's agent leg (uniqueid cb-...) is the attempt itself: not one of these."""
    return not uid.startswith("cb-") and device_of(channel) in agent_devices


def hangup_journey(
    call: Call | None, cause: str, now: float, *, fallback: bool = False
) -> dict[str, object]:
    """The journey's `hangup` fields of a caller who came in through the IVR, from its call as
    it was when it hung up (None: it never queued, or the fallback queue had taken it over)."""
    fields: dict[str, object] = {"cause": cause}
    if call is None:
        fields["outcome"] = "fallback" if fallback else "ivr"
        return fields
    fields["skill"] = call.skill
    if call.answered_at is not None:
        fields.update(
            outcome="answered",
            agent=call.agent,
            waited=round(call.waited(call.answered_at), 3),
            talked=round(call.talked(now) or 0.0, 3),
        )
    elif call.state == CallState.LEFT_FOR_CALLBACK:
        fields.update(outcome="callback", waited=round(call.waited(now), 3))
    else:
        fields.update(outcome="abandoned", waited=round(call.waited(now), 3))
    return fields


@dataclass(frozen=True)
class AfterCall:
    """What follows for the agent a call held: look for its next caller now (`claim`), or
    after its wrap-up (`wrap_up` seconds), or nothing."""

    claim: bool = False
    wrap_up: float = 0.0


def hold_wait(held: bool, held_at: float, now: float, settle: float) -> float:
    """How long a connect may still wait for its caller's AcdHeld (the dialplan's word that the
    channel reached the hold context) before it redirects the channel: nothing once the word
    came, else until `settle` after the caller headed there (`held_at`; 0 when unknown), and
    never more than `settle`.

    >>> hold_wait(True, 100.0, 100.01, 0.1), hold_wait(False, 100.0, 100.03, 0.1)
    (0.0, 0.07)
    """
    if held:
        return 0.0
    return round(max(0.0, min(settle, held_at + settle - now)), 6)


def after_call(agent_state: str, wrap_up: float, waiting: int | None = None) -> AfterCall:
    """The agent's state after its call ended (lua/end_call.lua) -> what the dispatcher does.
    `waiting`: the callers in the queues, counted in the same step as the call's end (None: not
    counted). An agent freed while nobody waits is not claimed for: a caller who joins later
    runs its own claim, which finds the agent available."""
    if agent_state == AgentState.AVAILABLE:
        return AfterCall(claim=waiting is None or waiting > 0)
    if agent_state == AgentState.WRAP_UP:
        return AfterCall(wrap_up=wrap_up)
    return AfterCall()


HOLD_CONTEXT = "acd-hold"  # the dialplan's hold context (asterisk-config/extensions.conf)


def is_orphan(
    uid: str, context: str, channel: str, known: set[str], agent_devices: Mapping[str, str]
) -> bool:
    """A live channel (of Asterisk's CoreShowChannels) waiting in the hold context with no call
    in Redis: its controller died between telling the dialplan the caller was queued and
    queueing it (or Redis lost the call). Callback attempts never wait there; agents' legs are
    not callers."""
    return (
        bool(uid)
        and context == HOLD_CONTEXT
        and uid not in known
        and not is_agent_leg(channel, uid, agent_devices)
    )


def in_call_since(duration: str, now: float) -> float:
    """When a channel whose CoreShowChannel `Duration` is HH:MM:SS at `now` began (an orphan's
    place in its queue: no later than where it stood). Unreadable: `now`.

    >>> in_call_since("00:01:05", 1000.0), in_call_since("x", 1000.0)
    (935.0, 1000.0)
    """
    parts = duration.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return now
    hours, minutes, seconds = (int(p) for p in parts)
    return now - (hours * 3600 + minutes * 60 + seconds)
