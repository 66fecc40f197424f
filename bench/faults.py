"""Faults under load: the peak bench's call shape at a steady rate, one fault per scenario, and
what the callers and the agents got.

Each scenario gets a fresh stack (`acd up` on the peak bench's ports, 200 agents that answer at
once and talk a few seconds, SIPp callers who press 1 and wait up to their patience), the
callers at `--rate` for `--duration` seconds, and one fault `--fault-at` seconds in:

- `none`: no fault (the baseline of the same run);
- `controller-kill`: SIGKILL the controller; `acd up` starts another;
- `controller-stop`: SIGSTOP the controller for `--stop-for` seconds (10), then SIGCONT;
- `redis-kill`: SIGKILL redis-server; `acd up` restarts it from its append-only file;
- `ami-kick`: Asterisk kicks the controller's AMI session (`manager kick session`);
- `asterisk-kill`: SIGKILL Asterisk; `acd up` starts it again. The calls it held die with it
  (counted as not reached, or as SIPp failures); the fault ends when the new Asterisk answers
  on AMI, and "ready again" counts from then;
- `carrier-503`: beside the callers, `--transfer-rate` callers a second press 2, which a flow
  transfer node sends to an outside number over the primary carrier trunk (a SIPp UAS that
  answers and talks 6 s; a standby trunk the same). At the fault the primary starts answering
  503: its breaker must open and the transfers go over the standby. It prints the transfers
  offered, connected (over each trunk), refused with 503, and not connected.

It prints per scenario: callers offered, reached an agent, abandoned (waited past their
patience), sent to the static fallback, lost a digit, SIPp failures, callers bridged twice,
agents double-booked, then after the drain: agents not `available` (stuck) and calls Redis
still holds, and the seconds from the fault's end until /readyz answered 200 again. A fault
loses callers only where the table says so. The call shape has no callbacks: their faults are
covered by the integration tests (tests/integration/test_callbacks.py).

Loopback only, bounded: each scenario stops by itself. Not part of `make test`; never run it
beside another bench or the tests. Usage, after `make setup`:

    .venv/bin/python bench/faults.py [--rate 40] [--duration 40] [--fault-at 15]
                                     [--scenarios none,controller-kill,...] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from peak import (  # noqa: E402 - bench/ is on sys.path when a bench runs
    ACD_NODE,
    ACD_PORTS,
    ENTRY,
    PRESS_AT,
    Result,
    _interrupt,
    _port_open,
    acd_stack,
    agent_ids,
    check_root,
    descendants,
    drive,
    other_sipp,
    render,
    sipp_stats,
    start_sipp,
    stop,
)

from acd import logs  # noqa: E402
from acd.config import AsteriskSettings, load_settings  # noqa: E402
from acd.errors import AcdError  # noqa: E402
from acd.runtime.asterisk import node_paths, run_cli  # noqa: E402
from tests.integration.sipp import write_dtmf_pcap  # noqa: E402

SCENARIOS = (
    "none",
    "controller-kill",
    "controller-stop",
    "redis-kill",
    "ami-kick",
    "asterisk-kill",
    "carrier-503",
)
PREFIX = "acdpeak"  # the peak bench's Redis prefix
FAULT_FLOWS = REPO / "bench" / "faults" / "flows"
UAS_SCENARIOS = REPO / "tests" / "integration" / "scenarios"
TRANSFER_CALLER_ID = "5550199"  # not the peak callers' ID: the peak meter leaves them out
TRANSFER_TALK = 6  # seconds the carriers' UAS talks (scenarios/agent_hangs_up.xml)
CARRIER_PORT, STANDBY_PORT, TRANSFER_PORT = 5480, 5482, 5462
MEDIA = {"primary": 34200, "standby": 34400, "failing": 34600, "callers": 34800}


def _with_carriers(config: dict[str, object]) -> None:
    """The stack of carrier-503: the fault bench's flow, and two outbound trunks."""
    config["flows_dir"] = str(FAULT_FLOWS)
    trunks = list(config["trunks"])  # type: ignore[call-overload]
    for name, port, role in (("carrier-out", CARRIER_PORT, "primary"),
                             ("standby-out", STANDBY_PORT, "standby")):  # fmt: skip
        address = {"host": "127.0.0.1", "port": port}
        trunks.append({"name": name, "address": address, "role": role, "capacity": 60})
    config["trunks"] = trunks


