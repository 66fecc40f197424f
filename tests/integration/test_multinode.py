"""Two Asterisk nodes and two controllers sharing one Redis, joined by an inter-node PJSIP trunk.

Node A listens on 127.0.0.2 and node B on 127.0.0.3 (loopback aliases, so each recognises the
other and the carrier, on 127.0.0.1, by source address). The presale agents' phones are on node A
and the payment agents' on node B; callers arrive on both nodes for both queues, so some are
served across the trunk. Every caller must be served exactly once and no agent double-booked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from acd.adapters.ami import AmiClient
from tests.integration import sipp
from tests.integration.conftest import REPO, EventLog, Stack, caller_uid, deployment_config
from tests.integration.sipp import Script

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PREFIX = "acdmn"
AGENTS_PORT = 5270  # a SIPp UAS that answers for every agent, talks 6 s and hangs up
NODES = {
    "mn-a": {"host": "127.0.0.2", "sip": 5360, "ami": 5338, "agi": 4873, "admin": 8388},
    "mn-b": {"host": "127.0.0.3", "sip": 5360, "ami": 5339, "agi": 4874, "admin": 8389},
}
# agent -> its node (1001/1002 serve presale, 1003/1004 payment; see acd.yaml)
HOME = {"1001": "mn-a", "1002": "mn-a", "1003": "mn-b", "1004": "mn-b"}


@dataclass
class Node:
    name: str
    config: Path
    ami_monitor_secret: str  # the read-only monitor user's

    def acd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "acd", "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
        )  # fmt: skip


def node_config(stack: Stack, name: str, state: Path) -> dict[str, Any]:
    """The test deployment on this node's addresses, sharing the test Redis under its own
    prefix, with the four sample agents spread over the two nodes."""
    me = NODES[name]
    config = deployment_config(state)
    ast = config["asterisk"]
    ast["node"] = name
    ast["sip"] = {"host": me["host"], "port": me["sip"]}
    ast["ami"] = {**ast["ami"], "port": me["ami"]}
    config["agi"] = {**config["agi"], "port": me["agi"]}
    config["admin"] = {**config["admin"], "port": me["admin"]}
    config["redis"] = {
        "url": stack.settings.redis.url,
        "prefix": PREFIX,
        "password_file": str(stack.settings.redis.password_file),
    }
    config["agent_contact"] = {"host": "127.0.0.1", "port": AGENTS_PORT}
    config["agents"] = [
        {**agent, "node": HOME[agent["id"]]} for agent in config["agents"] if agent["id"] in HOME
    ]
    config["nodes"] = {
        other: {"host": n["host"], "port": n["sip"]} for other, n in NODES.items() if other != name
    }
    config["agent_policy"] = {"wrap_up": 2, "pause_on_missed": True, "auto_login": True}
    return config


@pytest.fixture(scope="module")
def nodes(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Node]]:
    stack.redis.delete(*(stack.redis.keys(f"{PREFIX}:*") or [f"{PREFIX}:none"]))
    agents = sipp.start_agent_that_hangs_up(AGENTS_PORT, 19500, stack.workdir)
    up: dict[str, Node] = {}
    try:
        for name in NODES:
            state = tmp_path_factory.mktemp(name)
            for secret_name in ("ami.secret", "ami-monitor.secret", "admin.token"):
                (state / secret_name).write_text(secrets.token_urlsafe(24))
                os.chmod(state / secret_name, 0o600)
            path = state / "acd.yaml"
            path.write_text(yaml.safe_dump(node_config(stack, name, state)))
            node = Node(name, path, (state / "ami-monitor.secret").read_text())
            result = node.acd("up", "--detach")
            log = state / "acd.log"
            assert result.returncode == 0, (
                f"{name}: {result.stderr}\n{log.read_text()[-3000:] if log.exists() else ''}"
            )
            up[name] = node
        yield up
    finally:
        for node in up.values():
            down = node.acd("down")
            assert down.returncode == 0, down.stderr
        agents.stop()


@pytest.fixture
async def observers(nodes: dict[str, Node]) -> AsyncIterator[dict[str, StampedLog]]:
    """An AMI session on each node, recording what it reports; each event is stamped with the
    time it arrived (EventLog.times)."""
    logs: dict[str, StampedLog] = {}
    clients, tasks = [], []
    try:
        for name, node in nodes.items():
            log = StampedLog()
            client = AmiClient(
                host="127.0.0.1", port=NODES[name]["ami"], username="acd-monitor",
                secret=node.ami_monitor_secret, ping_interval=5.0,
            )  # fmt: skip
            client.add_listener(log)
            clients.append(client)
            tasks.append(asyncio.ensure_future(client.run()))
            await client.wait_connected(timeout=15)
            logs[name] = log
        yield logs
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in clients:
            await client.close()


class StampedLog(EventLog):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def __call__(self, event: Any) -> None:
        self.times.append(time.monotonic())
        super().__call__(event)


def _agent_legs(log: StampedLog) -> list[tuple[str, float, float]]:
    """(agent id, start, end) of every channel to an agent's phone a node created."""
    started: dict[str, tuple[str, float]] = {}
    legs = []
    for event, at in zip(log.events, log.times, strict=True):
        channel = event.get("Channel") or ""
        if not channel.startswith("PJSIP/agent-"):
            continue
        agent = channel.removeprefix("PJSIP/agent-").split("-")[0]
        if event.event == "Newchannel":
            started[channel] = (agent, at)
        elif event.event == "Hangup" and channel in started:
            agent, start = started.pop(channel)
            legs.append((agent, start, at))
    assert not started, f"agent channels still up: {sorted(started)}"
    return legs


