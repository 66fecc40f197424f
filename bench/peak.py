"""Capacity bench: the promotion peak's call shape against acd and against a plain app_queue peer.

The call shape: a customer dials 1000, hears a one-digit menu (`hello-world`), presses 1 (RFC 4733)
2.5 s after the answer and waits up to `--patience` seconds (30) for a `presale` agent; bridged, the
call lasts until the agent hangs up after `--talk` seconds (4). `--agents` agents (200), skill
presale level 5, no wrap-up, all answered by one SIPp UAS that picks up at once and hangs up
itself.

The two systems, on the same Asterisk 22 root (/var/cache/acd/asterisk-root), one after the
other for each rate (never both at once), each with its own ports on 127.0.0.1:

- acd: a private stack (`acd up --detach`, own state directory, node name, ports, secrets),
  configured from acd.yaml with these agents (`wrap_up: 0`, `pause_on_missed: false`), entry 1000
  in `normal` mode running bench/peak/flows/peak.yaml, the overload level pinned to 0;
- app_queue: Asterisk alone with bench/peak/asterisk/ as /etc/asterisk (Background + WaitExten,
  1 -> Queue(presale): leastrecent, autofill, ringinuse = no, the same agents as members).

For each system and rate, a fresh stack (so memory peaks are per rate), one SIPp process placing
`-r RATE -m RATE*DURATION` calls (bounded by SIPp's -timeout), then a drain until Asterisk has no
channel left. Figures, all from the system's own Asterisk (AMI events and their `Timestamp:`):

- offered: calls SIPp created (and the configured rate); SIPp failures from its -trace_stat CSV;
- reached: callers whose agent leg was answered (DialEnd ANSWER on the caller's channel);
- digit -> agent: from the caller's digit (DTMFEnd, Direction Received) to the first agent leg
  dialled for that caller (DialBegin, Uniqueid = the caller; the agent's INVITE leaves then),
  p50/p95/p99 over the callers who queued, those not dialled within their patience counting as
  infinite (shown as `>PATIENCE`), so that abandons weigh on the percentiles;
- lost digit: Asterisk received the caller's digit, yet the caller never queued (acd: no
  ACD_RESULT=queued set on the channel, which the IVR sets as it queues the caller in Redis;
  app_queue: no QueueCallerJoin for presale) nor went to the static fallback;
- no dtmf: callers from whom Asterisk received no digit at all (hung up on before the press, or
  a SIPp too late to press, see the watchdog note under saturation);
- static fallback: acd's dialplan sent the caller to its static path (UserEvent
  AcdStaticFallback, or QueueCallerJoin of the acd-fallback queue);
- abandons: queued callers whose agent did not answer within their patience (SIPp cannot tell a
  bridged caller from a waiting one, so its callers give up `talk + 2` s later; an agent who
  answers in that margin counts as an abandon, see bench/peak/caller.xml);
- CPU: utime+stime from /proc of the controller processes (every acd process of the stack: the
  `acd up` supervisor, its `acd run` controllers, and the controllers it reaped), of Asterisk
  and of Redis, from just before SIPp starts to the end of the drain; controller CPU per offered
  call; the controllers' peak RSS (VmHWM of the `acd run` processes, summed);
- redis cmd/call: the commands acd's Redis ran over the same span (INFO commandstats: each
  EVALSHA and each command a script ran, a pipeline's commands one by one), per offered call; by
  command in --json.

The AMI observer (this process) reads only the events it needs (a session filter). SIPp, the
observer and the system under test share this machine's cores: past saturation, SIPp's own
lateness is reported (its watchdog counters) next to the table, with the raw counters in --json.

Then each system's knee: the highest offered rate with >= 99.5 % reached and p95 <= 1 s, and the
ratio of the knees. Run it after `make setup`, with no other SIPp running:

    .venv/bin/python bench/peak.py [--rates 10,20,40,60,80] [--duration 30] [--agents 200]
        [--talk 4 | --talk 4,4,4,5,6] [--systems acd,app_queue] [--json FILE] [--keep]

Loopback only; every subprocess has a timeout, and `acd down` and the peer's Asterisk stop in
`finally`. It is a bench, not a test: `make test` does not run it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acd import logs
from acd.adapters.ami import AmiClient
from acd.config import AsteriskSettings
from acd.errors import AcdError
from acd.protocol.ami import AmiMessage
from acd.runtime.asterisk import NodePaths, asterisk_ids, check_root, event_filters, launch_command

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    # The SIPp helpers live in the test tree, which is not installed: import them from the checkout.
    sys.path.insert(0, str(REPO))

from ivr_turn import ami_micros  # noqa: E402 - bench/ is on sys.path when a bench runs

from tests.integration import sipp  # noqa: E402 - importable only once the checkout is on sys.path

PEAK = REPO / "bench" / "peak"
ENTRY = "1000"
CALLER_ID = "5550188"
TRUNK = "carrier-in"  # the callers' endpoint, recognised by address, on both systems
SKILL = "presale"
PRESS_AT = 2.5  # seconds from the answer to the digit
KNEE_REACHED = 99.5  # %
KNEE_P95_MS = 1000.0
AGENT_ID_BASE = 7001


@dataclass(frozen=True)
class Ports:
    sip: int
    ami: int
    agents: int  # the agents' SIPp UAS
    callers: int  # the callers' SIPp
    callers_media: int
    agents_media: int
    agi: int = 0
    redis: int = 0
    admin: int = 0


# Clear of the developer stack (5060...), the integration tests (5160...), bench/ivr_turn.py
# (5260..., media 31000-31100) and Asterisk's RTP range (20000-30000).
ACD_PORTS = Ports(
    sip=5460, ami=5438, agents=5470, callers=5461, callers_media=32000, agents_media=32200,
    agi=4873, redis=6679, admin=8388,
)  # fmt: skip
PEER_PORTS = Ports(
    sip=5560, ami=5538, agents=5570, callers=5561, callers_media=32400, agents_media=32600
)
ACD_NODE = "peak-a"
PEER_USER = "peak"
SYSTEMS = ("acd", "app_queue")


# ---------------------------------------------------------------------------------------------
# What Asterisk says about each caller


@dataclass
class Caller:
    new_at: int | None
    digit_at: int | None = None
    queued: bool = False
    static: bool = False
    dialled_at: int | None = None  # the first agent leg dialled for this caller
    dials: int = 0
    answered_at: int | None = None
    answers: int = 0  # agent legs answered for this caller: once, or a caller bridged twice
    hung_up: bool = False


@dataclass
class Leg:
    """An agent leg dialled for a caller: whose phone, when it was answered and hung up."""

    agent: str  # the agent's device (PJSIP/agent-7001)
    answered_at: int | None = None
    ended_at: int | None = None


# The events the meter reads; the observer's AMI user gets only these (manager.conf event
# filters, the same on both systems), so that the bench's own reading costs the Asterisk under
# test as little as possible.
METER_EVENTS = (
    "Newchannel", "DTMFEnd", "DialBegin", "DialEnd", "Hangup", "QueueCallerJoin", "UserEvent",
    "VarSet:Variable=ACD_RESULT",
)  # fmt: skip


@dataclass
class Meter:
    """An AMI listener keeping each caller's milestones, keyed by the caller channel's Uniqueid."""

    callers: dict[str, Caller] = field(default_factory=dict)
    legs: dict[str, Leg] = field(default_factory=dict)  # by the agent leg's Uniqueid
    events: int = 0
    live: int = 0  # caller channels not hung up yet

    def channels_gone(self, live: set[str], now_us: int) -> int:
        """The observer came back after losing its session: agent legs it saw start that are
        not among Asterisk's `live` channels ended meanwhile unseen (Asterisk restarted: its
        channels died without a Hangup), so they end now. Returns how many."""
        gone = [leg for uid, leg in self.legs.items() if leg.ended_at is None and uid not in live]
        for leg in gone:
            leg.ended_at = now_us
        return len(gone)

    def __call__(self, event: AmiMessage) -> None:
        self.events += 1
        name = event.event
        uid = event.get("Uniqueid") or ""
        at = ami_micros(event.get("Timestamp"))
        if name == "Newchannel":
            # The bench's callers only (bench/faults.py adds callers of its own, another ID).
            if (event.get("Channel") or "").startswith(f"PJSIP/{TRUNK}-") and event.get(
                "CallerIDNum"
            ) in (CALLER_ID, None):
                self.callers[uid] = Caller(new_at=at)
                self.live += 1
            return
        caller = self.callers.get(uid)
        if caller is None:
            leg = self.legs.get(uid)
            if leg is not None and name == "Hangup" and leg.ended_at is None:
                leg.ended_at = at
            return
        if name == "DTMFEnd":
            if event.get("Direction") == "Received" and caller.digit_at is None:
                caller.digit_at = at
        elif name == "VarSet":
            if event.get("Variable") == "ACD_RESULT" and event.get("Value") == "queued":
                caller.queued = True
        elif name == "QueueCallerJoin":
            if event.get("Queue") == SKILL:
                caller.queued = True
            elif event.get("Queue") == "acd-fallback":
                caller.static = True
        elif name == "UserEvent":
            if event.get("UserEvent") == "AcdStaticFallback":
                caller.static = True
        elif name == "DialBegin":
            caller.dials += 1
            if caller.dialled_at is None:
                caller.dialled_at = at
            device = (event.get("DestChannel") or "").rpartition("-")[0]
            self.legs[event.get("DestUniqueid") or ""] = Leg(device)
        elif name == "DialEnd":
            if event.get("DialStatus") == "ANSWER":
                caller.answers += 1
                leg = self.legs.get(event.get("DestUniqueid") or "")
                if leg is not None:
                    leg.answered_at = at
                if caller.answered_at is None:
                    caller.answered_at = at
        elif name == "Hangup" and not caller.hung_up:
            caller.hung_up = True
            self.live -= 1


def _finite(value: float | None) -> float | None:
    return None if value is None or value == math.inf else round(value, 3)


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values (None for none)."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# ---------------------------------------------------------------------------------------------
# Processes: CPU and memory from /proc

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    cpu: float  # utime + stime, seconds
    reaped_cpu: float  # cutime + cstime: children it waited for


def _proc(pid: int) -> ProcInfo | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")
    comm = head.partition("(")[2]
    fields = rest.split()  # fields[0] is the state (field 3 of stat)
    ticks = int(fields[11]) + int(fields[12])
    children = int(fields[13]) + int(fields[14])
    return ProcInfo(pid, int(fields[1]), comm, ticks / CLOCK_TICKS, children / CLOCK_TICKS)


def descendants(root: int) -> list[ProcInfo]:
    """`root` and every process below it."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _proc(int(entry.name))) is not None:
            table[info.pid] = info
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(table[pid])
            todo.extend(p.pid for p in table.values() if p.ppid == pid)
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def vm_hwm_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@dataclass
class Usage:
    """CPU seconds by role at one moment, and the controllers' peak RSS."""

    controller: float = 0.0
    asterisk: float = 0.0
    redis: float = 0.0
    controller_hwm_kib: int = 0
    controllers: int = 0  # `acd run` processes alive
    asterisk_hwm_kib: int = 0
    redis_calls: dict[str, int] = field(default_factory=dict)  # INFO commandstats: calls


