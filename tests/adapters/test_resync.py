"""The resync that makes Redis agree with Asterisk: after an AMI login it must succeed before AMI
counts as ready, a list Asterisk refuses (or times out) being tried again, not taken for a resync
(issue: a failed resync counted as done); and it runs again when Redis comes back from an outage
during which events were lost (issue: no resync after a Redis outage). A Controller of the
sample deployment against a fake manager and a real Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import yaml

from acd.config import load_settings
from acd.domain.agent import AgentEvent
from acd.protocol.ami import AmiMessage
from acd.runtime.controller import Controller
from acd.runtime.flows import load_checked_flows
from tests.adapters.fakes import FakeAmiConnection, FakeAmiServer, redis_overrides
from tests.adapters.servers import RedisServer

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(30)


async def _ok(conn: FakeAmiConnection, action: AmiMessage) -> None:
    await conn.reply(action)


async def _no_devices(conn: FakeAmiConnection, action: AmiMessage) -> None:
    await _empty_list(conn, action, "DeviceStateListComplete")


async def _empty_list(conn: FakeAmiConnection, action: AmiMessage, complete: str) -> None:
    aid = action.action_id or ""
    await conn.send(
        {"Response": "Success", "ActionID": aid, "EventList": "start"},
        {"Event": complete, "ActionID": aid, "EventList": "Complete", "ListItems": "0"},
    )


async def test_a_refused_resync_is_tried_again_and_ami_is_ready_only_after_one_succeeds(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACD_AMI_SECRET", "s3cret")
    asked: list[float] = []

    async def channels(conn: FakeAmiConnection, action: AmiMessage) -> None:
        asked.append(time.monotonic())
        if len(asked) == 1:
            await conn.reply(action, "Error", Message="Internal error")
        else:
            await _empty_list(conn, action, "CoreShowChannelsComplete")

    async with FakeAmiServer() as ami:
        ami.auto.update(CoreShowChannels=channels, DeviceStateList=_no_devices)
        raw = yaml.safe_load((REPO / "acd.yaml").read_text())
        asterisk = {**raw["asterisk"], "ami": {**raw["asterisk"]["ami"], "port": ami.port}}
        settings = load_settings(
            REPO / "acd.yaml",
            {"asterisk": asterisk, "redis": redis_overrides(redis_url, "rs")},
        )
        controller = Controller(settings, load_checked_flows(settings, check_sounds=False))
        tasks = [
            asyncio.create_task(controller.ami.run()),
            asyncio.create_task(controller.dispatcher.run()),
        ]
        try:
            async with asyncio.timeout(10):
                while not asked:  # noqa: ASYNC110 - polls what the fake and the controller own
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # the refusal has been handled
                assert controller.resyncs == 0
                assert "ami" not in controller._listening
                while controller.resyncs == 0:  # noqa: ASYNC110 - as above
                    await asyncio.sleep(0.01)
            assert len(asked) == 2
            assert asked[1] - asked[0] >= 0.4  # after the first retry delay
            assert "ami" in controller._listening
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await controller.store.close()


async def test_events_lost_while_redis_was_down_are_made_good_when_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller hangs up while Redis is down: the Hangup cannot be applied and is dropped. When
    Redis is back (with what it held, from its AOF), the controller resyncs by itself, AMI never
    having dropped: the call is forgotten and its agent goes on, not left on a call for ever."""
    monkeypatch.setenv("ACD_AMI_SECRET", "s3cret")
    redis = RedisServer(tmp_path, appendonly=True)
    redis.start()
    resyncs: list[float] = []

    async def channels(conn: FakeAmiConnection, action: AmiMessage) -> None:
        resyncs.append(time.monotonic())
        await _empty_list(conn, action, "CoreShowChannelsComplete")  # c1 is gone by then

    async with FakeAmiServer() as ami:
        ami.auto.update(CoreShowChannels=channels, DeviceStateList=_no_devices)
        raw = yaml.safe_load((REPO / "acd.yaml").read_text())
        asterisk = {**raw["asterisk"], "ami": {**raw["asterisk"]["ami"], "port": ami.port}}
        settings = load_settings(
            REPO / "acd.yaml",
            {
                "asterisk": asterisk,
                "redis": redis_overrides(redis.url, "rs", timeout=1.0),
                "agent_policy": {"wrap_up": 0},
            },
        )
        controller = Controller(settings, load_checked_flows(settings, check_sounds=False))
        store = controller.store
        await store.register_agents(settings.agents, time.time())
        tasks = [
            asyncio.create_task(controller.ami.run()),
            asyncio.create_task(controller.dispatcher.run()),
            asyncio.create_task(controller.resync_on_demand()),
        ]
        try:
            conn = await ami.next_connection()
            async with asyncio.timeout(10):
                while controller.resyncs == 0:  # noqa: ASYNC110 - polls what the controller owns
                    await asyncio.sleep(0.01)
            # c1 talks to agent 1002 (presale 5, the only one; 1001 is paused).
            await store.agent_event("1001", AgentEvent.PAUSE, time.time())
            await store.enqueue(
                uid="c1", skill="presale", score=1.0, node="node-a",
                fields={"channel": "PJSIP/carrier-in-00000001"},
            )  # fmt: skip
            claim = await store.claim_for_skill("presale")
            assert claim is not None
            assert claim.agent_id == "1002"
            for event in (AgentEvent.RING, AgentEvent.ANSWER):
                assert (await store.agent_event("1002", event, time.time(), call="c1"))[0]
            first = len(resyncs)

            redis.stop()
            done = controller.dispatcher.stats()["done"]
            await conn.send(
                {"Event": "Hangup", "Channel": "PJSIP/carrier-in-00000001",
                 "Uniqueid": "c1", "Cause-txt": "Normal Clearing"},
            )  # fmt: skip
            async with asyncio.timeout(5):  # the Hangup met no Redis
                while controller.dispatcher.stats()["done"] == done:  # noqa: ASYNC110 - as above
                    await asyncio.sleep(0.01)
            assert len(resyncs) == first  # nothing resyncs while Redis is away
            redis.start()

            async with asyncio.timeout(5):
                while (await store.agent("1002")).get("state") == "on_call":  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert len(resyncs) == first + 1
            agent = await store.agent("1002")
            assert (agent["state"], agent["call"]) == ("available", "")
            assert await store.call("c1") is None
            assert await store.calls_of_node("node-a") == set()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await controller.store.close()
            redis.stop()


