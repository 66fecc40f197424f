"""Benchmark: the IVR turn under load, on the real stack.

A turn is the time from Asterisk receiving a caller's DTMF digit to the next prompt starting on
that channel: the digit ends the running STREAM FILE, the controller reads the result over
FastAGI, walks the flow and sends the next STREAM FILE. Both ends come from Asterisk's own clock
(the `Timestamp:` of AMI `DTMFEnd` with `Direction: Received`, and of the following
`AGIExecStart` of a prompt command on the same Uniqueid), so the figure holds whatever the load
on this process. Only a digit among the running prompt's escape digits starts a turn; the others
are counted by what became of them (ended the IVR, played over, lost between AGI commands).

A private stack (`acd up --detach` with its own state directory, node name, ports and secrets,
as the integration tests run theirs), one SIPp UAS for the agents, and ONE SIPp process placing
`--calls` calls at `--rate` calls/s to the promo flow. Every caller presses 1 during the
welcome (type-ahead: promo-rules starts), 9 twice (promo-rules starts again) and 0 (queued for
presale, no prompt follows), then hangs up: three turns per call.

    .venv/bin/python bench/ivr_turn.py [--calls 60] [--rate 6] [--keep]

Everything listens on 127.0.0.1, away from the developer stack's and the integration tests'
ports; the run stops by itself (SIPp's own -timeout bounds it) and `acd down` always follows.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acd import logs
from acd.adapters.ami import AmiClient
from acd.errors import AcdError
from acd.protocol.ami import AmiMessage

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    # The SIPp helpers live in the test tree, which is not installed: import them from the checkout.
    sys.path.insert(0, str(REPO))

from tests.integration import sipp  # noqa: E402 - importable only once the checkout is on sys.path

PORTS = {
    "sip": 5260,
    "ami": 5238,
    "agi": 4773,
    "redis": 6579,
    "admin": 8288,
    "agents": 5270,
    "orders": 8290,  # nothing listens there: the promo path measured here makes no lookup
    "callers": 5261,
}
# SIPp's RTP ports: clear of 16000-19999 (kept for others) and of Asterisk's rtp.conf range
# (20000-30000), where a taken port would only make Asterisk pick another.
CALLERS_MEDIA_PORT = 31000
AGENTS_MEDIA_PORT = 31100
NODE = "bench-a"
CALLER_ID = "5550100"
# AGI commands that start a prompt.
PROMPT_COMMANDS = ("STREAM FILE", "CONTROL STREAM FILE", "SAY ", "GET DATA", "GET OPTION")
ANY_DIGIT = "0123456789*#"
TURN_WINDOW_US = 10_000_000  # a digit with no prompt within 10 s ended the IVR (the final 0)
PRESS_INTERVAL = 2.2  # between presses on promo-rules (14 s long): each lands mid-prompt
HANG_ON_AFTER_QUEUED = 2.0


def caller_script() -> sipp.Script:
    """1 in the middle of the welcome, 9, 9 while promo-rules plays, 0 to queue, then hang up."""
    first = sipp.ANSWER_SECONDS + sipp.prompt_seconds("promo-welcome") / 2
    presses = [(first + i * PRESS_INTERVAL, digit) for i, digit in enumerate("1990")]
    if presses[-1][0] > first + sipp.prompt_seconds("promo-rules"):
        raise RuntimeError("the presses no longer fit inside promo-rules")
    script = sipp.Script()
    for at, digit in presses:
        script.at(at, digit)
    return script.wait(HANG_ON_AFTER_QUEUED)


def bench_config(state: Path) -> dict[str, Any]:
    """The sample deployment (acd.yaml) on the bench's ports and a private state directory."""
    config: dict[str, Any] = yaml.safe_load((REPO / "acd.yaml").read_text())
    config["state_dir"] = str(state)
    config["flows_dir"] = str(REPO / "ivr_flows")
    ast = config["asterisk"]
    ast["node"] = NODE
    ast["config_dir"] = str(REPO / "asterisk-config")
    ast["sounds_dir"] = str(REPO / ".state" / "sounds")
    ast["sip"] = {"host": "127.0.0.1", "port": PORTS["sip"]}
    ast["ami"] = {
        "host": "127.0.0.1",
        "port": PORTS["ami"],
        "username": "acd",
        "secret_file": str(state / "ami.secret"),
        "monitor_secret_file": str(state / "ami-monitor.secret"),  # the observer's, read-only
    }
    config["agi"] = {"host": "127.0.0.1", "port": PORTS["agi"]}
    config["redis"] = {"url": f"redis://127.0.0.1:{PORTS['redis']}/0", "prefix": "acdbench"}
    config["admin"] = {
        "host": "127.0.0.1",
        "port": PORTS["admin"],
        "token_file": str(state / "admin.token"),
    }
    config["agent_contact"] = {"host": "127.0.0.1", "port": PORTS["agents"]}
    # The full promo menu whatever the load (the shipped auto mode would switch a loaded run
    # to promo-lite, which is not what this measures).
    for entry in config["entries"]:
        entry["mode"] = "normal"
    for lookup in config.get("lookups", {}).values():
        lookup["url"] = f"http://127.0.0.1:{PORTS['orders']}/orders/{{order}}"
    return config


