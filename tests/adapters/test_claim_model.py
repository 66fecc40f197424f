"""The claim script in Redis against the pure matching model (acd/domain/matching.py).

Generated floors (callers with head starts, agents with levels and idle times, escalation rules)
are loaded into a real redis-server and into the model; the same sequence of claims must give the
same pairs, with what happens between claims interleaved: claimed callers hanging up or going back
to the front (their agents free again), new callers with head starts, and stale entries in the
available sets. The properties proven on the model (tests/unit/test_matching.py) then hold for the
script that runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acd.adapters.store import RedisStore
from acd.config import Agent as AgentConfig
from acd.domain import matching
from acd.domain.agent import AgentEvent
from acd.domain.matching import Agent, Caller, Floor

SKILLS = ("presale", "orders", "aftersales")
RULES = {
    "aftersales": {"min": 6, "steps": [[20.0, 1, []], [60.0, None, ["presale"]]]},
    "orders": {"min": 3, "steps": [[30.0, None, ["aftersales"]]]},
}


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, "m", RULES)
    yield s
    await s.close()


# Distinct scores and idle times: the script breaks score ties between queues in Lua's table
# order, which no specification should depend on.
floor_st = st.tuples(
    st.lists(
        st.tuples(st.sampled_from(SKILLS), st.integers(0, 200), st.sampled_from([0, 30, 120])),
        max_size=30,
    ),
    st.lists(st.dictionaries(st.sampled_from(SKILLS), st.integers(1, 10), min_size=1), max_size=10),
    st.lists(
        st.one_of(
            st.tuples(st.just("skill"), st.sampled_from(SKILLS)),
            st.tuples(st.just("agent"), st.integers(0, 9).map(lambda i: f"a{i}")),
            # between claims: a claimed caller hangs up (its agent is free again), its agent
            # does not answer (the caller back at the front, the agent released), or an
            # available agent's entry goes stale (paused behind the sets' back)
            st.tuples(st.sampled_from(["end", "requeue", "stale"]), st.integers(0, 9)),
            # a caller joins meanwhile, with a head start that may put it ahead of anyone
            st.tuples(st.just("arrive"), st.sampled_from(SKILLS)),
        ),
        max_size=25,
    ),
    st.integers(150, 400),
    st.sets(st.sampled_from(SKILLS), max_size=1),
    st.integers(0, 2),
)


@given(floor_st)
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
async def test_the_script_claims_what_the_model_claims(
    store: RedisStore,
    redis_py: aioredis.Redis,
    case: tuple[
        list[tuple[str, int, int]], list[dict[str, int]], list[tuple[str, str]], int, set[str], int
    ],
) -> None:
    rows, agent_levels, ops, now, paused, level = case
    await redis_py.flushdb()
    model = Floor(matching.rules_from_json(RULES), paused=set(paused), borrow=level >= 1)
    await redis_py.hset("m:overload", "level", str(level))
    await store.set_queue_states(paused, "paused", "test", now)
    for i, levels in enumerate(agent_levels):
        idle = 10.0 + i + 0.5
        await store.register_agents(
            [AgentConfig(id=f"a{i}", endpoint=f"agent-a{i}", skills=levels)], now=idle
        )
        model.available[f"a{i}"] = Agent(f"a{i}", levels, idle)
    for i, (skill, at, head_start) in enumerate(rows):
        uid = f"c{i:02d}"
        joined = at + i / 100
        score = joined - head_start
        await store.enqueue(
            uid=uid, skill=skill, score=score, node="n1",
            fields={"channel": f"PJSIP/x-{uid}", "enqueued_at": repr(joined)},
        )  # fmt: skip
        model.callers[uid] = Caller(uid, skill, score, joined)
    claimed: list[tuple[Caller, str]] = []  # (caller, its agent), in claim order
    levels_of = {f"a{i}": levels for i, levels in enumerate(agent_levels)}
    for step, (mode, which) in enumerate(ops):
        t = float(now) + step / 10  # each event a little later (idle times stay distinct)
        if mode in ("end", "requeue"):
            if not claimed:
                continue
            caller, agent_id = claimed.pop(int(which) % len(claimed))
            if mode == "end":
                assert await store.end_call(caller.uid, t) == (agent_id, "available")
            else:
                assert await store.requeue(caller.uid)
                head = min((c.score for c in model.callers.values() if c.skill == caller.skill),
                           default=None)  # fmt: skip
                score = caller.score if head is None or head > caller.score else head - 0.001
                model.callers[caller.uid] = Caller(
                    caller.uid, caller.skill, score, caller.enqueued_at
                )
                applied, _ = await store.agent_event(agent_id, AgentEvent.RELEASE, t)
                assert applied
            model.available[agent_id] = Agent(agent_id, levels_of[agent_id], t)
            continue
        if mode == "arrive":
            uid = f"n{step:02d}"
            await store.enqueue(
                uid=uid, skill=which, score=t - 120, node="n1",
                fields={"channel": f"PJSIP/x-{uid}", "enqueued_at": repr(t)},
            )  # fmt: skip
            model.callers[uid] = Caller(uid, which, t - 120, t)
            continue
        if mode == "stale":
            agent_id = f"a{int(which)}"
            if agent_id in model.available:
                await redis_py.hset(f"m:agent:{agent_id}", "state", "paused")
                del model.available[agent_id]
            continue
        waiting = dict(model.callers)
        if mode == "skill":
            got = await store.claim_for_skill(which, now=t)
            want = model.claim_for_skill(which, t)
        else:
            got = await store.claim_for_agent(which, now=t)
            want = model.claim_for_agent(which, t)
        pair = None if got is None else (got.uid, got.agent_id, got.skill)
        expected = None if want is None else (want.uid, want.agent_id, want.skill)
        assert pair == expected, f"{mode} {which}"
        if want is not None:
            claimed.append((waiting[want.uid], want.agent_id))
