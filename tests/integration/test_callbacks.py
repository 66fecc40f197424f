"""Callbacks and trunk breakers through the real stack: SIPp customers ask for a callback while
waiting, SIPp carriers (answering, or failing with 503) take the outbound legs, and the SIPp UAS
answers for the agents. Assertions are on AMI (the agent-first originate, the dial strings, the
Dial outcomes) and on Redis (the callback records), and on the admin API for breaker states."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from acd.protocol.ami import AmiMessage
from tests.integration import sipp
from tests.integration.conftest import PORTS, EventLog, Stack, caller_uid, played, until
from tests.integration.sipp import Script

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ORDERS_AGENTS = ("1001", "1003")


def _agents(stack: Stack, action: str, *agents: str) -> None:
    for agent in agents:
        result = stack.acd("agent", action, agent)
        assert result.returncode == 0, result.stderr


def _api(stack: Stack, method: str, path: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORTS['admin']}{path}",
        method=method,
        headers={"Authorization": f"Bearer {stack.admin_token}", "X-Acd-User": "test"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(json.load(response))


def _forget_breakers(stack: Stack) -> None:
    """Every trunk's breaker back to closed with an empty window (they live in Redis)."""
    for key in stack.redis.keys(stack.key("trunk", "*")):
        stack.redis.delete(key)


@pytest.fixture
def fresh_breakers(stack: Stack) -> Iterator[None]:
    """Every breaker starts closed with an empty window, and is so again afterwards."""
    _forget_breakers(stack)
    try:
        yield
    finally:
        _forget_breakers(stack)


@pytest.fixture
def orders_paused(stack: Stack) -> Iterator[None]:
    """The orders agents start paused (callbacks wait at their place); afterwards no callback
    and no open breaker or trip is left behind, and the agents are back. Breakers start closed
    with an empty window."""
    _forget_breakers(stack)
    _agents(stack, "pause", *ORDERS_AGENTS)
    try:
        yield
    finally:
        stack.forget_callbacks()
        _forget_breakers(stack)
        for agent in ORDERS_AGENTS:
            if stack.redis.hget(stack.key("agent", agent), "state") == "paused":
                _agents(stack, "resume", agent)


async def _ask_for_callback(stack: Stack, events: EventLog, caller_id: str, keyed: str = "") -> str:
    """A customer joins the orders queue (2, then 0), presses 1 while waiting, confirms the
    number with # (or keys `keyed` then #, hears it read back and confirms it with #), hears the
    confirmation and is hung up on. Returns its uniqueid."""
    script = Script().at(1.0, "20").at(6.0, "1").at(8.5, keyed + "#")
    if keyed:
        script.press("#")
    caller = stack.call(script, caller_id, remote_hangup=True)
    try:
        uid = await caller_uid(events, caller_id)
        assert await asyncio.to_thread(caller.wait, 60) == 0, caller.log.read_text()[-2000:]
    finally:
        caller.stop()
    return uid


def _dials(events: EventLog, number: str) -> list[AmiMessage]:
    """DialBegin events of customer legs to `number` (DialString NUMBER@TRUNK)."""
    return [
        e
        for e in events.events
        if e.event == "DialBegin" and (e.get("DialString") or "").startswith(f"{number}@")
    ]


def _callback_ends(events: EventLog, callback: str) -> list[str]:
    return [
        e.get("DialStatus") or ""
        for e in events.events
        if e.event == "UserEvent"
        and e.get("UserEvent") == "AcdCallbackEnd"
        and e.get("Callback") == callback
    ]


