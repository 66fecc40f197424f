"""The IVR service over a real FastAGI socket, with a scripted Asterisk on the other end, a real
redis-server and the sample order service: what AGI commands a call produces, and where a call
goes when its flow fails."""

from __future__ import annotations

import asyncio
import shlex
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from acd.adapters.fastagi import FastAgiServer
from acd.adapters.lookup import LookupClient
from acd.adapters.store import RedisStore
from acd.config import LookupService, load_settings
from acd.domain.flow import Catalog, Flow, compile_flow, load_flows
from acd.runtime.ivr import IvrService, choose_flow
from examples.order_service import build_app, load_orders
from tests.adapters.fakes import FakeAsterisk
from tests.adapters.servers import RedisServer

REPO = Path(__file__).resolve().parents[2]
CATALOG = Catalog(
    skills=frozenset({"presale", "orders", "payment", "aftersales", "vip"}),
    lookups=frozenset({"order_status"}),
)

# say_digits of a lookup field that a delivered order does not have (eta_days is null): the flow
# fails mid-call on those, and must continue at its fallback node.
FRAGILE = """
flow: fragile
start: ask
fallback: q_presale
nodes:
  ask:
    kind: collect
    prompt: acd/order-enter-number
    var: n
    min_digits: 8
    max_digits: 8
    next: look
    on_failure: q_presale
  look:
    kind: lookup
    service: order_status
    params: {order: $n}
    into: order
    on_found: say
    on_not_found: q_presale
    on_failure: q_presale
  say: {kind: play, prompt: acd/order-shipped, say_digits: order.eta_days, next: q_orders}
  q_presale: {kind: queue, skill: presale}
  q_orders: {kind: queue, skill: orders}
"""


@dataclass
class Harness:
    port: int
    store: RedisStore
    queued: list[str]


@pytest.fixture
async def order_service() -> AsyncIterator[int]:
    runner = web.AppRunner(build_app(load_orders(REPO / "examples" / "orders.csv")))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port
    finally:
        await runner.cleanup()


async def _serve(
    redis_url: str, order_port: int, flows: dict[str, Flow], redis_timeout: float = 3.0
) -> AsyncIterator[Harness]:
    settings = load_settings(REPO / "acd.yaml")
    store = RedisStore(redis_url, "t", timeout=redis_timeout)
    lookups = LookupClient(
        {"order_status": LookupService(url=f"http://127.0.0.1:{order_port}/orders/{{order}}")}
    )
    queued: list[str] = []
    ivr = IvrService(settings, flows, store, lookups, lambda skill, _claimed: queued.append(skill))
    server = FastAgiServer({"inbound": ivr.inbound}, port=0, command_timeout=5)
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(server.serve(ready=ready.set_result))
    try:
        yield Harness(await ready, store, queued)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await lookups.close()
        await store.close()


@pytest.fixture
async def fragile(redis_url: str, order_service: int) -> AsyncIterator[Harness]:
    flow = compile_flow(FRAGILE, "fragile.yaml", CATALOG)
    async for harness in _serve(redis_url, order_service, {"promo": flow, "promo-lite": flow}):
        yield harness


@pytest.fixture
async def shipped(redis_url: str, order_service: int) -> AsyncIterator[Harness]:
    flows = load_flows([REPO / "ivr_flows"], CATALOG)
    async for harness in _serve(redis_url, order_service, flows):
        yield harness


async def converse(peer: FakeAsterisk, digits: str | list[str]) -> list[list[str]]:
    """Play Asterisk: answer every AGI command until the session ends; a prompt with escape
    digits, a GET OPTION or a WAIT FOR DIGIT takes the next of `digits` ('' = nothing pressed)."""
    pressed = list(digits)
    commands = []
    while True:
        line = (await peer.reader.readline()).decode()
        if not line.endswith("\n"):  # the IVR closed the session
            peer.writer.close()
            await peer.writer.wait_closed()
            return commands
        words = shlex.split(line)
        commands.append(words)
        takes_digit = (
            (words[:2] == ["STREAM", "FILE"] and words[3])
            or words[:3] == ["WAIT", "FOR", "DIGIT"]
            or words[:2] == ["GET", "OPTION"]
        )
        if takes_digit and pressed:
            digit = pressed.pop(0)
            await peer.reply(f"200 result={ord(digit) if digit else 0} endpos=800")
        elif words[:2] == ["SET", "VARIABLE"]:
            await peer.reply("200 result=1")
        else:
            await peer.reply("200 result=0 endpos=16000")