def redis_calls(port: int) -> dict[str, int]:
    """Commands Redis ran so far, by name (the commands scripts ran count too)."""
    import redis  # here: the checkout's redis/ (its config) makes a top-level import look local

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def acd_usage(supervisor: int, redis_port: int) -> Usage:
    usage = Usage(redis_calls=redis_calls(redis_port))
    for p in descendants(supervisor):
        if p.comm == "asterisk":
            usage.asterisk += p.cpu
            usage.asterisk_hwm_kib += vm_hwm_kib(p.pid)
        elif p.comm.startswith("redis"):
            usage.redis += p.cpu
        elif p.comm in ("unshare", "sh", "chroot"):
            continue  # gone by now (exec'd into asterisk); nothing of their own
        else:
            usage.controller += p.cpu
            if p.pid == supervisor:
                # Controllers that died and were restarted: their CPU is the supervisor's now.
                usage.controller += p.reaped_cpu
            elif "run" in _cmdline(p.pid):
                usage.controllers += 1
                usage.controller_hwm_kib += vm_hwm_kib(p.pid)
    return usage


def asterisk_usage(pid: int) -> Usage:
    usage = Usage()
    for p in descendants(pid):
        if p.comm == "asterisk":
            usage.asterisk += p.cpu
            usage.asterisk_hwm_kib += vm_hwm_kib(p.pid)
    return usage


