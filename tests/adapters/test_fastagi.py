"""FastAgiServer and AgiChannel against a scripted fake Asterisk on 127.0.0.1.

Each panoramisk FastAGI defect listed in docs/architecture.md has a test here whose docstring
names it. The server always closes the socket when a call ends, so `expect_eof()` is where a test
knows the handler has finished."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from acd.adapters.fastagi import AgiChannel, FastAgiServer, Handler
from acd.errors import AgiCommandFailed, AgiHangup, AgiTimeout, ProtocolError
from acd.protocol.agi import parse_reply
from tests.adapters.fakes import STEP, Background, FakeAsterisk

pytestmark = pytest.mark.timeout(10)

USAGE_520 = (
    "520-Invalid command syntax.  Proper usage follows:",
    " Usage: GET DATA <file to be streamed> [timeout] [max digits]",
    "520 End of proper usage.",
)


@asynccontextmanager
async def serving(
    routes: dict[str, Handler], **settings: Any
) -> AsyncIterator[tuple[FastAgiServer, asyncio.Task[None]]]:
    """A FastAgiServer on a free port, running in the background until the block ends."""
    server = FastAgiServer(routes, port=0, **settings)
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    async with Background() as bg:
        task = bg.start(server.serve(ready=ready.set_result))
        async with asyncio.timeout(STEP):
            port = await ready
        assert port == server.port != 0
        yield server, task


def events_named(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_peer_closing_before_blank_line_is_dropped_without_freezing() -> None:
    """Defect header spin: a peer closing mid-header is dropped; the loop keeps serving."""
    served = asyncio.Event()

    async def inbound(ch: AgiChannel) -> None:
        await ch.verbose("hello")
        served.set()

    with capture_logs() as logs:
        async with serving({"inbound": inbound}) as (server, _):
            early = await FakeAsterisk.connect(server.port)
            await early.send_raw(b"agi_network: yes\nagi_uniqueid: 1\n")
            early.hang_up()
            assert await early.expect_eof() == b""
            early.close()

            call = await FakeAsterisk.call(server.port)
            assert await call.read_command() == 'VERBOSE "hello" "3"'
            await call.reply("200 result=1")
            assert await call.expect_eof() == b""
            assert served.is_set()
    assert len(events_named(logs, "agi.header_incomplete")) == 1


@pytest.mark.parametrize("partial", [b"", b"agi_network: yes\nagi_uniqueid: 1"])
async def test_header_never_finished_times_out(partial: bytes) -> None:
    """Defect no timeouts: a peer that never finishes the header is dropped after header_timeout."""
    with capture_logs() as logs:
        async with serving({}, header_timeout=0.1) as (server, _):
            peer = await FakeAsterisk.connect(server.port)
            await peer.send_raw(partial)
            assert await peer.expect_eof() == b""
    assert len(events_named(logs, "agi.header_timeout")) == 1


async def test_hangup_line_is_not_taken_as_reply() -> None:
    """Defect HANGUP as reply: a HANGUP line sets hung_up and each command keeps its own reply."""
    seen: list[Any] = []

    async def inbound(ch: AgiChannel) -> None:
        seen.append(await ch.stream_file("welcome"))
        seen.append(ch.hung_up)
        seen.append(await ch.get_variable("TIER"))

    async with serving({"inbound": inbound}) as (server, _):
        call = await FakeAsterisk.call(server.port)
        assert await call.read_command() == 'STREAM FILE "welcome" ""'
        await call.reply("HANGUP", "200 result=0 endpos=1600")
        assert await call.read_command() == 'GET VARIABLE "TIER"'
        await call.reply("200 result=1 (gold)")
        assert await call.expect_eof() == b""
    assert seen == ["", True, "gold"]


async def test_hangup_line_right_after_header_is_recorded() -> None:
    """A HANGUP written in the same chunk as the header is kept for the first command."""
    seen: list[Any] = []

    async def inbound(ch: AgiChannel) -> None:
        try:
            await ch.answer()
        finally:
            seen.append(ch.hung_up)

    async with serving({"inbound": inbound}) as (server, _):
        call = await FakeAsterisk.call(server.port)
        await call.reply("HANGUP")
        assert await call.read_command() == "ANSWER"
        await call.reply("511 Command Not Permitted on a dead channel or intercept routine")
        assert await call.expect_eof() == b""
    assert seen == [True]


async def test_multiline_520_reply_is_read_whole() -> None:
    """Defect 520 desync: a multi-line 520 is one AgiCommandFailed; the next reply pairs right."""
    seen: list[Any] = []

    async def inbound(ch: AgiChannel) -> None:
        with pytest.raises(AgiCommandFailed) as failed:
            await ch.command("GET DATA")
        seen.append((failed.value.code, "Usage: GET DATA" in failed.value.message))
        seen.append(await ch.get_variable("X"))

    async with serving({"inbound": inbound}) as (server, _):
        call = await FakeAsterisk.call(server.port)
        assert await call.read_command() == "GET DATA"
        await call.reply(*USAGE_520)
        assert await call.read_command() == 'GET VARIABLE "X"'
        await call.reply("200 result=1 (x)")
        assert await call.expect_eof() == b""
    assert seen == [(520, True), "x"]


async def test_eof_is_reported_as_hangup() -> None:
    """Defect EOF not a hangup: Asterisk closing the socket raises AgiHangup in the handler."""
    seen: list[Any] = []

    async def inbound(ch: AgiChannel) -> None:
        try:
            await ch.get_data("menu", 5000, 1)
        except AgiHangup:
            seen.append(ch.hung_up)
            raise

    with capture_logs() as logs:
        async with serving({"inbound": inbound}) as (server, _):
            call = await FakeAsterisk.call(server.port)
            assert await call.read_command() == 'GET DATA "menu" "5000" "1"'
            call.hang_up()
            assert await call.expect_eof() == b""
    assert seen == [True]
    [ended] = events_named(logs, "agi.call_ended")
    assert ended["outcome"] == "hangup"
    assert not events_named(logs, "agi.handler_failed")


@pytest.mark.parametrize(
    ("reply", "error", "code"),
    [
        ("511 Command Not Permitted on a dead channel or intercept routine", AgiHangup, None),
        ("510 Invalid or unknown command", AgiCommandFailed, 510),
        ("520 Invalid command syntax.  Proper usage not available.", AgiCommandFailed, 520),
    ],
)
async def test_error_codes_raise(reply: str, error: type[Exception], code: int | None) -> None:
    """511 raises AgiHangup; 510 and 520 raise AgiCommandFailed with the code."""
    seen: list[BaseException] = []

    async def inbound(ch: AgiChannel) -> None:
        with pytest.raises(error) as caught:
            await ch.command("SAY ALPHA", "abc", "")
        seen.append(caught.value)

    async with serving({"inbound": inbound}) as (server, _):
        call = await FakeAsterisk.call(server.port)
        assert await call.read_command() == 'SAY ALPHA "abc" ""'
        await call.reply(reply)
        assert await call.expect_eof() == b""
    assert len(seen) == 1
    if code is not None:
        assert isinstance(seen[0], AgiCommandFailed)
        assert seen[0].code == code


async def test_cancelling_server_cancels_handlers_and_propagates() -> None:
    """Defect swallowed cancellation: cancelling serve() cancels handlers and propagates."""
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def inbound(ch: AgiChannel) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with serving({"inbound": inbound}) as (server, task):
        call = await FakeAsterisk.call(server.port)
        async with asyncio.timeout(STEP):
            await started.wait()
        task.cancel()
        async with asyncio.timeout(STEP):
            await asyncio.wait([task])
        assert task.cancelled()
        assert cancelled.is_set()
        assert await call.expect_eof() == b""
        with pytest.raises(OSError):  # noqa: PT011 - refused connect, errno varies by platform
            await FakeAsterisk.connect(server.port)


async def test_cancellation_inside_handler_is_not_reported_as_failure() -> None:
    """Defect swallowed cancellation: a handler's CancelledError is not reported as a failure."""
    calls = 0

    async def inbound(ch: AgiChannel) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError
        await ch.verbose("second")

    with capture_logs() as logs:
        async with serving({"inbound": inbound}) as (server, task):
            first = await FakeAsterisk.call(server.port)
            assert await first.expect_eof() == b""
            second = await FakeAsterisk.call(server.port)
            assert await second.read_command() == 'VERBOSE "second" "3"'
            await second.reply("200 result=1")
            assert await second.expect_eof() == b""
            assert not task.done()
    assert not events_named(logs, "agi.handler_failed")


