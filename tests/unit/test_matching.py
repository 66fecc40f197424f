"""Properties of the matching rules (acd/domain/matching.py) over generated floors.

The claim script in Redis is checked against this model in tests/adapters/test_claim_model.py, so
what holds here holds for the script.
"""

from __future__ import annotations

import heapq
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from acd.domain.matching import SCAN, Agent, Caller, Floor, Rule, Step, ring

SKILLS = ("presale", "orders", "aftersales")
RULES = {
    "aftersales": Rule(min_level=6, steps=(Step(20.0, 1, ()), Step(60.0, None, ("presale",)))),
}
TIERS = {"regular": 0.0, "gold": 30.0, "vip": 120.0}
HEAD_START_MAX = max(TIERS.values())


def _floor(callers: list[Caller], agents: list[Agent], rules: dict[str, Rule]) -> Floor:
    return Floor(rules, {c.uid: c for c in callers}, {a.id: a for a in agents})


callers_st = st.lists(
    st.tuples(st.sampled_from(SKILLS), st.floats(0, 100), st.sampled_from(sorted(TIERS))),
    max_size=30,
).map(
    lambda rows: [
        Caller(f"c{i:02d}", skill, at - TIERS[tier], at) for i, (skill, at, tier) in enumerate(rows)
    ]
)
agents_st = st.lists(
    st.tuples(
        st.dictionaries(st.sampled_from(SKILLS), st.integers(1, 10), min_size=1),
        st.floats(0, 100),
    ),
    max_size=12,
).map(lambda rows: [Agent(f"a{i:02d}", levels, idle) for i, (levels, idle) in enumerate(rows)])
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("skill"), st.sampled_from(SKILLS)),
        st.tuples(st.just("agent"), st.integers(0, 11).map(lambda i: f"a{i:02d}")),
    ),
    max_size=40,
)


@given(callers_st, agents_st, ops_st, st.floats(100, 300))
def test_never_two_claims_on_one_agent_or_one_caller(
    callers: list[Caller], agents: list[Agent], ops: list[tuple[str, str]], now: float
) -> None:
    floor = _floor(callers, agents, RULES)
    waiting = {c.uid for c in callers}
    free = {a.id for a in agents}
    for mode, which in ops:
        if mode == "skill":
            claim = floor.claim_for_skill(which, now)
        else:
            claim = floor.claim_for_agent(which, now)
        if claim is None:
            continue
        assert claim.uid in waiting, "a caller claimed twice (or never waiting)"
        assert claim.agent_id in free, "an agent booked twice (or never available)"
        waiting.discard(claim.uid)
        free.discard(claim.agent_id)
    assert set(floor.callers) == waiting
    assert set(floor.available) == free


@given(callers_st, agents_st, st.floats(100, 300))
def test_claims_follow_aged_priority(
    callers: list[Caller], agents: list[Agent], now: float
) -> None:
    """Without level rules every caller accepts every agent of its skill: a queue is served in
    score order (enqueue time minus head start), each by the best agent left (level, then idle)."""
    floor = _floor(callers, agents, {})
    for skill in SKILLS:
        while True:
            before = dict(floor.available)
            head = min(
                (c for c in floor.callers.values() if c.skill == skill),
                key=lambda c: (c.score, c.uid),
                default=None,
            )
            claim = floor.claim_for_skill(skill, now)
            if claim is None:
                assert head is None or not any(skill in a.levels for a in before.values())
                break
            assert head is not None
            assert claim.uid == head.uid
            chosen = before[claim.agent_id]
            assert all(
                chosen.rank(skill) <= a.rank(skill) for a in before.values() if skill in a.levels
            )


@given(st.floats(0, 1000), st.floats(0, 200), st.integers(1, 10))
def test_escalation_happens_at_the_configured_waits(
    joined: float, waited: float, level: int
) -> None:
    """An after-sales caller (minimum level 6, any level after 20 s, presale agents after 60 s)
    is served by an agent exactly when its ring includes it, whichever side claims."""
    now = joined + waited
    for mode in ("skill", "agent"):
        caller = Caller("c", "aftersales", joined, joined)
        same = _floor([caller], [Agent("a", {"aftersales": level}, 0)], RULES)
        other = _floor([caller], [Agent("p", {"presale": 9}, 0)], RULES)
        got_same = (
            same.claim_for_skill("aftersales", now)
            if mode == "skill"
            else same.claim_for_agent("a", now)
        )
        got_other = (
            other.claim_for_skill("aftersales", now)
            if mode == "skill"
            else other.claim_for_agent("p", now)
        )
        assert (got_same is not None) == (level >= 6 or waited >= 20.0)
        assert (got_other is not None) == (waited >= 60.0)


