"""Benchmark: AMI ingest. Recorded AMI traffic replayed by a fake Asterisk at a fixed rate, read by
the controller's own AMI client and listeners; prints events/s and event-loop lag at that rate.

The traffic: bench/ami/*.ami, each the AMI events of one real call on Asterisk 22.10 as the manager
printed them (Privilege, Timestamp, SystemName, Channel, Uniqueid, Linkedid...), recorded on a
private test stack by bench/ami/record_call.py. call.ami (117 events): a caller goes through the
promo IVR (AGIExecStart/End, DTMFBegin/End), waits on hold (MusicOnHold*), is redirected to
acd-connect, rings agent 1001 (DialBegin/DialState/DialEnd), is bridged (BridgeEnter/Leave), and
the agent hangs up (HangupRequest, Hangup); missed.ami (138 events): two agents ring unanswered,
each time acd-connect sends UserEvent AcdDialEnd (NOANSWER) and puts the caller back on hold,
where it hangs up. Around these: Newchannel, Newstate, Newexten, VarSet (44% of the events),
NewConnectedLine, DeviceStateChange, RTCPSent, SoftHangupRequest. The transcripts are replayed
in turn, back to back (calls do not interleave), each replayed call with fresh uniqueids and
linkedids, channel names and bridge ids substituted wherever the recording has them (AppData
and VarSet values included), and timestamps moved to the replay's time. Every replayed call
rings the recorded agents (1001, 1002): their phones' DeviceStateChange events, worked in order
per agent, concentrate on two agents as no real floor would, so at rates far above 5000/s the
dispatcher's backlog on those two keys is partly an artefact of the replay.

The fake Asterisk is a separate process (so its work is not measured): an asyncio server on
127.0.0.1:0 with Asterisk 22's banner that answers Login (then FullyBooted), Ping, Filter,
CoreShowChannels and DeviceStateList (empty lists) and Logoff as Asterisk does, and, once
logged in, writes the event stream at `--rate` events/s in batches every `--batch-ms` ms paced
by its loop clock (falling behind, not bursting, when the client does not read fast enough).

The consumer is the controller itself, built by `acd.runtime.controller.Controller` from acd.yaml
(pointed at the fake and at a private redis-server): its AmiClient with the listeners it
registers (Dispatcher.on_ami_event) and its on_connected hook (the event filters, then the
dispatcher's resync), and the dispatcher working the events it queues against Redis. Not run:
the FastAGI server, admin API, governor and callback admission (they take no AMI events). A
last listener counts events; a task sleeping 5 ms records how late it wakes. Measured after a
1 s warm-up: events received/s against the target, loop lag p50/p99/max, and CPU seconds of
this process per 1000 events (the fake's and redis-server's CPU are shown beside it).

`--filters refuse` (default): the fake refuses the controller's Filter actions, so every event
reaches the client (the controller goes on unfiltered, as after `controller.ami_filter_refused`),
and `--rate` is the rate the client gets. `--filters honour`: the fake applies them as Asterisk
22 does (`action(include),name(X)`), so only the dispatcher's EVENTS reach the client and
`--rate` is the rate Asterisk produces events at. `--no-dispatch`: the dispatcher does not
work its queue (the AMI client and listener dispatch alone; the queue only grows).

    .venv/bin/python bench/ami_ingest.py [--rate 5000] [--seconds 10] [--rates 1000,5000,10000]
        [--filters refuse|honour] [--no-dispatch] [--batch-ms 5] [--redis-url URL]

Loopback only; each run stops by itself after its seconds (the fake exits after its replay, and
a run is bounded by a deadline); the private redis-server (the shipped redis.conf, a free port,
a temporary directory) is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from claims import private_redis  # bench/ is on sys.path when a bench runs

from acd.protocol.ami import AmiCodec, AmiMessage

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
TRANSCRIPTS = sorted((REPO / "bench" / "ami").glob("*.ami"))
BANNER = b"Asterisk Call Manager/11.0.0\r\n"  # what Asterisk 22.10 sends
LAG_SLEEP = 0.005
# Events the fake sends outside the replay (login, the resync's list ends): not counted.
NOT_REPLAYED = frozenset({"FullyBooted", "CoreShowChannelsComplete", "DeviceStateListComplete"})
FILTERS = {"refuse": "refused by the fake", "honour": "honoured by the fake"}
CATCH_UP_SECONDS = 0.05  # a batch carries at most this many seconds of events when behind

# -- the transcript -------------------------------------------------------------------------

_UID_FIELDS = frozenset({"uniqueid", "linkedid", "destuniqueid", "destlinkedid"})
_CHANNEL_FIELDS = frozenset({"channel", "destchannel"})
_BRIDGE_FIELDS = frozenset({"bridgeuniqueid"})
# Asterisk's uniqueid: [SYSTEMNAME-]EPOCH.SEQUENCE; a channel name: TECH/RESOURCE-SEQUENCE[;N].
_UID = re.compile(r"^(?P<prefix>.*?)\d+\.\d+$")
_CHANNEL = re.compile(r"^(?P<prefix>[^/]+/.+-)(?P<seq>[0-9a-f]{8})(?P<suffix>;\d+)?$")


@dataclass(frozen=True)
class Transcript:
    """One call's events as str.format templates: `{i}` is the i-th recorded id (`tokens`),
    `{ts}` the event's timestamp; `offsets` are the timestamps from the call's first event."""

    name: str
    events: tuple[str, ...]  # event names
    templates: tuple[str, ...]
    offsets: tuple[float, ...]
    tokens: tuple[tuple[str, str], ...]  # (kind, recorded value)


def _fields(block: str) -> list[tuple[str, str]]:
    fields = []
    for line in block.split("\n"):
        name, _, value = line.partition(":")
        fields.append((name.strip(), value[1:] if value.startswith(" ") else value))
    return fields


def load_transcript(path: Path) -> Transcript:
    """Read a transcript: AMI events as Asterisk prints them, a blank line after each."""
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    messages = [_fields(block) for block in text.split("\n\n") if block.strip()]
    tokens: dict[str, str] = {}  # recorded value -> kind, in order of first appearance
    for fields in messages:
        for name, value in fields:
            key = name.lower()
            if key in _UID_FIELDS and _UID.match(value):
                tokens.setdefault(value, "uid")
            elif key in _CHANNEL_FIELDS and _CHANNEL.match(value):
                tokens.setdefault(value, "channel")
            elif key in _BRIDGE_FIELDS and value:
                tokens.setdefault(value, "bridge")
    index = {value: i for i, value in enumerate(tokens)}
    # Longest first, and never part of a longer id (".1" inside ".10", a channel inside another).
    pattern = re.compile(
        r"(?<![\w./-])(?:"
        + "|".join(re.escape(v) for v in sorted(tokens, key=len, reverse=True))
        + r")(?![\w.])"
    )
    events, templates, stamps = [], [], []
    for fields in messages:
        lines = []
        stamp = 0.0
        for name, value in fields:
            if name == "Timestamp":
                stamp = float(value)
                lines.append("Timestamp: {ts}")
                continue
            escaped = f"{name}: {value}".replace("{", "{{").replace("}", "}}")
            lines.append(pattern.sub(lambda m: "{" + str(index[m.group(0)]) + "}", escaped))
        events.append(dict(fields).get("Event", ""))
        templates.append("\r\n".join(lines) + "\r\n\r\n")
        stamps.append(stamp)
    first = next((s for s in stamps if s), 0.0)
    return Transcript(
        path.name,
        tuple(events),
        tuple(templates),
        tuple(max(0.0, s - first) for s in stamps),
        tuple((kind, value) for value, kind in tokens.items()),
    )


class Replay:
    """The endless event stream: the transcripts in turn, each call with ids of its own."""

    def __init__(self, transcripts: Sequence[Transcript]) -> None:
        self._transcripts = transcripts
        self._epoch = int(time.time())
        self._uids = itertools.count(1)
        self._channels = itertools.count(1)
        self.calls = 0

    def _values(self, transcript: Transcript) -> list[str]:
        values = []
        sequences: dict[str, str] = {}  # a recorded channel sequence -> this call's
        for kind, recorded in transcript.tokens:
            if kind == "uid":
                match = _UID.match(recorded)
                assert match is not None
                values.append(f"{match['prefix']}{self._epoch}.{next(self._uids)}")
            elif kind == "channel":
                match = _CHANNEL.match(recorded)
                assert match is not None
                seq = sequences.setdefault(match["seq"], f"{next(self._channels):08x}")
                values.append(f"{match['prefix']}{seq}{match['suffix'] or ''}")
            else:
                values.append(str(uuid.uuid4()))
        return values

    def events(self) -> Iterator[tuple[str, bytes]]:
        for transcript in itertools.cycle(self._transcripts):
            self.calls += 1
            values = self._values(transcript)
            base = time.time()
            for name, template, offset in zip(
                transcript.events, transcript.templates, transcript.offsets, strict=True
            ):
                stamp = f"{base + offset:.6f}"
                yield name, template.format(*values, ts=stamp).encode()


# -- the fake Asterisk (a process of its own) -----------------------------------------------


def _message(*pairs: tuple[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in pairs).encode() + b"\r\n"


@dataclass
class PeerStats:
    produced: int = 0  # events of the stream (what Asterisk generated)
    sent: int = 0  # of which written to the session (past its filters)
    batches: int = 0
    seconds: float = 0.0
    drain_wait: float = 0.0  # seconds spent waiting for the client to read (backpressure)
    cpu: float = 0.0
    calls: int = 0
    filters: list[str] = field(default_factory=list)


class FakeAsterisk:
    def __init__(self, args: argparse.Namespace) -> None:
        self.rate: float = args.rate
        self.seconds: float = args.seconds
        self.batch = args.batch_ms / 1000
        self.honour_filters = args.filters == "honour"
        self.replay = Replay([load_transcript(p) for p in args.transcript])
        self.stats = PeerStats()
        self.done = asyncio.Event()
        self.closed = asyncio.Event()
        self._started = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        codec = AmiCodec()
        includes: set[str] = set()
        replay: asyncio.Task[None] | None = None
        writer.write(BANNER)
        try:
            while data := await reader.read(65536):
                for action in codec.feed(data):
                    if self._answer(action, writer, includes) and not self._started:
                        self._started = True
                        replay = asyncio.create_task(self._replay(writer, includes))
                    if (action.get("Action") or "").lower() == "logoff":
                        writer.close()
                        return
        except ConnectionError:
            pass
        finally:
            if replay is not None:
                replay.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await replay
            self.closed.set()

    def _answer(self, action: AmiMessage, writer: asyncio.StreamWriter, includes: set[str]) -> bool:
        """Reply as Asterisk 22 does; True for a successful Login."""
        name = (action.get("Action") or "").lower()
        aid = ("ActionID", action.action_id or "")
        now = f"{time.time():.6f}"
        if name == "login":
            writer.write(
                _message(("Response", "Success"), aid, ("Message", "Authentication accepted"))
            )
            writer.write(
                _message(
                    ("Event", "FullyBooted"),
                    ("Privilege", "system,all"),
                    ("Timestamp", now),
                    ("Uptime", "5"),
                    ("LastReload", "5"),
                    ("Status", "Fully Booted"),
                )
            )
            return True
        if name == "ping":
            writer.write(
                _message(("Response", "Success"), aid, ("Ping", "Pong"), ("Timestamp", now))
            )
        elif name == "filter":
            criteria = action.get("MatchCriteria") or ""
            self.stats.filters.append(criteria)
            found = re.fullmatch(r"action\(include\),name\(([^)]*)\)", criteria)
            if self.honour_filters and found:
                includes.add(found.group(1))
                writer.write(
                    _message(("Response", "Success"), aid, ("Message", "Filter Added Successfully"))
                )
            else:
                writer.write(_message(("Response", "Error"), aid, ("Message", "Filter Not Added")))
        elif name in ("coreshowchannels", "devicestatelist"):
            what = "Channels" if name == "coreshowchannels" else "Device State Changes"
            done = (
                "CoreShowChannelsComplete"
                if name == "coreshowchannels"
                else "DeviceStateListComplete"
            )
            writer.write(
                _message(
                    ("Response", "Success"),
                    aid,
                    ("EventList", "start"),
                    ("Message", f"{what} will follow"),
                )
            )
            writer.write(
                _message(("Event", done), aid, ("EventList", "Complete"), ("ListItems", "0"))
            )
        elif name == "logoff":
            writer.write(
                _message(("Response", "Goodbye"), aid, ("Message", "Thanks for all the fish."))
            )
        else:
            writer.write(_message(("Response", "Success"), aid))
        return False

    async def _replay(self, writer: asyncio.StreamWriter, includes: set[str]) -> None:
        loop = asyncio.get_running_loop()
        stream = self.replay.events()
        stats = self.stats
        cap = max(1, math.ceil(self.rate * CATCH_UP_SECONDS))
        cpu0 = time.process_time()
        start = loop.time()
        end = start + self.seconds
        tick = 0
        try:
            while (now := loop.time()) < end:
                due = min(cap, int(self.rate * (now - start)) - stats.produced)
                chunk = []
                for _ in range(due):
                    name, data = next(stream)
                    stats.produced += 1
                    if not includes or name in includes:
                        chunk.append(data)
                if chunk:
                    stats.sent += len(chunk)
                    stats.batches += 1
                    writer.write(b"".join(chunk))
                    before = loop.time()
                    await writer.drain()
                    stats.drain_wait += loop.time() - before
                tick += 1
                await asyncio.sleep(max(0.0, start + tick * self.batch - loop.time()))
        finally:
            stats.seconds = loop.time() - start
            stats.cpu = time.process_time() - cpu0
            stats.calls = self.replay.calls
            self.done.set()


async def peer_main(args: argparse.Namespace) -> None:
    fake = FakeAsterisk(args)
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    budget = args.seconds + 60
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(budget):
            await fake.done.wait()
    print(json.dumps(fake.stats.__dict__), flush=True)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await fake.closed.wait()
    server.close()


# -- the consumer: the controller's AMI path ------------------------------------------------


@dataclass
class Meter:
    """The last AMI listener (counts events) and the loop-lag sampler."""

    warmup: float
    loop: asyncio.AbstractEventLoop
    total: int = 0
    counted: int = 0
    first_at: float | None = None
    window_start: float | None = None
    last_at: float = 0.0
    cpu_start: float = 0.0
    lags: list[float] = field(default_factory=list)
    measuring: bool = False
    stopped: bool = False
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, event: AmiMessage) -> None:
        if event.event in NOT_REPLAYED:
            return
        now = self.loop.time()
        self.total += 1
        if self.first_at is None:
            self.first_at = now
            self.loop.call_later(self.warmup, self._open)
        if self.measuring and not self.stopped:
            self.counted += 1
            self.last_at = now
        self.arrived.set()

    def _open(self) -> None:
        self.window_start = self.loop.time()
        self.last_at = self.window_start
        self.cpu_start = time.process_time()
        self.measuring = True

    async def sample_lag(self) -> None:
        loop = self.loop
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_SLEEP)
            late = loop.time() - before - LAG_SLEEP
            if self.measuring and not self.stopped:
                self.lags.append(max(0.0, late))


@dataclass
class Result:
    rate: float
    seconds: float
    received: int
    received_rate: float
    produced_rate: float
    sent: int
    received_total: int
    lags_ms: list[float]
    cpu: float
    peer_cpu: float
    redis_cpu: float | None
    drain_wait: float
    dispatch: dict[str, int]
    filters: str


def _cpu_of(pid: int | None) -> float | None:
    """User+system CPU seconds of another process, from /proc."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    parts = stat.rpartition(")")[2].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def bench_settings(ami_port: int, redis_url: str, prefix: str) -> Any:
    """acd.yaml, its AMI pointed at the fake and its Redis at the private server."""
    from acd.config import load_settings

    raw = yaml.safe_load((REPO / "acd.yaml").read_text())
    asterisk = dict(raw["asterisk"])
    asterisk["ami"] = {**asterisk["ami"], "host": "127.0.0.1", "port": ami_port}
    return load_settings(
        REPO / "acd.yaml",
        {"asterisk": asterisk, "redis": {"url": redis_url, "prefix": prefix}},
    )