async def test_a_caller_on_hold_that_redis_does_not_know_is_queued_by_the_resync(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, redis_py: aioredis.Redis
) -> None:
    """A controller died after telling the dialplan its caller was queued and before queueing
    it: the caller waits in acd-hold with no call in Redis. The restarted controller's resync
    queues it (its ACD_QUEUE, its place as of its call's start, its tier's head start); a
    channel elsewhere in the dialplan and an agent's leg are left alone."""
    monkeypatch.setenv("ACD_AMI_SECRET", "s3cret")
    asked: list[str] = []

    async def channels(conn: FakeAmiConnection, action: AmiMessage) -> None:
        aid = action.action_id or ""
        rows = [
            ("o1", "PJSIP/carrier-in-0000000a", "acd-hold", "13800000001", "00:01:05"),
            ("ivr1", "PJSIP/carrier-in-0000000b", "acd-inbound", "13800000002", "00:00:03"),
            ("leg1", "PJSIP/agent-1001-0000000c", "acd-hold", "1001", "00:00:09"),
        ]
        await conn.send(
            {"Response": "Success", "ActionID": aid, "EventList": "start"},
            *(
                {"Event": "CoreShowChannel", "ActionID": aid, "Uniqueid": uid, "Channel": name,
                 "Context": context, "CallerIDNum": number, "Duration": duration}
                for uid, name, context, number, duration in rows
            ),
            {"Event": "CoreShowChannelsComplete", "ActionID": aid, "EventList": "Complete",
             "ListItems": str(len(rows))},
        )  # fmt: skip

    async def getvar(conn: FakeAmiConnection, action: AmiMessage) -> None:
        asked.append(action.get("Channel") or "")
        await conn.reply(action, Variable="ACD_QUEUE", Value="presale")

    async with FakeAmiServer() as ami:
        ami.auto.update(CoreShowChannels=channels, DeviceStateList=_no_devices, Getvar=getvar)
        raw = yaml.safe_load((REPO / "acd.yaml").read_text())
        asterisk = {**raw["asterisk"], "ami": {**raw["asterisk"]["ami"], "port": ami.port}}
        settings = load_settings(
            REPO / "acd.yaml",
            {"asterisk": asterisk, "redis": redis_overrides(redis_url, "rs")},
        )
        controller = Controller(settings, load_checked_flows(settings, check_sounds=False))
        await redis_py.hset("rs:tiers", "13800000001", "vip")
        head_start = settings.tiers["vip"]
        tasks = [
            asyncio.create_task(controller.ami.run()),
            asyncio.create_task(controller.dispatcher.run()),
        ]
        try:
            async with asyncio.timeout(10):
                while controller.resyncs == 0:  # noqa: ASYNC110 - polls what the controller owns
                    await asyncio.sleep(0.01)
            now = time.time()
            assert asked == ["PJSIP/carrier-in-0000000a"]
            call = await controller.store.call("o1")
            assert call is not None
            assert (call.state, call.skill, call.node) == ("queued", "presale", "node-a")
            assert (call.channel, call.caller_id) == ("PJSIP/carrier-in-0000000a", "13800000001")
            assert call.enqueued_at == pytest.approx(now - 65, abs=2)
            assert call.score == pytest.approx(now - 65 - head_start, abs=2)
            assert await redis_py.zrange("rs:q:presale", 0, -1) == ["o1"]
            assert await controller.store.calls_of_node("node-a") == {"o1"}
            assert await controller.store.call("ivr1") is None
            assert await controller.store.call("leg1") is None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await controller.store.close()
