"""AmiClient against a scripted fake Asterisk manager on 127.0.0.1:0.

Each panoramisk defect listed in docs/architecture.md has a test here whose docstring names it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from structlog.testing import capture_logs

from acd.adapters.ami import AmiClient
from acd.errors import (
    AmiActionFailed,
    AmiDisconnected,
    AmiLoginFailed,
    AmiTimeout,
    ProtocolError,
)
from acd.protocol.ami import AmiMessage
from tests.adapters.fakes import (
    STEP,
    Background,
    FakeAmiConnection,
    FakeAmiServer,
    ami_bytes,
    result_or_error,
)

pytestmark = pytest.mark.timeout(10)


def make_client(ami: FakeAmiServer, **overrides: Any) -> AmiClient:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": ami.port,
        "username": "acd",
        "secret": "s3cret",
        "ping_interval": 60.0,
        "ping_timeout": 1.0,
        "action_timeout": STEP,
        "connect_timeout": 1.0,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
    }
    settings.update(overrides)
    return AmiClient(**settings)


@asynccontextmanager
async def running(client: AmiClient) -> AsyncIterator[Background]:
    """Run the client in the background, connected, and close it afterwards."""
    async with Background() as bg:
        bg.start(client.run())
        await client.wait_connected(STEP)
        try:
            yield bg
        finally:
            await client.close()


class Resyncs:
    """An on_connected hook that counts its calls and lets a test wait for the n-th."""

    def __init__(self) -> None:
        self.calls = 0
        self._changed = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        self._changed.set()

    async def wait_for(self, n: int) -> None:
        async with asyncio.timeout(STEP):
            while self.calls < n:
                self._changed.clear()
                await self._changed.wait()


async def reply_status(conn: FakeAmiConnection, action: AmiMessage) -> None:
    await conn.reply(action, Message="Channel status will follow")


async def test_connect_waits_for_login_reply() -> None:
    """Defect (panoramisk: connect() does not wait for login): usable only once Login succeeds."""
    async with FakeAmiServer() as ami, Background() as bg:
        ami.manual_login = True
        client = make_client(ami)
        bg.start(client.run())
        conn = await ami.next_connection()
        login = await conn.next_action("Login")
        assert login.get("Username") == "acd"
        assert login.get("Secret") == "s3cret"
        assert not client.connected
        with pytest.raises(AmiDisconnected):
            await client.send_action("Status")
        await conn.reply(login, Message="Authentication accepted")
        await client.wait_connected(STEP)
        assert client.connected
        assert client.reconnects == 0
        await client.close()


async def test_wrong_credentials_raise_login_failed_without_retry() -> None:
    """Defect (login not checked): wrong credentials raise AmiLoginFailed out of run, no retry."""
    async with FakeAmiServer() as ami:
        client = make_client(ami, secret="wrong")
        with capture_logs() as logs, pytest.raises(AmiLoginFailed, match="Authentication failed"):
            async with asyncio.timeout(STEP):
                await client.run()
        assert len(ami.connections) == 1
        assert not client.connected
        with pytest.raises(AmiLoginFailed):
            await client.wait_connected(STEP)
        assert "ami.login_failed" in [e["event"] for e in logs]
        assert all("s3cret" not in repr(e) and "wrong" not in repr(e) for e in logs)


async def test_responses_are_matched_by_action_id() -> None:
    """Replies arriving out of order resolve the action that carries their ActionID."""
    async with FakeAmiServer() as ami:
        client = make_client(ami)
        async with running(client) as bg:
            conn = ami.connections[0]
            first = bg.start(client.send_action("Getvar", {"Variable": "A"}))
            second = bg.start(client.send_action("Getvar", {"Variable": "B"}))
            received = [await conn.next_action("Getvar"), await conn.next_action("Getvar")]
            by_variable = {action.get("Variable"): action for action in received}
            assert by_variable["A"].action_id != by_variable["B"].action_id
            await conn.reply(by_variable["B"], Value="value-b")
            await conn.reply(by_variable["A"], Value="value-a")
            assert (await first).get("Value") == "value-a"
            assert (await second).get("Value") == "value-b"


async def test_send_actions_writes_all_before_any_reply_and_keeps_their_order() -> None:
    """A connect's Setvar, Setvar, Redirect reach Asterisk in one go, in order (one round trip),
    and their replies come back in that order whatever order they arrive in."""
    async with FakeAmiServer() as ami:
        client = make_client(ami)
        async with running(client) as bg:
            conn = ami.connections[0]
            sent = bg.start(
                client.send_actions(
                    [
                        ("Setvar", {"Variable": "A", "Value": "1"}),
                        ("Setvar", {"Variable": "B", "Value": "2"}),
                        ("Redirect", {"Channel": "PJSIP/x-1", "Context": "acd-connect"}),
                    ]
                )
            )
            # All three arrive while none has been answered.
            received = [await conn.next_action() for _ in range(3)]
            assert [a.get("Action") for a in received] == ["Setvar", "Setvar", "Redirect"]
            assert [a.get("Variable") for a in received[:2]] == ["A", "B"]
            for action, tag in zip(reversed(received), "zyx", strict=True):
                await conn.reply(action, Message=tag)
            replies = await sent
            assert [r.get("Message") for r in replies] == ["x", "y", "z"]


async def test_send_actions_raises_the_first_failure_after_all_replies() -> None:
    """A Setvar on a channel that hung up fails the whole connect with Asterisk's message."""
    async with FakeAmiServer() as ami:
        client = make_client(ami)
        async with running(client) as bg:
            conn = ami.connections[0]
            sent = bg.start(
                result_or_error(
                    client.send_actions([("Setvar", {"Variable": "A"}), ("Redirect", {})])
                )
            )
            setvar, redirect = await conn.next_action("Setvar"), await conn.next_action()
            await conn.reply(redirect, "Error", Message="Channel not found")
            await conn.reply(setvar, "Error", Message="No such channel")
            failure = await sent
            assert isinstance(failure, AmiActionFailed)
            assert failure.action == "Setvar"
            assert failure.message == "No such channel"
            assert client.reconnects == 0


