"""The supervisor's toggles through the `acd` CLI, each acting on a live SIPp call: queue pause
and resume, queue close, callbacks off, an agent's skills, a trunk trip, the level 4 plan; the
toggles surviving a controller kill; and `acd status --watch` on a waiting caller."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal

import pytest
from aiohttp import web

from tests.integration import sipp
from tests.integration.conftest import (
    PORTS,
    EventLog,
    Stack,
    agent_of_channel,
    agi_commands,
    bridge_partner,
    caller_uid,
    played,
    user_event,
)
from tests.integration.sipp import Script

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _acd(stack: Stack, *args: str) -> str:
    result = stack.acd(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _variables(events: EventLog, uid: str) -> dict[str, str]:
    """The channel variables the AGI session set on a channel (SET VARIABLE NAME VALUE)."""
    out = {}
    for command in agi_commands(events, uid):
        parts = shlex.split(command)
        if parts[:2] == ["SET", "VARIABLE"] and len(parts) == 4:
            out[parts[2]] = parts[3]
    return out


async def _restart_controller(stack: Stack) -> None:
    """SIGKILL the controller and wait until `acd up` has a new one ready."""
    pid = stack.controller_pid()
    os.kill(pid, signal.SIGKILL)
    for _ in range(300):
        if stack.controller_pid() not in (pid, 0):
            break
        await asyncio.sleep(0.1)
    await asyncio.to_thread(stack.wait_ready, 60)


async def _queued(stack: Stack, skill: str, uid: str, timeout: float = 20) -> None:
    for _ in range(int(timeout * 10)):
        if stack.redis.zscore(stack.key("q", skill), uid) is not None:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{uid} did not queue for {skill}")


async def test_a_paused_queue_holds_its_callers_until_resumed(
    stack: Stack, ami_events: EventLog
) -> None:
    """`acd queue pause presale`: a presale caller queues but no agent is dialled although the
    presale agents are free, even after the controller is killed and restarted; `acd queue
    resume presale` connects it at once from its place."""
    assert "paused" in _acd(stack, "queue", "pause", "presale")
    try:
        caller = stack.call(Script().at(1.0, "10").wait(30), "5556001")
        try:
            uid = await caller_uid(ami_events, "5556001")
            await _queued(stack, "presale", uid)
            await asyncio.sleep(3)
            assert stack.redis.zscore(stack.key("q", "presale"), uid) is not None
            assert not [
                e for e in ami_events.events if e.event == "DialBegin" and e.get("Uniqueid") == uid
            ]
            status = json.loads(_acd(stack, "status", "--json"))
            assert status["queues"]["presale"]["state"] == "paused"
            assert status["queues"]["presale"]["waiting"] == 1
            # The toggle lives in Redis: a restarted controller keeps the queue paused.
            pid = stack.controller_pid()
            os.kill(pid, signal.SIGKILL)
            for _ in range(300):
                if stack.controller_pid() != pid:
                    break
                await asyncio.sleep(0.1)
            await asyncio.to_thread(stack.wait_ready, 60)
            await asyncio.sleep(2)
            assert stack.redis.zscore(stack.key("q", "presale"), uid) is not None
            assert json.loads(_acd(stack, "status", "--json"))["queues"]["presale"]["state"] == (
                "paused"
            )
            assert "open" in _acd(stack, "queue", "resume", "presale")
            agent = agent_of_channel(
                (await bridge_partner(ami_events, uid, 15)).get("Channel") or ""
            )
            assert agent in ("1001", "1002")
        finally:
            caller.stop()
    finally:
        _acd(stack, "queue", "open", "presale")
    audit = [f for _, f in stack.redis.xrange(stack.key("audit"))]
    assert {"what": "queue presale", "before": "open", "after": "paused"}.items() <= next(
        f for f in audit if f["what"] == "queue presale"
    ).items()


async def test_a_closed_queue_announces_it_offers_a_callback_then_the_fallback(
    stack: Stack, ami_events: EventLog
) -> None:
    """`acd queue close presale`: a new presale caller hears the closed announcement and the
    callback offer; declining, it goes to the dialplan's static fallback, not to the queue."""
    _acd(stack, "queue", "close", "presale")
    try:
        caller = stack.call(Script().at(1.0, "10").wait(25), "5556002")
        try:
            uid = await caller_uid(ami_events, "5556002")
            await user_event(ami_events, "AcdStaticFallback", uid, timeout=30)
            heard = played(ami_events, uid)
            assert heard[-2:] == ["acd/queue-closed", "acd/callback-offer"], heard
            assert stack.redis.zscore(stack.key("q", "presale"), uid) is None
        finally:
            caller.stop()
    finally:
        _acd(stack, "queue", "open", "presale")