async def test_a_callback_keeps_its_place_and_is_dialled_agent_first(
    stack: Stack, ami_events: EventLog, orders_paused: None
) -> None:
    """A waiting caller presses 1 and confirms: the callback takes its place in the orders
    queue (its original score), ahead of a caller who joined later. When an agent frees up,
    the agent is called first (its leg's uniqueid is the attempt's id), then the customer over
    the primary carrier; dialled once, answered, and recorded so in Redis."""
    carrier = sipp.start_uas("agent_hangs_up", PORTS["carrier"], 19600, stack.workdir)
    later = None
    try:
        uid = await _ask_for_callback(stack, ami_events, "5554001")
        attempt = f"cb-{uid}-1"
        cb = stack.redis.hgetall(stack.key("callback", uid))
        assert cb["number"] == "5554001"
        assert cb["from_hold"] == "1"
        await until(
            lambda: stack.redis.zscore(stack.key("q", "orders"), attempt) is not None,
            "the callback did not join the orders queue",
        )
        assert stack.redis.zscore(stack.key("q", "orders"), attempt) == float(cb["score"])
        later = stack.call(Script().at(1.0, "20").wait(40), "5554002")
        later_uid = await caller_uid(ami_events, "5554002")
        await until(
            lambda: stack.redis.zscore(stack.key("q", "orders"), later_uid) is not None,
            "the later caller did not queue",
        )
        assert stack.redis.zrange(stack.key("q", "orders"), 0, -1) == [attempt, later_uid]

        _agents(stack, "resume", "1003")
        created = await ami_events.wait_for(
            lambda e: e.event == "Newchannel" and e.get("Uniqueid") == attempt, timeout=20
        )
        assert {e.get("Channel", "")[: len("PJSIP/agent-1003-")] for e in created} == {
            "PJSIP/agent-1003-"
        }, [e.get("Channel") for e in created]
        (dial,) = await ami_events.wait_for(
            lambda e: e.event == "DialBegin" and (e.get("DialString") or "").startswith("5554001@"),
            timeout=20,
        )
        assert dial.get("Uniqueid") == attempt
        assert dial.get("DialString") == "5554001@carrier-out"
        # The later caller still waits while the callback is on the phone.
        assert stack.redis.zscore(stack.key("q", "orders"), later_uid) is not None
        await ami_events.wait_for(
            lambda e: (
                e.event == "DialEnd"
                and e.get("Uniqueid") == attempt
                and e.get("DialStatus") == "ANSWER"
            ),
            timeout=20,
        )
        await until(
            lambda: stack.redis.hget(stack.key("callback", uid), "state") == "answered",
            "the callback was not recorded as answered",
            timeout=30,
        )
        assert _callback_ends(ami_events, uid) == ["ANSWER"]
        assert stack.redis.hget(stack.key("callback", uid), "attempts") == "1"
        assert stack.redis.scard(stack.key("callbacks", "active")) == 0
        assert len(_dials(ami_events, "5554001")) == 1
    finally:
        if later is not None:
            later.stop()
        carrier.stop()


async def test_a_failing_carrier_opens_its_breaker_and_callbacks_move_to_standby(
    stack: Stack, ami_events: EventLog, orders_paused: None
) -> None:
    """The primary carrier answers 503: the first two callbacks fail on it (CONGESTION) and the
    breaker opens (2 of 2 failed); their retries go out over the standby trunk and are answered.
    The primary recovers; after the open time the breaker is half-open, a third callback is its
    probe, is answered over the primary, and the breaker closes."""
    failing = sipp.start_uas("carrier_503", PORTS["carrier"], 19600, stack.workdir)
    standby = sipp.start_uas("agent_hangs_up", PORTS["standby"], 19700, stack.workdir)
    healthy = None
    try:
        first = await _ask_for_callback(stack, ami_events, "5554101")
        second = await _ask_for_callback(stack, ami_events, "5554102")
        _agents(stack, "resume", *ORDERS_AGENTS)
        for number, uid in (("5554101", first), ("5554102", second)):
            await until(
                lambda uid=uid: stack.redis.hget(stack.key("callback", uid), "state") == "answered",
                f"callback {number} was not answered",
                timeout=90,
            )
            strings = [e.get("DialString") for e in _dials(ami_events, number)]
            assert strings == [f"{number}@carrier-out", f"{number}@standby-out"], strings
            assert _callback_ends(ami_events, uid) == ["CONGESTION", "ANSWER"]
        trunks = _api(stack, "GET", "/trunks")["trunks"]
        assert trunks["carrier-out"]["state"] in ("open", "half_open")
        assert trunks["standby-out"]["state"] == "closed"

        failing.stop()
        healthy = sipp.start_uas("agent_hangs_up", PORTS["carrier"], 19800, stack.workdir)
        await until(
            lambda: _api(stack, "GET", "/trunks")["trunks"]["carrier-out"]["state"] == "half_open",
            "the breaker did not go half-open",
            timeout=30,
        )
        _agents(stack, "pause", *ORDERS_AGENTS)  # so that the third caller waits
        third = await _ask_for_callback(stack, ami_events, "5554103")
        _agents(stack, "resume", *ORDERS_AGENTS)
        await until(
            lambda: stack.redis.hget(stack.key("callback", third), "state") == "answered",
            "the probe callback was not answered",
            timeout=60,
        )
        assert [e.get("DialString") for e in _dials(ami_events, "5554103")] == [
            "5554103@carrier-out"
        ]
        await until(
            lambda: _api(stack, "GET", "/trunks")["trunks"]["carrier-out"]["state"] == "closed",
            "the breaker did not close after the probe",
            timeout=30,
        )
    finally:
        for run in (failing, standby, healthy):
            if run is not None:
                run.stop()


