"""Agents through the real stack: pause and resume, a missed ring, wrap-up, and the tier head
start in the queue, asserted on AMI events and on Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from acd.adapters.store import RedisStore
from acd.config import redis_url
from acd.domain.agent import AgentEvent
from acd.runtime import asterisk
from tests.integration import sipp
from tests.integration.conftest import (
    PORTS,
    EventLog,
    Stack,
    agent_of_channel,
    bridge_partner,
    caller_uid,
    played,
    send_as_controller,
    until,
    user_event,
)
from tests.integration.sipp import Script

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def _agent_of(events: EventLog, uid: str, timeout: float = 40) -> str:
    return agent_of_channel((await bridge_partner(events, uid, timeout)).get("Channel") or "")


def _agent_cli(stack: Stack, action: str, agent: str, reason: str = "") -> None:
    args = ["agent", action, agent] + (["--reason", reason] if reason else [])
    result = stack.acd(*args)
    assert result.returncode == 0, result.stderr


async def _until_state(stack: Stack, agent: str, state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while stack.redis.hget(stack.key("agent", agent), "state") != state:
        assert time.monotonic() < deadline, (
            f"agent {agent} is {stack.redis.hget(stack.key('agent', agent), 'state')}, not {state}"
        )
        await asyncio.sleep(0.1)


async def _queued_at(stack: Stack, uid: str, timeout: float = 20) -> float:
    """When the caller joined its queue (its call's enqueued_at), once it has."""
    deadline = time.monotonic() + timeout
    while not stack.redis.hget(stack.key("call", uid), "enqueued_at"):
        assert time.monotonic() < deadline, f"{uid} should be queued"
        await asyncio.sleep(0.1)
    return float(stack.redis.hget(stack.key("call", uid), "enqueued_at") or 0)


async def test_a_tier_head_start_puts_a_later_caller_first_by_exactly_that_much(
    stack: Stack, ami_events: EventLog
) -> None:
    """With the presale agents paused, two regular callers join 4 s apart, then a silver caller
    (a head start of the configured seconds, 3 in the test deployment) 1.5 s after the second:
    its place is exactly its join minus the head start, so it goes ahead of the caller who
    joined 1.5 s before it and behind the one who joined 5.5 s before it; as the agents resume,
    they are served in that order."""
    head_start = stack.settings.tiers["silver"]
    _agent_cli(stack, "pause", "1001", "meeting")
    _agent_cli(stack, "pause", "1002", "meeting")
    stack.redis.hset(stack.key("tiers"), "5552012", "silver")
    callers = []
    try:
        # The same menu walk for each, started 4 s then 1.5 s apart: they join that far apart.
        for caller_id, gap in (("5552010", 4.0), ("5552011", 1.5), ("5552012", 0.0)):
            callers.append(stack.call(Script().at(1.0, "10").wait(40), caller_id))
            await asyncio.sleep(gap)
        first, second, silver = [
            await caller_uid(ami_events, c) for c in ("5552010", "5552011", "5552012")
        ]
        joined = {u: await _queued_at(stack, u) for u in (first, second, silver)}
        # The timing leaves room either side of the head start: the test means what it says.
        assert joined[silver] - joined[second] < head_start < joined[silver] - joined[first]
        score = {u: float(stack.redis.zscore(stack.key("q", "presale"), u) or 0) for u in joined}
        assert score[silver] == pytest.approx(joined[silver] - head_start, abs=1e-6)
        assert score[first] == pytest.approx(joined[first], abs=1e-6)
        assert score[second] == pytest.approx(joined[second], abs=1e-6)
        assert stack.redis.zrange(stack.key("q", "presale"), 0, -1) == [first, silver, second]
        _agent_cli(stack, "resume", "1001")
        assert await _agent_of(ami_events, first) == "1001"
        _agent_cli(stack, "resume", "1002")
        assert await _agent_of(ami_events, silver) == "1002"
        # The second regular caller, who joined before the silver one, still waits.
        assert stack.redis.zrange(stack.key("q", "presale"), 0, -1) == [second]
    finally:
        for caller in callers:
            caller.stop()
        stack.redis.hdel(stack.key("tiers"), "5552012")
        for agent in ("1001", "1002"):
            stack.acd("agent", "resume", agent)


async def test_a_missed_agent_is_paused_and_the_caller_served_next_by_another(
    stack: Stack, ami_events: EventLog
) -> None:
    """Only agent 1009 is available for presale, and its phone rings unanswered: it rings for
    the ring timeout while a gold caller (30 s head start) joins behind; the dial ends NOANSWER,
    1009 is paused as missed, the first caller goes back to the front, ahead of the gold one,
    and the first presale agent to resume takes it."""
    _agent_cli(stack, "pause", "1001", "training")
    _agent_cli(stack, "pause", "1002", "training")
    phone = sipp.start_uas("phone_rings_unanswered", PORTS["dead_phone"], 31700, stack.workdir)
    stack.redis.hset(stack.key("tiers"), "5552013", "gold")
    _agent_cli(stack, "login", "1009")
    callers = [stack.call(Script().at(1.0, "10").wait(50), "5552003")]
    try:
        uid = await caller_uid(ami_events, "5552003")
        (ring,) = await ami_events.wait_for(
            lambda e: e.event == "DialBegin" and e.get("Uniqueid") == uid, timeout=30
        )
        assert (ring.get("DestChannel") or "").startswith("PJSIP/agent-1009-")
        callers.append(stack.call(Script().at(1.0, "10").wait(40), "5552013"))
        gold = await caller_uid(ami_events, "5552013")
        await _queued_at(stack, gold)
        dial_end = await user_event(ami_events, "AcdDialEnd", uid, timeout=30)
        assert (dial_end.get("Agent"), dial_end.get("DialStatus")) == ("1009", "NOANSWER")
        rang = float(dial_end.get("Timestamp") or 0) - float(ring.get("Timestamp") or 0)
        assert rang >= stack.settings.asterisk.ring_timeout - 0.5
        await _until_state(stack, "1009", "paused")
        assert stack.redis.hget(stack.key("agent", "1009"), "reason") == "missed"
        deadline = time.monotonic() + 10
        while stack.redis.zrange(stack.key("q", "presale"), 0, -1) != [uid, gold]:
            assert time.monotonic() < deadline, "the caller should be back at the front"
            await asyncio.sleep(0.1)
        _agent_cli(stack, "resume", "1002")
        assert await _agent_of(ami_events, uid) == "1002"
        assert callers[0].wait(60) == 0
    finally:
        for caller in callers:
            caller.stop()
        phone.stop()
        stack.redis.hdel(stack.key("tiers"), "5552013")
        stack.acd("agent", "logout", "1009")
        for agent in ("1001", "1002"):
            stack.acd("agent", "resume", agent)
    assert stack.redis.hget(stack.key("agent", "1009"), "state") == "logged_out"


async def test_after_a_call_the_agent_wraps_up_then_takes_the_next_caller(
    stack: Stack, ami_events: EventLog
) -> None:
    """When a caller hangs up, the agent goes to wrap-up for the configured time (5 s in the
    sample) before it is offered the next caller; pausing an agent on a call is refused (409)."""
    _agent_cli(stack, "pause", "1001", "meeting")
    first = stack.call(Script().at(1.0, "10").wait(6), "5552004")
    try:
        uid = await caller_uid(ami_events, "5552004")
        assert await _agent_of(ami_events, uid) == "1002"
        refused = stack.acd("agent", "pause", "1002")
        assert refused.returncode == 1
        assert "409" in refused.stderr
        assert first.wait(30) == 0
        (hangup,) = await ami_events.wait_for(
            lambda e: e.event == "Hangup" and e.get("Uniqueid") == uid, timeout=10
        )
        await _until_state(stack, "1002", "wrap_up", timeout=5)
        second = stack.call(Script().at(1.0, "10").wait(6), "5552005")
        try:
            uid2 = await caller_uid(ami_events, "5552005")
            (enter,) = await ami_events.wait_for(
                lambda e: e.event == "BridgeEnter" and e.get("Uniqueid") == uid2, timeout=40
            )
            waited = float(enter.get("Timestamp") or 0) - float(hangup.get("Timestamp") or 0)
            assert waited >= 5.0  # the agent was not offered a caller during its wrap-up
            assert await _agent_of(ami_events, uid2) == "1002"
            assert second.wait(30) == 0
        finally:
            second.stop()
    finally:
        first.stop()
        stack.acd("agent", "resume", "1001")


async def test_escalation_reaches_a_lower_level_agent_after_the_configured_wait(
    stack: Stack, ami_events: EventLog
) -> None:
    """After-sales callers first accept agents of level 6 and up (acd.yaml): with agent 1002
    (level 7) paused, only 1004 (level 4) is free, and it gets the caller once the caller has
    waited the configured 20 s, not before; the caller's wait estimate at join said so."""
    _agent_cli(stack, "pause", "1002", "meeting")
    await _until_state(stack, "1004", "available", timeout=30)
    caller = stack.call(Script().at(1.0, "4").wait(34), "5552006")
    try:
        uid = await caller_uid(ami_events, "5552006")
        deadline = time.monotonic() + 20
        while not stack.redis.hget(stack.key("call", uid), "enqueued_at"):
            assert time.monotonic() < deadline, "the caller should be queued"
            await asyncio.sleep(0.1)
        joined = float(stack.redis.hget(stack.key("call", uid), "enqueued_at") or 0)
        while not stack.redis.hget(stack.key("call", uid), "ewt_at_join"):
            assert time.monotonic() < deadline, "the caller's estimate should be recorded"
            await asyncio.sleep(0.1)
        assert float(stack.redis.hget(stack.key("call", uid), "ewt_at_join") or 0) == 20.0
        (dial,) = await ami_events.wait_for(
            lambda e: e.event == "DialBegin" and e.get("Uniqueid") == uid, timeout=40
        )
        assert (dial.get("DestChannel") or "").startswith("PJSIP/agent-1004-")
        waited = float(dial.get("Timestamp") or 0) - joined
        assert 20.0 <= waited < 23.0
        assert await _agent_of(ami_events, uid) == "1004"
        assert caller.wait(60) == 0
    finally:
        caller.stop()
        stack.acd("agent", "resume", "1002")


async def test_the_wait_estimate_is_measured_against_actual_waits(
    stack: Stack, ami_events: EventLog
) -> None:
    """One payment agent whose calls last 6 s (plus 5 s of wrap-up): after a first call teaches
    the queue its handle time, three callers join at once; each one's estimate at join is logged
    beside its actual wait, and they agree within a few seconds (ringing and redirects are not in
    the model). The figures are printed."""
    agent = sipp.start_agent_that_hangs_up(PORTS["timed_phone"], 31500, stack.workdir)
    _agent_cli(stack, "pause", "1003", "ewt")
    _agent_cli(stack, "pause", "1004", "ewt")
    _agent_cli(stack, "login", "1010")
    stack.redis.delete(stack.key("stats", "payment"), stack.key("ewt_log"))
    callers = []
    try:
        callers.append(stack.call(Script().at(1.0, "3"), "5552100", remote_hangup=True))
        uid = await caller_uid(ami_events, "5552100")
        await ami_events.wait_for(
            lambda e: e.event == "Hangup" and e.get("Uniqueid") == uid, timeout=30
        )
        await _until_state(stack, "1010", "available", timeout=15)
        handle = float(stack.redis.hget(stack.key("stats", "payment"), "aht") or 0)
        assert 10.0 <= handle <= 13.0  # 6 s of talk and 5 s of wrap-up
        for n in (1, 2, 3):
            callers.append(stack.call(Script().at(1.0, "3"), f"555210{n}", remote_hangup=True))
            await asyncio.sleep(0.3)
        deadline = time.monotonic() + 90
        while stack.redis.xlen(stack.key("ewt_log")) < 4:
            assert time.monotonic() < deadline, "every caller should reach the agent"
            await asyncio.sleep(0.5)
        samples = [
            (float(entry["ewt"]), float(entry["waited"]))
            for _, entry in stack.redis.xrange(stack.key("ewt_log"))
        ][1:]
        errors = [ewt - waited for ewt, waited in samples]
        print(f"payment queue: estimate vs actual wait {samples}; errors {errors}")
        assert [round(ewt / handle) for ewt, _ in samples] == [0, 1, 2]
        assert all(abs(error) < 4.0 for error in errors)
        for caller in callers:
            assert caller.wait(60) == 0
    finally:
        for caller in callers:
            caller.stop()
        agent.stop()
        stack.acd("agent", "logout", "1010")
        for other in ("1003", "1004"):
            stack.acd("agent", "resume", other)


async def test_an_agent_whose_phone_is_busy_elsewhere_is_offered_nothing_until_it_is_free(
    stack: Stack, ami_events: EventLog
) -> None:
    """Agent 1002's phone takes a call the ACD did not place (originated straight to it, 6 s
    long): Asterisk reports the device in use, the agent becomes device_busy, and a presale
    caller waits although 1002 is logged in and not paused; when that call hangs up, the
    device is free again and 1002 takes the caller."""
    _agent_cli(stack, "pause", "1001", "meeting")
    assert ami_events.client is not None
    outside = f"outside-{time.time_ns()}"
    caller = None
    try:
        await send_as_controller(
            stack,
            "Originate",
            {
                "Channel": "PJSIP/agent-1002",
                "Application": "Wait",
                "Data": "6",
                "ChannelId": outside,
                "Async": "true",
            },
        )
        await _until_state(stack, "1002", "device_busy")  # from RINGING on
        await until(
            lambda: stack.redis.hget(stack.key("agent", "1002"), "reason") == "INUSE",
            "the agent's phone should be reported in use",
            timeout=10,
        )
        caller = stack.call(Script().at(1.0, "10").wait(30), "5552020")
        uid = await caller_uid(ami_events, "5552020")
        await _queued_at(stack, uid)
        (ended,) = await ami_events.wait_for(
            lambda e: e.event == "Hangup" and e.get("Uniqueid") == outside, timeout=20
        )
        (dial,) = await ami_events.wait_for(
            lambda e: e.event == "DialBegin" and e.get("Uniqueid") == uid, timeout=20
        )
        assert (dial.get("DestChannel") or "").startswith("PJSIP/agent-1002-")
        assert float(dial.get("Timestamp") or 0) >= float(ended.get("Timestamp") or 0)
        assert await _agent_of(ami_events, uid) == "1002"
        # Our own call keeps the phone in use too: recorded, with the agent on the call.
        await _until_state(stack, "1002", "on_call", timeout=10)
        await until(
            lambda: stack.redis.hget(stack.key("agent", "1002"), "device") == "INUSE",
            "the phone should be reported in use again",
            timeout=10,
        )
    finally:
        if caller is not None:
            caller.stop()
        stack.acd("agent", "resume", "1001")


async def test_a_phone_in_use_the_controller_has_not_heard_of_is_not_rung(
    stack: Stack, ami_events: EventLog
) -> None:
    """Agent 1001's phone is on a call the controller has not heard of (a call the dialplan's
    fallback queue put through while the controller was away: here an outside call, and the
    controller's record of the phone set back to idle). A presale caller is claimed for 1001, the
    highest level; the dialplan finds the phone in use and does not ring it: the caller goes to
    1002, and 1001 waits in device_busy until its phone is free (it used to be rung a second
    time: two callers on one agent)."""
    assert ami_events.client is not None
    outside = f"outside-{time.time_ns()}"
    caller = None
    store = RedisStore(redis_url(stack.settings), stack.settings.redis.prefix)
    try:
        await send_as_controller(
            stack,
            "Originate",
            {"Channel": "PJSIP/agent-1001", "Application": "Wait", "Data": "10",
             "ChannelId": outside, "Async": "true"},
        )  # fmt: skip
        await _until_state(stack, "1001", "device_busy")
        await until(
            lambda: stack.redis.hget(stack.key("agent", "1001"), "device") == "INUSE",
            "the agent's phone should be reported in use",
            timeout=10,
        )
        # What the controller missed: it believes the phone idle again.
        applied, _ = await store.agent_event(
            "1001", AgentEvent.DEVICE_IDLE, time.time(), device="NOT_INUSE"
        )
        assert applied
        assert stack.redis.hget(stack.key("agent", "1001"), "state") == "available"
        caller = stack.call(Script().at(1.0, "10").wait(30), "5552030")
        uid = await caller_uid(ami_events, "5552030")
        skipped = await user_event(ami_events, "AcdDialEnd", uid, timeout=20)
        assert (skipped.get("Agent"), skipped.get("DialStatus")) == ("1001", "INUSE")
        assert await _agent_of(ami_events, uid) == "1002"
        dials = ami_events.matching(lambda e: e.event == "DialBegin" and e.get("Uniqueid") == uid)
        assert [agent_of_channel(d.get("DestChannel") or "") for d in dials] == ["1002"]
        agent = stack.redis.hgetall(stack.key("agent", "1001"))
        assert (agent["state"], agent["reason"]) == ("device_busy", "INUSE")
    finally:
        await store.close()
        if caller is not None:
            caller.stop()


def _phone(stack: Stack, code: str, endpoint: str, password: str) -> sipp.SippRun:
    return sipp.start_agent_phone(
        code, endpoint, password, f"127.0.0.1:{PORTS['sip']}", next(stack._ports), stack.workdir
    )


async def test_an_agent_pauses_and_resumes_from_its_phone_with_star_codes(
    stack: Stack, ami_events: EventLog
) -> None:
    """Agent 1002's phone authenticates as its endpoint and dials *73: the agent is paused
    (reason phone), the phone hears a beep, and the audit names the phone; *74 resumes it (free
    for callers once the phone has hung up). The same code with a wrong password is refused by
    Asterisk and changes nothing."""
    secret = (stack.state / "agent-phones.secret").read_text().strip()
    password = asterisk.agent_phone_password(secret, "agent-1002")
    await _until_state(stack, "1002", "available")
    try:
        wrong = _phone(stack, "*73", "agent-1002", password[::-1])
        assert await asyncio.to_thread(wrong.wait, 40) != 0
        assert stack.redis.hget(stack.key("agent", "1002"), "state") == "available"

        phone = _phone(stack, "*73", "agent-1002", password)
        assert await asyncio.to_thread(phone.wait, 40) == 0, phone.log.read_text()[-2000:]
        await _until_state(stack, "1002", "paused")
        assert stack.redis.hget(stack.key("agent", "1002"), "reason") == "phone"
        (session,) = await ami_events.wait_for(
            lambda e: (
                e.event == "AGIExecStart"
                and (e.get("Channel") or "").startswith("PJSIP/agent-1002-")
            ),
            timeout=10,
        )
        assert played(ami_events, session.get("Uniqueid") or "") == ["beep"]
        audit = [entry for _, entry in stack.redis.xrange(stack.key("audit"))]
        assert audit[-1]["who"] == "phone agent-1002"
        # Before: available, or already device_busy (the phone is on this very call).
        assert audit[-1]["what"] == "agent 1002"
        assert audit[-1]["before"] in ("available", "device_busy")

        phone = _phone(stack, "*74", "agent-1002", password)
        assert await asyncio.to_thread(phone.wait, 40) == 0, phone.log.read_text()[-2000:]
        # Resumed; free for callers once the phone has hung up.
        await _until_state(stack, "1002", "available")
        assert stack.redis.hget(stack.key("agent", "1002"), "device") == "NOT_INUSE"
    finally:
        stack.acd("agent", "resume", "1002")