async def test_two_nodes_serve_every_caller_once_across_the_trunk(
    stack: Stack, nodes: dict[str, Node], observers: dict[str, StampedLog]
) -> None:
    """Six callers, three on each node, half for presale (agents on node A) and half for payment
    (agents on node B): four of them are served across the inter-node trunk. Each is answered
    exactly once, by an agent of its queue, and no agent ever has two calls at once."""
    plan = [
        ("mn-a", "5553001", "3"),  # payment: an agent on node B
        ("mn-a", "5553002", "3"),
        ("mn-a", "5553003", "10"),  # presale: on node A itself
        ("mn-b", "5553004", "10"),  # presale: an agent on node A
        ("mn-b", "5553005", "10"),
        ("mn-b", "5553006", "3"),  # payment: on node B itself
    ]
    runs = []
    try:
        for node, caller_id, digits in plan:
            runs.append(_caller(stack, node, caller_id, digits))
            await asyncio.sleep(0.5)
        uids = {
            caller_id: await caller_uid(observers[node], caller_id) for node, caller_id, _ in plan
        }
        # Every caller is answered and then hung up on by the agent's phone (after 6 s of talk).
        for run in runs:
            returncode = await asyncio.to_thread(run.wait, 120)
            assert returncode == 0, run.log.read_text()[-2000:]
    finally:
        for run in runs:
            run.stop()
    await asyncio.sleep(1.0)  # the last Hangup events

    queue_agents = {"3": {"1003", "1004"}, "10": {"1001", "1002"}}
    crossed = 0
    for node, caller_id, digits in plan:
        log, uid = observers[node], uids[caller_id]
        ends = [e for e in log.events if e.event == "DialEnd" and e.get("Uniqueid") == uid]
        answered = [e for e in ends if e.get("DialStatus") == "ANSWER"]
        assert len(answered) == 1, f"{caller_id}: {[e.get('DialStatus') for e in ends]}"
        (begin,) = [
            e
            for e in log.events
            if e.event == "DialBegin"
            and e.get("Uniqueid") == uid
            and e.get("DestUniqueid") == answered[0].get("DestUniqueid")
        ]
        # DialString: agent-1001 (a phone on this node) or 1004@acd-mn-b (over the trunk)
        dialled = begin.get("DialString") or ""
        if "@" in dialled:
            agent, via = dialled.split("@")
            crossed += 1
            assert via == f"acd-{HOME[agent]}" != f"acd-{node}", dialled
        else:
            agent = dialled.removeprefix("agent-")
            assert HOME[agent] == node, dialled
        assert agent in queue_agents[digits], (caller_id, dialled)
    assert crossed == 4

    # No agent double-booked: its phone's calls, on whichever node dialled them, never overlap.
    legs = sorted(leg for log in observers.values() for leg in _agent_legs(log))
    for agent in HOME:
        mine = [(start, end) for a, start, end in legs if a == agent]
        assert all(prev[1] <= nxt[0] for prev, nxt in itertools.pairwise(mine)), mine
    assert len(legs) == 6

    # Redis agrees: nothing waiting, nothing handed over and left, every agent back at work.
    for skill in ("presale", "payment"):
        assert stack.redis.zcard(f"{PREFIX}:q:{skill}") == 0
    for node in NODES:
        assert stack.redis.llen(f"{PREFIX}:connect:{node}") == 0
    deadline = time.monotonic() + 10
    while left := {n: stack.redis.smembers(f"{PREFIX}:calls:{n}") for n in NODES} | {}:
        if not any(left.values()):
            break
        assert time.monotonic() < deadline, {
            n: {u: stack.redis.hgetall(f"{PREFIX}:call:{u}") for u in us} for n, us in left.items()
        }
        await asyncio.sleep(0.2)
    while any(stack.redis.hget(f"{PREFIX}:agent:{a}", "state") != "available" for a in HOME):
        assert time.monotonic() < deadline, {
            a: stack.redis.hget(f"{PREFIX}:agent:{a}", "state") for a in HOME
        }
        await asyncio.sleep(0.2)


