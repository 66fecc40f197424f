"""The real stack for integration tests: `acd up --detach` on test ports, SIPp, an AMI observer.

The stack runs with its own state directory, node name and ports, so it never meets a developer's
`acd up` on the default ports. Nothing here is mocked: Asterisk 22 from the cached root, a real
redis-server started by `acd up`, SIPp callers and a SIPp UAS answering for every agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import redis
from acd.adapters.ami import AmiClient
from acd.config import Settings, load_settings
from acd.protocol.ami import AmiMessage
from acd.runtime.asterisk import node_paths, run_cli
from tests.integration import sipp

REPO = Path(__file__).resolve().parents[2]

PORTS = {
    "sip": 5160,
    "ami": 5138,
    "agi": 4673,
    "redis": 6479,
    "admin": 8188,
    "agents": 5170,
    "orders": 8190,
    "dead_phone": 5179,
    "timed_phone": 5178,
    "carrier": 5190,  # the primary outbound carrier (a SIPp UAS a test starts)
    "standby": 5191,  # the standby carrier
    "webhook": 8191,  # where alerts are posted (a test listens there)
}


def deployment_config(state: Path) -> dict[str, Any]:
    """The sample deployment (acd.yaml) moved onto the test ports and a private state directory."""
    config = yaml.safe_load((REPO / "acd.yaml").read_text())
    config["state_dir"] = str(state)
    # A copy, so that tests may drop a broken flow in and ask for a reload.
    flows = state / "ivr_flows"
    shutil.copytree(REPO / "ivr_flows", flows)
    config["flows_dir"] = str(flows)
    ast = config["asterisk"]
    ast["node"] = "test-a"
    ast["config_dir"] = str(REPO / "asterisk-config")
    ast["sounds_dir"] = str(REPO / ".state" / "sounds")
    ast["sip"] = {"host": "127.0.0.1", "port": PORTS["sip"]}
    ast["ami"] = {
        "host": "127.0.0.1",
        "port": PORTS["ami"],
        "username": "acd",
        "secret_file": str(state / "ami.secret"),
        "monitor_secret_file": str(state / "ami-monitor.secret"),
    }
    ast["hold_period"] = 10
    ast["ring_timeout"] = 8
    config["agi"] = {
        "host": "127.0.0.1",
        "port": PORTS["agi"],
        "secret_file": str(state / "agi.secret"),
    }
    config["redis"] = {
        "url": f"redis://127.0.0.1:{PORTS['redis']}/0",
        "prefix": "acdtest",
        "password_file": str(state / "redis.secret"),
    }
    config["admin"] = {
        "host": "127.0.0.1",
        "port": PORTS["admin"],
        "token_file": str(state / "admin.token"),
    }
    config["agent_contact"] = {"host": "127.0.0.1", "port": PORTS["agents"]}
    # The full menu whatever the load, unless a test sets a mode: several tests queue more
    # callers than agents, which would take the overload level to 2 and, in the shipped `auto`
    # mode, give later callers the simplified menu.
    for entry in config["entries"]:
        entry["mode"] = "normal"
    # An agent whose phone never answers (nothing listens on its contact), logged out until a
    # test logs it in.
    # An agent whose phone hangs up after 6 s of talk (for the wait estimate), logged out until
    # a test logs it in.
    config["agents"].append(
        {
            "id": "1010",
            "endpoint": "agent-1010",
            "skills": {"payment": 9},
            "contact": {"host": "127.0.0.1", "port": PORTS["timed_phone"]},
            "auto_login": False,
        }
    )
    config["agents"].append(
        {
            "id": "1009",
            "endpoint": "agent-1009",
            "skills": {"presale": 1},
            "contact": {"host": "127.0.0.1", "port": PORTS["dead_phone"]},
            "auto_login": False,
        }
    )
    # Outbound carriers for callbacks: a primary and a standby line, SIPp UASes that the
    # callback tests start (answering, or failing with 503).
    config["trunks"] += [
        {"name": "carrier-out", "address": {"host": "127.0.0.1", "port": PORTS["carrier"]},
         "role": "primary", "capacity": 10},
        {"name": "standby-out", "address": {"host": "127.0.0.1", "port": PORTS["standby"]},
         "role": "standby", "capacity": 10},
    ]  # fmt: skip
    config["breaker"] = {
        "window": 120, "min_calls": 2, "failure_rate": 0.5, "open_for": 8, "probes": 1,
        "progress_timeout": 2,
    }  # fmt: skip
    # Orders overflow to a standby centre (at overload level 4 only: no test queues 100 callers).
    for skill in config["skills"]:
        if skill["name"] == "orders":
            skill["overflow_to"] = {"number": "88001234", "waiting_above": 100}
    config["alerts"] = {
        "webhook": f"http://127.0.0.1:{PORTS['webhook']}/alerts",
        "timeout": 1.0,
        "rules": [{"name": "presale-waiting", "figure": "waiting", "queue": "presale",
                   "above": 0, "for_seconds": 2}],
    }  # fmt: skip
    config["agent_phones"] = {"secret_file": str(state / "agent-phones.secret")}
    config["tiers"] = {**config["tiers"], "silver": 3}  # a head start short enough to wait out
    config["callbacks"] = {"attempts": 3, "retry_delay": 3, "share": 1.0, "ring_timeout": 10}
    config["lookups"] = {
        "order_status": {
            "url": f"http://127.0.0.1:{PORTS['orders']}/orders/{{order}}",
            "timeout": 1.0,
        }
    }
    return config


class OrderService:
    """The sample order-status service (examples/order_service.py), as a real process."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.workdir / "order-service.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "examples" / "order_service.py"),
                    "--port",
                    str(PORTS["orders"]),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while "listening" not in log.read_text():
            assert self.proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the order service did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@dataclass