# ---------------------------------------------------------------------------------------------
# The two systems


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AcdError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def agent_ids(agents: int) -> list[str]:
    return [str(AGENT_ID_BASE + i) for i in range(agents)]


def acd_config(state: Path, agents: int) -> dict[str, Any]:
    """The sample deployment (acd.yaml) on the bench's ports and state directory, with the bench's
    agents and flow."""
    config: dict[str, Any] = yaml.safe_load((REPO / "acd.yaml").read_text())
    p = ACD_PORTS
    config["state_dir"] = str(state)
    config["flows_dir"] = str(PEAK / "flows")
    ast = config["asterisk"]
    ast["node"] = ACD_NODE
    ast["config_dir"] = str(REPO / "asterisk-config")
    ast["sounds_dir"] = str(REPO / ".state" / "sounds")
    ast["sip"] = {"host": "127.0.0.1", "port": p.sip}
    ast["ami"] = {
        "host": "127.0.0.1",
        "port": p.ami,
        "username": "acd",
        "secret_file": str(state / "ami.secret"),
        # The meter watches as the read-only monitor user.
        "monitor_secret_file": str(state / "ami-monitor.secret"),
        "monitor_events": list(METER_EVENTS),
    }
    config["agi"] = {"host": "127.0.0.1", "port": p.agi}
    config["redis"] = {"url": f"redis://127.0.0.1:{p.redis}/0", "prefix": "acdpeak"}
    config["admin"] = {
        "host": "127.0.0.1",
        "port": p.admin,
        "token_file": str(state / "admin.token"),
    }
    config["agent_contact"] = {"host": "127.0.0.1", "port": p.agents}
    config["entries"] = [{"number": ENTRY, "flow": "peak", "mode": "normal"}]
    config["agents"] = [
        {"id": i, "endpoint": f"agent-{i}", "skills": {SKILL: 5}} for i in agent_ids(agents)
    ]
    config["agent_policy"] = {"wrap_up": 0, "pause_on_missed": False, "auto_login": True}
    config["agent_phones"] = {"secret_file": str(state / "agent-phones.secret")}  # none: no codes
    for lookup in config.get("lookups", {}).values():
        lookup["url"] = "http://127.0.0.1:9/orders/{order}"  # unused: the flow looks nothing up
    return config


def _acd(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
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
        timeout=timeout,
        check=False,
        cwd=REPO,
        env=env,
    )


def _secrets(state: Path, *names: str) -> None:
    for name in names:
        (state / name).write_text(secrets.token_urlsafe(24))
        os.chmod(state / name, 0o600)


@dataclass
class System:
    """A running system under test: where its AMI is, and how to read its CPU."""

    name: str
    ports: Ports
    ami_user: str
    ami_secret: str
    usage: Callable[[], Usage]
    log: Path


