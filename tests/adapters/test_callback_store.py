"""Callback records in a real redis-server: admission at the caller's place, exactly once across
controllers, the share limit, expiry, and attempts closed once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acd.adapters.store import RedisStore
from acd.domain.callback import CallbackPolicy, admission_limit

SKILLS = ["orders", "presale"]


def staffed(n: int, skills: list[str] = SKILLS) -> dict[str, int]:
    return dict.fromkeys(skills, n)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, "cb", node="n1")
    yield s
    await s.close()


async def _request(store: RedisStore, uid: str, score: float, now: float = 100.0) -> None:
    await store.register_callback(
        uid=uid, number="5551234", skill="orders", score=score, enqueued_at=score, now=now,
        fields={"entry": "1000"},
    )  # fmt: skip


async def test_a_callback_joins_its_queue_at_the_callers_place(
    store: RedisStore, redis_py: aioredis.Redis
) -> None:
    await _request(store, "c1", score=42.0)
    admitted, expired, next_due = await store.admit_callbacks(100.0, 0.5, 3600, staffed(5))
    assert (admitted, expired, next_due) == (["orders"], [], None)
    assert await store.waiting("orders") == ["cb-c1-1"]
    assert await redis_py.zscore("cb:q:orders", "cb-c1-1") == 42.0
    call = await store.call("cb-c1-1")
    assert call is not None
    assert call.fields["kind"] == "callback"
    assert call.fields["enqueued_at"] == "42.0"
    assert (await store.callback("c1"))["state"] == "queued"


async def test_several_controllers_admit_each_attempt_once(redis_url: str) -> None:
    stores = [RedisStore(redis_url, "cb", node=f"n{i}") for i in range(4)]
    try:
        for i in range(20):
            await _request(stores[0], f"c{i}", score=float(i))
        results = await asyncio.gather(
            *(s.admit_callbacks(100.0, 1.0, 3600, staffed(100)) for s in stores * 3)
        )
        assert sum(len(admitted) for admitted, _, _ in results) == 20
        waiting = await stores[0].waiting("orders")
        assert sorted(waiting) == sorted(f"cb-c{i}-1" for i in range(20))
    finally:
        for s in stores:
            await s.close()


async def test_while_inbound_callers_wait_callbacks_keep_to_their_share(store: RedisStore) -> None:
    """With inbound callers waiting, callbacks in play stay within the share of the staffed
    agents; a closed attempt frees its slot."""
    await store.enqueue(uid="in1", skill="orders", score=500.0, node="n1", fields={}, now=100.0)
    for i in range(3):
        await _request(store, f"c{i}", score=float(i))
    admitted, _, next_due = await store.admit_callbacks(100.0, 0.5, 3600, staffed(4))
    assert len(admitted) == 2
    assert next_due == 100.0  # one is due and held back
    assert await store.waiting("orders") == ["cb-c0-1", "cb-c1-1", "in1"]
    assert (await store.admit_callbacks(100.0, 0.5, 3600, staffed(4)))[0] == []
    assert await store.finish_callback_attempt("c0", "cb-c0-1", 110.0, "answered", "ANSWER")
    assert (await store.admit_callbacks(111.0, 0.5, 3600, staffed(4)))[0] == ["orders"]


async def test_on_a_quiet_floor_callbacks_may_take_every_staffed_agent(store: RedisStore) -> None:
    """No inbound caller waits: as many callbacks as agents are staffed, not more; none for a
    skill that is not open for callbacks now."""
    for i in range(5):
        await _request(store, f"c{i}", score=float(i))
    assert (await store.admit_callbacks(100.0, 0.25, 3600, {"presale": 9}))[0] == []
    admitted, _, _ = await store.admit_callbacks(100.0, 0.25, 3600, {"orders": 3, "presale": 9})
    assert admitted == ["orders"] * 3
    assert (await store.admit_callbacks(100.0, 0.25, 3600, {"orders": 3}))[0] == []


async def test_with_nobody_staffed_one_callback_waits_at_its_place(store: RedisStore) -> None:
    """Nobody staffed for the skill: one callback joins the queue at its place, not more."""
    for i in range(3):
        await _request(store, f"c{i}", score=float(i))
    assert (await store.admit_callbacks(100.0, 0.5, 3600, {"orders": 0}))[0] == ["orders"]
    assert (await store.admit_callbacks(100.0, 0.5, 3600, {"orders": 0}))[0] == []
    assert await store.waiting("orders") == ["cb-c0-1"]


async def test_a_closed_skill_or_an_old_request_is_not_admitted(store: RedisStore) -> None:
    await _request(store, "c1", score=1.0, now=100.0)
    assert await store.admit_callbacks(100.0, 0.5, 3600, staffed(5, ["presale"])) == (
        [],
        [],
        100.0,
    )
    assert await store.admit_callbacks(3700.0, 0.5, 3600, staffed(5)) == ([], ["c1"], None)
    assert (await store.callback("c1"))["state"] == "expired"


async def test_a_callback_waiting_in_its_queue_past_the_expiry_expires(store: RedisStore) -> None:
    """An attempt that waited in its queue (no agent free) until the expiry leaves the queue, and
    the callback expires: it is never dialled late."""
    await _request(store, "c1", score=1.0, now=100.0)
    assert (await store.admit_callbacks(100.0, 0.5, 3600, staffed(1)))[0] == ["orders"]
    assert await store.admit_callbacks(3699.0, 0.5, 3600, staffed(1)) == ([], [], None)
    assert await store.admit_callbacks(3700.0, 0.5, 3600, staffed(1)) == ([], ["c1"], None)
    assert await store.waiting("orders") == []
    assert await store.call("cb-c1-1") is None
    cb = await store.callback("c1")
    assert (cb["state"], cb["current"]) == ("expired", "")


async def test_an_attempt_whose_caller_vanished_is_due_again_uncounted(
    store: RedisStore, redis_py: aioredis.Redis
) -> None:
    """The virtual caller of an attempt is gone before anyone was dialled (its hash expired, its
    claim was dropped): the attempt did not happen, the callback is admitted again."""
    await _request(store, "c1", score=1.0)
    await store.admit_callbacks(100.0, 0.5, 3600, staffed(1))
    await redis_py.delete("cb:call:cb-c1-1")
    admitted, _, _ = await store.admit_callbacks(101.0, 0.5, 3600, staffed(1))
    assert admitted == ["orders"]
    cb = await store.callback("c1")
    assert (cb["state"], cb["attempts"], cb["current"]) == ("queued", "1", "cb-c1-1")
    assert await store.waiting("orders") == ["cb-c1-1"]


async def test_an_attempt_is_closed_once_and_a_retry_waits_its_turn(store: RedisStore) -> None:
    await _request(store, "c1", score=1.0)
    await store.admit_callbacks(100.0, 0.5, 3600, staffed(5))
    assert await store.finish_callback_attempt("c1", "cb-c1-1", 110.0, "retry", "BUSY", at=200.0)
    assert not await store.finish_callback_attempt("c1", "cb-c1-1", 111.0, "answered", "ANSWER")
    cb = await store.callback("c1")
    assert (cb["state"], cb["last_status"], cb["attempts"]) == ("pending", "BUSY", "1")
    assert await store.admit_callbacks(199.0, 0.5, 3600, staffed(5)) == ([], [], 200.0)
    assert (await store.admit_callbacks(200.0, 0.5, 3600, staffed(5)))[0] == ["orders"]
    assert (await store.callback("c1"))["current"] == "cb-c1-2"


@given(
    st.integers(0, 12),
    st.sampled_from([0.1, 0.25, 0.5, 1.0]),
    st.integers(0, 4),
    st.integers(0, 15),
)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
async def test_the_admission_script_paces_as_the_domain_rule_says(
    store: RedisStore,
    redis_py: aioredis.Redis,
    staffed_n: int,
    share: float,
    inbound: int,
    due: int,
) -> None:
    """However many are due, the script admits what admission_limit allows, no more."""
    await redis_py.flushdb()
    for i in range(inbound):
        await store.enqueue(uid=f"in{i}", skill="orders", score=900.0 + i, node="n1", fields={})
    for i in range(due):
        await _request(store, f"c{i}", score=float(i))
    admitted, _, _ = await store.admit_callbacks(100.0, share, 3600, {"orders": staffed_n})
    limit = admission_limit(CallbackPolicy(share=share), staffed_n, inbound)
    assert len(admitted) == min(due, limit)
