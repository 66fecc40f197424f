"""A call's answer and end in one round trip each (acd.adapters.calls), against a real
redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from acd.adapters.calls import CallStore
from acd.adapters.store import RedisStore
from acd.config import Agent
from acd.domain.agent import AgentEvent


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, "t")
    yield s
    await s.close()


async def _offered(store: RedisStore, uid: str, agent: str, at: float) -> None:
    """A caller that queued at `at` with an ewt of 3 s and was claimed for `agent`."""
    await store.register_agents(
        [Agent(id=agent, endpoint=f"agent-{agent}", skills={"presale": 5})], now=0.0
    )
    await store.enqueue(
        uid=uid, skill="presale", score=at, node="n1",
        fields={"channel": f"PJSIP/x-{uid}", "enqueued_at": repr(at), "ewt_at_join": "3.0"},
    )  # fmt: skip
    claim = await store.claim_for_skill("presale", now=at)
    assert claim is not None
    assert claim.agent_id == agent


async def test_answer_connects_an_offered_call_once_and_logs_its_wait(
    store: RedisStore, redis_py: aioredis.Redis
) -> None:
    calls = CallStore(store.link, store.prefix)
    redis = redis_py
    await _offered(store, "c1", "a1", at=100.0)
    answered = await calls.answer("c1", 104.5)
    before = answered.call
    assert before is not None
    assert answered.agent_answered is None  # not asked
    assert (before.state, before.agent, before.fields["skill"]) == ("offered", "a1", "presale")
    call = await store.call("c1")
    assert call is not None
    assert (call.state, call.fields["answered_at"]) == ("connected", "104.5")
    log = await redis.xrange("t:ewt_log")
    assert [(f["uid"], f["ewt"], float(f["waited"])) for _, f in log] == [("c1", "3.0", 4.5)]
    # Connected already, or never offered, or gone: nothing changes.
    assert (await calls.answer("c1", 200.0)).call is None
    assert (await store.call("c1")).fields["answered_at"] == "104.5"  # type: ignore[union-attr]
    await store.enqueue(uid="q", skill="presale", score=1.0, node="n1", fields={"channel": "x"})
    assert (await calls.answer("q", 1.0)).call is None
    assert (await store.call("q")).state == "queued"  # type: ignore[union-attr]
    assert (await calls.answer("gone", 1.0)).call is None
    assert await redis.exists("t:call:gone") == 0
    assert len(await redis.xrange("t:ewt_log")) == 1


async def test_hangup_ends_the_call_moves_its_agent_takes_the_marker_and_names_the_trunks(
    store: RedisStore, redis_py: aioredis.Redis
) -> None:
    """One round trip: the answered call is gone with its fields returned, its agent is in
    wrap-up, the live marker is taken (a second hangup finds none: the end is recorded once),
    and the trunk whose channel the leg held is named."""
    calls = CallStore(store.link, store.prefix)
    redis = redis_py
    await _offered(store, "c1", "a1", at=100.0)
    await calls.answer("c1", 104.0)
    applied, _ = await store.agent_event("a1", AgentEvent.ANSWER, 104.0, call="c1")
    assert applied
    await redis.set("t:live:c1", "99.0")
    await redis.hset("t:trunk_legs:standby", "c1", "n1")
    ended = await calls.hangup("c1", 130.0, 10.0, ["primary", "standby"])
    assert ended.waiting is None  # not asked
    assert (ended.agent, ended.agent_state, ended.live) == ("a1", "wrap_up", "99.0")
    assert ended.call is not None
    assert (ended.call.fields["answered_at"], ended.call.agent) == ("104.0", "a1")
    assert ended.trunks == ("standby",)
    assert await redis.exists("t:call:c1", "t:live:c1") == 0
    assert (await store.agent("a1"))["state"] == "wrap_up"
    again = await calls.hangup("c1", 131.0, 10.0, ["primary", "standby"])
    assert (again.agent, again.live, again.call) == ("", None, None)


async def test_hangup_of_a_caller_who_never_queued_takes_only_its_marker(
    store: RedisStore, redis_py: aioredis.Redis
) -> None:
    calls = CallStore(store.link, store.prefix)
    await redis_py.set("t:live:ivr1", "fallback")
    ended = await calls.hangup("ivr1", 10.0, 0.0)
    assert (ended.agent, ended.agent_state, ended.live, ended.call) == ("", "", "fallback", None)


async def test_hangup_loads_its_script_again_after_redis_forgot_it(
    store: RedisStore, redis_py: aioredis.Redis
) -> None:
    """A Redis restart flushes the script cache: the pipelined EVALSHA is retried after a
    load, and the call still ends."""
    calls = CallStore(store.link, store.prefix)
    await _offered(store, "c1", "a1", at=100.0)
    await redis_py.script_flush()
    ended = await calls.hangup("c1", 101.0, 0.0, ["primary"])
    assert (ended.agent, ended.agent_state) == ("a1", "available")
    assert (await store.agent("a1"))["state"] == "available"


async def test_answer_with_the_agent_rung_moves_both_in_one_round_trip(store: RedisStore) -> None:
    """With the agent the controller rang, the call is connected and that agent goes on the call
    together; an agent who is not ringing for this call is left as it is."""
    calls = CallStore(store.link, store.prefix)
    await _offered(store, "c1", "a1", at=100.0)
    await store.agent_event("a1", AgentEvent.RING, 101.0, call="c1")
    answered = await calls.answer("c1", 104.0, agent="a1")
    assert answered.call is not None
    assert answered.agent_answered is True
    assert (await store.agent("a1"))["state"] == "on_call"
    assert (await store.call("c1")).state == "connected"  # type: ignore[union-attr]
    await _offered(store, "c2", "a2", at=110.0)
    await store.agent_event("a2", AgentEvent.RING, 111.0, call="c2")
    wrong = await calls.answer("c2", 112.0, agent="a1")  # a1 is not ringing for c2
    assert wrong.agent_answered is False
    assert (await store.agent("a1"))["state"] == "on_call"
    assert (await store.agent("a2"))["state"] == "ringing"


async def test_hangup_counts_the_callers_still_waiting_after_it(store: RedisStore) -> None:
    """Asked for queues, the hangup counts their callers once the agent is free: none, so no
    claim is needed for the agent; one, so it is."""
    calls = CallStore(store.link, store.prefix)
    await _offered(store, "c1", "a1", at=100.0)
    ended = await calls.hangup("c1", 101.0, 0.0, queues=["presale", "orders"])
    assert (ended.agent_state, ended.waiting) == ("available", 0)
    await _offered(store, "c2", "a1", at=102.0)
    await store.enqueue(uid="w", skill="orders", score=103.0, node="n1", fields={"channel": "x"})
    ended = await calls.hangup("c2", 104.0, 0.0, queues=["presale", "orders"])
    assert ended.waiting == 1
