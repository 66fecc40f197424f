"""The Redis store against a real redis-server: claims are atomic and follow the routing order."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acd.adapters.calls import CallStore
from acd.adapters.redis_link import Script
from acd.adapters.store import RedisStore, lua_states
from acd.config import Agent
from acd.domain.agent import AgentEvent
from acd.domain.call import CallEvent, CallState, sources, target
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


async def test_a_batch_claims_the_pairs_in_order_and_says_whether_to_claim_again(
    store: RedisStore,
) -> None:
    """Five callers, three agents (levels 9, 5, 3): a batch of two claims the two best pairs and
    says the queue may hold more; the next batch claims the last agent and says no more (two
    callers left, no agent): one round trip per batch, never a call that finds nothing."""
    agents = [_agent("a9", presale=9), _agent("a5", presale=5), _agent("a3", presale=3)]
    await store.register_agents(agents, now=100.0)
    for i in range(5):
        await _enqueue(store, f"c{i}", "presale", 10.0 + i)
    claims, more = await store.claim_batch("presale", 2)
    assert [(c.uid, c.agent_id) for c in claims] == [("c0", "a9"), ("c1", "a5")]
    assert [(c.channel, c.kind) for c in claims] == [("PJSIP/x-c0", ""), ("PJSIP/x-c1", "")]
    assert all(c.held_at > 0 for c in claims)  # when they headed for the hold context
    assert more is True
    claims, more = await store.claim_batch("presale", 2)
    assert [(c.uid, c.agent_id) for c in claims] == [("c2", "a3")]
    assert more is False
    assert await store.queue_depth("presale") == 2
    assert {(await store.agent(a.id))["state"] for a in agents} == {"reserved"}
    claims, more = await store.claim_batch("presale", 16)
    assert (claims, more) == ([], False)


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


async def test_requeue_goes_to_the_front_and_end_call_moves_the_agent_on(
    store: RedisStore,
) -> None:
    """A caller whose agent did not answer returns to the front of the queue; a hangup frees a
    reserved agent at once, and sends an agent that talked to wrap-up."""
    await store.register_agents([_agent("a", presale=5)], now=1.0)
    await _enqueue(store, "first", "presale", 10.0)
    await _enqueue(store, "second", "presale", 5.0)
    claim = await store.claim_for_skill("presale")
    assert claim is not None
    assert claim.uid == "second"
    assert await store.requeue("second")
    assert await store.waiting("presale") == ["second", "first"]
    assert await store.claim_for_skill("presale") is None  # the agent is still held
    applied, before = await store.agent_event("a", AgentEvent.RELEASE, 2.0, call="second")
    assert (applied, before) == (True, "reserved")
    claim = await store.claim_for_skill("presale")
    assert claim is not None
    assert claim.uid == "second"
    assert await store.end_call("second", now=5.0, wrap_up=10.0) == ("a", "available")
    claim = await store.claim_for_skill("presale")
    assert claim is not None
    assert claim.uid == "first"
    assert (await store.agent_event("a", AgentEvent.ANSWER, 6.0, call="first"))[0]
    assert await store.end_call("first", now=7.0, wrap_up=10.0) == ("a", "wrap_up")
    assert await store.due_wrapups(16.9) == []
    assert await store.due_wrapups(17.0) == ["a"]
    assert await store.call("first") is None
    assert await store.calls_of_node("n1") == set()


async def test_a_front_requeue_beats_a_head_start(store: RedisStore) -> None:
    """Requeued after a missed ring, a caller goes ahead even of a caller with a bigger head
    start (the front of the queue, not just its original place)."""
    await store.register_agents([_agent("a", presale=5)], now=1.0)
    await _enqueue(store, "regular", "presale", 100.0)
    claim = await store.claim_for_skill("presale")
    assert claim is not None
    await _enqueue(store, "vip", "presale", -20.0)
    assert await store.requeue("regular")
    assert await store.waiting("presale") == ["regular", "vip"]


async def test_agent_events_follow_the_transition_table(store: RedisStore) -> None:
    """An event is applied only from its source states: pause from available, not from on call;
    a stale event about another call is refused."""
    await store.register_agents([_agent("a", presale=5)], now=1.0, login=False)
    assert await store.agent_event("a", AgentEvent.PAUSE, 2.0) == (False, "logged_out")
    assert await store.agent_event("a", AgentEvent.LOGIN, 2.0) == (True, "logged_out")
    assert await store.agent_event("a", AgentEvent.PAUSE, 3.0, reason="lunch") == (
        True,
        "available",
    )
    assert (await store.agent("a"))["reason"] == "lunch"
    assert await store.agent_event("a", AgentEvent.RESUME, 4.0) == (True, "paused")
    await _enqueue(store, "c1", "presale", 1.0)
    claim = await store.claim_for_skill("presale")
    assert claim is not None
    assert await store.agent_event("a", AgentEvent.RING, 5.0, call="other") == (False, "reserved")
    assert await store.agent_event("a", AgentEvent.RING, 5.0, call="c1") == (True, "reserved")
    assert await store.agent_event("a", AgentEvent.PAUSE, 6.0) == (False, "ringing")
    assert await store.agent_event("a", AgentEvent.MISSED, 7.0, call="c1", reason="missed") == (
        True,
        "ringing",
    )
    fields = await store.agent("a")
    assert (fields["state"], fields["reason"], fields["call"]) == ("paused", "missed", "")


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


RULES = {
    "aftersales": {"min": 6, "steps": [[20.0, 1, []], [60.0, None, ["presale"]]]},
}


@pytest.fixture
async def ringed(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, "t", RULES)
    yield s
    await s.close()


async def _join(store: RedisStore, uid: str, skill: str, at: float) -> None:
    await store.enqueue(
        uid=uid, skill=skill, score=at, node="n1",
        fields={"channel": f"PJSIP/x-{uid}", "enqueued_at": repr(at)},
    )  # fmt: skip


async def test_escalation_accepts_lower_levels_after_the_configured_wait(
    ringed: RedisStore,
) -> None:
    """A level-4 agent is refused to an after-sales caller (minimum 6) until the caller has
    waited 20 s; the ring widens for callers already waiting, not frozen at join."""
    await ringed.register_agents([_agent("low", aftersales=4)], now=0.0)
    await _join(ringed, "c1", "aftersales", at=100.0)
    assert await ringed.claim_for_skill("aftersales", now=119.9) is None
    assert await ringed.claim_for_agent("low", now=119.9) is None
    claim = await ringed.claim_for_agent("low", now=120.0)
    assert claim is not None
    assert (claim.uid, claim.agent_id, claim.skill) == ("c1", "low", "aftersales")


async def test_escalation_overflows_to_other_skills_last(ringed: RedisStore) -> None:
    """Only a presale agent is free: an after-sales caller gets it after 60 s of wait, not
    before; the claim stays in the after-sales queue's name."""
    await ringed.register_agents([_agent("pre", presale=9)], now=0.0)
    await _join(ringed, "c1", "aftersales", at=100.0)
    assert await ringed.claim_for_skill("aftersales", now=159.0) is None
    assert await ringed.claim_for_agent("pre", now=159.0) is None
    claim = await ringed.claim_for_skill("aftersales", now=160.0)
    assert claim is not None
    assert (claim.uid, claim.agent_id, claim.skill) == ("c1", "pre", "aftersales")