async def test_a_breaker_tripped_by_hand_sends_callbacks_to_standby(
    stack: Stack, ami_events: EventLog, orders_paused: None
) -> None:
    """POST /trunks/carrier-out/trip: the next callback (to a number the caller keyed in) goes
    out over the standby trunk; the trip is audited, and reset closes the breaker again."""
    standby = sipp.start_uas("agent_hangs_up", PORTS["standby"], 19700, stack.workdir)
    try:
        assert _api(stack, "POST", "/trunks/carrier-out/trip")["state"] == "open"
        uid = await _ask_for_callback(stack, ami_events, "5554201", keyed="13900004201")
        assert stack.redis.hget(stack.key("callback", uid), "number") == "13900004201"
        _agents(stack, "resume", "1003")
        await until(
            lambda: stack.redis.hget(stack.key("callback", uid), "state") == "answered",
            "the callback was not answered",
        )
        assert [e.get("DialString") for e in _dials(ami_events, "13900004201")] == [
            "13900004201@standby-out"
        ]
        assert _api(stack, "POST", "/trunks/carrier-out/reset")["state"] == "closed"
        # Audited under the token's user; the X-Acd-User the client sent is detail beside it.
        audit = stack.redis.xrange(stack.key("audit"))
        assert any(
            f["what"] == "trunk carrier-out"
            and f["after"] == "tripped"
            and f["who"] == "admin (test)"
            for _, f in audit
        )
    finally:
        standby.stop()


async def test_callbacks_pending_survive_a_controller_kill_and_a_redis_kill(
    stack: Stack, ami_events: EventLog, orders_paused: None
) -> None:
    """Two callbacks wait (no orders agent: one in the queue at its place, the other pending,
    as the pacing allows). The controller is killed (SIGKILL) and restarted by `acd up`, then
    redis-server is killed (SIGKILL) and restarted from its append-only file. Both callbacks
    are still there, and once agents are back each is dialled exactly once."""
    carrier = sipp.start_uas("agent_hangs_up", PORTS["carrier"], 19600, stack.workdir)
    try:
        uids = {
            number: await _ask_for_callback(stack, ami_events, number)
            for number in ("5554301", "5554302")
        }
        await until(
            lambda: (
                sorted(
                    str(stack.redis.hget(stack.key("callback", u), "state")) for u in uids.values()
                )
                == ["pending", "queued"]
            ),
            "the first callback was not admitted",
        )
        before = {u: stack.redis.hgetall(stack.key("callback", u)) for u in uids.values()}

        pid = stack.controller_pid()
        os.kill(pid, signal.SIGKILL)
        await until(lambda: stack.controller_pid() != pid, "no new controller", timeout=30)
        await asyncio.to_thread(stack.wait_ready, 60)
        assert {u: stack.redis.hgetall(stack.key("callback", u)) for u in uids.values()} == before

        await asyncio.sleep(1.5)  # appendfsync everysec
        redis_pid = int(stack.redis.info("server")["process_id"])
        os.kill(redis_pid, signal.SIGKILL)
        await until(_redis_back(stack, redis_pid), "redis-server was not restarted", timeout=30)
        after = {u: stack.redis.hgetall(stack.key("callback", u)) for u in uids.values()}
        assert after == before
        await asyncio.to_thread(stack.wait_ready, 60)

        _agents(stack, "resume", *ORDERS_AGENTS)
        for number, uid in uids.items():
            await until(
                lambda uid=uid: stack.redis.hget(stack.key("callback", uid), "state") == "answered",
                f"callback {number} was not answered",
                timeout=60,
            )
        await asyncio.sleep(3)  # any second dial would show by now
        for number, uid in uids.items():
            assert len(_dials(ami_events, number)) == 1, number
            assert _callback_ends(ami_events, uid) == ["ANSWER"]
    finally:
        carrier.stop()