async def test_response_error_raises_action_failed() -> None:
    """`Response: Error` raises AmiActionFailed with Asterisk's message; the connection stays up."""

    async def refuse(conn: FakeAmiConnection, action: AmiMessage) -> None:
        await conn.reply(action, "Error", Message="No such channel")

    async with FakeAmiServer() as ami:
        ami.auto["Hangup"] = refuse
        ami.auto["Status"] = reply_status
        client = make_client(ami)
        async with running(client):
            with pytest.raises(AmiActionFailed, match="No such channel") as caught:
                await client.send_action("Hangup", {"Channel": "PJSIP/none"})
            assert caught.value.action == "Hangup"
            assert (await client.send_action("Status")).response == "Success"
            assert client.reconnects == 0


async def test_no_reply_raises_timeout_and_late_reply_is_ignored() -> None:
    """No reply in time raises AmiTimeout; the late reply does not confuse later actions."""
    async with FakeAmiServer() as ami:
        client = make_client(ami)
        async with running(client) as bg:
            conn = ami.connections[0]
            with pytest.raises(AmiTimeout):
                await client.send_action("Getvar", {"Variable": "SLOW"}, timeout=0.05)
            slow = await conn.next_action("Getvar")
            later = bg.start(client.send_action("Getvar", {"Variable": "FAST"}))
            fast = await conn.next_action("Getvar")
            await conn.reply(slow, Value="late")
            await conn.reply(fast, Value="fast")
            assert (await later).get("Value") == "fast"
            assert client.connected


async def test_action_when_not_connected_raises_disconnected() -> None:
    """An action on a client that is not connected fails at once with AmiDisconnected."""
    client = AmiClient(host="127.0.0.1", port=1, username="u", secret="s")
    with pytest.raises(AmiDisconnected):
        await client.send_action("Ping")
    with pytest.raises(AmiDisconnected):
        await client.send_list_action("CoreShowChannels")


async def test_header_injection_is_refused_before_sending() -> None:
    """A field value with CRLF raises ProtocolError and nothing reaches Asterisk."""
    async with FakeAmiServer() as ami:
        ami.auto["Status"] = reply_status
        client = make_client(ami)
        async with running(client):
            with pytest.raises(ProtocolError):
                await client.send_action("Setvar", {"Value": "x\r\nAction: Hangup"})
            await client.send_action("Status")
            sent = [a.get("Action") for a in ami.connections[0].seen]
            assert "Setvar" not in sent
            assert "Hangup" not in sent


