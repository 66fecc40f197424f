"""Trunk breakers shared in a real redis-server by two controllers (two TrunkBoards, each with its
own store connection and node, one clock the test moves): outcomes, probe slots,
capacity and trips are one state per trunk; and a flow's transfer node over a real FastAGI
socket takes its trunk through the breakers."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from acd.adapters.fastagi import FastAgiServer
from acd.adapters.lookup import LookupClient
from acd.adapters.store import RedisStore
from acd.config import Address, BreakerSettings, Settings, Trunk, load_settings
from acd.domain.flow import Catalog, Flow, compile_flow
from acd.runtime.ivr import IvrService
from acd.runtime.trunks import TrunkBoard, UnknownTrunk
from tests.adapters.fakes import FakeAsterisk

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _settings(node: str, probes: int = 1, saturation: float = 1.0) -> Settings:
    base = load_settings(REPO / "acd.yaml")
    return base.model_copy(
        update={
            "asterisk": base.asterisk.model_copy(update={"node": node}),
            "trunks": [
                Trunk(name="p1", address=Address(port=5990), role="primary", capacity=3),
                Trunk(name="p2", address=Address(port=5991), role="primary", capacity=3),
                Trunk(name="s", address=Address(port=5992), role="standby", capacity=20),
            ],
            "breaker": BreakerSettings(
                window=60, min_calls=2, failure_rate=0.5, open_for=30, probes=probes,
                saturation=saturation,
            ),
        }
    )  # fmt: skip


@dataclass
class Pair:
    a: TrunkBoard
    b: TrunkBoard
    store: RedisStore
    clock: Clock


async def _pair(redis_url: str, probes: int = 1, saturation: float = 1.0) -> AsyncIterator[Pair]:
    clock = Clock()
    sa, sb = RedisStore(redis_url, "t", node="n1"), RedisStore(redis_url, "t", node="n2")
    try:
        yield Pair(
            TrunkBoard(_settings("n1", probes, saturation), sa, clock),
            TrunkBoard(_settings("n2", probes, saturation), sb, clock),
            sa,
            clock,
        )
    finally:
        await sa.close()
        await sb.close()


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[Pair]:
    async for p in _pair(redis_url):
        yield p


@pytest.fixture
async def pair2(redis_url: str) -> AsyncIterator[Pair]:
    """Two probes per half-open breaker."""
    async for p in _pair(redis_url, probes=2):
        yield p


async def _open_p1(pair: Pair) -> None:
    """Two legs through controller a fail on p1 (503 and no progress): p1 opens."""
    for uid in ("f1", "f2"):
        assert await pair.a.choose(uid) == "p1"
    await pair.a.ended("p1", "f1", "CONGESTION")
    await pair.a.ended("p1", "f2", "NOPROGRESS")


async def test_failures_recorded_through_one_controller_open_the_breaker_for_the_other(
    pair: Pair,
) -> None:
    """Outcomes recorded by controller a are in the window controller b shows, and when they
    open p1, b's next leg goes to the next primary."""
    assert await pair.a.choose("f1") == "p1"
    await pair.a.ended("p1", "f1", "CONGESTION")
    seen = (await pair.b.summary())["p1"]
    assert (seen["state"], seen["window_calls"], seen["window_failures"]) == ("closed", 1, 1)
    assert await pair.a.choose("f2") == "p1"
    await pair.a.ended("p1", "f2", "NOPROGRESS")
    seen = (await pair.b.summary())["p1"]
    assert (seen["state"], seen["reason"], seen["in_use"]) == ("open", "failures", 0)
    assert await pair.b.choose("next") == "p2"
    assert await pair.b.summary() == await pair.a.summary()