async def test_a_callback_that_ends_while_the_controller_is_down_is_recorded_once(
    stack: Stack, ami_events: EventLog, orders_paused: None
) -> None:
    """The customer of a callback answers; the controller is frozen (SIGSTOP) while they talk,
    so it never sees the call end, then killed. The restarted controller reads from the node's
    AstDB how the attempt ended: answered after one attempt, the customer dialled once. The
    mark stays under its day (the controller's AMI user may not write AstDB); the dialplan
    dropped a mark of a day before yesterday as the attempt started."""
    carrier = sipp.start_uas("agent_hangs_up", PORTS["carrier"], 19600, stack.workdir)
    pid = 0
    try:
        uid = await _ask_for_callback(stack, ami_events, "5554501")
        attempt = f"cb-{uid}-1"
        await until(
            lambda: stack.redis.zscore(stack.key("q", "orders"), attempt) is not None,
            "the callback did not join the orders queue",
        )
        stack.asterisk_cli("database put acd_callback 20200101/cb-old-1 dialling")
        stack.asterisk_cli("database put acd_callback 20200102/cb-old-2 dialling")
        assert "cb-old-1" in stack.asterisk_cli("database show acd_callback")
        _agents(stack, "resume", "1003")
        await ami_events.wait_for(
            lambda e: (
                e.event == "DialEnd"
                and e.get("Uniqueid") == attempt
                and e.get("DialStatus") == "ANSWER"
            ),
            timeout=30,
        )
        marks = stack.asterisk_cli("database show acd_callback")
        assert re.search(rf"/acd_callback/\d{{8}}/{attempt}\s*: dialling", marks), marks
        assert "cb-old" not in marks
        pid = stack.controller_pid()
        os.kill(pid, signal.SIGSTOP)
        # The carrier hangs up after 6 s of talk; the controller sees none of it.
        await ami_events.wait_for(
            lambda e: e.event == "Hangup" and e.get("Uniqueid") == attempt, timeout=30
        )
        assert _callback_ends(ami_events, uid) == ["ANSWER"]
        assert stack.redis.hget(stack.key("callback", uid), "state") == "queued"
        os.kill(pid, signal.SIGKILL)
        await until(lambda: stack.controller_pid() not in (0, pid), "no new controller", 30)
        await asyncio.to_thread(stack.wait_ready, 60)
        await until(
            lambda: stack.redis.hget(stack.key("callback", uid), "state") == "answered",
            "the restarted controller did not recover the attempt's end",
            timeout=30,
        )
        cb = stack.redis.hgetall(stack.key("callback", uid))
        assert (cb["attempts"], cb["last_status"]) == ("1", "ANSWER")
        assert stack.redis.scard(stack.key("callbacks", "active")) == 0
        marks = stack.asterisk_cli("database show acd_callback")
        assert re.search(rf"/acd_callback/\d{{8}}/{attempt}\s*: ended ANSWER", marks), marks
        await asyncio.sleep(3)  # a second dial would show by now
        assert len(_dials(ami_events, "5554501")) == 1
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        carrier.stop()


def _redis_back(stack: Stack, old_pid: int) -> Any:
    def check() -> bool:
        try:
            return int(stack.redis.info("server")["process_id"]) != old_pid
        except Exception:  # noqa: BLE001 - down until restarted
            return False

    return check


async def test_from_overload_level_3_a_long_wait_brings_a_callback_offer(
    stack: Stack, ami_events: EventLog, orders_paused: None
) -> None:
    """Level pinned at 3, no orders agent: a caller about to queue for orders (wait estimate
    past the 120 s target) hears the callback offer, presses 1, confirms, and is called back
    later; its place is its time of asking."""
    assert stack.acd("level", "3").returncode == 0
    try:
        caller = stack.call(
            Script().at(1.0, "20").at(4.0, "1").at(6.5, "#"), "5554401", remote_hangup=True
        )
        try:
            uid = await caller_uid(ami_events, "5554401")
            assert await asyncio.to_thread(caller.wait, 60) == 0, caller.log.read_text()[-2000:]
        finally:
            caller.stop()
        heard = played(ami_events, uid)
        assert "acd/callback-offer" in heard
        assert heard[-1] == "acd/callback-confirmed"
        cb = stack.redis.hgetall(stack.key("callback", uid))
        assert cb["number"] == "5554401"
        assert cb["skill"] == "orders"
        assert "from_hold" not in cb
        assert float(cb["score"]) == pytest.approx(float(cb["requested_at"]), abs=1e-6)
        # It never queued as a live caller.
        assert not any(
            e.event == "MusicOnHoldStart" and e.get("Uniqueid") == uid for e in ami_events.events
        )
    finally:
        assert stack.acd("level", "auto").returncode == 0


