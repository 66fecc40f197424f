"""A callback is dialled at most once, even when the reply to its Originate is lost (issue: an AMI
timeout or disconnect on Originate was taken for "not sent" and the attempt originated again,
though Asterisk may have run it). What happens next is decided from what Asterisk reports: the
attempt's channel, then its AstDB mark. A Controller of the sample deployment against a fake
manager and a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import yaml

from acd.config import load_settings
from acd.dispatch import callbacks, service
from acd.dispatch.callbacks import mark_day
from acd.protocol.ami import AmiMessage
from acd.runtime.controller import Controller
from acd.runtime.flows import load_checked_flows
from tests.adapters.fakes import (
    FakeAmiConnection,
    FakeAmiServer,
    controller_running,
    redis_overrides,
    send_list,
)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(30)


@dataclass
class Asterisk:
    """What the fake manager plays: the Originates it got, the channels it has."""

    originates: list[AmiMessage] = field(default_factory=list)
    db_gets: list[AmiMessage] = field(default_factory=list)
    db_writes: list[AmiMessage] = field(default_factory=list)
    live: dict[str, dict[str, str]] = field(default_factory=dict)
    run_first: bool = True  # the first Originate starts its leg (before the link drops)


@dataclass
class Floor:
    controller: Controller
    asterisk: Asterisk
    redis: aioredis.Redis

    async def idle(self) -> None:
        """Until the dispatcher has nothing queued or running."""
        async with asyncio.timeout(5):
            while True:
                stats = self.controller.dispatcher.stats()
                if stats["running"] == 0 and stats["keys"] == 0:
                    return
                await asyncio.sleep(0.01)

    async def resyncs(self, n: int) -> None:
        async with asyncio.timeout(10):
            while self.controller.resyncs < n:  # noqa: ASYNC110 - polls what the controller owns
                await asyncio.sleep(0.01)


@pytest.fixture
async def floor(
    redis_url: str, redis_py: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Floor]:
    monkeypatch.setenv("ACD_AMI_SECRET", "s3cret")
    monkeypatch.setattr(callbacks, "ORIGINATE_SETTLE", 1.0)
    monkeypatch.setattr(service, "ORIGINATE_SETTLE", 1.0)
    asterisk = Asterisk()

    async def originate(conn: FakeAmiConnection, action: AmiMessage) -> None:
        asterisk.originates.append(action)
        uid = action.get("ChannelId") or ""
        if len(asterisk.originates) == 1:
            if asterisk.run_first:
                asterisk.live[uid] = {
                    "Event": "CoreShowChannel", "Uniqueid": uid,
                    "Channel": "PJSIP/agent-1001-00000001", "Context": "acd-callback",
                }  # fmt: skip
            conn.writer.close()  # the link drops before the reply
            return
        await conn.reply(action, Message="Originate successfully queued")

    async def channels(conn: FakeAmiConnection, action: AmiMessage) -> None:
        await send_list(conn, action, "CoreShowChannelsComplete", list(asterisk.live.values()))

    async def devices(conn: FakeAmiConnection, action: AmiMessage) -> None:
        await send_list(conn, action, "DeviceStateListComplete", [])

    async def ok(conn: FakeAmiConnection, action: AmiMessage) -> None:
        await conn.reply(action)

    async def no_entry(conn: FakeAmiConnection, action: AmiMessage) -> None:
        asterisk.db_gets.append(action)
        await conn.reply(action, "Error", Message="Database entry not found")

    async def db_write(conn: FakeAmiConnection, action: AmiMessage) -> None:
        asterisk.db_writes.append(action)
        await conn.reply(action, "Error", Message="Permission denied")

    async with FakeAmiServer() as ami:
        ami.auto.update(
            CoreShowChannels=channels, DeviceStateList=devices, Originate=originate,
            DBGet=no_entry, DBDel=db_write, DBPut=db_write, DBDelTree=db_write,
        )  # fmt: skip
        raw = yaml.safe_load((REPO / "acd.yaml").read_text())
        asterisk_cfg = {**raw["asterisk"], "ami": {**raw["asterisk"]["ami"], "port": ami.port}}
        settings = load_settings(
            REPO / "acd.yaml",
            {
                "asterisk": asterisk_cfg,
                "redis": redis_overrides(redis_url, "cbo"),
                "agent_policy": {"wrap_up": 0},
                "trunks": [{"name": "carrier", "address": {"host": "127.0.0.1", "port": 5080}}],
            },
        )
        controller = Controller(settings, load_checked_flows(settings, check_sounds=False))
        await controller.store.register_agents(settings.agents, time.time())
        floor = Floor(controller, asterisk, redis_py)
        async with controller_running(controller):
            await floor.resyncs(1)
            yield floor


async def _ask_callback(floor: Floor) -> str:
    """A callback for presale, admitted and claimed: its Originate is under way. Returns the
    attempt's uid."""
    store, now = floor.controller.store, time.time()
    assert await store.register_callback(
        uid="c9", number="13800000009", skill="presale", score=now, enqueued_at=now, now=now,
        fields={"node": "node-a", "caller_id": "13800000009"},
    )  # fmt: skip
    admitted, _, _ = await store.admit_callbacks(now, 1.0, 3600.0, {"presale": 2})
    assert admitted == ["presale"]
    floor.controller.dispatcher.skill_ready("presale")
    async with asyncio.timeout(5):
        while not floor.asterisk.originates:  # noqa: ASYNC110 - polls what the fake records
            await asyncio.sleep(0.01)
    return floor.asterisk.originates[0].get("ChannelId") or ""