async def test_route_with_query_string_matches() -> None:
    """Defect ?query routes: `inbound?lang=de&x=1` runs the inbound handler; env keeps the query."""
    seen: list[str] = []

    async def inbound(ch: AgiChannel) -> None:
        seen.append(ch.env["network_script"])
        seen.append(ch.uniqueid)

    async with serving({"inbound": inbound}) as (server, _):
        call = await FakeAsterisk.call(server.port, "inbound?lang=de&x=1", uniqueid="42.7")
        assert await call.expect_eof() == b""
    assert seen == ["inbound?lang=de&x=1", "42.7"]


async def test_unknown_route_is_logged_and_closed() -> None:
    """A call for a route nobody serves is logged as agi.unknown_route and closed at once."""
    with capture_logs() as logs:
        async with serving({"inbound": lambda ch: asyncio.sleep(0)}) as (server, _):
            call = await FakeAsterisk.call(server.port, "outbound?x=1")
            assert await call.expect_eof() == b""
    [unknown] = events_named(logs, "agi.unknown_route")
    assert unknown["route"] == "outbound"


SECRET = "agi-secret-0123456789abcdef"


@pytest.mark.parametrize(
    "script",
    ["agent?x=1", "callback", "agi://127.0.0.1:4573/agent", f"{SECRET[:-1]}X/agent",
     f"/{SECRET}", "", f"{SECRET}agent"],
)  # fmt: skip
async def test_with_a_secret_a_route_without_it_is_refused(script: str) -> None:
    """A local process that is not Asterisk (it does not know the secret the dialplan puts in
    ACD_AGI) drives no route: its session is closed before any handler runs, and the secret
    is not logged."""
    ran: list[str] = []

    async def agent(ch: AgiChannel) -> None:
        ran.append(ch.uniqueid)

    with capture_logs() as logs:
        async with serving({"agent": agent, "callback": agent}, secret=SECRET) as (server, _):
            call = await FakeAsterisk.call(server.port, script, uniqueid="9.1")
            assert await call.expect_eof() == b""
    assert ran == []
    assert events_named(logs, "agi.refused") or events_named(logs, "agi.unknown_route")
    assert SECRET not in repr(logs)