async def _read_json(stream: asyncio.StreamReader, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109 - a bounded wait is the point
    async with asyncio.timeout(timeout):
        line = await stream.readline()
    if not line:
        raise RuntimeError("the fake Asterisk exited early")
    data: dict[str, Any] = json.loads(line)
    return data


async def measure(
    args: argparse.Namespace, rate: float, redis_url: str, redis_pid: int | None, run: int
) -> Result:
    from acd.errors import AmiError
    from acd.runtime.controller import Controller
    from acd.runtime.flows import load_checked_flows

    peer = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE),
        "--peer",
        "--rate",
        str(rate),
        "--seconds",
        str(args.seconds + args.warmup),
        "--batch-ms",
        str(args.batch_ms),
        "--filters",
        args.filters,
        *itertools.chain.from_iterable(("--transcript", str(p)) for p in args.transcript),
        stdout=subprocess.PIPE,
    )
    assert peer.stdout is not None
    tasks: list[asyncio.Task[Any]] = []
    controller = None
    try:
        port = int((await _read_json(peer.stdout, 15))["port"])
        settings = bench_settings(port, redis_url, f"acdbench{run}")
        controller = Controller(settings, load_checked_flows(settings, check_sounds=False))
        # What Controller.run does first, before its tasks.
        await controller.store.register_agents(
            settings.agents, time.time(), login=settings.agent_policy.auto_login
        )
        loop = asyncio.get_running_loop()
        meter = Meter(args.warmup, loop)
        controller.ami.add_listener(meter)
        tasks.append(asyncio.create_task(controller.ami.run(), name="ami"))
        if not args.no_dispatch:
            tasks.append(asyncio.create_task(controller.dispatcher.run(), name="dispatcher"))
        tasks.append(asyncio.create_task(meter.sample_lag(), name="lag"))
        redis_cpu0 = _cpu_of(redis_pid)
        await controller.ami.wait_connected(10)
        stats = await _read_json(peer.stdout, args.seconds + args.warmup + 30)
        # The replay is over: what was written is read within a few seconds, or it never is.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while meter.total < stats["sent"]:
                    meter.arrived.clear()
                    await meter.arrived.wait()
        meter.stopped = True
        cpu = time.process_time() - meter.cpu_start
        redis_cpu1 = _cpu_of(redis_pid)
        window = meter.last_at - (meter.window_start or meter.last_at)
        dispatch = controller.dispatcher.stats()
        return Result(
            rate=rate,
            seconds=window,
            received=meter.counted,
            received_rate=meter.counted / window if window > 0 else 0.0,
            produced_rate=stats["produced"] / stats["seconds"] if stats["seconds"] else 0.0,
            sent=stats["sent"],
            received_total=meter.total,
            lags_ms=sorted(lag * 1000 for lag in meter.lags),
            cpu=cpu,
            peer_cpu=stats["cpu"],
            redis_cpu=(
                redis_cpu1 - redis_cpu0
                if redis_cpu0 is not None and redis_cpu1 is not None
                else None
            ),
            drain_wait=stats["drain_wait"],
            dispatch=dispatch,
            filters=", ".join(stats["filters"]) or "none sent",
        )
    finally:
        if controller is not None:
            with contextlib.suppress(AmiError, OSError):
                await controller.ami.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if controller is not None:
            await controller.lookups.close()
            await controller.store.close()
        try:
            async with asyncio.timeout(10):
                await peer.wait()
        except TimeoutError:
            peer.kill()
            await peer.wait()


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def report(r: Result, args: argparse.Namespace) -> str:
    per_k = r.cpu / r.received * 1000 if r.received else float("nan")
    wall = r.seconds or float("nan")
    lag = r.lags_ms
    honour = args.filters == "honour"
    target = "produced by Asterisk" if honour else "sent to the client"
    share = f"{r.received_rate / r.rate:.1%} of " + ("the rate produced" if honour else "target")
    redis = f", redis-server {r.redis_cpu / wall:.0%}" if r.redis_cpu is not None else ""
    lines = [
        f"ami ingest at {r.rate:,.0f} events/s ({target}), {wall:.1f} s measured after "
        f"{args.warmup:g} s of warm-up; filters {FILTERS[args.filters]}; dispatcher "
        + ("idle (--no-dispatch)" if args.no_dispatch else "working its queue against Redis"),
        f"  events received: {r.received:,} in the window, {r.received_rate:,.0f}/s "
        f"({share}); the fake produced "
        f"{r.produced_rate:,.0f}/s, wrote {r.sent:,} of which {r.received_total:,} were read "
        f"(waited {r.drain_wait:.2f} s for the client to read)",
        f"  event-loop lag ({LAG_SLEEP * 1000:g} ms sleeper, {len(lag):,} samples): "
        f"p50 {percentile(lag, 50):.2f} ms, p99 {percentile(lag, 99):.2f} ms, "
        f"max {(lag[-1] if lag else float('nan')):.2f} ms",
        f"  CPU: {per_k:.4f} s per 1000 events received, in this process ({r.cpu / wall:.0%} of "
        f"a core); the fake {r.peer_cpu / (args.seconds + args.warmup):.0%}{redis}",
    ]
    d = r.dispatch
    if d:
        lines.append(
            f"  dispatcher, over the whole run: {d.get('submitted', 0):,} jobs submitted, "
            f"{d.get('done', 0):,} done, "
            f"{d.get('running', 0)} running and {d.get('held', 0):,} held at the end, "
            f"peak {d.get('peak_running', 0)} running at once"
        )
    if args.filters == "honour":
        lines.append(f"  filters the controller asked for: {r.filters}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=5000.0, help="events/s (default 5000)")
    parser.add_argument("--rates", default="", help="a sweep, e.g. 1000,5000,10000")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--batch-ms", type=float, default=5.0, help="the fake's write period")
    parser.add_argument("--filters", choices=("refuse", "honour"), default="refuse")
    parser.add_argument("--no-dispatch", action="store_true", help="leave the dispatcher idle")
    parser.add_argument("--redis-url", default="", help="default: a private redis-server")
    parser.add_argument(
        "--transcript", type=Path, action="append", help="default: every bench/ami/*.ami"
    )
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.transcript = args.transcript or TRANSCRIPTS
    if not args.transcript:
        parser.error("no transcript in bench/ami/")
    if args.peer:
        asyncio.run(peer_main(args))
        return 0
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()] or [args.rate]
    except ValueError:
        parser.error("--rates takes numbers separated by commas")
    if min(rates) <= 0 or args.seconds <= 0 or args.batch_ms <= 0:
        parser.error("rates, --seconds and --batch-ms must be positive")

    from acd import logs

    logs.configure("error")  # the controller's connect/resync lines would clutter the figures
    # The controller reads its secrets at construction; the fake accepts any.
    os.environ["ACD_AMI_SECRET"] = "bench-ami-secret"
    os.environ["ACD_ADMIN_TOKEN"] = "bench-admin-token-0123456789"

    results = []
    with contextlib.ExitStack() as stack:
        if args.redis_url:
            redis_url, redis_pid = args.redis_url, None
        else:
            redis_url, redis_pid = stack.enter_context(private_redis("acd-ami-ingest-"))
        for run, rate in enumerate(rates):
            result = asyncio.run(measure(args, rate, redis_url, redis_pid, run))
            print(report(result, args), flush=True)
            results.append(result)
    if len(results) > 1:
        print("\n  target/s  received/s   lag p50   lag p99   lag max  CPU s/1000 events")
        for r in results:
            print(
                f"  {r.rate:8,.0f}  {r.received_rate:10,.0f}  {percentile(r.lags_ms, 50):6.2f} ms"
                f"  {percentile(r.lags_ms, 99):6.2f} ms  {r.lags_ms[-1] if r.lags_ms else 0:6.2f}"
                f" ms  {r.cpu / r.received * 1000 if r.received else 0:8.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
