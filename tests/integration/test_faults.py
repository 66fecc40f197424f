"""Faults on the real stack, at a small scale (bench/faults.py runs them under load): what the
callers and agents are left with after the fault, from what Asterisk and Redis report."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from acd.runtime.asterisk import node_paths
from tests.integration.conftest import (
    EventLog,
    Stack,
    agent_of_channel,
    bridge_partner,
    caller_uid,
    until,
    user_event,
)
from tests.integration.sipp import Script

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PRESALE_AGENTS = {"1001", "1002"}


def _asterisk_pid(stack: Stack) -> int:
    try:
        return int((node_paths(stack.settings).var / "run" / "asterisk.pid").read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_asterisk_killed_mid_call_comes_back_and_leaves_no_agent_or_call_stuck(
    stack: Stack, ami_events: EventLog
) -> None:
    """A caller is on a call with a presale agent when Asterisk is killed (-9): the call dies
    with it. `acd up` starts Asterisk again; the controller reconnects and its resync ends the
    call Redis still held and frees the agent; the next caller is served as usual."""
    caller = stack.call(Script().at(1.0, "10").wait(40), caller_id="5550911")
    try:
        uid = await caller_uid(ami_events, "5550911")
        agent = agent_of_channel((await bridge_partner(ami_events, uid)).get("Channel") or "")
        assert agent in PRESALE_AGENTS
        await until(
            lambda: stack.redis.hget(stack.key("agent", agent), "state") == "on_call",
            "the agent should be on the call",
            timeout=10,
        )
        before = stack.status()["components"]["ami"]
        pid = _asterisk_pid(stack)
        assert pid
        assert _alive(pid)
        os.kill(pid, signal.SIGKILL)
        await until(lambda: not _alive(pid), "Asterisk did not die", timeout=10)
        new = await until(
            lambda: (p := _asterisk_pid(stack)) != pid and p and _alive(p) and p,
            "acd up did not start Asterisk again",
            timeout=60,
        )
        await asyncio.to_thread(stack.wait_ready, 60)
        after = stack.status()["components"]["ami"]
        assert after["reconnects"] > before["reconnects"]
        assert after["resyncs"] > before["resyncs"]
        await until(
            lambda: stack.redis.hget(stack.key("agent", agent), "state") == "available",
            "the agent of the call Asterisk lost is still not available",
            timeout=20,
        )
        assert stack.redis.hget(stack.key("agent", agent), "call") in (None, "")
        assert not stack.redis.exists(stack.key("call", uid))
        assert uid not in stack.redis.smembers(stack.key("calls", stack.settings.asterisk.node))
    finally:
        caller.stop()

    assert ami_events.client is not None
    await ami_events.client.wait_connected(timeout=30)  # the observer's session died too
    second = stack.call(Script().at(1.0, "10").wait(4), caller_id="5550912")
    try:
        uid2 = await caller_uid(ami_events, "5550912", timeout=30)
        enter = await bridge_partner(ami_events, uid2)
        assert agent_of_channel(enter.get("Channel") or "") in PRESALE_AGENTS
        assert second.wait(40) == 0
    finally:
        second.stop()
    assert _asterisk_pid(stack) == new


async def test_a_frozen_controller_sends_new_callers_to_the_static_menu_at_once(
    stack: Stack, ami_events: EventLog
) -> None:
    """The controller is stopped (SIGSTOP): its FastAGI port stays open, so a caller sent to it
    would wait in silence. Once its heartbeat is older than agi.alive_window, a new caller
    skips the AGI and takes the static menu at once: presses 1 and reaches an agent through the
    fallback queue. The controller resumes: ready again, and the next caller is its own."""
    pid = stack.controller_pid()
    window = stack.settings.agi.alive_window
    os.kill(pid, signal.SIGSTOP)
    caller = None
    try:
        await asyncio.sleep(window + 0.5)
        caller = stack.call(Script().at(12.0, "1").until(40), "5550921")
        uid = await caller_uid(ami_events, "5550921")
        await user_event(ami_events, "AcdStaticFallback", uid, timeout=10)
        (joined,) = await ami_events.wait_for(
            lambda e: e.event == "QueueCallerJoin" and e.get("Uniqueid") == uid, timeout=30
        )
        assert joined.get("Queue") == "acd-fallback"
        await bridge_partner(ami_events, uid, timeout=30)
        # Never handed to the stopped controller: the dialplan did not run AGI for this caller.
        assert not ami_events.matching(
            lambda e: (
                e.event == "Newexten" and e.get("Uniqueid") == uid and e.get("Application") == "AGI"
            )
        )
    finally:
        os.kill(pid, signal.SIGCONT)
        if caller is not None:
            caller.stop()
    await asyncio.to_thread(stack.wait_ready, 30)
    assert stack.controller_pid() == pid  # the same process, woken up

    second = stack.call(Script().at(1.0, "10").wait(4), caller_id="5550922")
    try:
        uid2 = await caller_uid(ami_events, "5550922")
        await bridge_partner(ami_events, uid2)
        assert ami_events.matching(
            lambda e: (
                e.event == "Newexten"
                and e.get("Uniqueid") == uid2
                and e.get("Application") == "AGI"
            )
        )
        assert stack.redis.hget(stack.key("call", uid2), "skill") == "presale"
        assert second.wait(40) == 0
    finally:
        second.stop()