def digits_taken(command: str) -> str | None:
    """The digits that end a running AGI command (its escape digits), or None for a command
    during which digits are not read at all (res_agi reads and drops them between commands).

    >>> digits_taken('STREAM FILE "acd/promo-rules" "09"'), digits_taken("WAIT FOR DIGIT 5000")
    ('09', '0123456789*#')
    """
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    verb = " ".join(words[:2]).upper()
    if verb in ("WAIT FOR", "GET DATA"):
        return ANY_DIGIT
    if verb == "GET OPTION":
        return words[3] if len(words) > 3 else ""
    if verb == "STREAM FILE" or words[:1] == ["SAY"]:
        return words[3] if len(words) > 3 else ""
    if verb == "CONTROL STREAM":
        return words[4] if len(words) > 4 else ""
    return None


def ami_micros(timestamp: str | None) -> int | None:
    """AMI's `Timestamp: 1712345678.123456` as integer microseconds (no float rounding)."""
    if not timestamp:
        return None
    seconds, _, fraction = timestamp.partition(".")
    if not seconds.isdigit() or not (fraction or "0").isdigit():
        return None
    return int(seconds) * 1_000_000 + int(fraction.ljust(6, "0")[:6])


@dataclass
class _Channel:
    in_ivr: bool = False  # the FastAGI session ran at least one command on this channel
    listening: bool = False  # a prompt or WAIT FOR DIGIT is running: digits are read
    taken: str = ""  # the digits that end it (a menu prompt's valid digits)
    digit_at: int | None = None  # a received digit waiting for the next prompt, in µs
    missed: int = 0  # digits that arrived while no prompt nor wait ran


@dataclass
class TurnMeter:
    """An AMI listener pairing each received digit with the next prompt on the same channel."""

    caller_id: str
    turns_us: list[int] = field(default_factory=list)
    digits: int = 0
    no_prompt: int = 0  # no prompt followed within the window: the IVR was done (the final 0)
    not_taken: int = 0  # not among the running prompt's escape digits: it played on
    not_heard: int = 0  # on a call in the IVR, between its commands: the IVR never saw the digit
    outside_ivr: int = 0  # on a call whose IVR never ran (static fallback, controller down)
    calls_at: list[int] = field(default_factory=list)  # Newchannel times of our callers
    ivr_calls: int = 0
    static_fallbacks: int = 0  # callers sent to the dialplan's static menu (AcdStaticFallback)
    _channels: dict[str, _Channel] = field(default_factory=dict)
    _hung_up: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, event: AmiMessage) -> None:
        uid = event.get("Uniqueid") or ""
        at = ami_micros(event.get("Timestamp"))
        name = event.event
        if name == "Newchannel" and event.get("CallerIDNum") == self.caller_id:
            self._channels[uid] = _Channel()
            self._hung_up.clear()
            if at is not None:
                self.calls_at.append(at)
            return
        channel = self._channels.get(uid)
        if channel is None or at is None:
            return
        if name == "DTMFEnd" and event.get("Direction") == "Received":
            self._on_digit(channel, event.get("Digit") or "", at)
        elif name == "AGIExecStart":
            self._on_command_start(channel, event.get("Command") or "", at)
        elif name == "AGIExecEnd":
            if digits_taken(event.get("Command") or "") is not None:
                channel.listening = False
        elif name == "UserEvent" and event.get("UserEvent") == "AcdStaticFallback":
            self.static_fallbacks += 1
        elif name == "Hangup":
            self._close(channel)
            del self._channels[uid]
            if not self._channels:
                self._hung_up.set()

    def _on_digit(self, channel: _Channel, digit: str, at: int) -> None:
        self.digits += 1
        self._expire(channel)  # a digit still waiting was answered by no prompt
        if not channel.listening:
            channel.missed += 1
        elif digit and digit in channel.taken:
            channel.digit_at = at
        else:
            # Only a digit that ended the prompt starts a turn: pairing this one with whatever
            # prompt comes next would time the rest of the prompt that it did not interrupt.
            self.not_taken += 1

    def _on_command_start(self, channel: _Channel, command: str, at: int) -> None:
        if not channel.in_ivr:
            channel.in_ivr = True
            self.ivr_calls += 1
        taken = digits_taken(command)
        if taken is not None:
            channel.listening, channel.taken = True, taken
        if command.upper().startswith(PROMPT_COMMANDS) and channel.digit_at is not None:
            turn = at - channel.digit_at
            channel.digit_at = None
            if turn <= TURN_WINDOW_US:
                self.turns_us.append(turn)
            else:
                self.no_prompt += 1

    def _expire(self, channel: _Channel) -> None:
        if channel.digit_at is not None:
            self.no_prompt += 1
            channel.digit_at = None

    def _close(self, channel: _Channel) -> None:
        self._expire(channel)
        if channel.in_ivr:
            self.not_heard += channel.missed
        else:
            self.outside_ivr += channel.missed
        channel.missed = 0

    def finish(self) -> None:
        """Settle the channels that never reported their hangup."""
        for channel in self._channels.values():
            self._close(channel)

    async def wait_hung_up(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bounded wait is the point
        """Until every caller channel seen has hung up; False after `timeout` seconds."""
        if not self._channels:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._hung_up.wait()
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True)
class CallerRun:
    returncode: int | None
    created: int
    failed: int
    log: Path


