"""Every branch of the promo and promo-lite flows, walked by SIPp callers pressing RFC 4733 digits
through the real Asterisk; assertions on what Asterisk did: the sounds the AGI session streamed
(AGIExecStart), the queue the caller joined (ACD_QUEUE), DialEnd's DIALSTATUS and the bridge."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
from pathlib import Path

import pytest

from tests.integration.conftest import (
    EventLog,
    Stack,
    agent_of_channel,
    agi_commands,
    bridge_partner,
    caller_uid,
    played,
    user_event,
)
from tests.integration.sipp import ANSWER_SECONDS, Script, prompt_seconds

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

AGENTS = {
    "presale": {"1001", "1002"},
    "orders": {"1001", "1003"},
    "payment": {"1003", "1004"},
    "aftersales": {"1002", "1004"},
    "vip": {"1001", "1003"},
}
# Press a digit this long after a menu's prompt ends: inside its 5 s window with room either side.
IN_WINDOW = 2.0


def core_seconds(name: str) -> float:
    """Length of a GSM core prompt (33-byte frames of 20 ms)."""
    path = Path(os.environ.get("ACD_ASTERISK_ROOT", "/var/cache/acd/asterisk-root"))
    sounds = path / "usr/share/asterisk/sounds/en_US_f_Allison"
    return (sounds / f"{name}.gsm").stat().st_size / 33 * 0.02


def _variable_set(events: EventLog, uid: str, name: str) -> str | None:
    """The value the AGI session gave a channel variable (SET VARIABLE NAME VALUE)."""
    for command in agi_commands(events, uid):
        parts = shlex.split(command)
        if parts[:2] == ["SET", "VARIABLE"] and len(parts) == 4 and parts[2] == name:
            return parts[3]
    return None


async def _bridged_agent(events: EventLog, uid: str, timeout: float = 60) -> str:
    """Wait for the caller's DialEnd with ANSWER and its bridge with an agent; return the agent."""
    (dial_end,) = await events.wait_for(
        lambda e: e.event == "DialEnd" and e.get("Uniqueid") == uid, timeout=timeout
    )
    assert dial_end.get("DialStatus") == "ANSWER"
    return agent_of_channel((await bridge_partner(events, uid, 10)).get("Channel") or "")


async def _queued_and_served(
    events: EventLog, caller_id: str, skill: str, timeout: float = 60
) -> tuple[str, str]:
    uid = await caller_uid(events, caller_id)
    agent = await _bridged_agent(events, uid, timeout=timeout)
    assert _variable_set(events, uid, "ACD_QUEUE") == skill, agi_commands(events, uid)
    assert agent in AGENTS[skill]
    return uid, agent


async def test_menu_choices_reach_their_queues(stack: Stack, ami_events: EventLog) -> None:
    """Pressing 3 queues for payment (after the type-ahead interrupts the welcome), 4 for
    after-sales, and 1 plays the promotion rules and then queues for presale; each caller is
    bridged (DIALSTATUS ANSWER) to an agent with that skill."""
    rules_end = ANSWER_SECONDS + 1.0 + prompt_seconds("promo-rules") + 3.0
    callers = [
        stack.call(Script().at(1.0, "3").until(14), "5551301"),
        stack.call(Script().at(1.0, "4").until(14), "5551302"),
        stack.call(Script().at(1.0, "1").until(rules_end + 8), "5551303"),
    ]
    try:
        uid3, _ = await _queued_and_served(ami_events, "5551301", "payment")
        await _queued_and_served(ami_events, "5551302", "aftersales")
        uid1, _ = await _queued_and_served(ami_events, "5551303", "presale")
        assert played(ami_events, uid3) == ["acd/promo-welcome"]
        assert played(ami_events, uid1) == ["acd/promo-welcome", "acd/promo-rules"]
        for caller in callers:
            assert caller.wait(60) == 0
    finally:
        for caller in callers:
            caller.stop()


async def test_invalid_digits_and_timeouts_retry_then_fall_through(
    stack: Stack, ami_events: EventLog
) -> None:
    """An invalid digit replays the menu after `invalid`, silence after `please-try-again`; the
    third miss sends the caller to the menu's way out, the presale queue."""
    menu = prompt_seconds("promo-menu")
    t_invalid = ANSWER_SECONDS + prompt_seconds("promo-welcome") + menu + IN_WINDOW
    second_end = t_invalid + 0.2 + core_seconds("invalid") + menu
    third_end = second_end + 5.0 + core_seconds("please-try-again") + menu
    script = Script().at(t_invalid, "7").at(third_end + IN_WINDOW, "8").wait(8)
    caller = stack.call(script, "5551304")
    try:
        uid, _ = await _queued_and_served(ami_events, "5551304", "presale", timeout=90)
        assert played(ami_events, uid) == [
            "acd/promo-welcome",
            "acd/promo-menu",
            "invalid",
            "acd/promo-menu",
            "please-try-again",
            "acd/promo-menu",
        ]
        assert caller.wait(60) == 0
    finally:
        caller.stop()


