"""Callback records in a real redis-server: admission at the caller's place, exactly once across
controllers, the share limit, expiry, and attempts closed once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from acd.adapters.store import RedisStore

SKILLS = ["orders", "presale"]


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


async def test_a_callback_joins_its_queue_at_the_callers_place(store: RedisStore) -> None:
    await _request(store, "c1", score=42.0)
    admitted, expired = await store.admit_callbacks(100.0, 5, 3600, SKILLS)
    assert (admitted, expired) == (["orders"], [])
    assert await store.waiting("orders") == ["cb-c1-1"]
    assert await store._redis.zscore("cb:q:orders", "cb-c1-1") == 42.0
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
            *(s.admit_callbacks(100.0, 100, 3600, SKILLS) for s in stores * 3)
        )
        assert sum(len(admitted) for admitted, _ in results) == 20
        waiting = await stores[0].waiting("orders")
        assert sorted(waiting) == sorted(f"cb-c{i}-1" for i in range(20))
    finally:
        for s in stores:
            await s.close()


async def test_the_share_limit_holds_callbacks_back(store: RedisStore) -> None:
    for i in range(3):
        await _request(store, f"c{i}", score=float(i))
    admitted, _ = await store.admit_callbacks(100.0, 2, 3600, SKILLS)
    assert len(admitted) == 2
    assert await store.waiting("orders") == ["cb-c0-1", "cb-c1-1"]
    assert await store.admit_callbacks(100.0, 2, 3600, SKILLS) == ([], [])
    assert await store.finish_callback_attempt("c0", "cb-c0-1", 110.0, "answered", "ANSWER")
    assert (await store.admit_callbacks(111.0, 2, 3600, SKILLS))[0] == ["orders"]


async def test_a_closed_skill_or_an_old_request_is_not_admitted(store: RedisStore) -> None:
    await _request(store, "c1", score=1.0, now=100.0)
    assert await store.admit_callbacks(100.0, 5, 3600, ["presale"]) == ([], [])
    assert await store.admit_callbacks(3700.0, 5, 3600, SKILLS) == ([], ["c1"])
    assert (await store.callback("c1"))["state"] == "expired"


async def test_an_attempt_is_closed_once_and_a_retry_waits_its_turn(store: RedisStore) -> None:
    await _request(store, "c1", score=1.0)
    await store.admit_callbacks(100.0, 5, 3600, SKILLS)
    assert await store.finish_callback_attempt("c1", "cb-c1-1", 110.0, "retry", "BUSY", at=200.0)
    assert not await store.finish_callback_attempt("c1", "cb-c1-1", 111.0, "answered", "ANSWER")
    cb = await store.callback("c1")
    assert (cb["state"], cb["last_status"], cb["attempts"]) == ("pending", "BUSY", "1")
    assert await store.admit_callbacks(199.0, 5, 3600, SKILLS) == ([], [])
    assert (await store.admit_callbacks(200.0, 5, 3600, SKILLS))[0] == ["orders"]
    assert (await store.callback("c1"))["current"] == "cb-c1-2"


async def test_trunk_channels_hold_capacity_across_controllers(redis_url: str) -> None:
    """Two controllers taking channels at once never put more legs on a trunk than its
    capacity; a full primary sends the next leg to the standby; released channels are free."""
    a, b = RedisStore(redis_url, "cb", node="n1"), RedisStore(redis_url, "cb", node="n2")
    try:
        order = [("primary", 3), ("standby", 2)]
        taken = await asyncio.gather(
            *(s.claim_trunk(f"leg{i}", order) for i, s in enumerate([a, b] * 4))
        )
        assert sorted(str(t) for t in taken) == ["None"] * 3 + ["primary"] * 3 + ["standby"] * 2
        legs = await a.trunk_legs("primary")
        assert len(legs) == 3
        assert set(legs.values()) <= {"n1", "n2"}
        leg = next(iter(legs))
        assert await b.release_trunk("primary", leg)
        assert await a.claim_trunk("again", order) == "primary"
        assert await a.claim_trunk("none", []) is None
    finally:
        await a.close()
        await b.close()