# The commands that play a prompt (a menu's last prompt is a GET OPTION, which then waits for the
# digit).
PROMPTS = (["STREAM", "FILE"], ["GET", "OPTION"])


def variables(commands: list[list[str]]) -> dict[str, str]:
    return {w[2]: w[3] for w in commands if w[:2] == ["SET", "VARIABLE"]}


async def _call(
    harness: Harness, digits: str | list[str], uid: str, caller: str = "5551234"
) -> list:
    peer = await FakeAsterisk.call(
        harness.port, uniqueid=uid, env={"arg_1": "1000", "callerid": caller}
    )
    return await converse(peer, digits)


async def test_a_found_order_speaks_its_field_and_queues(fragile: Harness) -> None:
    """A shipped order (eta_days 2): the status prompt, SAY DIGITS 2, then the orders queue."""
    commands = await _call(fragile, "12345678", "1.1")
    assert ["SAY", "DIGITS", "2", ""] in commands
    assert variables(commands)["ACD_QUEUE"] == "orders"
    call = await fragile.store.call("1.1")
    assert call is not None
    assert call.fields["skill"] == "orders"
    assert call.fields["path"] == "ask,look,say,q_orders"


async def test_a_flow_failing_mid_call_continues_at_its_fallback_node(fragile: Harness) -> None:
    """A delivered order has no eta_days: SAY DIGITS cannot run, and instead of dropping the
    caller the flow continues at its declared fallback node (the presale queue)."""
    commands = await _call(fragile, "34567890", "1.2")
    assert not any(w[:2] == ["SAY", "DIGITS"] for w in commands)
    assert variables(commands)["ACD_RESULT"] == "queued"
    assert variables(commands)["ACD_QUEUE"] == "presale"
    assert fragile.queued == ["presale"]


async def test_an_unknown_entry_number_sends_the_caller_to_the_static_path(
    fragile: Harness,
) -> None:
    """An entry number the configuration does not know: ACD_RESULT=error, nothing queued."""
    peer = await FakeAsterisk.call(fragile.port, uniqueid="1.3", env={"arg_1": "4321"})
    commands = await converse(peer, "")
    assert variables(commands) == {"ACD_RESULT": "error"}
    assert await fragile.store.call("1.3") is None


async def test_garbage_dtmf_counts_as_no_input(shipped: Harness) -> None:
    """A digit that is no DTMF key (Asterisk reported 'x') is treated as silence: the timeout
    prompt plays and the menu is asked again; 4 then queues for after-sales."""
    commands = await _call(shipped, ["x", "x", "", "4"], "1.4")
    streamed = [w[2] for w in commands if w[:2] in PROMPTS]
    assert streamed == [
        "acd/promo-welcome",
        "acd/promo-menu",
        "please-try-again",
        "acd/promo-menu",
    ]
    assert variables(commands)["ACD_QUEUE"] == "aftersales"


async def test_menu_modes_choose_the_fallback_flow(shipped: Harness) -> None:
    """Fallback mode, or auto mode at overload level 2, answers with promo-lite; normal mode and
    auto below level 2 with promo."""
    settings = load_settings(REPO / "acd.yaml")
    entry = settings.entries[0]
    assert choose_flow(entry, "normal", 4) == "promo"
    assert choose_flow(entry, "auto", 1) == "promo"
    assert choose_flow(entry, "auto", 2) == "promo-lite"
    assert choose_flow(entry, "fallback", 0) == "promo-lite"
    await shipped.store.set_menu_modes({"1000": "normal"}, "fallback", "test", 0.0)
    commands = await _call(shipped, "2", "1.5")
    assert variables(commands)["ACD_FLOW"] == "promo-lite"
    assert next(w[2] for w in commands if w[:2] in PROMPTS) == "acd/lite-menu"


async def test_the_callers_tier_comes_from_redis(shipped: Harness) -> None:
    """A caller ID marked vip in Redis hears the VIP welcome and joins the vip queue with its
    head start."""
    await shipped.store.set_tiers({"5550999": "vip"}, "test", 0.0)
    commands = await _call(shipped, "", "1.6", caller="5550999")
    assert variables(commands)["ACD_QUEUE"] == "vip"
    call = await shipped.store.call("1.6")
    assert call is not None
    assert call.fields["tier"] == "vip"
    assert call.fields["priority"] == "0"
    assert float(call.fields["head_start"]) == 120.0  # tiers.vip in acd.yaml