async def test_order_status_found_and_not_found(stack: Stack, ami_events: EventLog) -> None:
    """Option 2: an order number that exists is looked up and its status played, then 0 reaches
    an orders agent; an unknown number hears `order-not-found`, asked again, 0 for an agent."""
    found = Script().at(1.0, "2").at(2.5, "12345678").wait(4.0).press("0").wait(8)
    missing = Script().at(1.0, "2").at(2.5, "99999999").wait(4.0).press("0").wait(8)
    callers = [stack.call(found, "5551305"), stack.call(missing, "5551306")]
    try:
        uid_found, _ = await _queued_and_served(ami_events, "5551305", "orders")
        uid_missing, _ = await _queued_and_served(ami_events, "5551306", "orders")
        assert played(ami_events, uid_found) == [
            "acd/promo-welcome",
            "acd/order-enter-number",
            "acd/order-shipped",
            "acd/order-after-status",
        ]
        assert played(ami_events, uid_missing) == [
            "acd/promo-welcome",
            "acd/order-enter-number",
            "acd/order-not-found",
            "acd/order-enter-number",
        ]
        for caller in callers:
            assert caller.wait(60) == 0
    finally:
        for caller in callers:
            caller.stop()


async def test_order_service_down_sends_the_caller_to_an_agent(
    stack: Stack, ami_events: EventLog
) -> None:
    """With the order service stopped, the lookup fails: the caller hears
    `order-lookup-failed` and is queued for orders."""
    stack.orders.stop()
    caller = stack.call(Script().at(1.0, "2").at(2.5, "12345678").wait(14), "5551307")
    try:
        uid, _ = await _queued_and_served(ami_events, "5551307", "orders")
        assert played(ami_events, uid)[-2:] == [
            "acd/order-enter-number",
            "acd/order-lookup-failed",
        ]
        assert caller.wait(60) == 0
    finally:
        caller.stop()
        stack.orders.start()


async def test_vip_callers_take_the_fast_lane(stack: Stack, ami_events: EventLog) -> None:
    """A caller ID marked vip in Redis skips the menu: `vip-welcome`, then the vip queue."""
    stack.redis.hset(stack.key("tiers"), "5551308", "vip")
    caller = stack.call(Script().until(prompt_seconds("vip-welcome") + 8), "5551308")
    try:
        uid, _ = await _queued_and_served(ami_events, "5551308", "vip")
        assert played(ami_events, uid) == ["acd/vip-welcome"]
        assert caller.wait(60) == 0
    finally:
        caller.stop()
        stack.redis.hdel(stack.key("tiers"), "5551308")


async def test_a_controller_killed_mid_call_leaves_the_caller_on_the_static_path(
    stack: Stack, ami_events: EventLog
) -> None:
    """SIGKILL of the controller while the menu plays: the dialplan's static menu takes the call,
    the caller presses 1 and reaches an agent through app_queue's fallback queue; the supervisor
    restarts the controller."""
    pid = stack.controller_pid()
    caller = stack.call(Script().at(12.0, "1").until(30), "5551309")
    try:
        uid = await caller_uid(ami_events, "5551309")
        await ami_events.wait_for(
            lambda e: (
                e.event == "AGIExecStart"
                and e.get("Uniqueid") == uid
                and "promo-menu" in (e.get("Command") or "")
            ),
            timeout=15,
        )
        os.kill(pid, signal.SIGKILL)
        await user_event(ami_events, "AcdStaticFallback", uid, timeout=10)
        (joined,) = await ami_events.wait_for(
            lambda e: e.event == "QueueCallerJoin" and e.get("Uniqueid") == uid, timeout=20
        )
        assert joined.get("Queue") == "acd-fallback"
        (static_queue,) = ami_events.matching(
            lambda e: (
                e.event == "UserEvent"
                and e.get("UserEvent") == "AcdStaticQueue"
                and e.get("Uniqueid") == uid
            )
        )
        assert static_queue.get("Choice") == "orders"
        agent = await _bridged_agent(ami_events, uid, timeout=30)
        assert agent in {"1001", "1002", "1003", "1004"}
        assert caller.wait(60) == 0
    finally:
        caller.stop()
    await asyncio.to_thread(stack.wait_ready, 30)
    assert stack.controller_pid() != pid