async def test_an_outcome_seen_by_both_controllers_counts_once(pair: Pair) -> None:
    """Two controllers on one Asterisk see the same end: only the release of the leg's channel
    counts it, so it is one leg in the window."""
    assert await pair.a.choose("leg") == "p1"
    await asyncio.gather(
        pair.a.ended("p1", "leg", "CONGESTION"), pair.b.ended("p1", "leg", "CONGESTION")
    )
    p1 = (await pair.a.summary())["p1"]
    assert (p1["window_calls"], p1["window_failures"], p1["in_use"]) == (1, 1, 0)


async def test_a_half_open_probe_placed_by_one_and_ended_by_the_other_closes_it(
    pair: Pair,
) -> None:
    """After open_for, controller a places the probe; while it is out b's leg goes elsewhere;
    b sees the probe answered and the breaker closes for both."""
    await _open_p1(pair)
    pair.clock.now += 30
    assert (await pair.b.summary())["p1"]["state"] == "half_open"
    assert await pair.a.choose("probe") == "p1"
    assert (await pair.b.summary())["p1"]["probes_out"] == 1
    assert await pair.b.choose("other") == "p2"
    await pair.b.ended("p1", "probe", "ANSWER")
    p1 = (await pair.a.summary())["p1"]
    assert (p1["state"], p1["reason"], p1["probes_out"]) == ("closed", None, 0)
    assert await pair.a.choose("after") == "p1"


async def test_concurrent_choices_while_half_open_place_exactly_the_probes(pair2: Pair) -> None:
    """Twelve legs chosen at once through both controllers while p1 is half-open with two
    probe slots: exactly two go to p1; the rest go to p2 (three channels) and the standby."""
    await _open_p1(pair2)
    pair2.clock.now += 30
    boards = [pair2.a, pair2.b] * 6
    chosen = await asyncio.gather(*(b.choose(f"leg{i}") for i, b in enumerate(boards)))
    assert sorted(str(c) for c in chosen) == ["p1"] * 2 + ["p2"] * 3 + ["s"] * 7
    p1 = (await pair2.b.summary())["p1"]
    assert (p1["state"], p1["probes_out"], p1["in_use"]) == ("half_open", 2, 2)


async def test_a_probe_slot_is_freed_however_its_leg_lets_go(pair: Pair) -> None:
    """With one probe slot: a probe whose leg is cancelled, whose channel hung up (leg_gone),
    or which the reconcile after a reconnect finds gone, frees the slot (and its channel), and
    the next leg is the probe; none of them counts as an outcome."""
    await _open_p1(pair)
    pair.clock.now += 30
    assert await pair.a.choose("probe1") == "p1"
    assert await pair.b.choose("x") == "p2"  # the one slot is taken
    await pair.b.cancelled("p1", "probe1")
    assert await pair.b.choose("probe2") == "p1"
    assert await pair.a.leg_gone("probe2") == ["p1"]
    assert await pair.a.leg_gone("probe2") == []
    assert await pair.b.choose("probe3") == "p1"
    assert await pair.a.reconcile(live=[]) == 0  # b's leg: node n2, not a's
    assert await pair.b.reconcile(live=["x"]) == 1
    p1 = (await pair.a.summary())["p1"]
    assert (p1["state"], p1["probes_out"], p1["in_use"]) == ("half_open", 0, 0)
    assert await pair.a.choose("probe4") == "p1"


async def test_a_transfer_whose_caller_hung_up_before_dial_says_nothing(pair: Pair) -> None:
    """AcdTransferEnd with an empty DialStatus (the caller hung up before Dial ran), or a
    CANCEL: the channel is free and the window counts nothing."""
    assert await pair.a.choose("t1") == "p1"
    assert await pair.a.choose("t2") == "p1"
    await pair.b.ended("p1", "t1", "")
    await pair.b.ended("p1", "t2", "CANCEL")
    p1 = (await pair.a.summary())["p1"]
    assert (p1["in_use"], p1["window_calls"]) == (0, 0)