async def test_a_caller_with_a_wider_ring_takes_an_agent_the_head_refuses(
    ringed: RedisStore,
) -> None:
    """The head caller (big head start, joined just now) refuses a level-4 agent; a caller who
    has waited 30 s accepts it, so that agent is not left idle."""
    await ringed.register_agents([_agent("low", aftersales=4)], now=0.0)
    await _join(ringed, "long", "aftersales", at=100.0)
    await ringed.enqueue(
        uid="vip", skill="aftersales", score=0.0, node="n1",
        fields={"channel": "PJSIP/x-vip", "enqueued_at": "129.0"},
    )  # fmt: skip
    claim = await ringed.claim_for_skill("aftersales", now=130.0)
    assert claim is not None
    assert claim.uid == "long"


@given(
    arrivals=st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=12),
    check_at=st.floats(min_value=0, max_value=200),
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
async def test_no_caller_claimed_before_its_ring_allows(
    ringed: RedisStore, arrivals: list[float], check_at: float, redis_py: aioredis.Redis
) -> None:
    """Whatever the arrivals, a level-4 agent only ever serves an after-sales caller that has
    waited at least 20 s, and never two callers at once."""
    await redis_py.flushdb()
    await ringed.register_agents([_agent("low", aftersales=4)], now=0.0)
    for i, at in enumerate(arrivals):
        await _join(ringed, f"c{i}", "aftersales", at=at)
    claim = await ringed.claim_for_skill("aftersales", now=check_at)
    if claim is None:
        assert all(check_at - at < 20 for at in arrivals)
    else:
        joined = arrivals[int(claim.uid[1:])]
        assert check_at - joined >= 20
        assert await ringed.claim_for_skill("aftersales", now=check_at) is None