async def test_at_overload_level_4_new_callers_overflow_to_the_standby_centre(
    stack: Stack, ami_events: EventLog
) -> None:
    """Level pinned at 4: a regular caller for orders (which overflows to 88001234) is offered
    a callback first; silent (declining), it is transferred over the best trunk, the primary
    carrier, instead of queueing; the leg's end frees the trunk."""
    carrier = sipp.start_uas("agent_hangs_up", PORTS["carrier"], 19600, stack.workdir)
    assert stack.acd("level", "4").returncode == 0
    try:
        caller = stack.call(Script().at(1.0, "20"), "5554501", remote_hangup=True)
        try:
            uid = await caller_uid(ami_events, "5554501")
            assert await asyncio.to_thread(caller.wait, 60) == 0, caller.log.read_text()[-2000:]
        finally:
            caller.stop()
        (dial,) = [
            e for e in ami_events.events if e.event == "DialBegin" and e.get("Uniqueid") == uid
        ]
        assert dial.get("DialString") == "88001234@carrier-out"
        assert played(ami_events, uid)[-1] == "acd/callback-offer"
        assert stack.redis.hgetall(stack.key("callback", uid)) == {}
        ends = [
            e
            for e in ami_events.events
            if e.event == "UserEvent"
            and e.get("UserEvent") == "AcdTransferEnd"
            and e.get("Uniqueid") == uid
        ]
        assert [(e.get("Trunk"), e.get("DialStatus")) for e in ends] == [("carrier-out", "ANSWER")]
        assert stack.redis.hgetall(stack.key("call", uid)) == {}
        await until(
            lambda: _api(stack, "GET", "/trunks")["trunks"]["carrier-out"]["in_use"] == 0,
            "the trunk channel was not released",
            timeout=10,
        )
    finally:
        assert stack.acd("level", "auto").returncode == 0
        carrier.stop()


def _user_events(events: EventLog, kind: str, uid: str) -> list[AmiMessage]:
    return [
        e
        for e in events.events
        if e.event == "UserEvent" and e.get("UserEvent") == kind and e.get("Uniqueid") == uid
    ]


