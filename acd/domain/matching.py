"""Who serves whom: the matching rules as pure functions of a snapshot of the floor.

The claim that runs is one Redis Lua script (acd/adapters/lua/claim.lua), atomic across any number
of controllers. This module states the same rules in Python, so that their properties (no double
booking, aged-priority order, escalation at the configured times, no starvation) can be checked
with generated floors, and the script is checked against it (tests/adapters/test_claim_model.py).

The rules:
- A waiting caller's score is its enqueue time minus its head start (customer tier and the flow's
  priority, in seconds of wait): lower is better, so priority ages instead of taking precedence.
- An available agent's rank in a skill is its level (higher first), then how long it has been idle.
- A caller's ring widens with its wait (bullseye): agents of its skill at or above the queue's
  minimum level, then, after each escalation step, lower levels and agents of overflow skills.
- Nobody is dispatched from a paused queue; its callers keep their places.
- From overload level 1, callers accept their queue's overflow skills at once ("borrow").
- A caller arrives (or a timer fires): the queue's callers, best first, each take the best agent
  their ring accepts. An agent frees up: it takes the best-scored caller whose ring accepts it,
  across the queues of its skills and the queues that overflow into them.
Only the first SCAN callers of a queue are looked at, as in the script.

>>> rules = {"aftersales": Rule(min_level=6, steps=(Step(20.0, 1, ()),))}
>>> ring(rules, "aftersales", waited=5.0), ring(rules, "aftersales", waited=20.0)
((6, ()), (1, ()))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCAN = 20


@dataclass(frozen=True)
class Step:
    after: float
    min_level: int | None
    overflow: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    min_level: int = 1
    steps: tuple[Step, ...] = ()


def rules_from_json(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, Rule]:
    """The rules in the form the claim script takes (Settings.escalation_rules())."""
    out = {}
    for skill, r in raw.items():
        steps = tuple(
            Step(float(s[0]), None if s[1] is None else int(s[1]), tuple(s[2]))
            for s in r.get("steps", ())
        )
        out[skill] = Rule(int(r.get("min", 1)), steps)
    return out


def ring(
    rules: Mapping[str, Rule], skill: str, waited: float, borrow: bool = False
) -> tuple[int, tuple[str, ...]]:
    """(minimum level, overflow skills) a caller of `skill` accepts after `waited` seconds;
    `borrow` (overload level 1 and above): the overflow skills at once."""
    rule = rules.get(skill)
    if rule is None:
        return 1, ()
    level, over = rule.min_level, tuple[str, ...]()
    for step in rule.steps:
        if waited >= step.after and step.min_level is not None:
            level = step.min_level
        if waited >= step.after or borrow:
            over += step.overflow
    return level, over


@dataclass(frozen=True)
class Caller:
    uid: str
    skill: str
    score: float
    enqueued_at: float


@dataclass(frozen=True)
class Agent:
    id: str
    levels: Mapping[str, int]
    idle_since: float

    def rank(self, skill: str) -> tuple[int, float]:
        return 10 - self.levels[skill], self.idle_since


@dataclass(frozen=True)
class Claim:
    uid: str
    agent_id: str
    skill: str


@dataclass
class Floor:
    """Waiting callers and available agents; `claim_*` remove the pair they return."""

    rules: Mapping[str, Rule] = field(default_factory=dict)
    callers: dict[str, Caller] = field(default_factory=dict)
    available: dict[str, Agent] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)  # queues nobody is dispatched from
    borrow: bool = False  # overload level 1+: overflow skills at once

    def queue(self, skill: str) -> list[Caller]:
        """The first SCAN callers of a queue, best first (ties by uid, as Redis orders them);
        none while the queue is paused."""
        if skill in self.paused:
            return []
        waiting = [c for c in self.callers.values() if c.skill == skill]
        return sorted(waiting, key=lambda c: (c.score, c.uid))[:SCAN]

    def best_agent(self, skill: str) -> Agent | None:
        agents = [a for a in self.available.values() if skill in a.levels]
        return min(agents, key=lambda a: (a.rank(skill), a.id), default=None)

    def claim_for_skill(self, skill: str, now: float) -> Claim | None:
        for caller in self.queue(skill):
            level, over = ring(self.rules, skill, now - caller.enqueued_at, self.borrow)
            agent = self.best_agent(skill)
            if agent is not None and agent.levels[skill] >= level:
                return self._take(caller, agent)
            for other in over:
                agent = self.best_agent(other)
                if agent is not None:
                    return self._take(caller, agent)
        return None

    def accepts(self, caller: Caller, agent: Agent, now: float) -> bool:
        """Whether `caller`'s ring, now, includes `agent`."""
        level, over = ring(self.rules, caller.skill, now - caller.enqueued_at, self.borrow)
        if caller.skill in agent.levels and agent.levels[caller.skill] >= level:
            return True
        return caller.skill not in agent.levels and any(o in agent.levels for o in over)

    def candidates(self, agent: Agent, now: float) -> list[Caller]:
        """Callers whose ring accepts `agent`, among the heads of the queues it may serve."""
        queues = set(agent.levels) | {
            skill
            for skill, rule in self.rules.items()
            if skill not in agent.levels
            and any(o in agent.levels for step in rule.steps for o in step.overflow)
        }
        return [c for q in queues for c in self.queue(q) if self.accepts(c, agent, now)]

    def claim_for_agent(self, agent_id: str, now: float) -> Claim | None:
        agent = self.available.get(agent_id)
        if agent is None:
            return None
        best = min(self.candidates(agent, now), key=lambda c: c.score, default=None)
        return None if best is None else self._take(best, agent)

    def _take(self, caller: Caller, agent: Agent) -> Claim:
        del self.callers[caller.uid]
        del self.available[agent.id]
        return Claim(caller.uid, agent.id, caller.skill)