def test_ring_widens_step_by_step() -> None:
    assert ring(RULES, "aftersales", 19.99) == (6, ())
    assert ring(RULES, "aftersales", 20.0) == (1, ())
    assert ring(RULES, "aftersales", 60.0) == (1, ("presale",))
    assert ring(RULES, "presale", 1e9) == (1, ())


@given(
    arrivals=st.lists(
        st.tuples(st.floats(0, 600), st.sampled_from(sorted(TIERS)), st.floats(5, 120)),
        min_size=1,
        max_size=60,
    ),
    staff=st.integers(1, 4),
)
@settings(max_examples=60)
def test_nobody_starves_beyond_the_largest_head_start(
    arrivals: list[tuple[float, str, float]], staff: int
) -> None:
    """Simulated day on one queue: callers arrive with tiers, agents serve them for their handle
    times. Whenever a caller is taken, nobody still waiting had joined more than the largest head
    start earlier; so the extra wait any tier can cause a caller is bounded by that head start,
    and every caller is served."""
    floor = _floor([], [Agent(f"a{i}", {"orders": 5}, 0.0) for i in range(staff)], {})
    events: list[tuple[float, int, str, str, float]] = []
    seq = itertools.count()
    for i, (at, _tier, handle) in enumerate(arrivals):
        heapq.heappush(events, (at, next(seq), "arrive", f"c{i:03d}", handle))
    handles = {f"c{i:03d}": h for i, (_, _, h) in enumerate(arrivals)}
    served = set()
    while events:
        now, _, kind, who, _ = heapq.heappop(events)
        if kind == "arrive":
            at, tier, _ = arrivals[int(who[1:])]
            floor.callers[who] = Caller(who, "orders", at - TIERS[tier], at)
        else:
            floor.available[who] = Agent(who, {"orders": 5}, now)
        while (claim := floor.claim_for_skill("orders", now)) is not None:
            taken = arrivals[int(claim.uid[1:])][0]
            for other in floor.callers.values():
                assert taken - other.enqueued_at <= HEAD_START_MAX + 1e-9, (
                    f"{claim.uid} (joined {taken}) taken before {other.uid} "
                    f"(joined {other.enqueued_at})"
                )
            served.add(claim.uid)
            heapq.heappush(
                events, (now + handles[claim.uid], next(seq), "free", claim.agent_id, 0.0)
            )
    assert served == set(handles)
    assert not floor.callers


def test_only_the_first_scan_callers_of_a_queue_are_looked_at() -> None:
    """A level-3 agent and an after-sales queue whose first SCAN callers joined just now (big
    head starts): a long-waiting caller behind them is not found until one of them leaves; the
    bound that keeps a claim one short script."""
    callers = [Caller(f"v{i:02d}", "aftersales", float(i), 100.0) for i in range(SCAN)]
    callers.append(Caller("old", "aftersales", 1000.0, 0.0))
    floor = _floor(callers, [Agent("low", {"aftersales": 3}, 0.0)], RULES)
    assert floor.claim_for_agent("low", now=100.0) is None
    del floor.callers["v00"]
    claim = floor.claim_for_agent("low", now=100.0)
    assert claim is not None
    assert claim.uid == "old"


@given(callers_st, agents_st, ops_st, st.sampled_from(SKILLS), st.floats(100, 300))
def test_nobody_is_taken_from_a_paused_queue(
    callers: list[Caller],
    agents: list[Agent],
    ops: list[tuple[str, str]],
    paused: str,
    now: float,
) -> None:
    floor = _floor(callers, agents, RULES)
    floor.paused = {paused}
    for mode, which in ops:
        if mode == "skill":
            claim = floor.claim_for_skill(which, now)
        else:
            claim = floor.claim_for_agent(which, now)
        assert claim is None or claim.skill != paused
    assert {c.uid for c in callers if c.skill == paused} <= set(floor.callers)