async def test_a_carrier_that_never_answers_opens_its_breaker_and_overflow_moves_to_standby(
    stack: Stack, ami_events: EventLog, fresh_breakers: None
) -> None:
    """Level pinned at 4; the primary carrier takes each INVITE (100 Trying) and says nothing
    more. Two regular callers decline the callback offer and overflow over it: Dial gives up
    after breaker.progress_timeout (2 s; Asterisk reports CHANUNAVAIL), AcdTransferEnd reports
    NOPROGRESS for carrier-out, and each caller goes out again at once over standby-out, which
    answers. After these two legs carrier-out's breaker is open (failures): the next caller goes
    straight to standby-out (or, if the breaker is half-open by then, its probe fails over the
    same way)."""
    silent = sipp.start_uas("carrier_silent", PORTS["carrier"], 19600, stack.workdir)
    standby = sipp.start_uas("agent_hangs_up", PORTS["standby"], 19700, stack.workdir)
    assert stack.acd("level", "4").returncode == 0
    callers = []
    try:
        # 2 then 0 (orders), then 2 during the offer: no callback, thank you.
        for caller_id in ("5554601", "5554602"):
            callers.append(stack.call(Script().at(1.0, "202"), caller_id, remote_hangup=True))
        opened_at = 0.0
        for caller_id in ("5554601", "5554602"):
            uid = await caller_uid(ami_events, caller_id)
            ends = await ami_events.wait_for(
                lambda e, uid=uid: (
                    e.event == "UserEvent"
                    and e.get("UserEvent") == "AcdTransferEnd"
                    and e.get("Uniqueid") == uid
                ),
                timeout=40,
                count=2,
            )
            legs = [(e.get("Trunk"), e.get("DialStatus")) for e in ends]
            assert legs == [("carrier-out", "NOPROGRESS"), ("standby-out", "ANSWER")]
            opened_at = max(opened_at, float(ends[0].get("Timestamp") or 0))
            dial_ends = [
                e.get("DialStatus")
                for e in ami_events.events
                if e.event == "DialEnd" and e.get("Uniqueid") == uid
            ]
            assert dial_ends[0] == "CHANUNAVAIL"
        # Opened by the second failure; open for open_for from then, half-open after (a loaded
        # machine may take that long over the second caller's standby leg).
        record = json.loads(stack.redis.get(stack.key("trunk", "carrier-out")) or "{}")
        assert abs(float(record.get("opened_at") or 0) - opened_at) < 1.0, (record, opened_at)
        primary = _api(stack, "GET", "/trunks")["trunks"]["carrier-out"]
        elapsed = time.time() - opened_at
        open_for = stack.settings.breaker.open_for
        expected = {"open"} if elapsed < open_for - 1 else {"half_open"}
        if abs(elapsed - open_for) <= 1:
            expected = {"open", "half_open"}
        assert primary["reason"] == "failures"
        assert primary["state"] in expected, (primary, elapsed)

        callers.append(stack.call(Script().at(1.0, "202"), "5554603", remote_hangup=True))
        uid = await caller_uid(ami_events, "5554603")
        (answered,) = await ami_events.wait_for(
            lambda e: (
                e.event == "UserEvent"
                and e.get("UserEvent") == "AcdTransferEnd"
                and e.get("Uniqueid") == uid
                and e.get("DialStatus") == "ANSWER"
            ),
            timeout=40,
        )
        assert answered.get("Trunk") == "standby-out"
        to_primary = [
            e for e in ami_events.events
            if e.event == "DialBegin" and e.get("Uniqueid") == uid
            and e.get("DialString") == "88001234@carrier-out"
        ]  # fmt: skip
        for probe in to_primary:  # only a half-open probe may go there
            since = float(probe.get("Timestamp") or 0) - opened_at
            assert since >= stack.settings.breaker.open_for - 0.5, since
        for caller in callers:
            assert await asyncio.to_thread(caller.wait, 40) == 0, caller.log.read_text()[-2000:]
    finally:
        for caller in callers:
            caller.stop()
        assert stack.acd("level", "auto").returncode == 0
        silent.stop()
        standby.stop()


async def test_a_customer_who_rings_and_does_not_answer_does_not_count_against_the_carrier(
    stack: Stack, ami_events: EventLog, orders_paused: None
) -> None:
    """The customer's phone rings (180) and nobody answers within callbacks.ring_timeout:
    AcdCallbackEnd reports NOANSWER (not NOPROGRESS, although nothing answered), carrier-out's
    window counts the leg as no failure, its breaker stays closed, and the callback is due
    again (a retry)."""
    ringing = sipp.start_uas("customer_rings", PORTS["carrier"], 19600, stack.workdir)
    try:
        uid = await _ask_for_callback(stack, ami_events, "5554701")
        _agents(stack, "resume", "1003")
        await ami_events.wait_for(
            lambda e: (
                e.event == "UserEvent"
                and e.get("UserEvent") == "AcdCallbackEnd"
                and e.get("Callback") == uid
            ),
            timeout=40,
        )
        assert _callback_ends(ami_events, uid) == ["NOANSWER"]
        assert [e.get("DialString") for e in _dials(ami_events, "5554701")] == [
            "5554701@carrier-out"
        ]
        # The agent back in wrap-up is paused, so that the retry waits.
        await until(
            lambda: stack.redis.hget(stack.key("agent", "1003"), "state") == "wrap_up",
            "the agent did not go to wrap-up",
            timeout=10,
        )
        _agents(stack, "pause", "1003")
        await until(
            lambda: _api(stack, "GET", "/trunks")["trunks"]["carrier-out"]["window_calls"] == 1,
            "the unanswered leg was not counted",
            timeout=10,
        )
        primary = _api(stack, "GET", "/trunks")["trunks"]["carrier-out"]
        assert (primary["state"], primary["window_failures"], primary["in_use"]) == (
            "closed",
            0,
            0,
        )
        cb = stack.redis.hgetall(stack.key("callback", uid))
        assert (cb["last_status"], cb["attempts"]) == ("NOANSWER", "1")
        assert cb["state"] in ("pending", "queued")
    finally:
        ringing.stop()
