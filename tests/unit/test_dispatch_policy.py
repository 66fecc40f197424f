"""The dispatcher's pure decisions (acd.dispatch.policy), table-driven."""

from __future__ import annotations

import pytest

from acd.dispatch.policy import (
    AfterCall,
    after_call,
    device_of,
    hangup_journey,
    hold_wait,
    in_call_since,
    is_agent_leg,
    is_orphan,
)
from acd.domain.call import Call

DEVICES = {"PJSIP/agent-7001": "7001", "PJSIP/agent-7002": "7002"}


@pytest.mark.parametrize(
    ("channel", "uid", "agent_leg"),
    [
        ("PJSIP/agent-7001-0000001a", "n1-1700.5", True),  # Dial's leg to an agent's phone
        ("PJSIP/agent-7002-00000003", "n1-1700.9", True),
        ("PJSIP/agent-7001-0000001a", "cb-42-1", False),  # a callback attempt is its agent leg
        ("PJSIP/carrier-0000001b", "n1-1700.4", False),  # a caller
        ("PJSIP/agent-7003-00000001", "n1-1700.6", False),  # not this node's agent
        ("PJSIP/agent-7001", "n1-1", False),  # no channel suffix: a device, not a channel
        ("", "n1-1", False),
    ],
)
def test_agent_legs_are_told_by_their_device(channel: str, uid: str, agent_leg: bool) -> None:
    assert is_agent_leg(channel, uid, DEVICES) is agent_leg


def test_device_of_strips_the_channel_suffix_only() -> None:
    assert device_of("PJSIP/agent-7001-0000001a") == "PJSIP/agent-7001"
    assert device_of("Local/1000@acd-entry-00000001;1") == "Local/1000@acd-entry"
    assert device_of("nodash") == "nodash"


def _call(**fields: str) -> Call:
    return Call.from_fields("c1", {"skill": "presale", "enqueued_at": "100.0", **fields})


@pytest.mark.parametrize(
    ("call", "fallback", "expected"),
    [
        (None, False, {"cause": "Normal", "outcome": "ivr"}),
        (None, True, {"cause": "Normal", "outcome": "fallback"}),
        (
            _call(state="connected", agent="7001", answered_at="104.0"),
            False,
            {"cause": "Normal", "skill": "presale", "outcome": "answered", "agent": "7001",
             "waited": 4.0, "talked": 26.0},
        ),
        (
            _call(state="left_for_callback"),
            False,
            {"cause": "Normal", "skill": "presale", "outcome": "callback", "waited": 30.0},
        ),
        (
            _call(state="queued"),
            False,
            {"cause": "Normal", "skill": "presale", "outcome": "abandoned", "waited": 30.0},
        ),
        (
            _call(state="offered", agent="7001"),  # rang, never answered
            False,
            {"cause": "Normal", "skill": "presale", "outcome": "abandoned", "waited": 30.0},
        ),
    ],
)  # fmt: skip
def test_a_hangup_tells_the_journey_how_the_call_ended(
    call: Call | None, fallback: bool, expected: dict[str, object]
) -> None:
    assert hangup_journey(call, "Normal", 130.0, fallback=fallback) == expected


@pytest.mark.parametrize(
    ("state", "wrap_up", "waiting", "expected"),
    [
        ("available", 0.0, None, AfterCall(claim=True)),  # not counted: look
        ("available", 10.0, None, AfterCall(claim=True)),
        ("available", 0.0, 3, AfterCall(claim=True)),
        ("available", 0.0, 0, AfterCall()),  # nobody waits: the next caller's claim finds it
        ("wrap_up", 10.0, 3, AfterCall(wrap_up=10.0)),
        ("device_busy", 0.0, 3, AfterCall()),  # waits for its phone, not for a caller
        ("paused", 0.0, 3, AfterCall()),
        ("", 0.0, None, AfterCall()),
    ],
)
def test_what_follows_for_an_agent_after_its_call(
    state: str, wrap_up: float, waiting: int | None, expected: AfterCall
) -> None:
    """Claim for a freed agent only if a caller may wait for it; wrap up first if the policy
    says so; nothing for an agent who is not available."""
    assert after_call(state, wrap_up, waiting) == expected


@pytest.mark.parametrize(
    ("held", "held_at", "now", "expected"),
    [
        (True, 100.0, 100.0, 0.0),  # the dialplan said so: redirect now
        (False, 100.0, 100.0, 0.1),  # just queued: wait for the word, at most the settle
        (False, 100.0, 100.04, 0.06),
        (False, 100.0, 100.2, 0.0),  # the settle is over (the word was missed): go
        (False, 0.0, 100.0, 0.0),  # unknown (a hand-off): no wait
        (False, 200.0, 100.0, 0.1),  # clocks apart: never more than the settle
    ],
)
def test_a_connect_waits_for_its_caller_to_be_on_hold(
    held: bool, held_at: float, now: float, expected: float
) -> None:
    """The Redirect goes once the caller is in the hold context, or once the settle is over."""
    assert hold_wait(held, held_at, now, 0.1) == pytest.approx(expected)


AGENTS = {"PJSIP/agent-1001": "1001"}
CALLER = "PJSIP/carrier-in-0000000a"


@pytest.mark.parametrize(
    ("uid", "context", "channel", "known", "orphan"),
    [
        ("o1", "acd-hold", CALLER, set(), True),
        ("o1", "acd-hold", CALLER, {"o1"}, False),  # Redis holds its call
        ("o1", "acd-connect", CALLER, set(), False),  # ringing an agent: not waiting
        ("o1", "acd-inbound", CALLER, set(), False),  # still in the IVR
        ("o1", "acd-hold", "PJSIP/agent-1001-0000000c", set(), False),  # an agent's leg
        ("", "acd-hold", CALLER, set(), False),
    ],
)
def test_an_orphan_is_a_caller_on_hold_that_redis_does_not_know(
    uid: str, context: str, channel: str, known: set[str], orphan: bool
) -> None:
    assert is_orphan(uid, context, channel, known, AGENTS) is orphan


@pytest.mark.parametrize(
    ("duration", "since"),
    [("00:00:00", 1000.0), ("00:01:05", 935.0), ("01:00:00", -2600.0), ("", 1000.0),
     ("1:2", 1000.0), ("aa:bb:cc", 1000.0), ("-1:00:00", 1000.0)],
)  # fmt: skip
def test_an_orphan_keeps_no_later_a_place_than_its_call_start(duration: str, since: float) -> None:
    assert in_call_since(duration, 1000.0) == since