async def test_commands_go_on_after_redis_restarts(tmp_path: Path) -> None:
    """redis-server killed and started again: the pooled connections are dead, and the next
    commands run on fresh ones instead of failing."""
    sock = tmp_path / "r.sock"

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.02)
        return proc

    proc = start()
    store = RedisStore(f"unix://{sock}", "t")
    try:
        await store.register_agents([_agent("a", presale=3)], now=1.0)
        await asyncio.gather(*(store.agent("a") for _ in range(5)))  # several pooled connections
        proc.kill()
        proc.wait()
        sock.unlink(missing_ok=True)
        proc = start()
        assert await store.agent("a") == {}  # a fresh, empty server answers
        await store.register_agents([_agent("a", presale=3)], now=2.0)
        assert (await store.agent("a"))["state"] == "available"
    finally:
        await store.close()
        proc.kill()
        proc.wait()


async def test_a_stale_available_entry_is_dropped_and_the_next_agent_claimed(
    store: RedisStore, redis_py: aioredis.Redis
) -> None:
    """An available-set entry whose agent is no longer available (or lost the skill) never
    blocks the queue: the claim drops it and takes the next agent."""
    await store.register_agents([_agent("a", presale=9), _agent("b", presale=5)], now=100.0)
    await redis_py.hset("t:agent:a", "state", "paused")  # the set was not told
    await _enqueue(store, "c1", "presale", 1.0)
    claim = await store.claim_for_skill("presale")
    assert claim is not None
    assert claim.agent_id == "b"
    assert await redis_py.zscore("t:avail:presale", "a") is None


async def test_skills_from_the_configuration_re_rank_an_available_agent(
    store: RedisStore,
) -> None:
    """A restart with new levels in the configuration re-ranks an available agent at once; a
    supervisor's skills stay as they were set."""
    await store.register_agents([_agent("a", presale=3), _agent("b", presale=5)], now=100.0)
    await store.register_agents([_agent("a", presale=9), _agent("b", presale=5)], now=200.0)
    await _enqueue(store, "c1", "presale", 1.0)
    claim = await store.claim_for_skill("presale")
    assert claim is not None
    assert claim.agent_id == "a"
    assert await store.set_agent_skills("b", {"orders": 4}, who="sup") == "presale:5"
    await store.register_agents([_agent("b", presale=5)], now=300.0)
    assert (await store.agent("b"))["skills"] == "orders:4"


async def test_retired_agents_are_forgotten(store: RedisStore, redis_py: aioredis.Redis) -> None:
    """An agent the deployment no longer has leaves the agent list and every available set."""
    await store.register_agents([_agent("a", presale=3, orders=2), _agent("b", presale=5)], 1.0)
    await store.retire_agents(["a"])
    assert await store.agent_ids() == ["b"]
    assert await store.agent("a") == {}
    assert await redis_py.zrange("t:avail:presale", 0, -1) == ["b"]
    assert await redis_py.zrange("t:avail:orders", 0, -1) == []