async def test_callbacks_off_refuses_a_waiting_callers_1(
    stack: Stack, ami_events: EventLog
) -> None:
    """`acd callback off orders`: a waiting orders caller who presses 1 stays in the queue (no
    callback recorded); `acd callback on` gives the offer back."""
    for agent in ("1001", "1003"):
        _acd(stack, "agent", "pause", agent)
    out = _acd(stack, "callback", "off", "orders")
    assert "queue orders: callbacks off" in out
    assert "queue presale: callbacks on" in out
    try:
        caller = stack.call(Script().at(1.0, "20").at(6.0, "1").at(8.5, "#").wait(4), "5556003")
        try:
            uid = await caller_uid(ami_events, "5556003")
            await _queued(stack, "orders", uid)
            await asyncio.to_thread(caller.wait, 30)
            assert stack.redis.hgetall(stack.key("callback", uid)) == {}
            assert "acd/callback-number-is" not in played(ami_events, uid)
        finally:
            caller.stop()
    finally:
        _acd(stack, "callback", "on")
        stack.forget_callbacks()
        for agent in ("1001", "1003"):
            _acd(stack, "agent", "resume", agent)


async def test_an_agents_new_skill_brings_it_callers_of_that_queue(
    stack: Stack, ami_events: EventLog
) -> None:
    """The presale agents are paused; `acd agent skills 1004 payment=9 aftersales=4 presale=7`
    gives 1004 presale, and the waiting presale caller is connected to it."""
    for agent in ("1001", "1002"):
        _acd(stack, "agent", "pause", agent)
    try:
        caller = stack.call(Script().at(1.0, "10").wait(25), "5556004")
        try:
            uid = await caller_uid(ami_events, "5556004")
            await _queued(stack, "presale", uid)
            out = _acd(stack, "agent", "skills", "1004", "payment=9", "aftersales=4", "presale=7")
            assert "-> aftersales:4,payment:9,presale:7" in out
            agent = agent_of_channel(
                (await bridge_partner(ami_events, uid, 15)).get("Channel") or ""
            )
            assert agent == "1004"
        finally:
            caller.stop()
    finally:
        _acd(stack, "agent", "skills", "1004", "payment=9", "aftersales=4")
        for agent in ("1001", "1002"):
            _acd(stack, "agent", "resume", agent)
    bad = stack.acd("agent", "skills", "1004", "presale=11")
    assert bad.returncode == 1
    assert "level from 1 to 10" in bad.stderr


async def test_a_trunk_tripped_from_the_cli_moves_a_live_overflow_to_standby(
    stack: Stack, ami_events: EventLog
) -> None:
    """`acd trunk trip carrier-out` opens the primary's breaker by hand (`acd trunk list` shows
    it); at level 4 a new orders caller overflows over the standby trunk instead; `acd trunk
    reset` closes it again. An unknown trunk is a clear error."""
    standby = sipp.start_uas("agent_hangs_up", PORTS["standby"], 19700, stack.workdir)
    try:
        assert "open (tripped by hand)" in _acd(stack, "trunk", "trip", "carrier-out")
        listing = _acd(stack, "trunk", "list")
        assert "standby-out" in listing
        assert "tripped by hand" in listing
        _acd(stack, "level", "4")
        caller = stack.call(Script().at(1.0, "20"), "5556005", remote_hangup=True)
        try:
            uid = await caller_uid(ami_events, "5556005")
            assert await asyncio.to_thread(caller.wait, 60) == 0
        finally:
            caller.stop()
        dials = [e.get("DialString") for e in ami_events.events
                 if e.event == "DialBegin" and e.get("Uniqueid") == uid]  # fmt: skip
        assert dials == ["88001234@standby-out"]
    finally:
        _acd(stack, "level", "auto")
        assert "closed" in _acd(stack, "trunk", "reset", "carrier-out")
        standby.stop()
    unknown = stack.acd("trunk", "trip", "nope")
    assert unknown.returncode == 1
    assert "404" in unknown.stderr