@contextmanager
def acd_stack(
    state: Path, agents: int, tweak: Callable[[dict[str, Any]], None] | None = None
) -> Iterator[System]:
    """acd on the bench's ports with `agents` agents; `tweak` may change the configuration
    (bench/faults.py adds trunks and a flow) before the stack starts."""
    _secrets(state, "ami.secret", "ami-monitor.secret", "admin.token")
    config_path = state / "acd-peak.yaml"
    config = acd_config(state, agents)
    if tweak is not None:
        tweak(config)
    config_path.write_text(yaml.safe_dump(config))
    log = state / "acd.log"
    try:
        up = _acd(config_path, "up", "--detach")
        if up.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AcdError(f"acd up failed: {up.stderr.strip()}\n{tail}")
        level = _acd(config_path, "level", "0", timeout=30)
        if level.returncode != 0:
            raise AcdError(f"acd level 0 failed: {level.stderr.strip()}")
        supervisor = int((state / "acd.pid").read_text())
        _wait_agents(config_path, agents)
        yield System(
            "acd",
            ACD_PORTS,
            "acd-monitor",
            (state / "ami-monitor.secret").read_text().strip(),
            lambda: acd_usage(supervisor, ACD_PORTS.redis),
            log,
        )
    finally:
        down = _acd(config_path, "down", timeout=60)
        if down.returncode != 0:
            print(f"peak: acd down failed: {down.stderr.strip()}", file=sys.stderr)


def _wait_agents(config_path: Path, agents: int, timeout: float = 60) -> None:
    """Until the controller reports every agent available (auto_login)."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        status = _acd(config_path, "status", "--json", timeout=30)
        if status.returncode == 0:
            seen = _available_agents(json.loads(status.stdout))
            if seen is not None and seen >= agents:
                return
        time.sleep(1)
    raise AcdError(f"acd: {seen} of {agents} agents available after {timeout:.0f} s")


def _available_agents(status: dict[str, Any]) -> int | None:
    """Agents in state `available`, from `acd status --json` (agents: id -> {state, ...})."""
    agents = status.get("agents")
    if not isinstance(agents, dict):
        return None
    return sum(1 for a in agents.values() if isinstance(a, dict) and a.get("state") == "available")


def peer_instance(agents: int, secret: str) -> dict[str, str]:
    """The files of the peer's instance directory: what depends on the run."""
    p = PEER_PORTS
    pjsip = [
        "[transport-udp]",
        "type = transport",
        "protocol = udp",
        f"bind = 127.0.0.1:{p.sip}",
        "",
        f"[{TRUNK}](trunk-endpoint)",
        "",
        f"[{TRUNK}-identify]",
        "type = identify",
        f"endpoint = {TRUNK}",
        "match = 127.0.0.1",
        "",
    ]
    queues = [f"[{SKILL}]({SKILL}-template)"]
    for agent in agent_ids(agents):
        endpoint = f"agent-{agent}"
        pjsip += [
            f"[{endpoint}](agent-endpoint)",
            f"aors = {endpoint}",
            f"callerid = Agent {agent} <{agent}>",
            "",
            f"[{endpoint}]",
            "type = aor",
            f"contact = sip:{endpoint}@127.0.0.1:{p.agents}",
            "max_contacts = 1",
            "",
        ]
        queues.append(f"member => PJSIP/{endpoint}")
    manager = f"""bindaddr = 127.0.0.1
port = {p.ami}

[{PEER_USER}]
secret = {secret}
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.0/255.0.0.0
read = call,agent,user,dialplan,reporting,dtmf
write = reporting
writetimeout = 1000
{event_filters(METER_EVENTS)}
"""
    return {
        "asterisk.conf": (PEAK / "asterisk" / "asterisk.conf").read_text(),
        "pjsip.conf": "\n".join(pjsip) + "\n",
        "queues.conf": "\n".join(queues) + "\n",
        "manager.conf": manager,
    }


@contextmanager
def peer_asterisk(state: Path, agents: int) -> Iterator[System]:
    """Asterisk alone, from the same root, with bench/peak/asterisk as /etc/asterisk."""
    root = AsteriskSettings().root
    check_root(root)
    paths = NodePaths(
        root=root,
        config=PEAK / "asterisk",
        etc=state / "asterisk" / "etc",
        var=state / "asterisk" / "var",
        sounds=REPO / ".state" / "sounds",
    )
    uid, gid = asterisk_ids(root)
    paths.etc.mkdir(parents=True)
    for sub in ("run", "log", "db", "spool", "log/cdr-csv"):
        (paths.var / sub).mkdir(parents=True, exist_ok=True)
        os.chown(paths.var / sub, uid, gid)
    os.chown(paths.var, uid, gid)
    secret = secrets.token_urlsafe(24)
    for name, text in peer_instance(agents, secret).items():
        target = paths.etc / name
        target.write_text(text)
        os.chown(target, os.getuid(), gid)
        target.chmod(0o640)
    if _port_open(PEER_PORTS.ami):
        raise AcdError(f"something already listens on 127.0.0.1:{PEER_PORTS.ami} (the peer's AMI)")
    (paths.var / "log").mkdir(exist_ok=True)
    log = state / "asterisk-console.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            launch_command(paths), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        _wait(lambda: _port_open(PEER_PORTS.ami) or proc.poll() is not None, "peer Asterisk", 60)
        if proc.poll() is not None:
            raise AcdError(f"the peer's Asterisk exited with {proc.returncode}; see {log}")
        yield System(
            "app_queue", PEER_PORTS, PEER_USER, secret, lambda: asterisk_usage(proc.pid), log
        )
    finally:
        stop(proc, grace=20)