@pytest.mark.parametrize(
    ("caller", "digits", "number", "invalid_heard", "read_out"),
    [
        # '#' confirms the caller ID
        ("5551234", ["1", "1", "#"], "5551234", False, 1),
        # another number keyed in and ended with '#', read back and confirmed with '#'
        ("5551234", ["1", "1", "1", "3", "9", "1", "2", "3", "4", "5", "6", "7", "8", "#", "#"],
         "13912345678", False, 2),
        # a keyed number read back, then replaced by another, which is confirmed
        ("5551234", ["1", "1", *"55500001#", *"55500002#", "#"], "55500002", False, 3),
        # too short: refused, then the caller ID confirmed on the second try
        ("5551234", ["1", "1", "1", "2", "3", "#", "#"], "5551234", True, 2),
        # no usable caller ID: the caller is asked to key the number, then confirms it
        ("anonymous", ["1", "1", "8", "6", "1", "3", "9", "0", "0", "0", "#", "#"], "86139000",
         False, 1),
        # garbage keyed (a letter from a broken phone counts as silence) ends the input short
        ("anonymous", ["1", "1", "5", "5", "A", "", "", "", ""], None, True, 0),
    ],
)  # fmt: skip
async def test_a_callback_number_is_confirmed_or_keyed_and_validated(
    shipped: Harness,
    caller: str,
    digits: list[str],
    number: str | None,
    invalid_heard: bool,
    read_out: int,
) -> None:
    """promo-lite: 1 (orders), 1 (accept the offer), then the number: the callback is recorded
    with the confirmed number (a keyed one is read back first), and the call ends with the
    confirmation; input that never makes a valid number queues the caller instead."""
    await shipped.store.set_menu_modes({"1000": "normal"}, "fallback", "test", 0.0)
    commands = await _call(shipped, digits, "2.1", caller=caller)
    streamed = [w[2] for w in commands if w[:2] in PROMPTS]
    assert ("invalid" in streamed) is invalid_heard
    # Every number on offer (the caller ID, each valid one keyed) is read out to be confirmed.
    assert streamed.count("acd/callback-number-is") == read_out
    if number is None:
        assert await shipped.store.callback("2.1") == {}
        assert variables(commands)["ACD_QUEUE"] == "orders"
        return
    assert streamed[-1] == "acd/callback-confirmed"
    assert variables(commands)["ACD_RESULT"] == "hangup"
    callback = await shipped.store.callback("2.1")
    assert (callback["number"], callback["skill"], callback["state"]) == (
        number,
        "orders",
        "pending",
    )


@pytest.mark.parametrize(
    ("caller", "digits", "refused"),
    [
        # an international caller ID is not offered: the caller keys a premium number (refused,
        # and says so), then a national one, read back and confirmed
        ("+441234567890", ["1", "1", *"19001234567#", *"13800000009#", "#"], 1),
        # keyed international (00) then a national number
        ("anonymous", ["1", "1", *"0044123456789#", *"13800000009#", "#"], 1),
    ],
)  # fmt: skip
async def test_a_callback_number_outside_the_dial_policy_is_refused_and_another_asked(
    shipped: Harness, caller: str, digits: list[str], refused: int
) -> None:
    """The dial policy (acd.yaml's default: national numbers, no premium rate) applies to
    callback numbers: the caller hears that the number cannot be called back and keys another;
    the refused number is never recorded."""
    await shipped.store.set_menu_modes({"1000": "normal"}, "fallback", "test", 0.0)
    commands = await _call(shipped, digits, "2.5", caller=caller)
    streamed = [w[2] for w in commands if w[:2] in PROMPTS]
    assert streamed.count("acd/callback-number-refused") == refused
    assert streamed.count("acd/callback-number-is") == 1  # only the number it may call
    assert (await shipped.store.callback("2.5"))["number"] == "13800000009"


async def test_no_callback_number_means_the_caller_queues_instead(shipped: Harness) -> None:
    """Accepting the offer but giving no number twice: no callback, the caller queues."""
    await shipped.store.set_menu_modes({"1000": "normal"}, "fallback", "test", 0.0)
    commands = await _call(shipped, ["1", "1", "", "", "", ""], "2.2")
    assert await shipped.store.callback("2.2") == {}
    assert variables(commands)["ACD_QUEUE"] == "orders"
    assert shipped.queued == ["orders"]