async def test_an_alert_fires_and_resolves_on_the_webhook(
    stack: Stack, ami_events: EventLog
) -> None:
    """The test deployment alerts when presale has a caller waiting for 2 s: with the presale
    agents paused a caller waits and the webhook gets `firing`; an agent resumes, the caller is
    served, and the webhook gets `resolved`."""
    received: list[dict[str, object]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/alerts", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORTS["webhook"]).start()
    for agent in ("1001", "1002"):
        _acd(stack, "agent", "pause", agent)
    try:
        caller = stack.call(Script().at(1.0, "10").wait(30), "5556010")
        try:
            uid = await caller_uid(ami_events, "5556010")
            await _queued(stack, "presale", uid)
            for _ in range(100):
                if any(r["status"] == "firing" for r in received):
                    break
                await asyncio.sleep(0.1)
            firing = [r for r in received if r["status"] == "firing"]
            assert len(firing) == 1, received
            assert firing[0]["alert"] == "presale-waiting"
            assert firing[0]["queue"] == "presale"
            assert firing[0]["value"] == 1.0
            _acd(stack, "agent", "resume", "1001")
            await bridge_partner(ami_events, uid, 15)
            for _ in range(100):
                if any(r["status"] == "resolved" for r in received):
                    break
                await asyncio.sleep(0.1)
            assert [r["status"] for r in received] == ["firing", "resolved"]
        finally:
            caller.stop()
    finally:
        for agent in ("1001", "1002"):
            stack.acd("agent", "resume", agent)
        await runner.cleanup()


async def test_status_watch_shows_the_live_caller_waiting(
    stack: Stack, ami_events: EventLog
) -> None:
    """With the presale agents paused a caller waits; `acd status --watch 1 --count 2` prints
    two refreshes by itself and ends, each with the presale queue's caller waiting, its longest
    wait, estimate, service level and agents by state, the trunks' breakers, the level and the
    menu mode."""
    for agent in ("1001", "1002"):
        _acd(stack, "agent", "pause", agent)
    try:
        caller = stack.call(Script().at(1.0, "10").wait(30), "5556020")
        try:
            uid = await caller_uid(ami_events, "5556020")
            await _queued(stack, "presale", uid)
            result = await asyncio.to_thread(
                stack.acd, "status", "--watch", "1", "--count", "2", timeout=30
            )
            assert result.returncode == 0, result.stderr
            refreshes = result.stdout.split("-- refresh ")
            assert [r.split(",")[0] for r in refreshes[1:]] == ["1", "2"]
            longest = []
            for text in refreshes[:2]:
                assert re.search(r"overload level \d \((governor|pinned)", text), text
                assert "entry 1000     menu normal" in text
                assert re.search(r"trunk carrier-out +primary +closed", text), text
                (line,) = [x for x in text.splitlines() if x.startswith("  queue presale")]
                words = line.split()
                assert words[2:4] == ["open", "1"], line
                assert re.fullmatch(r"\d+%|-", words[8]), line  # the service level
                assert "2 paused" in line
                longest.append(int(words[4]))
            # The second refresh comes a second after the first, which came after the join.
            assert longest[0] <= longest[1]
            assert longest[1] >= 1
        finally:
            caller.stop()
    finally:
        for agent in ("1001", "1002"):
            _acd(stack, "agent", "resume", agent)


async def test_toggles_survive_a_controller_kill_and_the_next_call_obeys_them(
    stack: Stack, ami_events: EventLog
) -> None:
    """Presale closed, its callbacks off, entry 1000 on the fallback menu and the level pinned
    at 3; the controller is killed and `acd up` restarts it: `acd status --json` still shows
    all four, and the next caller gets promo-lite, hears presale closed with no callback offer
    of the queue's own, and goes to the static fallback. The audit log names the token's user,
    with the CLI's user as detail."""
    _acd(stack, "queue", "close", "presale")
    _acd(stack, "callback", "off", "presale")
    _acd(stack, "menu", "fallback", "1000")
    _acd(stack, "level", "3")
    try:
        await _restart_controller(stack)
        status = json.loads(_acd(stack, "status", "--json"))
        assert status["queues"]["presale"]["state"] == "closed"
        assert status["queues"]["presale"]["callbacks"] == "off"
        assert status["queues"]["orders"]["callbacks"] == "on"
        assert status["menu_modes"] == {"1000": "fallback"}
        assert (status["overload"]["pinned"], status["overload"]["level"]) == (3, 3)
        caller = stack.call(Script().at(1.0, "2").wait(20), "5556021")
        try:
            uid = await caller_uid(ami_events, "5556021")
            await user_event(ami_events, "AcdStaticFallback", uid, timeout=30)
            assert _variables(ami_events, uid)["ACD_FLOW"] == "promo-lite"
            # The flow's own offer node, declined by silence, then the closed queue: no offer.
            assert played(ami_events, uid) == [
                "acd/lite-menu",
                "acd/callback-offer",
                "acd/queue-closed",
            ]
            assert stack.redis.zscore(stack.key("q", "presale"), uid) is None
        finally:
            caller.stop()
    finally:
        _acd(stack, "level", "auto")
        _acd(stack, "menu", "normal")
        _acd(stack, "callback", "on")
        _acd(stack, "queue", "open", "presale")
    audit = [f for _, f in stack.redis.xrange(stack.key("audit"))]
    menu = [f for f in audit if f["what"] == "menu 1000" and f["after"] == "fallback"][-1]
    assert re.fullmatch(r"admin \(cli:[A-Za-z0-9_.@-]+\)", menu["who"]), menu


async def test_level_4_keeps_head_starts_in_house_and_offers_low_tiers_before_standby(
    stack: Stack, ami_events: EventLog
) -> None:
    """Level pinned at 4, two orders callers (orders overflows to 88001234): a gold caller (a
    head start) hears no offer and is bridged to an orders agent in-house; a regular caller is
    offered a callback, declines with 2, and is transferred to the standby centre over the
    primary carrier."""
    carrier = sipp.start_uas("agent_hangs_up", PORTS["carrier"], 19720, stack.workdir)
    stack.redis.hset(stack.key("tiers"), "5556022", "gold")
    _acd(stack, "level", "4")
    try:
        gold = stack.call(Script().at(1.0, "20").wait(15), "5556022")
        regular = stack.call(Script().at(1.0, "20").at(6.0, "2"), "5556023", remote_hangup=True)
        try:
            gold_uid = await caller_uid(ami_events, "5556022")
            regular_uid = await caller_uid(ami_events, "5556023")
            agent = agent_of_channel(
                (await bridge_partner(ami_events, gold_uid, 30)).get("Channel") or ""
            )
            assert agent in ("1001", "1003")
            assert await asyncio.to_thread(regular.wait, 60) == 0, regular.log.read_text()[-2000:]
        finally:
            gold.stop()
            regular.stop()
        gold_vars = _variables(ami_events, gold_uid)
        assert (gold_vars["ACD_RESULT"], gold_vars["ACD_QUEUE"]) == ("queued", "orders")
        assert "acd/callback-offer" not in played(ami_events, gold_uid)
        heard = played(ami_events, regular_uid)
        assert heard[-1] == "acd/callback-offer", heard
        regular_vars = _variables(ami_events, regular_uid)
        assert regular_vars["ACD_RESULT"] == "transfer"
        assert regular_vars["ACD_TRANSFER_DIAL"] == "PJSIP/88001234@carrier-out"
        assert "ACD_QUEUE" not in regular_vars
        dials = {
            uid: [e.get("DialString") for e in ami_events.events
                  if e.event == "DialBegin" and e.get("Uniqueid") == uid]
            for uid in (gold_uid, regular_uid)
        }  # fmt: skip
        assert dials[regular_uid] == ["88001234@carrier-out"]
        assert all(d.startswith("agent-") for d in dials[gold_uid]), dials
        assert stack.redis.hgetall(stack.key("callback", regular_uid)) == {}
    finally:
        _acd(stack, "level", "auto")
        stack.redis.hdel(stack.key("tiers"), "5556022")
        carrier.stop()