async def test_half_open_connection_detected_by_ping_and_reconnected() -> None:
    """Defect unchecked ping: a peer that stops answering Ping is dropped as half-open."""
    resyncs = Resyncs()
    async with FakeAmiServer() as ami:
        client = make_client(ami, ping_interval=0.05, ping_timeout=0.3, on_connected=resyncs)
        with capture_logs() as logs:
            async with running(client):
                first = await ami.next_connection()
                first.answer_pings = False
                second = await ami.next_connection()
                await resyncs.wait_for(2)
                assert second is not first
                async with asyncio.timeout(STEP):
                    await first.closed.wait()
                await client.wait_connected(STEP)
                assert client.reconnects == 1
                assert any(a.get("Action") == "Ping" for a in first.seen)
        events = [e["event"] for e in logs]
        assert "ami.ping_timeout" in events
        assert events.count("ami.connected") == 2


async def test_listener_exception_keeps_connection_and_rest_of_chunk() -> None:
    """Defect handler exception: a raising listener kills neither the connection nor the chunk."""
    async with FakeAmiServer() as ami:
        client = make_client(ami)
        seen: list[str] = []

        def broken(event: AmiMessage) -> None:
            if event.event == "Newchannel":
                raise RuntimeError("listener bug")

        client.add_listener(broken)
        client.add_listener(lambda event: seen.append(event.event or ""))
        with capture_logs() as logs:
            async with running(client):
                conn = ami.connections[0]
                await conn.send(
                    {"Event": "Newchannel", "Uniqueid": "1"},
                    {"Event": "Newstate", "Uniqueid": "1"},
                    {"Event": "Hangup", "Uniqueid": "1"},
                )
                # The Ping reply is behind the events in the stream: once it is back, they are in.
                await client.send_action("Ping")
                assert client.connected
                assert client.reconnects == 0
        assert [e for e in seen if e != "FullyBooted"] == ["Newchannel", "Newstate", "Hangup"]
        failures = [e for e in logs if e["event"] == "ami.listener_failed"]
        assert len(failures) == 1
        assert failures[0]["ami_event"] == "Newchannel"
        assert failures[0]["exc_info"] is True
        assert len(ami.connections) == 1


async def test_listener_can_be_removed() -> None:
    """The function add_listener returns stops further calls to that listener."""
    async with FakeAmiServer() as ami:
        client = make_client(ami)
        seen: list[str] = []
        remove = client.add_listener(lambda event: seen.append(event.get("N") or ""))
        async with running(client):
            conn = ami.connections[0]
            await conn.send({"Event": "UserEvent", "N": "1"})
            await client.send_action("Ping")
            remove()
            remove()
            await conn.send({"Event": "UserEvent", "N": "2"})
            await client.send_action("Ping")
        assert [n for n in seen if n] == ["1"]


async def test_utf8_character_split_across_reads_survives() -> None:
    """Defect decode-before-framing: a UTF-8 character split across two reads arrives intact."""
    async with FakeAmiServer() as ami:
        client = make_client(ami)
        names: list[str | None] = []
        client.add_listener(
            lambda e: names.append(e.get("CallerIDName")) if e.event == "Newchannel" else None
        )
        async with running(client):
            conn = ami.connections[0]
            data = ami_bytes({"Event": "Newchannel", "CallerIDName": "Müller"})
            cut = data.index("ü".encode()) + 1
            await conn.send_split(data, cut)
            await client.send_action("Ping")
        assert names == ["Müller"]


async def test_originate_response_with_pending_action_id_reaches_listeners() -> None:
    """Defect hidden OriginateResponse: an event with a pending ActionID reaches listeners."""

    async def originate(conn: FakeAmiConnection, action: AmiMessage) -> None:
        action_id = action.action_id or ""
        # Both in one chunk, the event carrying the same ActionID and a Response header.
        await conn.send(
            {"Response": "Success", "ActionID": action_id, "Message": "Originate queued"},
            {
                "Event": "OriginateResponse",
                "ActionID": action_id,
                "Response": "Success",
                "Channel": "PJSIP/100-00000001",
                "Uniqueid": "call-1",
            },
        )

    async with FakeAmiServer() as ami:
        ami.auto["Originate"] = originate
        client = make_client(ami)
        originated: list[AmiMessage] = []
        client.add_listener(
            lambda e: originated.append(e) if e.event == "OriginateResponse" else None
        )
        async with running(client):
            reply = await client.send_action(
                "Originate", {"Channel": "PJSIP/100", "Async": True, "ChannelId": "call-1"}
            )
            await client.send_action("Ping")
        assert reply.get("Message") == "Originate queued"
        assert not reply.is_event
        assert len(originated) == 1
        assert originated[0].action_id == reply.action_id
        assert originated[0].get("Uniqueid") == "call-1"


