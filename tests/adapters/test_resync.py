"""The resync after an AMI login must succeed before AMI counts as ready: a list Asterisk
refuses (or times out) is tried again, not taken for a resync (issue: a failed resync counted
as done). A Controller of the sample deployment against a fake manager and a real Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml

from acd.config import load_settings
from acd.protocol.ami import AmiMessage
from acd.runtime.controller import Controller
from acd.runtime.flows import load_checked_flows
from tests.adapters.fakes import FakeAmiConnection, FakeAmiServer

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(30)


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

    async def ok(conn: FakeAmiConnection, action: AmiMessage) -> None:
        await conn.reply(action)

    async def devices(conn: FakeAmiConnection, action: AmiMessage) -> None:
        await _empty_list(conn, action, "DeviceStateListComplete")

    async with FakeAmiServer() as ami:
        ami.auto.update(Filter=ok, CoreShowChannels=channels, DeviceStateList=devices)
        raw = yaml.safe_load((REPO / "acd.yaml").read_text())
        asterisk = {**raw["asterisk"], "ami": {**raw["asterisk"]["ami"], "port": ami.port}}
        settings = load_settings(
            REPO / "acd.yaml",
            {"asterisk": asterisk, "redis": {"url": redis_url, "prefix": "rs"}},
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