async def test_a_field_of_a_call_that_hung_up_does_not_recreate_it(
    store: RedisStore, redis_py: aioredis.Redis
) -> None:
    """Setting a field (or an answer) on a call that is gone leaves no key without a lifetime."""
    assert not await store.set_call_field("gone", "ewt_at_join", "3.0")
    assert (await CallStore(store.link, store.prefix).answer("gone", 10.0)).call is None
    assert await redis_py.exists("t:call:gone") == 0
    await _enqueue(store, "c1", "presale", 1.0)
    assert await store.set_call_field("c1", "ewt_at_join", "3.0")
    assert 0 < await redis_py.ttl("t:call:c1")


async def test_an_earlier_wrap_up_timer_does_not_cut_a_later_wrap_up_short(
    store: RedisStore,
) -> None:
    """Wrap-up ends only once it is due: the timer of a previous call finds a fresh wrap-up and
    leaves it alone."""
    await store.register_agents([_agent("a", presale=3)], now=1.0)
    for uid, t in (("c1", 10.0), ("c2", 20.0)):
        await _enqueue(store, uid, "presale", 1.0)
        assert await store.claim_for_skill("presale", now=t) is not None
        assert (await store.agent_event("a", AgentEvent.ANSWER, t, call=uid))[0]
        assert await store.end_call(uid, t + 1, wrap_up=5.0) == ("a", "wrap_up")
        if uid == "c1":
            done, _ = await store.agent_event("a", AgentEvent.WRAP_UP_DONE, 16.0, wrapped_by=16.0)
            assert done
    done, state = await store.agent_event("a", AgentEvent.WRAP_UP_DONE, 22.0, wrapped_by=22.0)
    assert (done, state) == (False, "wrap_up")
    assert (await store.agent_event("a", AgentEvent.WRAP_UP_DONE, 26.0, wrapped_by=26.0))[0]


async def test_a_waiting_caller_becomes_a_callback_in_one_step_unless_claimed(
    store: RedisStore,
) -> None:
    """Pressing 1 on hold: out of the queue and into the callbacks atomically; a caller an agent
    was claimed for meanwhile stays with that agent and no callback is recorded."""
    await store.register_agents([_agent("a", presale=3)], now=1.0)
    for uid in ("c1", "c2"):
        await _enqueue(store, uid, "presale", 1.0 if uid == "c1" else 2.0)
    assert await store.claim_for_skill("presale") is not None  # c1 is being connected

    async def ask(uid: str) -> bool:
        return await store.register_callback(
            uid=uid, number="5551234", skill="presale", score=2.0, enqueued_at=2.0, now=30.0,
            fields={}, leave_queue=True,
        )  # fmt: skip

    assert not await ask("c1")
    assert await store.callback("c1") == {}
    assert await ask("c2")
    assert await store.waiting("presale") == []
    assert (await store.call("c2")).state == "left_for_callback"  # type: ignore[union-attr]
    assert (await store.callback("c2"))["state"] == "pending"


async def test_the_wait_figures_count_free_agents_from_the_queues_minimum_level(
    redis_url: str,
) -> None:
    """A level-4 agent is free but after-sales callers start at level 6: nobody counts as free
    or staffed for them yet, and the best free level (4) is what escalation will reach."""
    s = RedisStore(redis_url, "w", {"aftersales": {"min": 6, "steps": [[20.0, 1, []]]}})
    try:
        await s.register_agents([_agent("low", aftersales=4)], now=1.0)
        figures = await s.queue_figures("aftersales", None, 0, 120.0, now=2.0)
        assert (figures.free, figures.best_free_level) == (0, 4)
        assert (await s.load(["aftersales"])).staffed_by_skill == {"aftersales": 0}
        await s.register_agents([_agent("high", aftersales=7)], now=1.0)
        figures = await s.queue_figures("aftersales", None, 0, 120.0, now=2.0)
        assert (figures.free, figures.best_free_level) == (1, 7)
        assert (await s.load(["aftersales"])).staffed_by_skill == {"aftersales": 1}
    finally:
        await s.close()