async def test_with_a_secret_the_dialplans_routes_run() -> None:
    ran: list[str] = []

    async def agent(ch: AgiChannel) -> None:
        ran.append(ch.env["network_script"].partition("?")[0].rpartition("/")[2])

    async with serving({"agent": agent}, secret=SECRET) as (server, _):
        for script in (f"{SECRET}/agent", f"agi://127.0.0.1:4573/{SECRET}/agent?a=1"):
            call = await FakeAsterisk.call(server.port, script)
            assert await call.expect_eof() == b""
    assert ran == ["agent", "agent"]


async def test_command_timeout_then_next_command_gets_its_own_reply() -> None:
    """Defect no timeouts: an unanswered command raises AgiTimeout; its late reply is discarded."""
    seen: list[Any] = []

    async def inbound(ch: AgiChannel) -> None:
        with pytest.raises(AgiTimeout):
            await ch.command("GET VARIABLE", "SLOW", timeout=0.1)
        seen.append(
            await ch.get_variable(
                "FAST",
            )
        )

    async with serving({"inbound": inbound}) as (server, _):
        call = await FakeAsterisk.call(server.port)
        assert await call.read_command() == 'GET VARIABLE "SLOW"'
        assert await call.read_command() == 'GET VARIABLE "FAST"'
        await call.reply("200 result=1 (slow)", "200 result=1 (fast)")
        assert await call.expect_eof() == b""
    assert seen == ["fast"]


