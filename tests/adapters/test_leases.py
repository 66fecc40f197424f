"""Leases on held agents against a real redis-server: an agent reserved for a caller whose node's
controller never connects it is taken back by another controller's sweep, once, and its caller
keeps the front of the queue (issue: a reserved agent never timed out)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from acd.adapters.leases import LeaseStore
from acd.adapters.store import RedisStore
from acd.config import Agent
from acd.dispatch.leases import LeaseKeeper
from acd.domain.agent import AgentEvent

LEASE = 45.0
T0 = 1000.0  # when the claim reserves the agent


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Woken:
    """What a sweep asked the dispatcher to do."""

    def __init__(self) -> None:
        self.agents: list[str] = []
        self.queues: list[str] = []


@pytest.fixture
async def node_a(redis_url: str) -> AsyncIterator[RedisStore]:
    """The store of node-a's controller: it claims for callers of other nodes too."""
    store = RedisStore(redis_url, "t", node="node-a")
    yield store
    await store.close()


def _keeper(store: RedisStore, clock: Clock, woken: Woken) -> LeaseKeeper:
    return LeaseKeeper(
        LeaseStore(store.link, store.prefix),
        LEASE,
        agent_ready=woken.agents.append,
        queue_ready=woken.queues.append,
        clock=clock,
    )


async def _enqueue(
    store: RedisStore, uid: str, score: float, node: str = "node-b", **fields: str
) -> None:
    await store.enqueue(
        uid=uid,
        skill="presale",
        score=score,
        node=node,
        fields={"channel": f"PJSIP/x-{uid}", **fields},
        now=T0 - 10,
    )


async def _reserve_for_node_b(store: RedisStore) -> None:
    """Agent `a` claimed by node-a for caller `b1` of node-b: the connect is node-b's."""
    await store.register_agents([Agent(id="a", endpoint="agent-a", skills={"presale": 5})], 1.0)
    await _enqueue(store, "b1", 10.0)
    claim = await store.claim_for_skill("presale", now=T0)
    assert claim is not None
    assert (claim.uid, claim.agent_id, claim.node) == ("b1", "a", "node-b")


async def test_an_agent_reserved_for_a_node_that_never_connects_is_taken_back(
    node_a: RedisStore, redis_py: aioredis.Redis
) -> None:
    await _reserve_for_node_b(node_a)
    assert await redis_py.lrange("t:connect:node-b", 0, -1) == ["b1"]  # nobody takes it
    await _enqueue(node_a, "b2", 20.0)  # joined later: stays behind b1
    clock, woken = Clock(T0 + LEASE - 1), Woken()
    keeper = _keeper(node_a, clock, woken)
    assert await keeper.sweep() == 0
    assert (await node_a.agent("a"))["state"] == "reserved"
    clock.now = T0 + LEASE + 1
    assert await keeper.sweep() == 1
    agent = await node_a.agent("a")
    assert (agent["state"], agent["call"]) == ("available", "")
    call = await node_a.call("b1")
    assert call is not None
    assert (call.state, call.agent) == ("queued", "")
    assert await node_a.waiting("presale") == ["b1", "b2"]
    assert await redis_py.lrange("t:connect:node-b", 0, -1) == []
    assert (woken.agents, woken.queues) == (["a"], ["presale"])
    assert await redis_py.zrange("t:leases", 0, -1) == ["a"]  # looked at, still to be dropped
    assert await keeper.sweep() == 0  # once only
    assert await redis_py.zrange("t:leases", 0, -1) == []
    again = await node_a.claim_for_skill("presale", now=clock.now)
    assert again is not None
    assert (again.uid, again.agent_id) == ("b1", "a")


async def test_an_agent_that_rang_is_held_from_its_ring_and_one_that_answered_is_not(
    node_a: RedisStore, redis_py: aioredis.Redis
) -> None:
    await _reserve_for_node_b(node_a)
    assert (await node_a.agent_event("a", AgentEvent.RING, T0 + 20, call="b1"))[0]
    clock, woken = Clock(T0 + LEASE + 1), Woken()
    keeper = _keeper(node_a, clock, woken)
    assert await keeper.sweep() == 0
    assert (await node_a.agent("a"))["state"] == "ringing"
    assert await redis_py.zscore("t:leases", "a") == T0 + 20  # counted from the ring now
    assert (await node_a.agent_event("a", AgentEvent.ANSWER, T0 + 30, call="b1"))[0]
    clock.now = T0 + 20 + LEASE + 1
    assert await keeper.sweep() == 0
    assert (await node_a.agent("a"))["state"] == "on_call"
    assert await redis_py.zrange("t:leases", 0, -1) == []
    assert woken.agents == []


async def test_two_sweeps_racing_take_an_agent_back_once(
    node_a: RedisStore, redis_py: aioredis.Redis
) -> None:
    """Controller B found the lease over at the same time as A; by the time B acts, A took the
    agent back and a new claim gave it the same caller: B must leave that claim alone."""
    await _reserve_for_node_b(node_a)
    lease_store = LeaseStore(node_a.link, node_a.prefix)
    now = T0 + LEASE + 1
    seen_by_b = await lease_store.expired(now, LEASE)
    assert [(h.agent, h.uid) for h in seen_by_b] == [("a", "b1")]
    reclaimed = await lease_store.reclaim(seen_by_b[0], now, LEASE)  # A's
    assert reclaimed is not None
    assert (reclaimed.requeued, reclaimed.released) == ("presale", True)
    again = await node_a.claim_for_skill("presale", now=now + 0.5)
    assert again is not None
    assert (again.uid, again.agent_id) == ("b1", "a")
    assert await lease_store.reclaim(seen_by_b[0], now + 1, LEASE) is None  # B's
    agent = await node_a.agent("a")
    assert (agent["state"], agent["call"]) == ("reserved", "b1")
    assert (await node_a.call("b1")).state == "offered"  # type: ignore[union-attr]
    assert await redis_py.lrange("t:connect:node-b", 0, -1) == ["b1"]


async def test_a_callback_attempt_already_dialled_is_not_put_back(
    node_a: RedisStore, redis_py: aioredis.Redis
) -> None:
    """A callback is dialled at most once: an attempt whose agent is taken back stays with its
    node (whose resync decides it from Asterisk's record); only the agent goes back to work."""
    await node_a.register_agents([Agent(id="a", endpoint="agent-a", skills={"presale": 5})], 1.0)
    await _enqueue(node_a, "cb-1", 10.0, kind="callback", callback="c1")
    claim = await node_a.claim_for_skill("presale", now=T0)
    assert claim is not None
    assert await node_a.set_call_field("cb-1", "trunk", "carrier-a")  # originated
    clock, woken = Clock(T0 + LEASE + 1), Woken()
    assert await _keeper(node_a, clock, woken).sweep() == 1
    assert (await node_a.agent("a"))["state"] == "available"
    assert (await node_a.call("cb-1")).state == "offered"  # type: ignore[union-attr]
    assert await node_a.waiting("presale") == []
    assert (woken.agents, woken.queues) == (["a"], [])
