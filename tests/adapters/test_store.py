"""The Redis store against a real redis-server: claims are atomic and follow the routing order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from acd.adapters.store import RedisStore
from acd.config import Agent
from acd.errors import StoreUnavailable


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, "t")
    yield s
    await s.close()


def _agent(agent_id: str, **skills: int) -> Agent:
    return Agent(id=agent_id, endpoint=f"agent-{agent_id}", skills=skills)


async def _enqueue(store: RedisStore, uid: str, skill: str, score: float) -> None:
    await store.enqueue(
        uid=uid, skill=skill, score=score, node="n1", fields={"channel": f"PJSIP/x-{uid}"}
    )


async def test_claim_pairs_the_head_caller_with_the_highest_level_agent(store: RedisStore) -> None:
    """For a skill, the caller with the lowest score meets the agent with the highest level."""
    await store.register_agents([_agent("a", presale=3), _agent("b", presale=9)], now=100.0)
    await _enqueue(store, "late", "presale", 50.0)
    await _enqueue(store, "early", "presale", 10.0)
    claim = await store.claim_for_skill("presale")
    assert claim is not None
    assert (claim.uid, claim.agent_id, claim.skill) == ("early", "b", "presale")
    assert (await store.agent("b"))["state"] == "reserved"
    assert (await store.call("early")).state == "offered"  # type: ignore[union-attr]
    second = await store.claim_for_skill("presale")
    assert second is not None
    assert (second.uid, second.agent_id) == ("late", "a")
    assert await store.claim_for_skill("presale") is None


async def test_equal_levels_go_to_the_longest_idle_agent(store: RedisStore) -> None:
    """Between agents of the same level, the one idle longest is chosen."""
    await store.register_agents([_agent("a", orders=5)], now=200.0)
    await store.register_agents([_agent("b", orders=5)], now=100.0)
    await _enqueue(store, "c1", "orders", 1.0)
    claim = await store.claim_for_skill("orders")
    assert claim is not None
    assert claim.agent_id == "b"


async def test_a_freed_agent_takes_the_best_caller_across_its_skills(store: RedisStore) -> None:
    """claim_for_agent looks at the heads of all the agent's skill queues and takes the lowest
    score."""
    await _enqueue(store, "o1", "orders", 30.0)
    await _enqueue(store, "p1", "payment", 20.0)
    await store.register_agents([_agent("a", orders=5, payment=5)], now=100.0)
    claim = await store.claim_for_agent("a")
    assert claim is not None
    assert (claim.uid, claim.skill) == ("p1", "payment")
    assert await store.claim_for_agent("a") is None  # reserved now


async def test_requeue_keeps_the_original_place_and_end_call_frees_the_agent(
    store: RedisStore,
) -> None:
    """A caller whose agent did not answer returns ahead of later callers; a hangup frees the
    agent it held."""
    await store.register_agents([_agent("a", presale=5)], now=1.0)
    await _enqueue(store, "first", "presale", 10.0)
    await _enqueue(store, "second", "presale", 20.0)
    claim = await store.claim_for_skill("presale")
    assert claim is not None
    assert claim.uid == "first"
    assert await store.requeue("first")
    assert await store.waiting("presale") == ["first", "second"]
    assert await store.claim_for_skill("presale") is None  # the agent is still held
    assert await store.release_agent("a", "first", now=2.0)
    claim = await store.claim_for_skill("presale")
    assert claim is not None
    assert claim.uid == "first"
    assert await store.end_call("first", now=5.0) == "a"
    assert (await store.agent("a"))["state"] == "available"
    assert await store.call("first") is None
    assert await store.calls_of_node("n1") == {"second"}


async def test_concurrent_controllers_never_double_book(redis_url: str) -> None:
    """Two stores (as two controllers) claiming at once: every caller and every agent is claimed
    at most once."""
    first, second = RedisStore(redis_url, "t"), RedisStore(redis_url, "t")
    try:
        await first.register_agents([_agent(f"a{i}", presale=1 + i % 10) for i in range(20)], 1.0)
        for i in range(50):
            await _enqueue(first, f"c{i}", "presale", float(i))
        claims = await asyncio.gather(*(s.claim_for_skill("presale") for s in [first, second] * 40))
        made = [c for c in claims if c is not None]
        assert len(made) == 20
        assert len({c.agent_id for c in made}) == 20
        assert len({c.uid for c in made}) == 20
        assert sorted(int(c.uid[1:]) for c in made) == list(range(20))
    finally:
        await first.close()
        await second.close()


async def test_an_unreachable_redis_is_a_retriable_store_error(tmp_path: Path) -> None:
    """With no Redis behind the address, operations raise StoreUnavailable (retriable)."""
    store = RedisStore(f"unix://{tmp_path}/none.sock", "t")
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.claim_for_skill("presale")
        assert info.value.retriable
        assert not await store.ping()
    finally:
        await store.close()
