"""The claim script in Redis against the pure matching model (acd/domain/matching.py).

Generated floors (callers with head starts, agents with levels and idle times, escalation rules)
are loaded into a real redis-server and into the model; the same sequence of claims must give the
same pairs. The properties proven on the model (tests/unit/test_matching.py) then hold for the
script that runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acd.adapters.store import RedisStore
from acd.config import Agent as AgentConfig
from acd.domain import matching
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
        ),
        max_size=25,
    ),
    st.integers(150, 400),
    st.sets(st.sampled_from(SKILLS), max_size=1),
    st.integers(0, 2),
)


@given(floor_st)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
async def test_the_script_claims_what_the_model_claims(
    store: RedisStore,
    case: tuple[
        list[tuple[str, int, int]], list[dict[str, int]], list[tuple[str, str]], int, set[str], int
    ],
) -> None:
    rows, agent_levels, ops, now, paused, level = case
    await store._redis.flushdb()
    model = Floor(matching.rules_from_json(RULES), paused=set(paused), borrow=level >= 1)
    await store._redis.hset("m:overload", "level", str(level))
    for skill in paused:
        await store.set_queue_state(skill, "paused")
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
    for mode, which in ops:
        if mode == "skill":
            got = await store.claim_for_skill(which, now=float(now))
            want = model.claim_for_skill(which, float(now))
        else:
            got = await store.claim_for_agent(which, now=float(now))
            want = model.claim_for_agent(which, float(now))
        pair = None if got is None else (got.uid, got.agent_id, got.skill)
        expected = None if want is None else (want.uid, want.agent_id, want.skill)
        assert pair == expected, f"{mode} {which}"