async def test_capacity_holds_across_controllers_and_a_full_trunk_stays_closed(
    redis_url: str,
) -> None:
    """Legs chosen at once through both controllers never exceed a trunk's capacity; a full
    trunk refuses the next legs (they go to the next trunk) without opening its breaker, and a
    channel freed through one controller is taken at once through the other, every one of them
    (it used to open the breaker, then let one probe leg through until that call ended)."""
    async for pair in _pair(redis_url):
        boards = [pair.a, pair.b] * 5
        chosen = await asyncio.gather(*(b.choose(f"leg{i}") for i, b in enumerate(boards)))
        assert sorted(str(c) for c in chosen) == ["p1"] * 3 + ["p2"] * 3 + ["s"] * 4
        assert len(await pair.store.trunk_legs("p1")) == 3
        p1 = (await pair.b.summary())["p1"]
        assert (p1["state"], p1["reason"], p1["in_use"]) == ("closed", None, 3)
        assert await pair.b.choose("more") == "s"  # p1 and p2 are full
        for i, c in enumerate(chosen):
            if c == "p1":
                await pair.a.ended("p1", f"leg{i}", "ANSWER")
        assert [await pair.b.choose(f"again{i}") for i in range(4)] == ["p1", "p1", "p1", "s"]
        assert (await pair.a.summary())["p1"]["state"] == "closed"


async def test_a_trip_through_one_controller_holds_for_the_other_until_reset(
    pair: Pair, redis_py: aioredis.Redis
) -> None:
    """A supervisor trips p1 through controller a: b sends legs elsewhere, even after open_for;
    the reset through b closes it for both; both are audited."""
    tripped = await pair.a.trip("lee", "p1")
    assert (tripped["state"], tripped["tripped"], tripped["reason"]) == ("open", True, "tripped")
    pair.clock.now += 3600
    assert await pair.b.choose("leg") == "p2"
    assert (await pair.b.reset("kim", "p1"))["state"] == "closed"
    assert (await pair.a.summary())["p1"]["tripped"] is False
    assert await pair.a.choose("leg2") == "p1"
    audit = await redis_py.xrange(pair.store.key("audit"))
    assert [(f["who"], f["after"]) for _, f in audit] == [("lee", "tripped"), ("kim", "reset")]
    with pytest.raises(UnknownTrunk):
        await pair.a.trip("lee", "nope")


# A flow whose transfer node names the standby trunk; its fallback is a queue (q) or the
# transfer itself (go).
TRANSFER = """
flow: transfer
start: go
fallback: {fallback}
nodes:
  go: {{kind: transfer, number: "4008001234", trunk: s}}
"""
QUEUE_NODE = "  q: {kind: queue, skill: presale}\n"


@contextlib.asynccontextmanager
async def _ivr_on_agi(
    redis_url: str, board: TrunkBoard, flows: dict[str, Flow], queued: list[str]
) -> AsyncIterator[tuple[IvrService, int]]:
    """An IVR service behind a real FastAGI socket (routes inbound and transfer_failed), on
    the test Redis and `board`; yields it and its port."""
    store = RedisStore(redis_url, "t", node="n1")
    lookups = LookupClient({})
    ivr = IvrService(
        _settings("n1"),
        flows,
        store,
        lookups,
        lambda skill, _claimed: queued.append(skill),
        trunks=board,
    )
    routes = {"inbound": ivr.inbound, "transfer_failed": ivr.transfer_failed}
    server = FastAgiServer(routes, port=0, command_timeout=5)
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(server.serve(ready=ready.set_result))
    try:
        yield ivr, await ready
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await lookups.close()
        await store.close()