async def test_a_caller_whose_callback_cannot_be_taken_does_not_join_a_closed_queue(
    shipped: Harness,
) -> None:
    """promo-lite's offer accepted while callbacks are off for a closed orders queue: no
    callback, and instead of queueing the caller hears the closed announcement and goes to the
    static fallback."""
    await shipped.store.set_menu_modes({"1000": "normal"}, "fallback", "test", 0.0)
    await shipped.store.set_queue_states(["orders"], "closed", "test", 1.0)
    await shipped.store.set_callback_modes(["orders"], "off", "test", 1.0)
    commands = await _call(shipped, ["1", "1"], "2.3")
    streamed = [w[2] for w in commands if w[:2] in PROMPTS]
    assert streamed[-1] == "acd/queue-closed"
    assert variables(commands)["ACD_RESULT"] == "closed"
    assert await shipped.store.callback("2.3") == {}
    assert await shipped.store.call("2.3") is None
    assert shipped.queued == []


async def test_a_caller_whose_enqueue_meets_a_hung_redis_takes_the_static_path_at_once(
    redis_server: RedisServer, order_service: int
) -> None:
    """The caller presses 4 (after-sales); the IVR tells the dialplan the caller is queued, and
    Redis stops answering (frozen: SIGSTOP) before the enqueue reaches it; the flow's fallback (a
    queue too) cannot reach it either. The caller must not be left in the hold context with no
    call in Redis (nobody would take it until the hold limit): ACD_RESULT ends `error`, the
    static path (the FastAGI server's answer to a failed handler); and the silence lasts about
    the store's timeout per attempt (`redis.timeout`), not the half minute of retries a pooled
    client with retries gave."""
    flows = load_flows([REPO / "ivr_flows"], CATALOG)
    async for harness in _serve(redis_server.url, order_service, flows, redis_timeout=0.5):
        peer = await FakeAsterisk.call(
            harness.port, uniqueid="1.9", env={"arg_1": "1000", "callerid": "5551234"}
        )
        commands: list[list[str]] = []
        stopped = 0.0
        assert redis_server.proc is not None
        try:
            while True:
                line = (await peer.reader.readline()).decode()
                if not line.endswith("\n"):
                    peer.writer.close()
                    await peer.writer.wait_closed()
                    break
                words = shlex.split(line)
                commands.append(words)
                if words[:2] == ["GET", "OPTION"] and words[2] == "acd/promo-menu":
                    await peer.reply(f"200 result={ord('4')} endpos=800")
                elif words == ["SET", "VARIABLE", "ACD_RESULT", "queued"] and not stopped:
                    # Told it is queued; Redis freezes before the enqueue reaches it.
                    redis_server.proc.send_signal(signal.SIGSTOP)
                    stopped = time.monotonic()
                    await peer.reply("200 result=1")
                elif words[:2] == ["SET", "VARIABLE"]:
                    await peer.reply("200 result=1")
                else:
                    await peer.reply("200 result=0 endpos=16000")
            silence = time.monotonic() - stopped
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        results = [w[3] for w in commands if w[:3] == ["SET", "VARIABLE", "ACD_RESULT"]]
        assert results[-1] == "error", commands
        assert "queued" in results  # it had been told, and was told otherwise
        assert silence < 4 * 0.5  # two attempts (the queue, then the fallback's), 0.5 s each
        assert harness.queued == []


async def test_no_caller_number_reaches_the_logs(
    shipped: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """Logs outlive the retention rules of customer data: a call whose caller ID, keyed callback
    numbers (one refused by the dial policy, one accepted) and menu choices all go through the
    IVR leaves none of those numbers in the controller's log lines (`log_caller_ids` is off by
    default; the caller ID was logged at arrival before)."""
    await shipped.store.set_menu_modes({"1000": "normal"}, "fallback", "test", 0.0)
    digits = ["1", "1", *"19007654321#", *"13912345678#", "#"]
    await _call(shipped, digits, "2.9", caller="13811112222")
    assert (await shipped.store.callback("2.9"))["number"] == "13912345678"
    logged = "".join(capsys.readouterr())
    assert "ivr.callback_requested" in logged  # the call was logged
    for number in ("13811112222", "19007654321", "13912345678"):
        assert number not in logged