async def test_auto_mode_follows_the_overload_level(stack: Stack, ami_events: EventLog) -> None:
    """In auto mode a pinned level 2 gives new callers promo-lite (two choices; declining the
    callback queues them) and level 0 gives them promo again; every change is audited."""
    assert stack.acd("menu", "auto", "1000").returncode == 0
    assert stack.acd("level", "2").returncode == 0
    try:
        lite = stack.call(Script().at(1.0, "2").at(3.0, "2").wait(8), "5551310")
        try:
            uid, _ = await _queued_and_served(ami_events, "5551310", "presale")
            assert _variable_set(ami_events, uid, "ACD_FLOW") == "promo-lite"
            assert played(ami_events, uid) == ["acd/lite-menu", "acd/callback-offer"]
            assert lite.wait(60) == 0
        finally:
            lite.stop()
        assert stack.acd("level", "0").returncode == 0
        normal = stack.call(Script().at(1.0, "4").wait(8), "5551311")
        try:
            uid, _ = await _queued_and_served(ami_events, "5551311", "aftersales")
            assert _variable_set(ami_events, uid, "ACD_FLOW") == "promo"
            assert normal.wait(60) == 0
        finally:
            normal.stop()
    finally:
        assert stack.acd("level", "auto").returncode == 0
        assert stack.acd("menu", "normal").returncode == 0
    audit = stack.redis.xrange(stack.key("audit"))
    changes = [(entry["what"], entry["after"]) for _, entry in audit]
    assert ("menu 1000", "auto") in changes
    assert ("overload", "2") in changes
    assert ("overload", "auto") in changes


async def test_accepting_the_callback_offer_records_it_and_hangs_up(
    stack: Stack, ami_events: EventLog
) -> None:
    """Menu mode fallback: promo-lite; pressing 1 then 1 accepts the callback offer; the caller
    hears the number and confirms it with #; the callback is stored durably in Redis with that
    number, and Asterisk hangs up after the confirmation. (No orders agent is logged in, so it
    stays pending here; tests/integration/test_callbacks.py dials them.)"""
    for agent in ("1001", "1003"):
        assert stack.acd("agent", "pause", agent).returncode == 0
    assert stack.acd("menu", "fallback", "1000").returncode == 0
    try:
        caller = stack.call(
            Script().at(1.0, "1").at(3.0, "1").at(6.0, "#"), "5551312", remote_hangup=True
        )
        try:
            uid = await caller_uid(ami_events, "5551312")
            await ami_events.wait_for(
                lambda e: e.event == "Hangup" and e.get("Uniqueid") == uid, timeout=30
            )
            heard = played(ami_events, uid)
            assert heard[:3] == ["acd/lite-menu", "acd/callback-offer", "acd/callback-number-is"]
            assert heard[-1] == "acd/callback-confirmed"
            said = [shlex.split(c)[2:3] for c in agi_commands(ami_events, uid) if "SAY DIGITS" in c]
            assert said == [["5551312"]]
            callback = stack.redis.hgetall(stack.key("callback", uid))
            assert callback["number"] == "5551312"
            assert callback["skill"] == "orders"
            # Due at once; with no orders agent free it waits in the queue at its place.
            assert callback["state"] in ("pending", "queued")
            assert caller.wait(30) == 0
        finally:
            caller.stop()
    finally:
        assert stack.acd("menu", "normal", "1000").returncode == 0
        stack.forget_callbacks()  # nobody would dial it: none left for the next tests
        for agent in ("1001", "1003"):
            assert stack.acd("agent", "resume", agent).returncode == 0


async def test_a_broken_flow_is_refused_on_reload_and_the_running_one_stays(
    stack: Stack, ami_events: EventLog
) -> None:
    """`acd flows reload` with a broken flow on disk fails with its problem and changes nothing;
    the next call is served by the running flow; once fixed, the reload succeeds."""
    broken = stack.settings.resolve(stack.settings.flows_dir) / "broken.yaml"
    broken.write_text("flow: broken\nstart: a\nnodes:\n  a: {kind: queue, skill: karaoke}\n")
    try:
        result = stack.acd("flows", "reload")
        assert result.returncode == 1
        assert "broken.yaml:4: nodes.a.skill: unknown skill 'karaoke'" in result.stderr
        caller = stack.call(Script().at(1.0, "4").wait(8), "5551313")
        try:
            await _queued_and_served(ami_events, "5551313", "aftersales")
            assert caller.wait(60) == 0
        finally:
            caller.stop()
    finally:
        broken.unlink()
    result = stack.acd("flows", "reload")
    assert result.returncode == 0, result.stderr
    assert "promo, promo-lite" in result.stdout