async def test_argument_quoting_prevents_command_injection() -> None:
    """Defect unquoted args: a newline in caller data raises ProtocolError, injects nothing."""
    seen: list[str] = []

    async def inbound(ch: AgiChannel) -> None:
        with pytest.raises(ProtocolError):
            await ch.set_variable("CALLER", "x\nEXEC Dial PJSIP/premium-line")
        await ch.set_variable("NAME", 'O\'Brien "VIP" \\ x')
        seen.append("done")

    async with serving({"inbound": inbound}) as (server, _):
        call = await FakeAsterisk.call(server.port)
        assert await call.read_command() == 'SET VARIABLE "NAME" "O\'Brien \\"VIP\\" \\\\ x"'
        await call.reply("200 result=1")
        assert await call.expect_eof() == b""
    assert seen == ["done"]


async def test_handler_failure_is_logged_and_reported_to_dialplan() -> None:
    """A failing handler is logged with its traceback and ACD_RESULT=error is set before closing."""

    async def inbound(ch: AgiChannel) -> None:
        raise RuntimeError("flow bug")

    with capture_logs() as logs:
        async with serving({"inbound": inbound}) as (server, _):
            call = await FakeAsterisk.call(server.port, uniqueid="77.1")
            assert await call.read_command() == 'SET VARIABLE "ACD_RESULT" "error"'
            await call.reply("200 result=1")
            assert await call.expect_eof() == b""
    [failed] = events_named(logs, "agi.handler_failed")
    assert failed["exc_info"] is True
    assert failed["log_level"] == "error"
    [ended] = events_named(logs, "agi.call_ended")
    assert ended["outcome"] == "error"


async def test_failure_report_is_short_when_asterisk_is_silent() -> None:
    """The best-effort ACD_RESULT report gives up quickly when Asterisk does not answer."""

    async def inbound(ch: AgiChannel) -> None:
        raise RuntimeError("flow bug")

    async with serving({"inbound": inbound}, command_timeout=0.1) as (server, _):
        call = await FakeAsterisk.call(server.port)
        assert await call.read_command() == 'SET VARIABLE "ACD_RESULT" "error"'
        assert await call.expect_eof() == b""


async def test_uniqueid_is_bound_to_log_context_of_the_call() -> None:
    """Every log line of a call carries its uniqueid: it is bound in structlog's contextvars."""
    seen: list[dict[str, Any]] = []

    async def inbound(ch: AgiChannel) -> None:
        seen.append(structlog.contextvars.get_contextvars())

    async with serving({"inbound": inbound}) as (server, _):
        call = await FakeAsterisk.call(server.port, uniqueid="1700000000.99")
        assert await call.expect_eof() == b""
    assert seen == [{"uniqueid": "1700000000.99"}]
    assert "uniqueid" not in structlog.contextvars.get_contextvars()


Call = Callable[[AgiChannel], Awaitable[Any]]

