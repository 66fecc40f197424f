"""End to end through the real Asterisk, Redis and SIPp: a customer calls 1000, presses a digit,
waits in Redis for that skill with music on hold, and is bridged to an agent with the skill."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.conftest import (
    EventLog,
    Stack,
    agent_of_channel,
    bridge_partner,
    caller_uid,
)
from tests.integration.sipp import Script

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PRESALE_AGENTS = {"1001", "1002"}  # the sample agents with the skill behind option 1


async def test_pressing_1_bridges_the_caller_to_an_agent_with_that_skill(
    stack: Stack, ami_events: EventLog
) -> None:
    """A call to 1000 that presses 1 hears the menu, is queued for presale and bridged to a
    presale agent; Redis records the connection and frees the agent after the call."""
    caller = stack.call(Script().at(1.0, "10").wait(6), caller_id="5550101")
    try:
        uid = await caller_uid(ami_events, "5550101")
        agent_enter = await bridge_partner(ami_events, uid)
        agent = agent_of_channel(agent_enter.get("Channel") or "")
        assert agent in PRESALE_AGENTS
        call = stack.redis.hgetall(stack.key("call", uid))
        assert call["skill"] == "presale"
        assert call["agent"] == agent
        assert call["path"] == "vip_check,welcome,root,promo_rules,q_presale"
        assert stack.redis.hget(stack.key("agent", agent), "state") in {
            "reserved",
            "ringing",
            "on_call",
        }
        # The menu prompts were played by the AGI session (Asterisk reports the AGI commands).
        played = ami_events.matching(
            lambda e: (
                e.event == "AGIExecStart"
                and e.get("Uniqueid") == uid
                and "STREAM FILE" in (e.get("Command") or "").upper()
            )
        )
        assert any("promo-welcome" in (e.get("Command") or "") for e in played)
        assert caller.wait(30) == 0
        await ami_events.wait_for(lambda e: e.event == "Hangup" and e.get("Uniqueid") == uid)
        deadline = time.monotonic() + 10
        while stack.redis.hget(stack.key("agent", agent), "state") != "available":
            assert time.monotonic() < deadline, "the agent was not made available after the call"
            await asyncio.sleep(0.1)
        assert not stack.redis.exists(stack.key("call", uid))
    finally:
        caller.stop()


async def test_a_caller_waits_with_music_until_an_agent_frees_up(
    stack: Stack, ami_events: EventLog
) -> None:
    """With both presale agents busy, a third caller waits in the Redis queue with music on hold
    and is bridged to the agent whose call ends first."""
    first = stack.call(Script().at(1.0, "10").wait(5), caller_id="5550201")
    second = stack.call(Script().at(1.0, "10").wait(20), caller_id="5550202")
    try:
        uid1 = await caller_uid(ami_events, "5550201")
        uid2 = await caller_uid(ami_events, "5550202")
        agent1 = agent_of_channel((await bridge_partner(ami_events, uid1)).get("Channel") or "")
        agent2 = agent_of_channel((await bridge_partner(ami_events, uid2)).get("Channel") or "")
        assert {agent1, agent2} == PRESALE_AGENTS

        third = stack.call(
            Script().at(1.0, "10").wait(15),
            caller_id="5550203",
        )
        try:
            uid3 = await caller_uid(ami_events, "5550203")
            await ami_events.wait_for(
                lambda e: (
                    e.event == "MusicOnHoldStart"
                    and e.get("Uniqueid") == uid3
                    and e.get("Context") == "acd-hold"
                ),
                timeout=20,
            )
            assert stack.redis.zrange(stack.key("q", "presale"), 0, -1) == [uid3]
            assert stack.redis.hget(stack.key("call", uid3), "state") == "queued"

            (hangup1,) = await ami_events.wait_for(
                lambda e: e.event == "Hangup" and e.get("Uniqueid") == uid1, timeout=20
            )
            agent3_enter = await bridge_partner(ami_events, uid3, timeout=20)
            assert agent_of_channel(agent3_enter.get("Channel") or "") == agent1
            assert ami_events.events.index(agent3_enter) > ami_events.events.index(hangup1)
            assert stack.redis.zcard(stack.key("q", "presale")) == 0
            assert third.wait(40) == 0
        finally:
            third.stop()
        assert first.wait(30) == 0
        assert second.wait(40) == 0
    finally:
        first.stop()
        second.stop()


async def test_a_dropped_ami_connection_is_survived(stack: Stack, ami_events: EventLog) -> None:
    """Asterisk kicks the controller's AMI session: the controller reconnects, resyncs, and the
    next call is bridged as usual."""
    before = stack.status()["components"]["ami"]
    sessions = stack.asterisk_cli("manager show connected")
    assert "acd" in sessions
    kicked = 0
    for line in sessions.splitlines():
        fields = line.split()
        # Username  IP Address  Start  Elapsed  FileDes  HttpCnt  ReadPerms  WritePerms
        if fields and fields[0] == "acd" and len(fields) >= 5 and fields[4].isdigit():
            stack.asterisk_cli(f"manager kick session {fields[4]}")
            kicked += 1
    assert kicked >= 1
    deadline = time.monotonic() + 20
    while True:
        after = stack.status()["components"]["ami"]
        if after["connected"] and after["resyncs"] > before["resyncs"]:
            break
        assert time.monotonic() < deadline, f"controller did not resync: {after}"
        await asyncio.sleep(0.2)
    assert after["reconnects"] > before["reconnects"]

    # Only the controller's sessions were kicked: our observer (the monitor user) stayed.
    assert ami_events.client is not None
    assert ami_events.client.connected
    caller = stack.call(Script().at(1.0, "4").wait(4), caller_id="5550301")
    try:
        uid = await caller_uid(ami_events, "5550301")
        agent_enter = await bridge_partner(ami_events, uid)
        assert agent_of_channel(agent_enter.get("Channel") or "") in {"1002", "1004"}
        assert stack.redis.hget(stack.key("call", uid), "skill") == "aftersales"
        assert caller.wait(30) == 0
    finally:
        caller.stop()
