"""A connect whose Redirect got no reply is not redirected again while its caller rings the agent
(it used to be put back at once, claimed again and redirected out of that call: bridged twice);
the resync decides from where Asterisk has the caller. A Controller of the sample deployment
against a fake manager and a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from acd.config import load_settings
from acd.domain.agent import AgentEvent
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
CHANNEL = "PJSIP/carrier-in-00000001"

pytestmark = pytest.mark.timeout(30)


@dataclass
class Asterisk:
    redirects: list[AmiMessage] = field(default_factory=list)
    context: str = "acd-hold"  # where the caller's channel is
    run_first: bool = True  # the first Redirect is carried out before the link drops
    calling: bool = False  # the caller's channel exists


@dataclass
class Floor:
    controller: Controller
    asterisk: Asterisk

    async def until(self, check: object, what: str) -> None:
        async with asyncio.timeout(10):
            while not (check() if callable(check) else check):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    async def idle(self) -> None:
        async with asyncio.timeout(5):
            while True:
                stats = self.controller.dispatcher.stats()
                if stats["running"] == 0 and stats["keys"] == 0:
                    return
                await asyncio.sleep(0.01)


@pytest.fixture
async def floor(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Floor]:
    monkeypatch.setenv("ACD_AMI_SECRET", "s3cret")
    asterisk = Asterisk()
    uid = "c1"

    async def redirect(conn: FakeAmiConnection, action: AmiMessage) -> None:
        asterisk.redirects.append(action)
        if len(asterisk.redirects) == 1:
            if asterisk.run_first:
                asterisk.context = "acd-connect"
            conn.writer.close()  # the link drops before the reply
            return
        asterisk.context = "acd-connect"
        await conn.reply(action)

    async def channels(conn: FakeAmiConnection, action: AmiMessage) -> None:
        row = {"Event": "CoreShowChannel", "Uniqueid": uid, "Channel": CHANNEL,
               "Context": asterisk.context}  # fmt: skip
        rows = [row] if asterisk.calling else []
        await send_list(conn, action, "CoreShowChannelsComplete", rows)

    async def devices(conn: FakeAmiConnection, action: AmiMessage) -> None:
        await send_list(conn, action, "DeviceStateListComplete", [])

    async def ok(conn: FakeAmiConnection, action: AmiMessage) -> None:
        await conn.reply(action)

    async with FakeAmiServer() as ami:
        ami.auto.update(
            Setvar=ok, Redirect=redirect, CoreShowChannels=channels,
            DeviceStateList=devices,
        )  # fmt: skip
        raw = yaml.safe_load((REPO / "acd.yaml").read_text())
        ast = {**raw["asterisk"], "ami": {**raw["asterisk"]["ami"], "port": ami.port}}
        settings = load_settings(
            REPO / "acd.yaml",
            {"asterisk": ast, "redis": redis_overrides(redis_url, "cu"),
             "agent_policy": {"wrap_up": 0}},
        )  # fmt: skip
        controller = Controller(settings, load_checked_flows(settings, check_sounds=False))
        store = controller.store
        await store.register_agents(settings.agents, time.time())
        await store.agent_event("1002", AgentEvent.PAUSE, time.time())  # 1001 takes presale
        floor = Floor(controller, asterisk)
        async with controller_running(controller):
            await floor.until(lambda: controller.resyncs >= 1, "first resync")
            await store.enqueue(
                uid=uid, skill="presale", score=1.0, node="node-a",
                fields={"channel": CHANNEL}, now=time.time() - 1,
            )  # fmt: skip
            asterisk.calling = True
            yield floor


async def test_a_redirect_carried_out_without_a_reply_is_not_sent_again(floor: Floor) -> None:
    floor.controller.dispatcher.skill_ready("presale")
    await floor.until(lambda: floor.controller.resyncs >= 2, "the resync after the reconnect")
    await floor.idle()
    assert len(floor.asterisk.redirects) == 1
    store = floor.controller.store
    call = await store.call("c1")
    assert call is not None
    assert (call.state, call.agent) == ("offered", "1001")
    assert (await store.agent("1001"))["state"] == "reserved"


async def test_a_redirect_that_never_ran_is_put_back_by_the_resync(floor: Floor) -> None:
    floor.asterisk.run_first = False
    floor.controller.dispatcher.skill_ready("presale")
    await floor.until(lambda: len(floor.asterisk.redirects) >= 2, "the caller connected again")
    await floor.idle()
    assert len(floor.asterisk.redirects) == 2
    call = await floor.controller.store.call("c1")
    assert call is not None
    assert (call.state, call.agent) == ("offered", "1001")


async def test_a_resync_leaves_a_caller_whose_connect_is_still_to_run(floor: Floor) -> None:
    """A caller claimed while the controller reconnects: its connect waits behind the resync,
    and the resync finds it offered and on hold. Put back, it would be claimed again and
    redirected twice (seen under an AMI kick in bench/faults.py); so the resync leaves it to its
    connect. (A caller offered and on hold with no connect to come is put back: the test
    above.)"""
    store, dispatcher = floor.controller.store, floor.controller.dispatcher
    claim = await store.claim_for_skill("presale")
    assert claim is not None
    assert claim.agent_id == "1001"
    dispatcher._connecting.add("c1")  # its ConnectWork is queued behind the resync
    await dispatcher.resync()
    call = await store.call("c1")
    assert call is not None
    assert (call.state, call.agent) == ("offered", "1001")
    assert (await store.agent("1001"))["state"] == "reserved"
    assert floor.asterisk.redirects == []