class Carriers:
    """The carriers' SIPp UASes of carrier-503 and the callers who press 2."""

    def __init__(self, workdir: Path, budget: float) -> None:
        self.workdir, self.budget = workdir, budget
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _uas(self, name: str, scenario: str, port: int) -> None:
        args = [
            "-sf", str(UAS_SCENARIOS / f"{scenario}.xml"), "-i", "127.0.0.1", "-p", str(port),
            "-mp", str(MEDIA[name]), "-timeout", f"{self.budget + 60:.0f}s", "-nostdin",
            "-trace_stat", "-fd", "1", "-stf", str(self.workdir / f"{name}.csv"),
            "-trace_err", "-error_file", str(self.workdir / f"{name}.err"),
        ]  # fmt: skip
        self.procs[name] = start_sipp(args, self.workdir / f"{name}.log", self.workdir)

    def start(self, rate: float, duration: float, patience: float) -> None:
        self._uas("primary", "agent_hangs_up", CARRIER_PORT)
        self._uas("standby", "agent_hangs_up", STANDBY_PORT)
        time.sleep(0.5)  # listening before the first transfer
        pcap = write_dtmf_pcap(self.workdir / "dtmf2.pcap", "2", seq=1000, timestamp=16000)
        caller = render(
            "caller.xml",
            self.workdir / "transfer-caller.xml",
            {
                "CALLER_ID": TRANSFER_CALLER_ID,
                "PRESS_MS": str(int(PRESS_AT * 1000)),
                "DTMF_PCAP": str(pcap),
                "WAIT_MS": str(int((patience + TRANSFER_TALK + 2) * 1000)),
            },
        )
        calls = max(1, round(rate * duration))
        args = [
            f"127.0.0.1:{ACD_PORTS.sip}", "-sf", str(caller), "-s", ENTRY, "-i", "127.0.0.1",
            "-p", str(TRANSFER_PORT), "-mp", str(MEDIA["callers"]), "-r", f"{rate:g}",
            "-m", str(calls), "-l", str(calls + 10), "-timeout", f"{self.budget:.0f}s",
            "-timeout_error", "-nostdin", "-trace_stat", "-fd", "1",
            "-stf", str(self.workdir / "transfer-callers.csv"),
            "-trace_err", "-error_file", str(self.workdir / "transfer-callers.err"),
        ]  # fmt: skip
        self.procs["transfer-callers"] = start_sipp(
            args, self.workdir / "transfer-callers.log", self.workdir
        )

    def fail(self) -> None:
        """The primary carrier answers 503 from now on."""
        stop(self.procs["primary"])
        self._uas("failing", "carrier_503", CARRIER_PORT)

    def finish(self) -> dict[str, int]:
        """Once the callers are done: what each side counted."""
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.procs["transfer-callers"].wait(self.budget)
            time.sleep(TRANSFER_TALK + 2)  # the last answered transfers end
        finally:
            for proc in self.procs.values():
                stop(proc)
        stats = {n: sipp_stats(self.workdir / f"{n}.csv") for n in self.procs}
        offered = stats["transfer-callers"].get("TotalCallCreated", 0)
        # The carriers' UAS answer every INVITE at once: a call the primary took is a transfer
        # connected over it, even if it was cut when the primary went down (its UAS stopped
        # mid-call, as a carrier that fails does: not the engine's doing).
        primary = stats["primary"].get("IncomingCall", 0)
        cut = primary - stats["primary"].get("SuccessfulCall", 0)
        standby = stats["standby"].get("SuccessfulCall", 0)
        return {
            "offered": offered,
            "connected": primary + standby,
            "over_primary": primary,
            "cut_by_the_failure": cut,
            "over_standby": standby,
            "refused_503": stats.get("failing", {}).get("SuccessfulCall", 0),
            "not_connected": offered - primary - standby,
        }


@dataclass
class Fault:
    scenario: str
    carriers: Carriers | None = None
    at: float | None = None  # monotonic time the fault began
    ended: float | None = None  # ... and ended (the process back, the signal sent)
    ready_s: float | None = None  # from its end until /readyz answered 200
    note: str = ""


@dataclass
class Outcome:
    scenario: str
    rate: float
    result: dict[str, object] = field(default_factory=dict)
    ready_s: float | None = None
    agents_stuck: int | None = None
    calls_left: int | None = None
    transfers: dict[str, int] = field(default_factory=dict)
    note: str = ""


def _supervisor(state: Path) -> int:
    return int((state / "acd.pid").read_text())