async def test_an_originate_whose_reply_was_lost_is_not_sent_again_while_its_leg_lives(
    floor: Floor,
) -> None:
    uid = await _ask_callback(floor)
    await floor.resyncs(2)  # after the reconnect: the attempt's leg is live
    await floor.idle()
    assert len(floor.asterisk.originates) == 1
    store = floor.controller.store
    call = await store.call(uid)
    assert call is not None
    assert (call.state, call.agent, call.trunk) == ("offered", "1001", "carrier")
    agent = await store.agent("1001")
    assert (agent["state"], agent["call"]) == ("reserved", uid)
    callback = await store.callback("c9")
    assert (callback["state"], callback["current"], callback["attempts"]) == ("queued", uid, "1")


async def test_an_originate_that_never_started_a_leg_is_put_off_only_after_the_settle(
    floor: Floor,
) -> None:
    """No leg and no AstDB mark: "never dialled", but only once Asterisk has had the settle time
    to start the leg of an Originate it took. Then the attempt does not count, the callback is
    due again, its agent back at work; one Originate was sent in all."""
    floor.asterisk.run_first = False
    uid = await _ask_callback(floor)
    await floor.resyncs(2)  # right after the reconnect: too early to say
    await floor.idle()
    store = floor.controller.store
    assert (await store.callback("c9"))["state"] == "queued"
    assert (await store.agent("1001"))["state"] == "reserved"
    await floor.resyncs(3)  # the settle later
    await floor.idle()
    callback = await store.callback("c9")
    assert (callback["state"], callback["current"], callback["attempts"]) == ("pending", "", "0")
    assert await store.call(uid) is None
    agent = await store.agent("1001")
    assert (agent["state"], agent["call"]) == ("available", "")
    assert len(floor.asterisk.originates) == 1
    assert await floor.redis.hgetall("cbo:trunk_legs:carrier") == {}
    # The mark was looked up under the day the Originate named (ACD_CB_DAY), and nothing asked
    # to write AstDB (the controller's AMI user may not).
    variables = floor.asterisk.originates[0].get_all("Variable")
    day = next(v.partition("=")[2] for v in variables if v.startswith("ACD_CB_DAY="))
    assert day == mark_day(time.time())
    keys = {(a.get("Family"), a.get("Key")) for a in floor.asterisk.db_gets}
    assert keys == {("acd_callback", f"{day}/{uid}")}
    assert floor.asterisk.db_writes == []