class Stack:
    config_path: Path
    settings: Settings
    state: Path
    workdir: Path
    ami_secret: str
    ami_monitor_secret: str
    admin_token: str
    redis: redis.Redis
    orders: OrderService
    _ports: Iterator[int] = field(default_factory=lambda: itertools.count(5300, 2))

    def acd(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "acd", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=REPO,
        )

    def asterisk_cli(self, command: str) -> str:
        return run_cli(node_paths(self.settings), command)

    def status(self) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{PORTS['admin']}/status",
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return dict(json.load(response))

    def call(
        self,
        steps: list[str] | sipp.Script,
        caller_id: str,
        number: str = "1000",
        *,
        remote_hangup: bool = False,
    ) -> sipp.SippRun:
        """Start one SIPp customer calling `number` and doing `steps`."""
        port = next(self._ports)
        if isinstance(steps, sipp.Script):
            steps = steps.render(self.workdir, f"caller-{caller_id}")
        scenario = sipp.caller_scenario(
            self.workdir / f"caller-{caller_id}.xml",
            steps,
            caller_id,
            remote_hangup=remote_hangup,
        )
        return sipp.start_caller(
            scenario,
            f"127.0.0.1:{PORTS['sip']}",
            number,
            port,
            media_port=40000 + (port - 5300) * 8,  # outside Asterisk's RTP range (rtp.conf)
            workdir=self.workdir,
        )

    def key(self, *parts: str) -> str:
        return ":".join(("acdtest", *parts))

    def forget_callbacks(self) -> None:
        """Remove every callback and its attempts from Redis (between tests)."""
        r = self.redis
        for key in r.keys(self.key("callback*")) + r.keys(self.key("call", "cb-*")):
            r.delete(key)
        for key in r.keys(self.key("q", "*")) + r.keys(self.key("calls", "*")):
            members = r.zrange(key, 0, -1) if r.type(key) == "zset" else r.smembers(key)
            stale = [m for m in members if m.startswith("cb-")]
            if stale:
                (r.zrem if r.type(key) == "zset" else r.srem)(key, *stale)

    def controller_pid(self) -> int:
        """The running controller's pid; 0 while `acd up` is restarting it."""
        try:
            return int((self.state / "controller.pid").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the (possibly restarted) controller answers /readyz."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{PORTS['admin']}/readyz",
                    headers={"Authorization": f"Bearer {self.admin_token}"},
                )
                with urllib.request.urlopen(request, timeout=2) as response:
                    if json.load(response).get("ready"):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "the controller did not become ready"
            time.sleep(0.2)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("state")
    workdir = tmp_path_factory.mktemp("sipp")
    for name in (
        "ami.secret", "ami-monitor.secret", "admin.token", "agent-phones.secret", "redis.secret",
        "agi.secret",
    ):  # fmt: skip
        (state / name).write_text(secrets.token_urlsafe(24))
        os.chmod(state / name, 0o600)
    config_path = state / "acd-test.yaml"
    config_path.write_text(yaml.safe_dump(deployment_config(state)))
    settings = load_settings(config_path)
    client = redis.Redis(
        port=PORTS["redis"], password=(state / "redis.secret").read_text(), decode_responses=True
    )
    orders = OrderService(workdir)
    orders.start()
    st = Stack(
        config_path,
        settings,
        state,
        workdir,
        (state / "ami.secret").read_text(),
        (state / "ami-monitor.secret").read_text(),
        (state / "admin.token").read_text(),
        client,
        orders,
    )
    result = st.acd("up", "--detach")
    if result.returncode != 0:
        log = (state / "acd.log").read_text() if (state / "acd.log").exists() else ""
        pytest.fail(f"acd up failed: {result.stderr}\n{log[-4000:]}")
    uas = sipp.start_agents_uas(PORTS["agents"], 19000, workdir, timeout_s=1800)
    try:
        yield st
    finally:
        uas.stop()
        orders.stop()
        down = st.acd("down")
        client.close()
        assert down.returncode == 0, down.stderr