async def _converse(peer: FakeAsterisk, channel: dict[str, str]) -> dict[str, str]:
    """Answer the controller's AGI commands (GET VARIABLE from `channel`) until it hangs up;
    returns the variables it set."""
    variables = {}
    while line := (await peer.reader.readline()).decode():
        words = shlex.split(line)
        if words[:2] == ["SET", "VARIABLE"]:
            variables[words[2]] = words[3]
            await peer.reply("200 result=1")
        elif words[:2] == ["GET", "VARIABLE"] and words[2] in channel:
            await peer.reply(f"200 result=1 ({channel[words[2]]})")
        elif words[:2] == ["GET", "VARIABLE"]:
            await peer.reply("200 result=0")
        else:
            await peer.reply("200 result=1")
    peer.close()
    return variables


async def _transfer_call(redis_url: str, board: TrunkBoard, fallback: str, uid: str) -> dict:
    """One call through a real FastAGI socket into the transfer flow; the variables it set."""
    catalog = Catalog(skills=frozenset({"presale"}), trunks=frozenset({"p1", "p2", "s"}))
    text = TRANSFER.format(fallback=fallback) + (QUEUE_NODE if fallback == "q" else "")
    flow = compile_flow(text, "transfer.yaml", catalog)
    async with _ivr_on_agi(redis_url, board, {"promo": flow, "promo-lite": flow}, []) as (_, port):
        peer = await FakeAsterisk.call(port, uniqueid=uid, env={"arg_1": "1000"})
        return await _converse(peer, {})


async def test_a_flow_transfer_to_a_number_outside_the_dial_policy_is_never_dialled(
    redis_url: str, pair: Pair
) -> None:
    """A flow transfers to a premium-rate number (a lookup's field, a caller's keys or, here, a
    slip in the flow): the caller hears that it cannot be dialled, no trunk channel is taken, no
    dial string reaches the dialplan, and the flow goes on at its fallback (a queue)."""
    catalog = Catalog(skills=frozenset({"presale"}), trunks=frozenset({"p1", "p2", "s"}))
    text = TRANSFER.format(fallback="q").replace("4008001234", "19001234567") + QUEUE_NODE
    flow = compile_flow(text, "transfer.yaml", catalog)
    queued: list[str] = []
    async with _ivr_on_agi(redis_url, pair.a, {"promo": flow, "promo-lite": flow}, queued) as (
        _,
        port,
    ):
        peer = await FakeAsterisk.call(port, uniqueid="t-prem", env={"arg_1": "1000"})
        commands, variables = [], {}
        while line := (await peer.reader.readline()).decode():
            words = shlex.split(line)
            commands.append(words)
            if words[:2] == ["SET", "VARIABLE"]:
                variables[words[2]] = words[3]
            await peer.reply("200 result=1" if words[:2] == ["SET", "VARIABLE"] else "200 result=0")
        peer.close()
    assert ["STREAM", "FILE", "acd/number-refused", ""] in commands
    assert "ACD_TRANSFER_DIAL" not in variables
    assert (variables["ACD_RESULT"], variables["ACD_QUEUE"]) == ("queued", "presale")
    assert queued == ["presale"]
    for name in ("p1", "p2", "s"):
        assert await pair.store.trunk_legs(name) == {}


async def test_a_flow_transfer_prefers_its_trunk_then_the_best_other(
    redis_url: str, pair: Pair
) -> None:
    """The flow names the standby: taken while its breaker allows (a channel held for the
    call); tripped, the call goes over the first primary instead, and ACD_TRANSFER_TRUNK says
    so (for AcdTransferEnd)."""
    first = await _transfer_call(redis_url, pair.a, "q", "u1")
    assert first["ACD_TRANSFER_DIAL"] == "PJSIP/4008001234@s"
    assert (first["ACD_TRANSFER_TRUNK"], first["ACD_RESULT"]) == ("s", "transfer")
    assert await pair.store.trunk_legs("s") == {"u1": "n1"}
    await pair.b.trip("lee", "s")
    second = await _transfer_call(redis_url, pair.a, "q", "u2")
    assert second["ACD_TRANSFER_DIAL"] == "PJSIP/4008001234@p1"
    assert second["ACD_TRANSFER_TRUNK"] == "p1"
    assert await pair.store.trunk_legs("p1") == {"u2": "n1"}