HELPERS: list[Any] = [
    pytest.param(lambda ch: ch.answer(), "ANSWER", "200 result=0", None, id="answer"),
    pytest.param(lambda ch: ch.answer(), "ANSWER", "200 result=-1", AgiHangup, id="answer-hangup"),
    pytest.param(
        lambda ch: ch.stream_file("welcome", "12"),
        'STREAM FILE "welcome" "12"',
        "200 result=50 endpos=800",
        "2",
        id="stream-file-digit",
    ),
    pytest.param(
        lambda ch: ch.stream_file("welcome"),
        'STREAM FILE "welcome" ""',
        "200 result=0 endpos=8000",
        "",
        id="stream-file-end",
    ),
    pytest.param(
        lambda ch: ch.stream_file("welcome"),
        'STREAM FILE "welcome" ""',
        "200 result=-1 endpos=0",
        AgiHangup,
        id="stream-file-hangup",
    ),
    pytest.param(
        lambda ch: ch.get_data("menu", 5000, 4),
        'GET DATA "menu" "5000" "4"',
        "200 result=12 (timeout)",
        ("12", True),
        id="get-data-timeout",
    ),
    pytest.param(
        lambda ch: ch.get_data("menu", 5000, 4),
        'GET DATA "menu" "5000" "4"',
        "200 result=1234",
        ("1234", False),
        id="get-data-complete",
    ),
    pytest.param(
        lambda ch: ch.get_data("menu", 5000, 4),
        'GET DATA "menu" "5000" "4"',
        "200 result= (timeout)",
        ("", True),
        id="get-data-nothing",
    ),
    pytest.param(
        lambda ch: ch.get_data("menu", 5000, 4),
        'GET DATA "menu" "5000" "4"',
        "200 result=-1",
        AgiHangup,
        id="get-data-hangup",
    ),
    pytest.param(
        lambda ch: ch.wait_for_digit(3000),
        'WAIT FOR DIGIT "3000"',
        "200 result=35",
        "#",
        id="wait-digit",
    ),
    pytest.param(
        lambda ch: ch.wait_for_digit(3000),
        'WAIT FOR DIGIT "3000"',
        "200 result=0",
        "",
        id="wait-digit-timeout",
    ),
    pytest.param(
        lambda ch: ch.set_variable("QUEUE", "presale"),
        'SET VARIABLE "QUEUE" "presale"',
        "200 result=1",
        None,
        id="set-variable",
    ),
    pytest.param(
        lambda ch: ch.get_variable("TIER"),
        'GET VARIABLE "TIER"',
        "200 result=1 (gold)",
        "gold",
        id="get-variable",
    ),
    pytest.param(
        lambda ch: ch.get_variable("TIER"),
        'GET VARIABLE "TIER"',
        "200 result=1 ()",
        "",
        id="get-variable-empty",
    ),
    pytest.param(
        lambda ch: ch.get_variable("TIER"),
        'GET VARIABLE "TIER"',
        "200 result=0",
        None,
        id="get-variable-unset",
    ),
    pytest.param(
        lambda ch: ch.exec_app("Playback", "promo-lite", "noanswer"),
        'EXEC "Playback" "promo-lite,noanswer"',
        "200 result=0",
        parse_reply("200 result=0"),
        id="exec",
    ),
    pytest.param(
        lambda ch: ch.exec_app("Hangup"),
        'EXEC "Hangup"',
        "200 result=0",
        parse_reply("200 result=0"),
        id="exec-no-args",
    ),
    pytest.param(
        lambda ch: ch.exec_app("NoSuchApp"),
        'EXEC "NoSuchApp"',
        "200 result=-2",
        AgiCommandFailed,
        id="exec-unknown-app",
    ),
    pytest.param(
        lambda ch: ch.verbose("hi", 1), 'VERBOSE "hi" "1"', "200 result=1", None, id="verbose"
    ),
]


@pytest.mark.parametrize(("call", "command", "reply", "expected"), HELPERS)
async def test_typed_helpers(call: Call, command: str, reply: str, expected: Any) -> None:
    """Each helper sends the documented command and maps Asterisk's reply to its result."""
    outcome: list[Any] = []

    async def inbound(ch: AgiChannel) -> None:
        try:
            outcome.append(await call(ch))
        except Exception as exc:  # noqa: BLE001 - the error is the outcome under test
            outcome.append(exc)

    async with serving({"inbound": inbound}) as (server, _):
        peer = await FakeAsterisk.call(server.port)
        assert await peer.read_command() == command
        await peer.reply(reply)
        assert await peer.expect_eof() == b""
    if isinstance(expected, type):
        assert isinstance(outcome[0], expected), outcome
    else:
        assert outcome == [expected]


async def test_malformed_reply_makes_the_session_unusable() -> None:
    """A reply that is not AGI raises ProtocolError, and later commands refuse to guess pairing."""
    seen: list[str] = []

    async def inbound(ch: AgiChannel) -> None:
        with pytest.raises(ProtocolError):
            await ch.command("ANSWER")
        with pytest.raises(ProtocolError, match="unusable"):
            await ch.command("ANSWER")
        seen.append("checked")

    async with serving({"inbound": inbound}) as (server, _):
        call = await FakeAsterisk.call(server.port)
        assert await call.read_command() == "ANSWER"
        await call.reply("garbage that is no reply")
        assert await call.expect_eof() == b""
    assert seen == ["checked"]