def _controller(state: Path) -> int:
    try:
        return int((state / "controller.pid").read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _child_pid(state: Path, comm: str) -> int:
    """The pid of the process named `comm` under `acd up` (redis-server's command line is
    rewritten to its address: its name is what identifies it)."""
    for proc in descendants(_supervisor(state)):
        if proc.comm == comm:
            return proc.pid
    raise AcdError(f"no {comm} under acd up")


def _ready(state: Path) -> bool:
    token = (state / "admin.token").read_text().strip()
    request = urllib.request.Request(
        f"http://127.0.0.1:{ACD_PORTS.admin}/readyz", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def _until_ready(state: Path, since: float, within: float = 60) -> float | None:
    while time.monotonic() - since < within:
        if await asyncio.to_thread(_ready, state):
            return round(time.monotonic() - since, 2)
        await asyncio.sleep(0.1)
    return None


def _socket_inodes(pid: int) -> dict[int, int]:
    """A process's sockets: inode -> its fd."""
    out = {}
    for fd in (Path("/proc") / str(pid) / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out[int(target[8:-1])] = int(fd.name)
    return out


def _tcp() -> list[tuple[int, int, int]]:
    """(local port, remote port, inode) of every IPv4 TCP socket."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], int(fields[9])
        rows.append((int(local.split(":")[1], 16), int(remote.split(":")[1], 16), inode))
    return rows


def _kick_ami(state: Path) -> int:
    """Asterisk kicks the controller's AMI session, not the bench observer's (the monitor
    user's): the session whose socket's peer is the controller's. Returns the fd kicked."""
    ami = ACD_PORTS.ami
    mine = _socket_inodes(_controller(state))
    ports = {local for local, remote, inode in _tcp() if inode in mine and remote == ami}
    asterisk = next((p.pid for p in descendants(_supervisor(state)) if p.comm == "asterisk"), None)
    if asterisk is None or not ports:
        raise AcdError("cannot find the controller's AMI connection")
    theirs = _socket_inodes(asterisk)
    fds = [theirs[inode] for local, remote, inode in _tcp()
           if local == ami and remote in ports and inode in theirs]  # fmt: skip
    if not fds:
        raise AcdError("cannot find Asterisk's end of the controller's AMI connection")
    paths = node_paths(load_settings(state / "acd-peak.yaml"))
    for fd in fds:
        run_cli(paths, f"manager kick session {fd}")
    return fds[0]


async def inject(fault: Fault, state: Path, after: float, stop_for: float) -> None:
    """The scenario's fault; a fault that could not be injected is said in the note (the run
    goes on, as a baseline)."""
    try:
        await _inject(fault, state, after, stop_for)
    except (AcdError, OSError, ValueError) as exc:
        fault.note = f"fault not injected: {exc!r}"


async def _inject(fault: Fault, state: Path, after: float, stop_for: float) -> None:
    await asyncio.sleep(after)
    fault.at = time.monotonic()
    if fault.scenario == "none":
        fault.ended = fault.at
        return
    if fault.scenario == "controller-kill":
        os.kill(_controller(state), signal.SIGKILL)
    elif fault.scenario == "controller-stop":
        pid = _controller(state)
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(stop_for)
        os.kill(pid, signal.SIGCONT)
    elif fault.scenario == "redis-kill":
        os.kill(_child_pid(state, "redis-server"), signal.SIGKILL)
    elif fault.scenario == "ami-kick":
        fault.note = f"AMI session fd {await asyncio.to_thread(_kick_ami, state)} kicked"
    elif fault.scenario == "asterisk-kill":
        old = _child_pid(state, "asterisk")
        os.kill(old, signal.SIGKILL)
        while True:  # until another Asterisk answers on AMI
            await asyncio.sleep(0.05)
            with contextlib.suppress(AcdError):
                if _child_pid(state, "asterisk") != old and await asyncio.to_thread(
                    _port_open, ACD_PORTS.ami
                ):
                    break
            if time.monotonic() - fault.at > 60:
                raise AcdError("acd up did not start Asterisk again within 60 s")
        fault.note = f"Asterisk back in {time.monotonic() - fault.at:.1f} s"
    elif fault.scenario == "carrier-503" and fault.carriers is not None:
        await asyncio.to_thread(fault.carriers.fail)
    fault.ended = time.monotonic()
    await asyncio.sleep(0.2)  # the process is gone, or its link: not ready any more
    fault.ready_s = await _until_ready(state, fault.ended)


def _after_drain(agents: int) -> tuple[int, int]:
    """(agents not available, calls Redis still holds) once nothing is left in Asterisk, given
    up to 10 s to settle (wrap-up is 0)."""
    client = redis.Redis(port=ACD_PORTS.redis, decode_responses=True, socket_timeout=5)
    ids = agent_ids(agents)
    stuck = calls = -1
    for _ in range(100):
        states = [client.hget(f"{PREFIX}:agent:{i}", "state") for i in ids]
        stuck = sum(1 for s in states if s != "available")
        calls = client.scard(f"{PREFIX}:calls:{ACD_NODE}") + client.zcard(f"{PREFIX}:q:presale")
        if stuck == 0 and calls == 0:
            break
        time.sleep(0.1)
    return stuck, calls


def run_scenario(scenario: str, args: argparse.Namespace, tmp: Path) -> Outcome:
    outcome = Outcome(scenario, args.rate)
    result = Result("acd", args.rate, args.duration, args.talk, args.patience)
    base = tmp / scenario
    state, workdir = base / "state", base / "sipp"
    state.mkdir(parents=True)
    workdir.mkdir()
    fault = Fault(scenario)
    carriers = scenario == "carrier-503"
    if carriers:
        budget = args.duration + args.patience + TRANSFER_TALK + 30
        fault.carriers = Carriers(workdir, budget)

    async def run(system: object) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(inject(fault, state, args.fault_at, args.stop_for))
            tasks.create_task(drive(system, result, workdir, args.patience))  # type: ignore[arg-type]

    try:
        with acd_stack(state, args.agents, _with_carriers if carriers else None) as running:
            try:
                if fault.carriers is not None:
                    fault.carriers.start(args.transfer_rate, args.duration, args.patience)
                asyncio.run(run(running))
            finally:
                if fault.carriers is not None:
                    outcome.transfers = fault.carriers.finish()
            outcome.agents_stuck, outcome.calls_left = _after_drain(args.agents)
    except* (AcdError, OSError, subprocess.SubprocessError, redis.RedisError) as errors:
        outcome.note = "; ".join(str(e) for e in errors.exceptions)[:500]
    outcome.ready_s = fault.ready_s
    outcome.note = "; ".join(filter(None, [fault.note, outcome.note, result.error or ""]))
    keep = ("offered", "reached", "reached_pct", "abandons", "static_fallback", "lost_digit",
            "sipp_failed", "bridged_twice", "double_booked", "p95_ms")  # fmt: skip
    outcome.result = {k: v for k, v in asdict(result).items() if k in keep}
    return outcome


def table(outcomes: list[Outcome]) -> str:
    head = ("scenario", "offered", "reached", "abandoned", "static", "lost digit", "SIPp failed",
            "bridged 2x", "double-booked", "stuck agents", "calls left", "ready again")  # fmt: skip
    rows = [head]
    for o in outcomes:
        r = o.result
        rows.append((
            o.scenario, str(r.get("offered", "-")),
            f"{r.get('reached', '-')} ({r.get('reached_pct', '-')}%)",
            str(r.get("abandons", "-")), str(r.get("static_fallback", "-")),
            str(r.get("lost_digit", "-")), str(r.get("sipp_failed", "-")),
            str(r.get("bridged_twice", "-")), str(r.get("double_booked", "-")),
            "-" if o.agents_stuck is None else str(o.agents_stuck),
            "-" if o.calls_left is None else str(o.calls_left),
            "-" if o.ready_s is None else f"{o.ready_s:.1f} s",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in rows]  # fmt: skip
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=40.0, help="calls/s (half the knee)")
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--fault-at", type=float, default=15.0, help="seconds into the run")
    parser.add_argument("--stop-for", type=float, default=10.0, help="controller-stop's pause")
    parser.add_argument("--talk", type=float, default=4.0)
    parser.add_argument("--patience", type=float, default=30.0)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument(
        "--transfer-rate", type=float, default=2.0, help="carrier-503's callers who press 2, /s"
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--json", type=Path, help="write every figure here too")
    parser.add_argument(
        "--keep", action="store_true", help="keep each scenario's state, logs and SIPp files"
    )
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    check_root(AsteriskSettings().root)
    if other_sipp():
        parser.error("another SIPp is running: never bench beside another bench or the tests")
    logs.configure("error")
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl-C: no stack outlives the bench
    outcomes = []
    with contextlib.ExitStack() as cleanup:
        tmp = tempfile.mkdtemp(prefix="acd-faults-")
        if args.keep:
            print(f"faults: state, logs and SIPp files kept in {tmp}", file=sys.stderr)
        else:
            cleanup.callback(shutil.rmtree, tmp, True)
        for scenario in scenarios:
            print(f"faults: {scenario} at {args.rate:g}/s ...", file=sys.stderr, flush=True)
            outcomes.append(run_scenario(scenario, args, Path(tmp)))
            print(f"faults: {json.dumps(asdict(outcomes[-1]))}", file=sys.stderr, flush=True)
    print(table(outcomes))
    for o in outcomes:
        if o.transfers:
            t = o.transfers
            print(
                f"{o.scenario}: transfers offered {t['offered']}, connected {t['connected']} "
                f"({t['over_primary']} over the primary, {t['cut_by_the_failure']} of them cut "
                f"when it failed; {t['over_standby']} over the standby), "
                f"refused 503 {t['refused_503']}, not connected {t['not_connected']}"
            )
        if o.note:
            print(f"{o.scenario}: {o.note}")
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