def _ready(node: Node) -> bool:
    """The node's controller answers /readyz with 200."""
    token = (node.config.parent / "admin.token").read_text()
    request = urllib.request.Request(
        f"http://127.0.0.1:{NODES[node.name]['admin']}/readyz",
        headers={"Authorization": f"Bearer {token}"},
    )
    with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=2) as response:
        return bool(response.status == 200)
    return False


def _caller(stack: Stack, node: str, caller_id: str, digits: str) -> sipp.SippRun:
    """A SIPp customer calling node `node`, pressing `digits`, hung up on by the agent."""
    port = next(stack._ports)
    scenario = sipp.caller_scenario(
        stack.workdir / f"mn-{caller_id}.xml",
        Script().at(1.0, digits).render(stack.workdir, f"mn-{caller_id}"),
        caller_id,
        remote_hangup=True,
        remote_hangup_within_s=90,
    )
    return sipp.start_caller(
        scenario,
        f"{NODES[node]['host']}:{NODES[node]['sip']}",
        "1000",
        port,
        media_port=40000 + (port - 5300) * 8,
        workdir=stack.workdir,
    )


async def test_one_node_controller_down_the_other_serves_its_callers_and_it_comes_back_clean(
    stack: Stack, nodes: dict[str, Node], observers: dict[str, StampedLog]
) -> None:
    """Node A's controller is frozen (SIGSTOP: down, and `acd up` does not replace it) for
    20 s. Meanwhile a caller on node B for presale, whose agents' phones are on node A, is
    served by node B across the trunk, once. A's controller resumes: node A is ready again, no
    agent is left reserved or on a call, and a caller on node A is served."""
    pid = int((nodes["mn-a"].config.parent / "controller.pid").read_text())
    run = None
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        run = _caller(stack, "mn-b", "5553101", "10")
        uid = await caller_uid(observers["mn-b"], "5553101")
        await observers["mn-b"].wait_for(
            lambda e: e.event == "BridgeEnter" and e.get("Uniqueid") == uid, timeout=30
        )
        assert await asyncio.to_thread(run.wait, 60) == 0, run.log.read_text()[-2000:]
        answered = [
            e for e in observers["mn-b"].events
            if e.event == "DialEnd" and e.get("Uniqueid") == uid and e.get("DialStatus") == "ANSWER"
        ]  # fmt: skip
        assert len(answered) == 1
        await asyncio.sleep(max(0.0, 20 - (time.monotonic() - stopped)))
    finally:
        os.kill(pid, signal.SIGCONT)
        if run is not None:
            run.stop()
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(_ready, nodes["mn-a"]):
        assert time.monotonic() < deadline, (
            "node A was not ready again after its controller resumed"
        )
        await asyncio.sleep(0.2)
    second = _caller(stack, "mn-a", "5553102", "10")
    try:
        uid2 = await caller_uid(observers["mn-a"], "5553102")
        await observers["mn-a"].wait_for(
            lambda e: e.event == "BridgeEnter" and e.get("Uniqueid") == uid2, timeout=30
        )
        assert await asyncio.to_thread(second.wait, 60) == 0, second.log.read_text()[-2000:]
    finally:
        second.stop()
    deadline = time.monotonic() + 15
    while states := {a: stack.redis.hget(f"{PREFIX}:agent:{a}", "state") for a in HOME}:
        if all(s == "available" for s in states.values()):
            break
        assert time.monotonic() < deadline, states
        await asyncio.sleep(0.2)
    for node in NODES:
        assert stack.redis.llen(f"{PREFIX}:connect:{node}") == 0
    assert stack.redis.zcard(f"{PREFIX}:q:presale") == 0
