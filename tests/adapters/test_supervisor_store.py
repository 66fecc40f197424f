"""The supervisor's toggles in a real redis-server: each change is one atomic step with its audit
entries, and the governor's tick cannot undo a pin that lands beside it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from acd.adapters.store import RedisStore, fields_of


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, "t")
    yield s
    await s.close()


async def _audit(store: RedisStore) -> list[tuple[str, str, str, str]]:
    entries = [
        (entry_id, fields_of(flat))
        for entry_id, flat in await store.link.execute("XRANGE", store.key("audit"), "-", "+")
    ]
    return [(f["who"], f["what"], f["before"], f["after"]) for _, f in entries]


async def test_a_pin_racing_the_governor_is_never_lost(store: RedisStore) -> None:
    """A governor tick and a pin sent together (two connections of one pool, so their commands
    interleave in Redis): after every round the effective level is the pin while there is one,
    the computed level otherwise, and each pin is audited once."""
    for _ in range(30):
        await asyncio.gather(store.save_overload(0, None, 1.0), store.pin_overload(3, "alice", 1.0))
        raw = await store.overload()
        assert (raw["pinned"], raw["level"], raw["computed"]) == ("3", "3", "0")
        assert await store.overload_level() == 3
        await asyncio.gather(
            store.save_overload(1, None, 2.0), store.pin_overload(None, "alice", 2.0)
        )
        raw = await store.overload()
        assert (raw["pinned"], raw["level"]) == ("", "1")
    audit = await _audit(store)
    assert audit[:2] == [("alice", "overload", "auto", "3"), ("alice", "overload", "3", "auto")]
    assert len(audit) == 60


async def test_the_governor_reports_the_pinned_level(store: RedisStore) -> None:
    """save_overload returns the effective level: the pin wins over the computed one."""
    assert await store.save_overload(2, 5.0, 1.0) == 2
    await store.pin_overload(4, "bob", 2.0)
    assert await store.save_overload(1, None, 3.0) == 4
    raw = await store.overload()
    assert (raw["computed"], raw["level"]) == ("1", "4")
    assert await store.own_overload() == (1, None)


async def test_the_deployment_has_one_level_the_highest_fresh_report(redis_url: str) -> None:
    """Two controllers' governors tick in turn; node a's AMI link failed (it computes 4), node b
    computes 2 from the same floor. The deployment is at 4 whoever writes last, instead of
    flipping between 4 and 2 on every tick; when a stops reporting, its report no longer counts
    after `stale_after`, and b's level holds. A pin still wins."""
    a, b = RedisStore(redis_url, "t", node="a"), RedisStore(redis_url, "t", node="b")
    try:
        for tick in range(5):
            now = 100.0 + 2 * tick
            assert await a.save_overload(4, None, now, stale_after=6.0) == 4
            assert await b.save_overload(2, 90.0, now + 1, stale_after=6.0) == 4
            assert (await b.overload())["level"] == "4"
        assert await b.own_overload() == (2, 90.0)
        assert await b.save_overload(2, 90.0, 110.0, stale_after=6.0) == 4  # a's 108 is fresh
        assert await b.save_overload(2, 90.0, 114.5, stale_after=6.0) == 2  # a stopped at 108
        assert await a.own_overload() is None  # dropped with its report
        await a.pin_overload(1, "alice", 115.0)
        assert await b.save_overload(3, None, 116.0, stale_after=6.0) == 1
        assert (await b.overload())["computed"] == "3"
    finally:
        await a.close()
        await b.close()


async def test_toggles_set_every_field_and_audit_each_in_one_step(store: RedisStore) -> None:
    """Queue states, callback modes and menu modes: one call sets them all and writes one audit
    entry per field with the value before (the configured default where none was set)."""
    assert await store.set_queue_states(["a", "b"], "paused", "alice", 1.0) == {
        "a": "open",
        "b": "open",
    }
    assert await store.set_queue_states(["b"], "open", "bob", 2.0) == {"b": "paused"}
    assert await store.queue_states(["a", "b"]) == {"a": "paused", "b": "open"}
    assert await store.set_callback_modes(["a", "b"], "off", "bob", 3.0) == {"a": "on", "b": "on"}
    assert await store.callback_modes(["a", "b", "c"]) == {"a": "off", "b": "off", "c": "on"}
    before = await store.set_menu_modes({"1000": "auto", "2000": "normal"}, "fallback", "bob", 4.0)
    assert before == {"1000": "auto", "2000": "normal"}
    assert await store.menu_modes(["1000", "2000", "3000"], {"3000": "auto"}) == {
        "1000": "fallback",
        "2000": "fallback",
        "3000": "auto",
    }
    assert await store.menu_mode("3000", "auto") == "auto"
    assert await _audit(store) == [
        ("alice", "queue a", "open", "paused"),
        ("alice", "queue b", "open", "paused"),
        ("bob", "queue b", "paused", "open"),
        ("bob", "callbacks a", "on", "off"),
        ("bob", "callbacks b", "on", "off"),
        ("bob", "menu 1000", "auto", "fallback"),
        ("bob", "menu 2000", "normal", "fallback"),
    ]
    with pytest.raises(ValueError, match="shut"):
        await store.set_queue_states(["a"], "shut", "bob", 5.0)
    assert len(await _audit(store)) == 7


async def test_callbacks_are_read_in_one_pipeline(store: RedisStore) -> None:
    """callbacks() lists every callback record, oldest place first."""
    for uid, score in (("late", 20.0), ("early", 10.0)):
        await store.register_callback(
            uid=uid, number="5551234", skill="orders", score=score, enqueued_at=score, now=30.0,
            fields={},
        )  # fmt: skip
    assert [c["uid"] for c in await store.callbacks()] == ["early", "late"]