async def run_callers(
    meter: TurnMeter, secret: str, workdir: Path, entry: str, calls: int, rate: float
) -> CallerRun:
    """The AMI observer up first, then the SIPp callers until they are done and hung up."""
    script = caller_script()
    scenario = sipp.caller_scenario(
        workdir / "ivr_turn-caller.xml", script.render(workdir, "ivr_turn"), CALLER_ID
    )
    # SIPp's -timeout ends the run however the stack behaves: the last call starts at calls/rate.
    budget = math.ceil(calls / rate + script.t + 30)
    client = AmiClient(host="127.0.0.1", port=PORTS["ami"], username="acd-monitor", secret=secret)
    client.add_listener(meter)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(client.run())
        try:
            await client.wait_connected(timeout=15)
            caller = sipp.start_caller(
                scenario,
                f"127.0.0.1:{PORTS['sip']}",
                entry,
                PORTS["callers"],
                CALLERS_MEDIA_PORT,
                workdir,
                calls=calls,
                rate=rate,
                timeout_s=budget,
            )
            try:
                returncode: int | None = await asyncio.to_thread(caller.wait, budget + 10)
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                caller.stop()
            # Hangups of calls SIPp gave up on may come later; the digits' events came first.
            await meter.wait_hung_up(timeout=10)
        finally:
            await client.close()
    meter.finish()
    created, failed = sipp_counts(caller.log)
    return CallerRun(returncode, created, failed, caller.log)


def sipp_counts(log: Path) -> tuple[int, int]:
    """Calls created and failed, from the last statistics screen SIPp printed."""
    created = failed = -1
    for line in log.read_text(errors="replace").splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) < 3 or not cells[2].isdigit():
            continue
        if cells[0].startswith("Outgoing calls created"):
            created = int(cells[2])
        elif cells[0].startswith("Failed call"):
            failed = int(cells[2])
    return created, failed


def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class ControllerState:
    rss_kib: int | None  # now and at its peak, from /proc via STATE/controller.pid
    peak_kib: int | None
    exits: int  # controller processes that died during the run (the supervisor restarts them)


def controller_state(state: Path) -> ControllerState:
    log = state / "acd.log"
    exits = (
        log.read_text(errors="replace").count('"stack.controller_exited"') if log.exists() else 0
    )
    values = {}
    try:
        pid = int((state / "controller.pid").read_text())
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        status = ""
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return ControllerState(values.get("VmRSS"), values.get("VmHWM"), exits)