async def test_list_action_collects_events_until_complete() -> None:
    """send_list_action returns the list's events without the Complete marker; listeners see all."""

    async def channels(conn: FakeAmiConnection, action: AmiMessage) -> None:
        aid = action.action_id or ""
        await conn.send(
            {"Response": "Success", "ActionID": aid, "EventList": "start"},
            {"Event": "CoreShowChannel", "ActionID": aid, "Channel": "PJSIP/1-1"},
            {"Event": "Newstate", "Channel": "PJSIP/9-9"},
        )
        await conn.send(
            {"Event": "CoreShowChannel", "ActionID": aid, "Channel": "PJSIP/2-2"},
            {
                "Event": "CoreShowChannelsComplete",
                "ActionID": aid,
                "EventList": "Complete",
                "ListItems": "2",
            },
        )

    async with FakeAmiServer() as ami:
        ami.auto["CoreShowChannels"] = channels
        client = make_client(ami)
        heard: list[str] = []
        client.add_listener(lambda e: heard.append(e.event or ""))
        async with running(client):
            events = await client.send_list_action("CoreShowChannels")
        assert [e.get("Channel") for e in events] == ["PJSIP/1-1", "PJSIP/2-2"]
        assert [e for e in heard if e != "FullyBooted"] == [
            "CoreShowChannel",
            "Newstate",
            "CoreShowChannel",
            "CoreShowChannelsComplete",
        ]


async def test_half_delivered_event_list_fails_on_disconnect() -> None:
    """Defect hanging EventList: a half-delivered list fails with AmiDisconnected on disconnect."""

    async def half_then_drop(conn: FakeAmiConnection, action: AmiMessage) -> None:
        aid = action.action_id or ""
        await conn.send(
            {"Response": "Success", "ActionID": aid, "EventList": "start"},
            {"Event": "QueueMember", "ActionID": aid, "Name": "agent-1"},
        )
        conn.close()

    async with FakeAmiServer() as ami:
        ami.auto["QueueStatus"] = half_then_drop
        client = make_client(ami, action_timeout=30.0)
        async with running(client):
            async with asyncio.timeout(STEP):
                with pytest.raises(AmiDisconnected):
                    await client.send_list_action("QueueStatus")


async def test_pending_actions_fail_on_disconnect() -> None:
    """Defect hanging futures: every pending action fails with AmiDisconnected on disconnect."""
    async with FakeAmiServer() as ami:
        client = make_client(ami, action_timeout=30.0)
        async with running(client) as bg:
            conn = ami.connections[0]
            one = bg.start(result_or_error(client.send_action("Getvar", {"Variable": "A"})))
            two = bg.start(result_or_error(client.send_action("Getvar", {"Variable": "B"})))
            await conn.next_action("Getvar")
            await conn.next_action("Getvar")
            conn.close()
            async with asyncio.timeout(STEP):
                results = [await one, await two]
        assert all(isinstance(r, AmiDisconnected) for r in results), results


async def test_new_actions_work_after_reconnect_and_resync_runs_each_time() -> None:
    """Defect resend-on-FullyBooted: each reconnect reruns on_connected; new actions work."""
    resyncs = Resyncs()
    async with FakeAmiServer() as ami:
        ami.auto["Status"] = reply_status
        client = make_client(ami, on_connected=resyncs)
        async with running(client) as bg:
            await resyncs.wait_for(1)
            first = ami.connections[0]
            pending = bg.start(result_or_error(client.send_action("Getvar", {"Variable": "X"})))
            await first.next_action("Getvar")
            first.close()
            assert isinstance(await pending, AmiDisconnected)
            await resyncs.wait_for(2)
            await client.wait_connected(STEP)
            reply = await client.send_action("Status")
            assert reply.response == "Success"
            assert client.reconnects == 1
            second = ami.connections[1]
            assert [a.get("Action") for a in second.seen] == ["Login", "Status"]
            # Not silently resent: an Originate replayed after a reconnect would be a second call.
            assert all(a.get("Action") != "Getvar" for a in second.seen)
            second.close()
            await resyncs.wait_for(3)
            assert client.reconnects == 2


