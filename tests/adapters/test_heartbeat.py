"""The controller's heartbeat (acd/runtime/heartbeat.py) against a scripted AMI manager: it
sets the global ACD_CONTROLLER_ALIVE only while the controller can serve, says alive only while
Asterisk takes the beats, and a refusal does not stop it."""

from __future__ import annotations

import asyncio
import time

import pytest

from acd.protocol.ami import AmiMessage
from acd.runtime.heartbeat import VARIABLE, Heartbeat
from tests.adapters.fakes import Background, FakeAmiConnection, FakeAmiServer
from tests.adapters.test_ami_client import make_client, running

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_beats_only_while_serving_and_alive_only_while_asterisk_takes_them() -> None:
    beats: list[AmiMessage] = []
    refuse = False

    async def setvar(conn: FakeAmiConnection, action: AmiMessage) -> None:
        beats.append(action)
        if refuse:
            await conn.reply(action, "Error", Message="Permission denied")
        else:
            await conn.reply(action)

    serving = False
    clock = Clock()
    async with FakeAmiServer() as ami:
        ami.auto["Setvar"] = setvar
        client = make_client(ami)
        async with running(client), Background() as bg:
            heart = Heartbeat(client, 0.05, 0.5, lambda: serving, clock)
            bg.start(heart.run())
            await asyncio.sleep(0.3)
            assert beats == []  # not serving yet: the dialplan must not send callers here
            assert not heart.alive()

            serving = True
            async with asyncio.timeout(2):
                while not heart.alive():  # noqa: ASYNC110 - polls what the heartbeat owns
                    await asyncio.sleep(0.01)
            first = beats[0]
            assert first.get("Variable") == VARIABLE
            assert first.get("Channel") is None  # a global: the entry context reads it
            assert first.get("Value") == "1000.000"

            refuse = True
            seen = len(beats)
            clock.now += 0.6  # past the window with no beat taken since
            async with asyncio.timeout(2):
                while len(beats) < seen + 3:  # noqa: ASYNC110 - polls what the fake records
                    await asyncio.sleep(0.01)
            assert not heart.alive()  # refused beats do not count

            refuse = False
            async with asyncio.timeout(2):
                while not heart.alive():  # noqa: ASYNC110 - it goes on beating
                    await asyncio.sleep(0.01)
            assert beats[-1].get("Value") == "1000.600"


async def test_no_beat_while_the_ami_link_is_down() -> None:
    """A beat needs the link: with none the heartbeat waits and is not alive."""
    async with FakeAmiServer() as ami:
        client = make_client(ami)  # never run: not connected
        heart = Heartbeat(client, 0.05, 0.5, lambda: True, time.time)
        task = asyncio.ensure_future(heart.run())
        await asyncio.sleep(0.2)
        assert not heart.alive()
        assert heart.last_ok is None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