def _acd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The generated files hold the secrets this run uses: no inherited override.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ACD_AMI_SECRET", "ACD_AMI_MONITOR_SECRET", "ACD_ADMIN_TOKEN")
    }
    return subprocess.run(
        [sys.executable, "-m", "acd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env=env,
    )


def report(meter: TurnMeter, callers: CallerRun, rate: float, controller: ControllerState) -> str:
    turns = sorted(meter.turns_us)
    calls = len(meter.calls_at)
    span = (max(meter.calls_at) - min(meter.calls_at)) / 1e6 if calls > 1 else 0.0
    offered = f"{(calls - 1) / span:.1f}/s" if span > 0 else "n/a"
    failed = str(callers.failed) if callers.failed >= 0 else "unknown"
    figures = (
        f"p50 {percentile(turns, 50) / 1000:.1f} ms, p99 {percentile(turns, 99) / 1000:.1f} ms, "
        f"max {turns[-1] / 1000:.1f} ms"
        if turns
        else "none measured"
    )
    rss = (
        f"{controller.rss_kib / 1024:.0f} MiB (peak {(controller.peak_kib or 0) / 1024:.0f} MiB)"
        if controller.rss_kib is not None
        else "unreadable"
    )
    lines = [
        f"ivr turn (DTMF received -> next prompt started), {calls} callers at {rate:g}/s "
        f"(measured {offered}), {len(turns)} turns: {figures}",
        f"  calls: {callers.created} created by SIPp, {failed} failed (SIPp exit "
        f"{callers.returncode}); {meter.ivr_calls} reached the IVR, {meter.static_fallbacks} "
        "went to the static fallback",
        f"  digits received: {meter.digits}; no prompt within {TURN_WINDOW_US / 1e6:.0f} s "
        f"(ignored, the final 0): {meter.no_prompt}; not a digit the playing prompt takes: "
        f"{meter.not_taken}; lost between IVR commands: {meter.not_heard}; on calls outside "
        f"the IVR: {meter.outside_ivr}",
        f"  controller RSS {rss}; controller exits during the run: {controller.exits}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=60, help="callers in total (default 60)")
    parser.add_argument("--rate", type=float, default=6.0, help="new calls per second (default 6)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the state directory and SIPp logs afterwards"
    )
    args = parser.parse_args()
    logs.configure("error")  # the observer's connect/close lines would only clutter the figures
    if args.calls < 1 or args.rate <= 0:
        parser.error("--calls must be at least 1 and --rate positive")
    tmp = Path(tempfile.mkdtemp(prefix="acd-ivr-turn-"))
    try:
        state, workdir = tmp / "state", tmp / "sipp"
        state.mkdir()
        workdir.mkdir()
        for name in ("ami.secret", "ami-monitor.secret", "admin.token"):
            (state / name).write_text(secrets.token_urlsafe(24))
            os.chmod(state / name, 0o600)
        config = bench_config(state)
        config_path = state / "acd-bench.yaml"
        config_path.write_text(yaml.safe_dump(config))
        entry = str(config["entries"][0]["number"])
        try:
            up = _acd(config_path, "up", "--detach")
            if up.returncode != 0:
                log = state / "acd.log"
                tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
                print(
                    f"ivr_turn: the stack did not start: {up.stderr.strip()}\n{tail}",
                    file=sys.stderr,
                )
                return 2
            uas = sipp.start_agents_uas(PORTS["agents"], AGENTS_MEDIA_PORT, workdir, timeout_s=600)
            meter = TurnMeter(CALLER_ID)
            secret = (state / "ami-monitor.secret").read_text()
            observer_error: Exception | None = None
            try:
                callers = asyncio.run(
                    run_callers(meter, secret, workdir, entry, args.calls, args.rate)
                )
                controller = controller_state(state)
            except* AcdError as errors:
                observer_error = errors.exceptions[0]
            finally:
                uas.stop()
            if observer_error is not None:
                print(f"ivr_turn: the AMI observer failed: {observer_error}", file=sys.stderr)
                return 2
        finally:
            down = _acd(config_path, "down")
            if down.returncode != 0:
                print(f"ivr_turn: acd down failed: {down.stderr.strip()}", file=sys.stderr)
        print(report(meter, callers, args.rate, controller))
    finally:
        if args.keep:
            print(f"ivr_turn: state, logs and SIPp files kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if not meter.turns_us:
        print("ivr_turn: no turn measured (--keep keeps the logs)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
