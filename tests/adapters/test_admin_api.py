"""The admin API of a real controller (its handlers, the sample deployment and flows) on a private
redis-server: who the audit log names, nothing half-applied, errors and their statuses, a Redis
outage seen by /status, /callbacks and the /events stream, and the one status producer behind
every /events client. Asterisk is not needed here: the AMI link is simply down."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from acd.adapters import admin_api
from acd.adapters.fastagi import FastAgiServer
from acd.config import admin_tokens, load_settings, viewer_tokens
from acd.domain.agent import IllegalTransition
from acd.errors import (
    AcdError,
    AmiActionFailed,
    AmiDisconnected,
    ConfigError,
    InvalidInput,
    StoreUnavailable,
)
from acd.runtime.controller import Controller, UnknownAgent
from acd.runtime.flows import load_checked_flows
from tests.adapters.fakes import FakeAsterisk
from tests.adapters.servers import RedisServer
from tests.adapters.test_ivr_service import converse, variables

REPO = Path(__file__).resolve().parents[2]
TOKENS = {
    "admin": "admin-token-0123456789abcdef",
    "alice": "alice-token-0123456789abcdef",
    "bob": "bob-token-0123456789abcdef",
    "wall": "wall-token-0123456789abcdef",  # a viewer: reads only
}
INTERVAL = 0.1  # seconds between two /events pushes here


@dataclass
class Floor:
    controller: Controller
    client: TestClient[Any, Any]
    redis: aioredis.Redis  # decoded replies
    raw: aioredis.Redis  # bytes, for DUMP

    async def call(
        self, method: str, path: str, user: str = "admin", body: Any = None, **headers: str
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKENS[user]}", **headers}
        async with self.client.request(method, path, json=body, headers=headers) as response:
            assert response.content_type == "application/json", await response.text()
            return response.status, await response.json()

    async def audit(self) -> list[dict[str, str]]:
        return [fields for _, fields in await self.redis.xrange("acd:audit")]

    async def snapshot(self) -> dict[bytes, Any]:
        """Every key with its serialised value."""
        return {key: await self.raw.dump(key) for key in sorted(await self.raw.keys("*"))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def floor(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Floor]:
    """A controller of the sample deployment whose admin API knows three users: admin (the
    generated token file), alice (admin.tokens) and bob (ACD_ADMIN_TOKENS)."""
    config = yaml.safe_load((REPO / "acd.yaml").read_text())
    config["state_dir"] = str(tmp_path)
    config["flows_dir"] = str(REPO / "ivr_flows")
    config["asterisk"]["config_dir"] = str(REPO / "asterisk-config")
    config["asterisk"]["sounds_dir"] = str(REPO / ".state" / "sounds")
    config["asterisk"]["ami"]["port"] = _free_port()  # nothing listens: AMI stays down
    config["redis"] = {"url": redis_server.url, "prefix": "acd"}
    config["admin"] = {"token_file": "admin.token", "tokens": {"alice": "alice.token"}}
    config["trunks"].append({"name": "carrier-out", "address": {"host": "127.0.0.1", "port": 9}})
    (tmp_path / "admin.token").write_text(TOKENS["admin"] + "\n")
    (tmp_path / "alice.token").write_text(TOKENS["alice"] + "\n")
    (tmp_path / "acd.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("ACD_AMI_SECRET", "test-ami-secret")
    monkeypatch.delenv("ACD_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("ACD_ADMIN_TOKENS", f"bob:{TOKENS['bob']}")
    monkeypatch.setenv("ACD_VIEWER_TOKENS", f"wall:{TOKENS['wall']}")
    settings = load_settings(tmp_path / "acd.yaml")
    controller = Controller(settings, load_checked_flows(settings))
    await controller.store.register_agents(settings.agents, time.time())
    supervisors = admin_tokens(settings)
    app = admin_api.build_app(
        supervisors, controller, controller.openapi(), events_interval=INTERVAL,
        viewers=viewer_tokens(settings, supervisors),
    )  # fmt: skip
    decoded = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    raw = aioredis.Redis.from_url(redis_server.url)
    async with TestServer(app, host="127.0.0.1") as server, TestClient(server) as client:
        try:
            yield Floor(controller, client, decoded, raw)
        finally:
            await decoded.aclose()
            await raw.aclose()
            await controller.store.close()


async def test_each_token_is_audited_under_its_own_user(floor: Floor) -> None:
    """alice (a token file) and bob (the environment) change things; the audit log names each
    by its token, keeps X-Acd-User only as detail beside it, and a wrong token changes nothing."""
    status, body = await floor.call("PUT", "/menu", "alice", {"mode": "fallback"}, **{
        "X-Acd-User": "admin"})  # fmt: skip
    assert (status, body) == (200, {"modes": {"1000": "fallback"}})
    status, _ = await floor.call("PUT", "/queues/presale", "bob", {"state": "closed"})
    assert status == 200
    status, _ = await floor.call("PUT", "/overload", "admin", {"level": 3})
    assert status == 200
    assert [(a["who"], a["what"], a["before"], a["after"]) for a in await floor.audit()] == [
        ("alice (admin)", "menu 1000", "auto", "fallback"),
        ("bob", "queue presale", "open", "closed"),
        ("admin", "overload", "auto", "3"),
    ]
    headers = {"Authorization": "Bearer alice-token-0123456789abcdeX"}
    async with floor.client.put("/menu", json={"mode": "normal"}, headers=headers) as response:
        assert response.status == 401
    assert (await floor.call("GET", "/menu"))[1] == {"modes": {"1000": "fallback"}}


async def test_a_batch_change_is_one_audited_step(floor: Floor) -> None:
    """`callback off` for every queue sets all five and audits each with its before value."""
    await floor.call("PUT", "/callbacks/mode", "bob", {"mode": "off", "queue": "orders"})
    status, body = await floor.call("PUT", "/callbacks/mode", "alice", {"mode": "off"})
    assert status == 200
    assert set(body["modes"].values()) == {"off"}
    changes = [(a["who"], a["what"], a["before"]) for a in await floor.audit()][1:]
    assert changes == [
        ("alice", f"callbacks {q}", "off" if q == "orders" else "on")
        for q in ("presale", "orders", "payment", "aftersales", "vip")
    ]
    status, body = await floor.call("PUT", "/callbacks/mode", "alice", {"mode": "on"})
    assert set(body["modes"].values()) == {"on"}
    assert await floor.redis.hgetall("acd:callback_mode") == {}


REFUSED: list[tuple[str, str, Any, dict[str, str], int, str]] = [
    ("PUT", "/callbacks/mode", {"mode": "off", "queue": "nope"}, {}, 404, "unknown_queue"),
    # Found by the contract test: a null queue was taken for "every queue".
    ("PUT", "/callbacks/mode", {"mode": "off", "queue": None}, {}, 400, "bad_queue"),
    ("PUT", "/callbacks/mode", {"mode": "off", "colour": "red"}, {}, 400, "unknown_field"),
    ("PUT", "/callbacks/mode", {"mode": "maybe"}, {}, 400, "bad_mode"),
    ("PUT", "/menu", {"mode": "fallback", "number": "1000"}, {}, 400, "unknown_field"),
    ("PUT", "/menu/9999", {"mode": "fallback"}, {}, 404, "unknown_entry"),
    ("PUT", "/menu", {"mode": "fallback"}, {"X-Acd-User": "not allowed"}, 400, "bad_user"),
    ("PUT", "/overload", {"level": 5}, {}, 400, "bad_level"),
    ("PUT", "/overload", {"level": "2"}, {}, 400, "bad_level"),
    ("PUT", "/overload", [2], {}, 400, "bad_request"),
    ("PUT", "/queues/nope", {"state": "closed"}, {}, 404, "unknown_queue"),
    ("PUT", "/queues/presale", {"state": "shut"}, {}, 400, "bad_state"),
    ("PUT", "/agents/1001/skills", {"skills": {"presale": 5, "nope": 3}}, {}, 400, "bad_skills"),
    ("PUT", "/agents/1001/skills", {"skills": {"presale": 5, "orders": 11}}, {}, 400,
     "bad_skills"),
    ("PUT", "/agents/9999/skills", {"skills": {"presale": 5}}, {}, 404, "unknown_agent"),
    ("PUT", "/tiers", {"tiers": {"5551234": "vip", "12x": "gold"}}, {}, 400, "bad_tiers"),
    ("PUT", "/agents/1001", {"action": "pause", "reason": "Lunch!"}, {}, 400, "bad_reason"),
    ("PUT", "/agents/1001", {"action": "resume"}, {}, 409, "conflict"),
    ("PUT", "/agents/9999", {"action": "pause"}, {}, 404, "unknown_agent"),
    ("POST", "/trunks/nope/trip", None, {}, 404, "unknown_trunk"),
]  # fmt: skip


async def test_a_refused_request_changes_nothing_in_redis(floor: Floor) -> None:
    """Every refused request (unknown names in a batch, unknown fields, bad values, a state
    that does not allow the action) leaves every Redis key as it was; a valid one does not."""
    before = await floor.snapshot()
    for method, path, body, headers, status, code in REFUSED:
        got = await floor.call(method, path, "alice", body, **headers)
        assert got[0] == status, (path, body, got)
        assert got[1]["error"]["code"] == code, (path, body, got)
        assert await floor.snapshot() == before, (path, body)
    await floor.call("PUT", "/queues/presale", "alice", {"state": "paused"})
    assert await floor.snapshot() != before


# Every change a supervisor can make, and its audit entry once made: (what, before, after).
CHANGES: list[tuple[str, str, Any, tuple[str, str, str]]] = [
    ("PUT", "/agents/1001", {"action": "pause", "reason": "lunch"},
     ("agent 1001", "available", "paused lunch")),
    ("PUT", "/agents/1002/skills", {"skills": {"vip": 3}},
     ("agent 1002 skills", "aftersales:7,presale:5", "vip:3")),
    ("POST", "/trunks/carrier-out/trip", None, ("trunk carrier-out", "closed", "tripped")),
    ("PUT", "/tiers", {"tiers": {"5551234": "vip"}}, ("tiers", "", "1 caller IDs")),
    ("PUT", "/queues/presale", {"state": "closed"}, ("queue presale", "open", "closed")),
    ("PUT", "/menu", {"mode": "fallback"}, ("menu 1000", "auto", "fallback")),
    ("PUT", "/callbacks/mode", {"mode": "off", "queue": "orders"},
     ("callbacks orders", "on", "off")),
    ("PUT", "/overload", {"level": 3}, ("overload", "auto", "3")),
    ("POST", "/flows/reload", None, ("flows reload", "", "promo,promo-lite")),
]  # fmt: skip


async def test_no_change_is_made_without_its_audit_entry(floor: Floor) -> None:
    """Each change and its audit entry are one step. With the audit stream unwritable (a key of
    the wrong type in its place), every change fails and leaves every key as it was; with the
    stream back, each is made and audited with what it changed."""
    await floor.redis.set("acd:audit", "not a stream")
    before = await floor.snapshot()
    flows = floor.controller.ivr._flows
    for method, path, body, _ in CHANGES:
        status, reply = await floor.call(method, path, "alice", body)
        assert status >= 500, (path, status, reply)
        assert await floor.snapshot() == before, path
    assert floor.controller.ivr._flows is flows  # the reload was not made either
    await floor.redis.delete("acd:audit")
    for method, path, body, _ in CHANGES:
        status, reply = await floor.call(method, path, "alice", body)
        assert status == 200, (path, status, reply)
    assert [(a["who"], a["what"], a["before"], a["after"]) for a in await floor.audit()] == [
        ("alice", *entry) for _, _, _, entry in CHANGES
    ]
    assert floor.controller.ivr._flows is not flows


async def test_a_viewers_token_reads_the_floor_and_changes_nothing(floor: Floor) -> None:
    """A read-only token (for a wallboard) gets status, metrics, queues and the wallboard with its
    events; every change, and the callbacks' customer numbers, answer 403 and leave every key
    as it was."""
    before = await floor.snapshot()
    writes = [(m, p, b) for m, p, b, _ in CHANGES] + [(m, p, b) for m, p, b, *_ in REFUSED]
    for method, path, body in writes:
        status, reply = await floor.call(method, path, "wall", body)
        assert (status, reply["error"]["code"]) == (403, "forbidden"), (path, reply)
    assert await floor.snapshot() == before
    assert (await floor.call("GET", "/callbacks", "wall"))[0] == 403
    for path in ("/status", "/queues", "/agents", "/trunks", "/overload", "/menu"):
        assert (await floor.call("GET", path, "wall"))[0] == 200, path
    async with floor.client.get(
        "/metrics", headers={"Authorization": "Bearer " + TOKENS["wall"]}
    ) as r:
        assert r.status == 200
    async with floor.client.get("/wallboard", params={"token": TOKENS["wall"]}) as r:
        assert r.status == 200
    assert [a["who"] for a in await floor.audit()] == []


async def test_an_agent_gone_from_redis_is_a_404(floor: Floor) -> None:
    """An agent still listed but whose record vanished (UnknownAgent behind the handler's own
    check) answers 404 like every other unknown name, not 503."""
    await floor.redis.delete("acd:agent:1002")
    status, body = await floor.call("PUT", "/agents/1002/skills", "bob", {"skills": {"vip": 3}})
    assert (status, body["error"]["code"]) == (404, "unknown_agent")
    assert "no agent '1002'" in body["error"]["message"]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownAgent("1001"), 404),
        (IllegalTransition("on_call", "pause"), 409),
        (ConfigError("broken flow"), 422),
        (InvalidInput("digits"), 400),
        (StoreUnavailable("redis: down"), 503),
        (AmiDisconnected("gone"), 503),
        (AmiActionFailed("Redirect", "No such channel"), 503),
        (AcdError("a bug"), 500),
    ],
)
def test_every_error_class_has_its_status(error: AcdError, status: int) -> None:
    """The HTTP status of each kind of error behind a request (the OpenAPI document lists 404,
    409, 422, 400 and 503 where they can happen)."""
    assert admin_api.error_status(error)[0] == status


async def _next_event(response: ClientResponse) -> tuple[str, str, Any]:
    """The next server-sent event: (id, event, data)."""
    fields: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(response.content.readline(), 20)).decode()
        assert line, "the event stream ended"
        if line == "\n":
            return fields.get("id", ""), fields["event"], json.loads(fields["data"])
        name, _, value = line.rstrip("\n").partition(": ")
        fields[name] = value


async def _until_event(response: ClientResponse, kind: str, limit: int = 200) -> Any:
    for _ in range(limit):
        _, event, data = await _next_event(response)
        if event == kind:
            return data
    raise AssertionError(f"no {kind} event")


async def test_a_redis_outage_is_a_503_and_the_event_stream_lives_through_it(
    floor: Floor, redis_server: RedisServer
) -> None:
    """redis-server stops: /status and /callbacks answer 503 with a JSON error, the open
    /events stream sends `problem` events; redis-server comes back: the same stream sends the
    status again, and /status answers 200."""
    headers = {"Authorization": f"Bearer {TOKENS['admin']}"}
    async with floor.client.get("/events", headers=headers) as stream:
        assert (await _until_event(stream, "status"))["node"] == "node-a"
        redis_server.stop()
        problem = await _until_event(stream, "problem")
        assert problem["error"].startswith("redis:")
        assert problem["retriable"] is True
        for path in ("/status", "/callbacks", "/queues"):
            status, body = await floor.call("GET", path)
            assert (status, body["error"]["code"]) == (503, "unavailable"), path
        redis_server.start()
        status_event = await _until_event(stream, "status")
        assert status_event["components"]["redis"]["ok"] is True
    assert (await floor.call("GET", "/status"))[0] == 200
    assert (await floor.call("GET", "/callbacks")) == (200, {"callbacks": []})


class CountingFloor:
    """What /events needs of a controller, counting how often the status is built."""

    def __init__(self) -> None:
        self.builds = 0

    async def status(self) -> dict[str, Any]:
        self.builds += 1
        return {"build": self.builds}


async def test_one_status_build_serves_every_events_client() -> None:
    """Three clients on /events: each event (by id) carries the same build for all of them, so
    the status is built once per interval, not once per client; a client that never reads has
    at most `depth` events queued (older ones dropped) while the others go on; when everyone
    has gone, nothing is built any more."""
    target = CountingFloor()
    app = admin_api.build_app("x" * 20, target, events_interval=0.05)  # type: ignore[arg-type]
    feed = app[admin_api.FEED]
    headers = {"Authorization": f"Bearer {'x' * 20}"}
    async with TestServer(app, host="127.0.0.1") as server, TestClient(server) as client:
        stalled = feed.subscribe()  # a client that never takes its events
        streams = [await client.get("/events", headers=headers) for _ in range(3)]
        seen: list[list[tuple[str, int]]] = [[] for _ in streams]
        for _ in range(8):
            for n, stream in enumerate(streams):
                sequence, event, data = await _next_event(stream)
                assert event == "status"
                seen[n].append((sequence, data["build"]))
        for events in seen:
            assert all(int(sequence) == build for sequence, build in events), events
        shared = set(seen[0]) & set(seen[1]) & set(seen[2])
        assert len(shared) >= 5, seen
        assert target.builds <= max(build for events in seen for _, build in events) + 2
        assert stalled.qsize() == feed.depth
        assert feed.dropped >= 5
        assert feed.clients == 4
        feed.unsubscribe(stalled)
        for stream in streams:
            stream.close()
        for _ in range(200):
            if feed.clients == 0:
                break
            await asyncio.sleep(0.05)
        assert feed.clients == 0
        await asyncio.sleep(0.2)  # a build under way when the last client left may finish
        idle = target.builds
        await asyncio.sleep(0.5)  # ten intervals with nobody listening
        assert target.builds == idle
        again = await client.get("/events", headers=headers)
        _, event, data = await _next_event(again)
        assert (event, data["build"]) == ("status", idle + 1)
        again.close()


async def test_the_shipped_auto_mode_takes_the_simplified_menu_at_level_2(floor: Floor) -> None:
    """With no mode set by a supervisor, the sample's entry is in auto mode: a pinned level 2
    gives the next caller promo-lite, level 0 promo again."""
    assert (await floor.call("GET", "/menu"))[1] == {"modes": {"1000": "auto"}}
    assert await floor.redis.hgetall("acd:menu_mode") == {}
    server = FastAgiServer({"inbound": floor.controller.ivr.inbound}, port=0, command_timeout=5)
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(server.serve(ready=ready.set_result))
    try:
        port = await ready
        flows = []
        for n, level in enumerate((2, 0)):
            assert (await floor.call("PUT", "/overload", "bob", {"level": level}))[0] == 200
            peer = await FakeAsterisk.call(
                port, uniqueid=f"9.{n}", env={"arg_1": "1000", "callerid": "5551234"}
            )
            flows.append(variables(await converse(peer, ["2", "2"]))["ACD_FLOW"])
        assert flows == ["promo-lite", "promo"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