# ---------------------------------------------------------------------------------------------
# SIPp


def render(template: str, target: Path, fields: dict[str, str]) -> Path:
    """bench/peak/TEMPLATE with its @FIELD@s filled in, written to `target`."""
    text = (PEAK / template).read_text()
    for key, value in fields.items():
        text = text.replace(f"@{key}@", value)
    if leftover := re.findall(r"@[A-Z_]+@", text):
        raise ValueError(f"{template}: unfilled fields {sorted(set(leftover))}")
    target.write_text(text)
    return target


def start_sipp(args: list[str], log: Path, workdir: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(["sipp", *args], stdout=out, stderr=subprocess.STDOUT, cwd=workdir)


def stop(proc: subprocess.Popen[Any], grace: float = 5) -> None:
    """Terminate `proc`, killing it if it has not exited within `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def sipp_stats(csv: Path) -> dict[str, int]:
    """The last line of SIPp's -trace_stat CSV: cumulative counters by column name."""
    try:
        lines = [ln for ln in csv.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    header, last = lines[0].split(";"), lines[-1].split(";")
    out = {}
    for name, value in zip(header, last, strict=False):
        if (name.endswith("(C)") or name.startswith("Total")) and value.strip().isdigit():
            out[name.removesuffix("(C)")] = int(value)
    return out


# ---------------------------------------------------------------------------------------------
# One run: a system at a rate


@dataclass
class Result:
    system: str
    rate: float
    duration: float
    talk: float
    patience: float
    offered: int = 0  # calls SIPp created
    seen: int = 0  # caller channels Asterisk reported
    sipp_failed: int = 0
    sipp_failures: dict[str, int] = field(default_factory=dict)
    sipp_exit: int | None = None
    # SIPp's scheduler ran late (its watchdog: minor 500 ms, major 3 s): the load generator,
    # on the same cores, could not keep up, and its callers pressed late
    sipp_watchdog_minor: int = 0
    sipp_watchdog_major: int = 0
    queued: int = 0  # callers the IVR queued (acd: ACD_RESULT=queued; app_queue: QueueCallerJoin)
    reached: int = 0
    reached_pct: float = 0.0
    dialled: int = 0
    # Digit -> agent leg over the `waiting` callers (queued, digit seen); a caller not dialled
    # within the patience counts as infinite, so a percentile among those is None ("> patience").
    waiting: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    no_digit: int = 0  # Asterisk received no DTMF from the caller
    lost_digit: int = 0
    static_fallback: int = 0
    abandons: int = 0
    redials: int = 0  # agent legs beyond the first (an agent did not answer)
    bridged_twice: int = 0  # callers for whom more than one agent leg was answered
    double_booked: int = 0  # agents with two answered legs at once
    answered_late: int = 0  # agent answered after the caller's patience: counted as abandons
    controller_cpu_s: float | None = None
    controller_cpu_ms_per_call: float | None = None
    controller_peak_rss_mib: float | None = None
    controllers: int | None = None
    asterisk_cpu_s: float = 0.0
    asterisk_cpu_ms_per_call: float | None = None
    asterisk_peak_rss_mib: float = 0.0
    observer_cpu_s: float = 0.0  # this process (the AMI observer) during the run, for scale
    redis_cpu_s: float | None = None
    redis_commands_per_call: float | None = None  # commands Redis ran, per offered call
    redis_commands: dict[str, int] = field(default_factory=dict)  # by command, in the run
    leftover_channels: int = 0
    ami_events: int = 0
    ami_reconnects: int = 0
    error: str | None = None
    time_to_agent_ms: list[float] = field(default_factory=list)


async def drive(system: System, result: Result, workdir: Path, patience: float) -> None:
    """The observer up, the agents' UAS, the callers at the rate, then the drain."""
    meter = Meter()

    async def after_login() -> None:
        if client.reconnects == 0:
            return
        channels = await client.send_list_action("CoreShowChannels", timeout=20)
        live = {c.get("Uniqueid") or c.get("UniqueID") or "" for c in channels}
        meter.channels_gone(live, time.time_ns() // 1000)

    p = system.ports
    client = AmiClient(
        host="127.0.0.1",
        port=p.ami,
        username=system.ami_user,
        secret=system.ami_secret,
        ping_interval=10.0,
        ping_timeout=30.0,  # a loaded Asterisk answers late; a reconnect would lose events
        action_timeout=30.0,
        on_connected=after_login,
    )
    client.add_listener(meter)
    calls = max(1, round(result.rate * result.duration))
    call_time = PRESS_AT + patience + result.talk + 5
    budget = math.ceil(result.duration + call_time + 30)
    agent_xml = render(
        "agent.xml", workdir / "agent.xml", {"TALK_MS": str(int(result.talk * 1000))}
    )
    pcap = sipp.write_dtmf_pcap(workdir / "peak-dtmf1.pcap", "1", seq=1000, timestamp=16000)
    caller_xml = render(
        "caller.xml",
        workdir / "caller.xml",
        {
            "CALLER_ID": CALLER_ID,
            "PRESS_MS": str(int(PRESS_AT * 1000)),
            "DTMF_PCAP": str(pcap),
            "WAIT_MS": str(int((patience + result.talk + 2) * 1000)),
        },
    )
    uas_args = [
        "-sf", str(agent_xml), "-i", "127.0.0.1", "-p", str(p.agents),
        "-mp", str(p.agents_media), "-timeout", f"{budget + 60}s", "-nostdin",
        "-trace_err", "-error_file", str(workdir / "agents.err"),
    ]  # fmt: skip
    stat = workdir / "callers.csv"
    caller_args = [
        f"127.0.0.1:{p.sip}", "-sf", str(caller_xml), "-s", ENTRY,
        "-i", "127.0.0.1", "-p", str(p.callers), "-mp", str(p.callers_media),
        "-r", f"{result.rate:g}", "-m", str(calls),
        "-l", str(calls + 10),  # never throttled by SIPp's default limit of open calls
        "-timeout", f"{budget}s", "-timeout_error", "-nostdin",
        "-trace_stat", "-fd", "1", "-stf", str(stat),
        "-trace_err", "-error_file", str(workdir / "callers.err"),
    ]  # fmt: skip
    uas = start_sipp(uas_args, workdir / "agents.log", workdir)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(client.run())
        try:
            await client.wait_connected(timeout=20)
            before = system.usage()
            observer_started = time.process_time()
            caller = start_sipp(caller_args, workdir / "callers.log", workdir)
            try:
                result.sipp_exit = await asyncio.to_thread(caller.wait, budget + 15)
            except subprocess.TimeoutExpired:
                result.sipp_exit = None
            finally:
                stop(caller)
            result.leftover_channels = await drain(client)
            after = system.usage()
            result.observer_cpu_s = round(time.process_time() - observer_started, 2)
        finally:
            stop(uas)
            await client.close()
    stats = sipp_stats(stat)
    result.offered = stats.get("TotalCallCreated", stats.get("OutgoingCall", 0))
    result.sipp_failed = stats.get("FailedCall", 0)
    result.sipp_failures = {
        k: v for k, v in stats.items() if k.startswith("Failed") and k != "FailedCall" and v
    }
    result.sipp_watchdog_minor = stats.get("WatchdogMinor", 0)
    result.sipp_watchdog_major = stats.get("WatchdogMajor", 0)
    result.ami_events = meter.events
    result.ami_reconnects = client.reconnects
    settle(result, meter, before, after, patience, system.name == "acd")


async def drain(client: AmiClient, within: float = 60) -> int:
    """Until Asterisk has no channel left (at most `within` seconds); the channels left then."""
    deadline = time.monotonic() + within
    left = -1
    while time.monotonic() < deadline:
        try:
            events = await client.send_list_action("CoreShowChannels", timeout=20)
        except AcdError:
            await asyncio.sleep(1)
            continue
        left = sum(1 for e in events if e.event == "CoreShowChannel")
        if left == 0:
            return 0
        await asyncio.sleep(1)
    return left


def double_booked(legs: Iterable[Leg]) -> set[str]:
    """The agents (devices) with two answered legs overlapping in time."""
    by_agent: dict[str, list[tuple[int, int]]] = {}
    for leg in legs:
        if leg.answered_at is not None:
            end = leg.ended_at if leg.ended_at is not None else 2**62
            by_agent.setdefault(leg.agent, []).append((leg.answered_at, end))
    out = set()
    for agent, spans in by_agent.items():
        spans.sort()
        if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)):
            out.add(agent)
    return out


def settle(
    result: Result, meter: Meter, before: Usage, after: Usage, patience: float, is_acd: bool
) -> None:
    waits: list[float] = []  # ms from the digit to the agent leg, of callers who waited for one
    for c in meter.callers.values():
        if c.digit_at is None:
            result.no_digit += 1
        if c.static:
            result.static_fallback += 1
        answered = c.answered_at is not None
        waited = c.answered_at - c.digit_at if c.answered_at and c.digit_at else 0
        if waited > patience * 1e6:
            # After the caller's patience: the SIPp caller was still there only because it cannot
            # tell a bridged call from a wait (see bench/peak/caller.xml); an abandon.
            result.answered_late += 1
            answered = False
        if answered:
            result.reached += 1
        if c.dialled_at is not None:
            result.dialled += 1
            result.redials += c.dials - 1
        result.queued += c.queued
        queued = c.queued or c.dialled_at is not None
        if c.digit_at is not None and not queued and not c.static:
            result.lost_digit += 1
        if queued and not answered and not c.static:
            result.abandons += 1
        if queued and c.digit_at is not None:
            # A caller no agent was dialled for within the patience waited longer than that:
            # infinite here, so that abandons count against the percentiles.
            dial = (c.dialled_at - c.digit_at) / 1000 if c.dialled_at is not None else math.inf
            waits.append(dial if dial <= patience * 1000 else math.inf)
        result.bridged_twice += c.answers > 1
    result.double_booked = len(double_booked(meter.legs.values()))
    waits.sort()
    result.seen = len(meter.callers)
    result.waiting = len(waits)
    result.time_to_agent_ms = [round(w, 3) for w in waits if w != math.inf]
    result.p50_ms, result.p95_ms, result.p99_ms, result.max_ms = (
        _finite(percentile(waits, q)) for q in (50, 95, 99, 100)
    )
    offered = result.offered or result.seen
    result.reached_pct = round(100.0 * result.reached / offered, 2) if offered else 0.0
    result.asterisk_cpu_s = round(after.asterisk - before.asterisk, 2)
    result.asterisk_peak_rss_mib = round(after.asterisk_hwm_kib / 1024, 1)
    if offered:
        result.asterisk_cpu_ms_per_call = round(1000 * result.asterisk_cpu_s / offered, 2)
    if is_acd:
        result.controller_cpu_s = round(after.controller - before.controller, 3)
        if offered:
            result.controller_cpu_ms_per_call = round(1000 * result.controller_cpu_s / offered, 2)
        result.controller_peak_rss_mib = round(after.controller_hwm_kib / 1024, 1)
        result.controllers = after.controllers
        result.redis_cpu_s = round(after.redis - before.redis, 2)
        result.redis_commands = {
            name: calls - before.redis_calls.get(name, 0)
            for name, calls in sorted(after.redis_calls.items())
            if calls > before.redis_calls.get(name, 0)
        }
        if offered:
            total = sum(result.redis_commands.values())
            result.redis_commands_per_call = round(total / offered, 1)


def run_one(system: str, rate: float, talk: float, args: argparse.Namespace, tmp: Path) -> Result:
    result = Result(system, rate, args.duration, talk, args.patience)
    base = tmp / f"{system}-{rate:g}"
    state, workdir = base / "state", base / "sipp"
    state.mkdir(parents=True)
    workdir.mkdir()
    stack = acd_stack(state, args.agents) if system == "acd" else peer_asterisk(state, args.agents)
    try:
        with stack as running:
            asyncio.run(drive(running, result, workdir, args.patience))
    except* (AcdError, OSError, subprocess.SubprocessError) as errors:
        result.error = "; ".join(str(e) for e in errors.exceptions)[:2000]
    return result


# ---------------------------------------------------------------------------------------------
# Output


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(r: Result, value: float | None) -> str:
    """A percentile of digit -> agent: '>PATIENCE' when it falls among callers never dialled."""
    if value is None and r.waiting:
        return f">{r.patience * 1000:.0f}"
    return _f(value)


COLUMNS = (
    ("system", 9), ("rate/s", 6), ("offered", 7), ("sipp fail", 9), ("reached %", 9),
    ("p50 ms", 7), ("p95 ms", 7), ("p99 ms", 7), ("lost digit", 10), ("no dtmf", 7),
    ("static", 6), ("abandon", 7), ("ctl cpu ms/call", 15), ("ctl RSS MiB", 11),
    ("ast cpu s", 9), ("redis cpu s", 11), ("redis cmd/call", 14),
)  # fmt: skip


def table(results: list[Result]) -> str:
    head = "  ".join(name.rjust(width) for name, width in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in sorted(results, key=lambda r: (SYSTEMS.index(r.system), r.rate)):
        if r.error:
            lines.append(f"{r.system:>9}  {r.rate:>6g}  error: {r.error.splitlines()[0]}")
            continue
        cells = (
            r.system, f"{r.rate:g}", str(r.offered), str(r.sipp_failed), _f(r.reached_pct, 1),
            _ms(r, r.p50_ms), _ms(r, r.p95_ms), _ms(r, r.p99_ms), str(r.lost_digit),
            str(r.no_digit), str(r.static_fallback), str(r.abandons),
            _f(r.controller_cpu_ms_per_call, 2), _f(r.controller_peak_rss_mib, 0),
            _f(r.asterisk_cpu_s, 1), _f(r.redis_cpu_s, 1), _f(r.redis_commands_per_call, 1),
        )  # fmt: skip
        lines.append("  ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    return "\n".join(lines)


def passes(r: Result) -> bool:
    return (
        r.error is None
        and r.reached_pct >= KNEE_REACHED
        and r.p95_ms is not None
        and r.p95_ms <= KNEE_P95_MS
    )


def knees(results: list[Result], systems: list[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for system in systems:
        ok = [r.rate for r in results if r.system == system and passes(r)]
        out[system] = max(ok) if ok else None
    return out


def notes(results: list[Result]) -> list[str]:
    out = []
    for r in results:
        where = f"{r.system} at {r.rate:g}/s"
        if r.sipp_failures:
            causes = ", ".join(f"{k} {v}" for k, v in sorted(r.sipp_failures.items()))
            out.append(f"{where}: SIPp failures: {causes}")
        if r.sipp_watchdog_major or r.sipp_watchdog_minor:
            out.append(
                f"{where}: SIPp ran late (watchdog: {r.sipp_watchdog_minor} x 500 ms, "
                f"{r.sipp_watchdog_major} x 3 s): the machine was saturated; the load generator "
                "shares its cores"
            )
        if r.sipp_exit not in (0, 1, None) or (r.sipp_exit is None and not r.error):
            out.append(f"{where}: SIPp exit {r.sipp_exit}")
        if r.leftover_channels:
            out.append(f"{where}: {r.leftover_channels} channels still up after the drain")
        if r.ami_reconnects:
            out.append(f"{where}: the AMI observer reconnected {r.ami_reconnects}x: events lost")
        if r.offered and r.seen != r.offered:
            out.append(f"{where}: SIPp created {r.offered} calls, Asterisk reported {r.seen}")
        if r.answered_late:
            out.append(
                f"{where}: {r.answered_late} callers' agents answered after their patience "
                "(counted as abandons)"
            )
        if r.redials:
            out.append(f"{where}: {r.redials} agent legs beyond the first (unanswered dials)")
        if r.bridged_twice:
            out.append(f"{where}: {r.bridged_twice} callers bridged to more than one agent")
        if r.double_booked:
            out.append(f"{where}: {r.double_booked} agents on two calls at once (double-booked)")
        if r.controllers is not None and r.controllers != 1:
            out.append(f"{where}: {r.controllers} controller processes at the end")
    return out


def other_sipp() -> list[int]:
    """SIPp processes running now (someone else's load would skew every figure)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _proc(int(entry.name))) is not None:
            if info.comm == "sipp":
                found.append(info.pid)
    return sorted(found)


def parse_list(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: comma-separated numbers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{what}: positive numbers")
    return values


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates",
        type=lambda s: parse_list(s, "--rates"),
        default=[10.0, 20.0, 40.0, 60.0, 80.0],
        help="offered calls per second, one run each (default 10,20,40,60,80)",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of calls per rate")
    parser.add_argument("--agents", type=int, default=200, help="presale agents (default 200)")
    parser.add_argument(
        "--talk",
        type=lambda s: parse_list(s, "--talk"),
        default=[4.0],
        help="seconds an agent talks; one value, or one per rate (default 4)",
    )
    parser.add_argument(
        "--patience", type=float, default=30.0, help="seconds a caller waits for an agent (30)"
    )
    parser.add_argument(
        "--systems",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=list(SYSTEMS),
        help="acd,app_queue (default both)",
    )
    parser.add_argument("--json", type=Path, help="write the raw figures to this file")
    parser.add_argument(
        "--keep", action="store_true", help="keep state directories and SIPp logs afterwards"
    )
    parser.add_argument(
        "--force", action="store_true", help="run even though another SIPp is running"
    )
    args = parser.parse_args()
    if unknown := [s for s in args.systems if s not in SYSTEMS]:
        parser.error(f"--systems: unknown {', '.join(unknown)} (known: {', '.join(SYSTEMS)})")
    if len(args.talk) not in (1, len(args.rates)):
        parser.error("--talk: one value, or one per rate")
    if not 1 <= args.agents <= 1000:
        parser.error("--agents: 1 to 1000")
    if args.duration <= 0 or not 1 <= args.patience <= 600 or min(args.talk) < 0.5:
        parser.error("--duration must be positive, --patience 1-600 s, --talk at least 0.5 s")
    if shutil.which("sipp") is None:
        print("peak: sipp not found; run `make setup`", file=sys.stderr)
        return 2
    if (busy := other_sipp()) and not args.force:
        print(
            f"peak: another SIPp is running (pid {', '.join(map(str, busy))}); its load would "
            "skew the figures: wait for it to end (or --force)",
            file=sys.stderr,
        )
        return 2
    logs.configure("error")
    # SIGTERM as Ctrl-C: the `finally`s run, so no stack outlives the bench.
    signal.signal(signal.SIGTERM, _interrupt)
    talks = args.talk * len(args.rates) if len(args.talk) == 1 else args.talk
    tmp = Path(tempfile.mkdtemp(prefix="acd-peak-"))
    results: list[Result] = []
    try:
        for rate, talk in zip(args.rates, talks, strict=True):
            for system in args.systems:
                print(f"peak: {system} at {rate:g} calls/s for {args.duration:g} s ...", flush=True)
                result = run_one(system, rate, talk, args, tmp)
                results.append(result)
                if result.error:
                    print(f"peak: {system} at {rate:g}/s failed: {result.error}", file=sys.stderr)
                else:
                    print(
                        f"peak:   {result.offered} calls, {result.reached_pct:.1f} % reached, "
                        f"p95 {_ms(result, result.p95_ms)} ms",
                        flush=True,
                    )
    except KeyboardInterrupt:
        print("peak: interrupted; figures so far", file=sys.stderr)
    finally:
        if args.keep:
            print(f"peak: state, logs and SIPp files kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(
        f"{args.agents} agents, talk {'/'.join(f'{t:g}' for t in args.talk)} s, patience "
        f"{args.patience:g} s, {args.duration:g} s of calls per rate; times are digit -> agent "
        "leg dialled (Asterisk's clock)"
    )
    print(table(results))
    for line in notes(results):
        print(f"  note: {line}")
    found = knees(results, args.systems)
    print()
    for system in args.systems:
        knee = found[system]
        print(
            f"knee {system}: "
            + (f"{knee:g} calls/s" if knee is not None else "none of the rates run")
            + f" (>= {KNEE_REACHED} % reached and p95 <= {KNEE_P95_MS / 1000:g} s)"
        )
    ratio = None
    if found.get("acd") and found.get("app_queue"):
        ratio = found["acd"] / found["app_queue"]  # type: ignore[operator]
        print(f"knee ratio acd / app_queue: {ratio:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "agents": args.agents,
                    "duration": args.duration,
                    "patience": args.patience,
                    "press_at": PRESS_AT,
                    "runs": [asdict(r) for r in results],
                    "knees": found,
                    "ratio": ratio,
                },
                indent=2,
            )
        )
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