async def test_a_flow_transfer_without_a_trunk_takes_the_fallback_or_the_static_path(
    redis_url: str, pair: Pair
) -> None:
    """Every breaker tripped: the caller is not lost. With a queue as the flow's fallback it
    queues; with a transfer as fallback (which fails the same way) ACD_RESULT is `error`, so
    the dialplan takes its static path. No channel is held."""
    for name in ("p1", "p2", "s"):
        await pair.a.trip("lee", name)
    queued = await _transfer_call(redis_url, pair.a, "q", "u3")
    assert (queued["ACD_RESULT"], queued["ACD_QUEUE"]) == ("queued", "presale")
    assert "ACD_TRANSFER_DIAL" not in queued
    static = await _transfer_call(redis_url, pair.a, "go", "u4")
    assert static["ACD_RESULT"] == "error"
    assert "ACD_TRANSFER_DIAL" not in static
    for name in ("p1", "p2", "s"):
        assert await pair.store.trunk_legs(name) == {}


async def _failed_leg(
    redis_url: str, board: TrunkBoard, uid: str, status: str, channel: dict[str, str]
) -> dict[str, str]:
    """The dialplan's AGI after an unanswered transfer leg (transfer_failed, Dial's status as
    its argument) over a real FastAGI socket, the channel's variables as `channel` has them;
    returns the variables the controller set, and under "queued" the queues it joined."""
    queued: list[str] = []
    async with _ivr_on_agi(redis_url, board, {}, queued) as (_, port):
        peer = await FakeAsterisk.call(port, "transfer_failed", uniqueid=uid, env={"arg_1": status})
        variables = await _converse(peer, channel)
    return {**variables, "queued": ",".join(queued)}


async def test_a_leg_the_carrier_failed_goes_out_again_over_a_trunk_not_tried(
    redis_url: str, pair: Pair
) -> None:
    """An overflow leg over p1 ended NOPROGRESS: the same caller goes out at once over the next
    trunk (p2), never back to p1; when every trunk has failed it, it joins its queue after all.
    A leg the carrier delivered (BUSY at the far end) is not retried: the caller queues."""
    channel = {
        "ACD_TRANSFER_NUMBER": "88001234",
        "ACD_TRANSFER_TRIED": "p1",
        "ACD_OVERFLOW_SKILL": "presale",
        "ACD_OVERFLOW_PRIORITY": "0.0",
        "ACD_ENTRY": "1000",
    }
    again = await _failed_leg(redis_url, pair.a, "u5", "NOPROGRESS", channel)
    assert again["ACD_TRANSFER_DIAL"] == "PJSIP/88001234@p2"
    assert (again["ACD_TRANSFER_TRIED"], again["ACD_RESULT"]) == ("p1,p2", "transfer")
    assert await pair.store.trunk_legs("p2") == {"u5": "n1"}
    last = await _failed_leg(
        redis_url, pair.a, "u5", "CONGESTION", {**channel, "ACD_TRANSFER_TRIED": "p1,p2,s"}
    )
    assert (last["ACD_RESULT"], last["ACD_QUEUE"], last["queued"]) == (
        "queued",
        "presale",
        "presale",
    )
    assert "ACD_TRANSFER_DIAL" not in last
    busy = await _failed_leg(redis_url, pair.a, "u6", "BUSY", channel)
    assert (busy["ACD_RESULT"], busy["ACD_QUEUE"]) == ("queued", "presale")
    assert "ACD_TRANSFER_DIAL" not in busy
    flow_transfer = await _failed_leg(
        redis_url, pair.a, "u7", "BUSY", {"ACD_TRANSFER_NUMBER": "88001234"}
    )
    assert flow_transfer == {"queued": ""}  # ACD_RESULT unset: the dialplan's static path
