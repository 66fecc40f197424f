"""Journey events and the live service level against a real redis-server: the counters are
shared by every controller and outlive a restart; the stream keeps its retention."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from acd.adapters.store import RedisStore
from acd.domain.report import Targets
from acd.runtime.journey import Recorder

DAY = 86400.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[list[RedisStore]]:
    """Three connections to one Redis, as three controllers would have."""
    out = [RedisStore(redis_url, "j", node=f"node-{i}") for i in range(3)]
    yield out
    for s in out:
        await s.close()


async def test_two_controllers_feed_one_service_level_that_a_restarted_one_reads(
    stores: list[RedisStore],
) -> None:
    """Controller A queues and answers two callers (5 s and 30 s), B two more (one abandons
    after 2 s, short, one after 40 s) and answers a fifth in 8 s: both read 2 in time of
    (3 answered + 2 abandoned - 1 short) = 0.5, and so does a controller started afterwards."""
    clock = Clock(time.time())  # counters expire in Redis's time: the clock must be near it
    a = Recorder(stores[0], 35, "node-a", clock)
    b = Recorder(stores[1], 35, "node-b", clock)
    for uid, rec in (("a1", a), ("a2", a), ("b1", b), ("b2", b), ("b3", b)):
        await rec.emit("queued", uid, skill="orders")
    clock.now += 2
    await b.emit("hangup", "b1", skill="orders", outcome="abandoned", waited=2.0)
    clock.now += 3
    await a.emit("answer", "a1", skill="orders", waited=5.0)
    clock.now += 3
    await b.emit("answer", "b3", skill="orders", waited=8.0)
    clock.now += 22
    await a.emit("answer", "a2", skill="orders", waited=30.0)
    clock.now += 10
    await b.emit("hangup", "b2", skill="orders", outcome="abandoned", waited=40.0)
    await a.emit("hangup", "a1", skill="orders", outcome="answered", waited=5.0, talked=35.0)

    expected = {"orders": 0.5, "presale": None}
    assert await a.service_levels(["orders", "presale"], clock.now) == expected
    assert await b.service_levels(["orders", "presale"], clock.now) == expected
    restarted = Recorder(stores[2], 35, "node-a", clock)
    assert await restarted.service_levels(["orders", "presale"], clock.now) == expected
    assert (await restarted.service_counts(["orders"], clock.now))["orders"] == {
        "offered": 5, "answered": 3, "in_target": 2, "abandoned": 2, "short_abandoned": 1,
        "fallback": 0,
    }  # fmt: skip


async def test_the_counters_move_with_their_journey_event_and_leave_the_window(
    stores: list[RedisStore], redis_py: aioredis.Redis
) -> None:
    """An event and the counter it moves are both written; the caller leaves the live figure
    when its minute leaves the hour, and its counter key expires soon after (the end of its
    minute + the window + 60 s): no key outlives its use."""
    start = time.time() // 60 * 60  # a minute's start, near Redis's time (keys expire in it)
    clock = Clock(start)
    rec = Recorder(stores[0], 35, "node-a", clock, targets=Targets(service_seconds=10))
    await rec.emit("queued", "c1", skill="presale")
    clock.now += 12
    await rec.emit("answer", "c1", skill="presale", waited=12.0)
    await rec.flush()
    entries = await stores[0].journey_range(0, time.time() + 60)
    assert [e["event"] for e in entries] == ["queued", "answer"]
    assert await rec.service_levels(["presale"], clock.now) == {"presale": 0.0}  # 12 s > 10 s
    key = f"j:sl:presale:{int(start // 60)}"
    assert await redis_py.hgetall(key) == {
        "offered": "1", "answered": "1",
    }  # fmt: skip
    expire_at = await redis_py.expiretime(key)
    assert expire_at == int(start // 60 + 1) * 60 + 3600 + 60
    assert await rec.service_levels(["presale"], start + 3599) == {"presale": 0.0}
    assert await rec.service_levels(["presale"], start + 3600) == {"presale": None}


async def test_events_older_than_the_retention_are_trimmed_newer_ones_kept(
    stores: list[RedisStore], redis_py: aioredis.Redis
) -> None:
    """With 35 days of retention, an event recorded now trims the stream nodes wholly older
    than 35 days: of 250 events 40 days old, only those sharing a node with newer events may
    stay (fewer than a node holds); the 3 events 30 days old and the new one are all kept."""
    store = stores[0]
    redis = redis_py
    now = time.time()
    node_size = int((await redis.config_get("stream-node-max-entries"))["stream-node-max-entries"])
    old_ms = int((now - 40 * DAY) * 1000)
    for i in range(250):
        await redis.xadd("j:journey", {"event": "arrival", "uid": f"old{i}"}, id=f"{old_ms + i}-0")
    kept_ms = int((now - 30 * DAY) * 1000)
    for i in range(3):
        await redis.xadd(
            "j:journey", {"event": "arrival", "uid": f"kept{i}"}, id=f"{kept_ms + i}-0"
        )

    recorder = Recorder(store, 35, "node-a", Clock(now))
    await recorder.emit("arrival", "new", caller_id="139")
    await recorder.flush()

    uids = [fields["uid"] for _, fields in await redis.xrange("j:journey")]
    old_left = [u for u in uids if u.startswith("old")]
    assert uids[len(old_left) :] == ["kept0", "kept1", "kept2", "new"]
    # Every node entirely older than 35 days is gone: what is left shares the node of the
    # first newer event (a node holds at most stream-node-max-entries).
    assert len(old_left) < node_size


async def test_the_events_of_many_calls_share_a_few_writes_in_the_order_emitted(
    stores: list[RedisStore], redis_py: aioredis.Redis
) -> None:
    """Group commit: 200 calls emitting at once never wait on Redis, and their events are
    written in a few commands, each once and in the order emitted; a flush waits for them."""
    store = stores[0]
    rec = Recorder(store, 35, "node-a", Clock(time.time()))
    for i in range(200):
        await rec.emit("menu", f"c{i}", at="menu", digit="1")
    assert await redis_py.xlen("j:journey") == 0  # nothing written yet: they linger
    await rec.flush()
    uids = [fields["uid"] for _, fields in await redis_py.xrange("j:journey")]
    assert uids == [f"c{i}" for i in range(200)]
    assert rec.batches == 1


async def test_a_redis_outage_loses_the_events_of_its_batch_and_the_callers_go_on(
    tmp_path: object,
) -> None:
    """No Redis: the emitters go on, the flush returns (the events are lost, and logged), and
    the next events are written once Redis answers again."""
    store = RedisStore(f"unix://{tmp_path}/none.sock", "j")
    rec = Recorder(store, 35, "node-a", Clock(time.time()))
    for i in range(20):
        await rec.emit("menu", f"c{i}")
    await asyncio.wait_for(rec.flush(), timeout=30)
    assert rec.batches == 1
    await store.close()