async def test_an_agent_freed_while_its_phone_is_busy_elsewhere_waits_for_the_phone(
    store: RedisStore, redis_py: aioredis.Redis
) -> None:
    """The phone is reported in use during a call of ours (recorded, no transition); the call
    ends before the phone is reported free: the agent is device_busy, out of the available
    sets, until the phone is free again. Resuming a paused agent with a busy phone does the
    same."""
    await store.register_agents([_agent("a", presale=3)], now=1.0)
    await _enqueue(store, "c1", "presale", 1.0)
    assert await store.claim_for_skill("presale", now=2.0) is not None
    applied, _ = await store.agent_event("a", AgentEvent.DEVICE_BUSY, 3.0, device="INUSE")
    assert not applied
    assert (await store.agent("a"))["device"] == "INUSE"
    assert (await store.agent_event("a", AgentEvent.ANSWER, 3.0, call="c1"))[0]
    assert await store.end_call("c1", 10.0, wrap_up=0.0) == ("a", "device_busy")
    assert await redis_py.zscore("t:avail:presale", "a") is None
    assert (await store.agent_event("a", AgentEvent.DEVICE_IDLE, 11.0, device="NOT_INUSE"))[0]
    assert (await store.agent("a"))["state"] == "available"
    assert await redis_py.zscore("t:avail:presale", "a") is not None
    assert (await store.agent_event("a", AgentEvent.PAUSE, 12.0, reason="lunch"))[0]
    await store.agent_event("a", AgentEvent.DEVICE_BUSY, 13.0, device="RINGING")
    assert (await store.agent_event("a", AgentEvent.RESUME, 14.0))[0]
    fields = await store.agent("a")
    assert (fields["state"], fields["reason"]) == ("device_busy", "RINGING")
    assert await redis_py.zscore("t:avail:presale", "a") is None


async def test_the_scripts_apply_the_domain_call_table(store: RedisStore) -> None:
    """The table every script starts with (lua_states), as Redis's Lua reads it, is the one of
    acd.domain.call: each event's target and source states."""
    script = Script(lua_states() + "return cjson.encode({CALL, CALL_STATE})")
    table, names = json.loads(await store.link.run_script(script, [], []))
    assert table == {
        event.value: {
            "to": target(event).value,
            "from": {state.value: True for state in sources(event)},
        }
        for event in CallEvent
    }
    assert names == {state.value: state.value for state in CallState}


async def test_an_enqueue_can_claim_its_caller_in_the_same_round_trip(store: RedisStore) -> None:
    """With a free agent the caller leaves the enqueue paired with it; with none it waits in its
    queue and nothing says to claim again."""
    await store.register_agents([_agent("a", presale=5)], now=1.0)
    claims, more = await store.enqueue_and_claim(
        uid="c1", skill="presale", score=10.0, node="n1",
        fields={"channel": "PJSIP/x-c1"}, limit=16, now=10.0,
    )  # fmt: skip
    assert [(c.uid, c.agent_id, c.channel) for c in claims] == [("c1", "a", "PJSIP/x-c1")]
    assert not more
    assert (await store.call("c1")).state == "offered"  # type: ignore[union-attr]
    claims, more = await store.enqueue_and_claim(
        uid="c2", skill="presale", score=11.0, node="n1", fields={"channel": "x"}, limit=16,
    )  # fmt: skip
    assert (claims, more) == ([], False)
    assert await store.waiting("presale") == ["c2"]


async def test_an_enqueue_if_absent_leaves_a_call_redis_holds_as_it_is(store: RedisStore) -> None:
    """What a resync adopting a caller on hold uses: a call the IVR queued (and a claim offered)
    meanwhile is not reset to queued, so its agent cannot be given a second caller."""
    await store.register_agents([_agent("a", presale=5)], now=1.0)
    await _enqueue(store, "c1", "presale", 10.0)
    assert await store.claim_for_skill("presale") is not None
    fields = {"channel": "PJSIP/x-c1"}
    assert not await store.enqueue(
        uid="c1", skill="presale", score=1.0, node="n1", fields=fields, if_absent=True
    )
    call = await store.call("c1")
    assert call is not None
    assert (call.state, call.agent, call.score) == ("offered", "a", 10.0)
    assert await store.waiting("presale") == []
    assert await store.enqueue(
        uid="c2", skill="presale", score=2.0, node="n1", fields=fields, if_absent=True
    )
    assert await store.waiting("presale") == ["c2"]