class EventLog:
    """Every AMI event seen by the observer, with a way to wait for one that matches."""

    def __init__(self) -> None:
        self.client: AmiClient | None = None
        self.events: list[AmiMessage] = []
        self._changed = asyncio.Event()

    def __call__(self, event: AmiMessage) -> None:
        self.events.append(event)
        self._changed.set()

    def matching(self, predicate: Callable[[AmiMessage], bool]) -> list[AmiMessage]:
        return [e for e in self.events if predicate(e)]

    async def wait_for(
        self, predicate: Callable[[AmiMessage], bool], timeout: float = 30.0, count: int = 1
    ) -> list[AmiMessage]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(predicate)
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = sorted({e.event or "" for e in self.events})
                gaps = self.client.reconnects if self.client is not None else 0
                raise AssertionError(
                    f"no {count} matching AMI events within {timeout} s (saw {len(self.events)} "
                    f"events: {names}; the observer reconnected {gaps} times, missing what "
                    "came meanwhile)"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue


async def send_as_controller(stack: Stack, action: str, fields: dict[str, str]) -> AmiMessage:
    """One action sent as the controller's AMI user, in a session of its own (the observers'
    monitor user may only ask)."""
    client = AmiClient(host="127.0.0.1", port=PORTS["ami"], username="acd", secret=stack.ami_secret)
    task = asyncio.ensure_future(client.run())
    try:
        await client.wait_connected(timeout=15)
        return await client.send_action(action, fields)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def ami_events(stack: Stack) -> AsyncIterator[EventLog]:
    """An AMI session of our own (the read-only monitor user) that records what Asterisk
    reports during the test."""
    log = EventLog()
    client = AmiClient(
        host="127.0.0.1",
        port=PORTS["ami"],
        username="acd-monitor",
        secret=stack.ami_monitor_secret,
        # An observer only: slow answers on a busy machine are no reason to drop the session
        # and miss events.
        ping_interval=5.0,
        ping_timeout=15.0,
    )
    client.add_listener(log)
    log.client = client
    # Fixture setup and teardown may run in different tasks, so no TaskGroup can span them: the
    # task is owned by this fixture, cancelled and awaited in its teardown.
    task = asyncio.ensure_future(client.run())
    try:
        await client.wait_connected(timeout=15)
        yield log
        # A test that failed may leave calls up (its SIPp caller was killed without a BYE, and
        # SIPp sends no RTP that would time them out): hang them up so the next test starts
        # with every agent free.
        # (Blocking calls in a test, such as the CLI, can make Asterisk drop this session for not
        # reading in time; it reconnects by itself.)
        await client.wait_connected(timeout=15)
        if await client.send_list_action("CoreShowChannels"):
            # The monitor may not hang up (no `call` write): the node's console does.
            await asyncio.to_thread(stack.asterisk_cli, "channel request hangup all")
            await asyncio.sleep(6)  # the agents' wrap-up
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


def agi_commands(events: EventLog, uid: str) -> list[str]:
    """The AGI commands Asterisk ran for a channel, in order (from AGIExecStart events)."""
    return [
        e.get("Command") or ""
        for e in events.events
        if e.event == "AGIExecStart" and e.get("Uniqueid") == uid
    ]


async def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll `check` (keys the controller writes, a file Asterisk writes, a process coming back)
    until it returns something true, and return that; fail saying `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} (not within {timeout} s)"
        await asyncio.sleep(0.1)
    return result


def played(events: EventLog, uid: str) -> list[str]:
    """The sounds the IVR streamed to a channel, in order (a menu's last prompt is played by
    GET OPTION, which then waits for the digit)."""
    out = []
    for command in agi_commands(events, uid):
        parts = shlex.split(command)
        if parts[:2] in (["STREAM", "FILE"], ["GET", "OPTION"]):
            out.append(parts[2])
    return out


async def user_event(events: EventLog, name: str, uid: str, timeout: float = 30) -> AmiMessage:
    """Wait for the dialplan's UserEvent `name` about channel `uid`; return it."""
    (event,) = await events.wait_for(
        lambda e: (
            e.event == "UserEvent" and e.get("UserEvent") == name and e.get("Uniqueid") == uid
        ),
        timeout=timeout,
    )
    return event


async def caller_uid(events: EventLog, caller_id: str, timeout: float = 20) -> str:
    """Wait for the channel of the SIPp caller with this caller ID; return its Uniqueid."""
    await events.wait_for(
        lambda e: e.event == "Newchannel" and e.get("CallerIDNum") == caller_id, timeout=timeout
    )
    uid = uid_of_caller(events, caller_id)
    assert uid is not None
    return uid


def agent_of_channel(channel: str) -> str:
    """PJSIP/agent-1001-0000000a -> 1001"""
    return channel.removeprefix("PJSIP/agent-").split("-")[0]


async def bridge_partner(events: EventLog, uid: str, timeout: float = 40) -> AmiMessage:
    """Wait until the caller `uid` enters a bridge with an agent; return the agent's BridgeEnter."""
    (enter,) = await events.wait_for(
        lambda e: e.event == "BridgeEnter" and e.get("Uniqueid") == uid, timeout=timeout
    )
    bridge = enter.get("BridgeUniqueid")
    (agent_enter,) = await events.wait_for(
        lambda e: (
            e.event == "BridgeEnter"
            and e.get("BridgeUniqueid") == bridge
            and (e.get("Channel") or "").startswith("PJSIP/agent-")
        ),
        timeout=10,
    )
    return agent_enter


def uid_of_caller(events: EventLog, caller_id: str) -> str | None:
    for e in events.events:
        if e.event == "Newchannel" and e.get("CallerIDNum") == caller_id:
            return e.get("Uniqueid")
    return None