async def test_on_connected_runs_in_a_task_while_reader_keeps_reading() -> None:
    """The resync hook may await events and actions: the reader keeps reading while it runs."""
    async with FakeAmiServer() as ami:
        ami.auto["Status"] = reply_status
        resynced = asyncio.Event()
        booted = asyncio.Event()
        client: AmiClient

        async def resync() -> None:
            await booted.wait()  # needs the reader to deliver FullyBooted
            await client.send_action("Status")
            resynced.set()

        client = make_client(ami, on_connected=resync)
        client.add_listener(lambda e: booted.set() if e.event == "FullyBooted" else None)
        async with running(client):
            async with asyncio.timeout(STEP):
                await resynced.wait()


async def test_failing_resync_is_logged_and_connection_kept() -> None:
    """An on_connected hook that raises is logged; the connection stays up."""

    async def broken_resync() -> None:
        raise RuntimeError("resync bug")

    async with FakeAmiServer() as ami:
        client = make_client(ami, on_connected=broken_resync)
        with capture_logs() as logs:
            async with running(client):
                await client.send_action("Ping")
                await client.send_action("Ping")
                assert client.connected
        assert "ami.on_connected_failed" in [e["event"] for e in logs]


async def test_close_ends_run_and_fails_pending() -> None:
    """close() logs off, fails pending actions with AmiDisconnected and makes run() return."""
    async with FakeAmiServer() as ami, Background() as bg:
        client = make_client(ami, action_timeout=30.0)
        run = bg.start(client.run())
        await client.wait_connected(STEP)
        conn = ami.connections[0]
        pending = bg.start(result_or_error(client.send_action("Getvar", {"Variable": "A"})))
        await conn.next_action("Getvar")
        await client.close()
        async with asyncio.timeout(STEP):
            assert isinstance(await pending, AmiDisconnected)
            await run
            await conn.closed.wait()
        assert not client.connected
        assert [a.get("Action") for a in conn.seen][-1] == "Logoff"
        with pytest.raises(AmiDisconnected):
            await client.wait_connected(STEP)


async def test_cancelling_run_propagates_and_closes_socket() -> None:
    """Cancelling run() ends it with CancelledError and closes the connection."""
    async with FakeAmiServer() as ami, Background() as bg:
        client = make_client(ami)
        run = bg.start(client.run())
        await client.wait_connected(STEP)
        run.cancel()
        async with asyncio.timeout(STEP):
            await asyncio.wait([run])
            await ami.connections[0].closed.wait()
        assert run.cancelled()
        assert not client.connected


async def test_wait_connected_times_out_while_peer_unreachable() -> None:
    """With nothing listening, wait_connected raises AmiTimeout and run() keeps retrying."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = AmiClient(host="127.0.0.1", port=port, username="u", secret="s", backoff_initial=0.01)
    async with Background() as bg:
        run = bg.start(client.run())
        with pytest.raises(AmiTimeout):
            await client.wait_connected(0.1)
        assert not run.done()


async def test_reconnect_backoff_doubles_with_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reconnect delays double from backoff_initial up to backoff_max, jittered within [b/2, b]."""
    bounds: list[tuple[float, float]] = []
    enough = asyncio.Event()

    def record(low: float, high: float) -> float:
        bounds.append((low, high))
        if len(bounds) >= 5:
            enough.set()
        return low

    monkeypatch.setattr("acd.adapters.ami.random.uniform", record)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = AmiClient(
        host="127.0.0.1",
        port=port,
        username="u",
        secret="s",
        backoff_initial=0.004,
        backoff_max=0.02,
    )
    async with Background() as bg:
        bg.start(client.run())
        async with asyncio.timeout(STEP):
            await enough.wait()
    assert [high for _, high in bounds[:5]] == pytest.approx([0.004, 0.008, 0.016, 0.02, 0.02])
    assert all(low == pytest.approx(high / 2) for low, high in bounds)
