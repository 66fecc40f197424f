"""Shared state in Redis: skill queues, calls and agents, with every claim one atomic Lua script.

Keys (all under the configured prefix P):
    P:q:SKILL      sorted set of waiting call uids, score = enqueue time - head start (lower first)
    P:call:UID     hash describing one call (skill, channel, node, state, agent...); 1 day TTL
    P:calls:NODE   set of the call uids an Asterisk node holds (for resync after a reconnect)
    P:agent:ID     hash of one agent (endpoint, skills "name:level,...", state, call, idle_since,
                   device: Asterisk's last device state of its phone, device_busy 1|0)
    P:avail:SKILL  sorted set of available agents, score = (10 - level) * 1e10 + idle since
    P:tiers        hash caller ID -> customer tier (e.g. vip)
    P:menu_mode    hash entry number -> normal | fallback | auto (absent: the entry's `mode`)
    P:overload     hash: level (effective), computed (the deployment's: the highest of the
                   nodes' fresh reports), pinned ('' = auto), updated_at;
                   P:overload_nodes: node -> "level time below_since", each governor's report
    P:callback:ID  hash of a callback a caller asked for (number, skill, the caller's original
                   score and join time, attempts, state pending|queued|answered|failed|expired|
                   unknown); P:callbacks:due orders the pending ones by when they may be dialled,
                   P:callbacks:active holds those in a queue or on the phone. Each attempt is
                   a virtual caller P:call:cb-ID-N in its queue, at the caller's original place.
    P:connect:NODE list of claimed callers handed to the controller of the node that holds them
    P:leases       sorted set of agents held (reserved, ringing) for one call, score = since
                   when: a hold past its lease is taken back by any controller (leases.py)
    P:trunk_legs:NAME hash of the legs holding a channel of that trunk (uid -> node)
    P:trunk:NAME   that trunk's circuit breaker (JSON from acd/domain/breaker.py: open since,
                   why, probe legs, window buckets; absent: closed, nothing counted), changed
                   with its channels in one step (lua/trunk_commit.lua)
    P:queue_state  hash skill -> closed | paused (absent: open); P:callback_mode skill -> off
    P:journey      stream of journey events (arrival ... hangup) for reports, trimmed by age;
                   P:live:UID marks a call that arrived and has not hung up;
                   P:sl:SKILL:MINUTE hash of a queue's live service-level counters for the
                   callers that queued in that minute (offered, answered, in_target, abandoned,
                   short_abandoned, fallback), moved with the journey event, expiring after
                   the live window
    P:audit        stream of supervisor changes (who, what, before, after), capped
    P:alert:NAME, P:alerts:*  alert rules' statuses and the webhook's outbox (alert_store.py)
Scripts build key names from the prefix, so this needs one Redis instance (not a cluster).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from acd.adapters.redis_link import RedisLink, Script
from acd.config import Agent
from acd.domain.agent import BUSY, BUSY_DEVICE_STATES, AgentEvent, AgentState
from acd.domain.agent import sources as agent_sources
from acd.domain.agent import target as agent_target
from acd.domain.call import Call, CallEvent, CallState
from acd.domain.call import sources as call_sources
from acd.domain.call import target as call_target
from acd.domain.report import LIVE_FIELDS, MINUTE, LiveCount
from acd.errors import StoreUnavailable

CALL_TTL_SECONDS = 24 * 3600
ARRIVAL_WINDOW_SECONDS = 300.0  # the arrival rate is measured over the last five minutes
EWT_LOG_MAXLEN = 10_000
CALLBACK_TTL_SECONDS = 7 * 24 * 3600
AUDIT_MAXLEN = 10_000
MENU_MODES = ("normal", "fallback", "auto")
QUEUE_STATES = ("open", "closed", "paused")
CALLBACK_MODES = ("on", "off")


@dataclass(frozen=True)
class QueueFigures:
    ahead: int
    free: int  # free agents the queue's callers accept from the start (its minimum level)
    staffed: int
    handle: float
    rate: float
    best_free_level: int = 0  # the highest level among the skill's free agents (0: none)
    ahead_of_score: int = 0  # callers with a better score than the one asked about (if asked)
    state: str = "open"  # the queue's state (open, closed, paused), when asked for


@dataclass(frozen=True)
class LoadSnapshot:
    """What the overload governor and the wait estimate need, read in one round trip."""

    waiting: Mapping[str, int]
    talking: int
    staffed: int
    staffed_by_skill: Mapping[str, int]  # staffed agents at or above the queue's minimum level

    @property
    def waiting_total(self) -> int:
        return sum(self.waiting.values())


@dataclass(frozen=True)
class TrunkSnapshot:
    """One trunk as read in one round trip: its breaker's state as stored ('' = none), its
    channels in use, and whether the leg asked about holds one of them."""

    state: str
    in_use: int
    held: bool = False


@dataclass(frozen=True)
class Claim:
    uid: str
    agent_id: str
    skill: str
    node: str = ""  # the Asterisk node holding the caller's channel
    channel: str = ""  # the caller's channel ('' when not known: read the call)
    kind: str = ""  # 'callback' for a callback, else ''
    held_at: float = 0.0  # when the caller's channel headed for the hold context (0: unknown)


@dataclass(frozen=True)
class JourneyEntry:
    """One journey event as written to P:journey, with the live counters it moves."""

    event: str
    uid: str
    t: float
    node: str
    fields: Mapping[str, str]
    live: tuple[LiveCount, ...] = ()


_HSET_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# A supervisor's tier table update (RedisStore.set_tiers): the audit entry first (a script stops
# at its first failing command: no change without its entry), then the merge. KEYS: P:tiers,
# P:audit. ARGV: who, after, now, the stream's cap, n, then n values of caller ID, tier pairs to
# keep, then the caller IDs to drop.
_TIERS = """
local n = tonumber(ARGV[5])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
  'who', ARGV[1], 'what', 'tiers', 'before', '', 'after', ARGV[2], 'at', ARGV[3])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + n)) end
if #ARGV > 5 + n then redis.call('HDEL', KEYS[1], unpack(ARGV, 6 + n, #ARGV)) end
return 1
"""

_RETIRE_AGENTS = """
local prefix = ARGV[1]
for i = 2, #ARGV do
  local akey = prefix .. ':agent:' .. ARGV[i]
  for s in string.gmatch(redis.call('HGET', akey, 'skills') or '', '([^,]+)') do
    redis.call('ZREM', prefix .. ':avail:' .. string.match(s, '^([^:]+)'), ARGV[i])
  end
  redis.call('ZREM', prefix .. ':wrapups', ARGV[i])
  redis.call('SREM', prefix .. ':agents', ARGV[i])
  redis.call('DEL', akey)
end
return 1
"""

# ARGV: prefix, first minute, last minute, n, n field names, skills. Per skill, the fields summed
# over the minutes' P:sl:SKILL:MINUTE hashes.
_SERVICE_COUNTS = """
local first, last, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local names = {}
for j = 1, n do names[j] = ARGV[4 + j] end
local out = {}
for i = 5 + n, #ARGV do
  local sums = {}
  for j = 1, n do sums[j] = 0 end
  for m = first, last do
    local v = redis.call('HMGET', ARGV[1] .. ':sl:' .. ARGV[i] .. ':' .. m, unpack(names))
    for j = 1, n do sums[j] = sums[j] + (tonumber(v[j]) or 0) end
  end
  out[#out + 1] = sums
end
return out
"""


def script_text(name: str) -> str:
    return resources.files("acd.adapters").joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")


def lua_states() -> str:
    """Lua that declares the call transition table (acd.domain.call) for the scripts: CALL[event]
    = {from = {state = true, ...}, to = state}, and CALL_STATE[name] = name. Every script
    starts with it, so that the scripts and the Python code apply one table.

    >>> print(lua_states().splitlines()[4])
      answer = {to = 'connected', from = {offered = true}},
    """
    lines = ["-- The call transition table of acd.domain.call (acd.adapters.store.lua_states).",
             "local CALL = {"]  # fmt: skip
    for event in CallEvent:
        froms = ", ".join(f"{s.value} = true" for s in sorted(call_sources(event)))
        lines.append(
            f"  {event.value} = {{to = '{call_target(event).value}', from = {{{froms}}}}},"
        )
    lines.append("}")
    states = ", ".join(f"{s.value} = '{s.value}'" for s in CallState)
    lines.append(f"local CALL_STATE = {{{states}}}")
    return "\n".join(lines) + "\n" + _REQUEUE_FRONT


# The REQUEUE transition's effect, shared by the scripts that apply it (requeue.lua,
# lease_reclaim.lua): the call goes back to the front of its queue, ahead even of a caller with
# a bigger head start, and is no longer offered to an agent.
_REQUEUE_FRONT = """local function requeue_front(prefix, ckey, uid, skill, score)
  local qkey = prefix .. ':q:' .. skill
  local head = redis.call('ZRANGE', qkey, 0, 0, 'WITHSCORES')
  if #head > 0 and tonumber(head[2]) <= score then score = tonumber(head[2]) - 0.001 end
  redis.call('HSET', ckey, 'state', CALL.requeue.to, 'agent', '', 'score', score)
  redis.call('ZADD', qkey, score, uid)
end
"""


def lua(name: str) -> Script:
    """The script acd/adapters/lua/NAME.lua, after the call transition table (lua_states)."""
    return Script(LUA_STATES + script_text(name))


def fields_of(flat: Sequence[Any]) -> dict[str, str]:
    """A hash from its flat reply (HGETALL, or a script returning one): field -> value."""
    return {str(k): str(v) for k, v in zip(flat[0::2], flat[1::2], strict=True)}


LUA_STATES = lua_states()
# The scripts, read once for every store.
ENQUEUE, CLAIM, AGENT_EVENT, REQUEUE, END_CALL, ANSWER = (
    lua(n) for n in ("enqueue", "claim", "agent_event", "requeue", "end_call", "answer")
)
# The same enqueue, only for a call Redis does not hold (a resync adopting a held caller must not
# reset a call the IVR queued meanwhile).
ENQUEUE_IF_ABSENT = Script(
    LUA_STATES
    + "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n"
    + script_text("enqueue")
)
CALLBACK_ADMIT, CALLBACK_REGISTER, CALLBACK_FINISH = (
    lua(n) for n in ("callback_admit", "callback_register", "callback_finish")
)
TRUNK_COMMIT, AGENT_SKILLS, JOURNEY, TOGGLE = (
    lua(n) for n in ("trunk_commit", "agent_skills", "journey", "toggle")
)
OVERLOAD_SAVE, OVERLOAD_PIN = lua("overload_save"), lua("overload_pin")
SERVICE_COUNTS, RETIRE_AGENTS, HSET_EXISTING, TIERS = (
    Script(text) for text in (_SERVICE_COUNTS, _RETIRE_AGENTS, _HSET_EXISTING, _TIERS)
)


def agent_event_args(
    prefix: str,
    agent_id: str,
    event: AgentEvent,
    now: float,
    *,
    call: str = "",
    reason: str = "",
    wrap_until: float = 0.0,
    wrapped_by: float | None = None,
    device: str = "",
    audited_by: str = "",
) -> list[Any]:
    """The arguments of lua/agent_event.lua for `event` (see RedisStore.agent_event): the
    transition's target and source states come from acd.domain.agent's table."""
    sources = agent_sources(event)
    target = agent_target(event, sources[0])
    busy = "1" if device.upper() in BUSY_DEVICE_STATES else "0"
    return (
        [prefix, agent_id, target.value, repr(now), call, reason, repr(wrap_until)]
        + ["" if wrapped_by is None else repr(wrapped_by), device, busy if device else ""]
        + [audited_by, f"agent {agent_id}", AUDIT_MAXLEN]
        + [s.value for s in sources]
    )


def agent_event_result(reply: Sequence[Any]) -> tuple[bool, str]:
    """lua/agent_event.lua's reply: (applied, the state before or the state that refused)."""
    return bool(reply[0]), str(reply[1])


class RedisStore:
    """The controller's view of Redis. Every method is one or two round trips, over one
    multiplexed connection (acd.adapters.redis_link); the blocking pop of hand-offs has a
    connection of its own."""

    def __init__(
        self,
        url: str,
        prefix: str,
        escalation: Mapping[str, Any] | None = None,
        node: str = "",
        *,
        timeout: float = 3.0,
    ) -> None:
        """`node`: this controller's Asterisk node; claims of callers held by other nodes are
        handed to their controllers (P:connect:NODE). Empty: no hand-off (tools, benchmarks).
        `timeout`: the longest a command waits for Redis (connecting included) before it fails
        with StoreUnavailable and the call takes its fallback."""
        self._link = RedisLink(url, timeout=timeout, name=f"acd-{node or prefix}")
        self._blocking: RedisLink | None = None  # BLPOP holds a connection: its own, made once
        self._url, self._timeout = url, timeout
        self.prefix = prefix
        self.node = node
        self._min_levels = {
            skill: int(rule.get("min", 1)) for skill, rule in (escalation or {}).items()
        }
        # {skill: {"min": level, "steps": [[after, min_level | None, [overflow skills]]]}}
        self._rules = json.dumps(escalation or {}, separators=(",", ":"))
        if self._rules == "{}":
            self._rules = '{"":{"min":1,"steps":[]}}'  # cjson decodes {} as an array-like table

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def link(self) -> RedisLink:
        """The connection, for the small stores of single features (acd.adapters.calls)."""
        return self._link

    async def close(self) -> None:
        await self._link.close()
        if self._blocking is not None:
            await self._blocking.close()

    async def ping(self) -> bool:
        try:
            return bool(await self._link.execute("PING") == "PONG")
        except StoreUnavailable:
            return False

    async def _run(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return await self._link.run_script(script, keys, args)

    async def register_agents(
        self, agents: Iterable[Agent], now: float, *, login: bool = True
    ) -> list[str]:
        """Add configured agents Redis does not know yet (logged in when `login`); the state of
        known agents is kept, their endpoint and skills follow the configuration (unless a
        supervisor set the skills)."""
        added = []
        for agent in agents:
            skills = ",".join(f"{s}:{lvl}" for s, lvl in sorted(agent.skills.items()))
            key = self.key("agent", agent.id)
            created, *_ = await self._link.batch(
                [
                    ("HSETNX", key, "state", AgentState.LOGGED_OUT.value),
                    ("HSET", key, "id", agent.id, "endpoint", agent.endpoint),
                    ("SADD", self.key("agents"), agent.id),
                ]
            )
            # Skills set by a supervisor (`acd agent skills`) outlive restarts; others follow the
            # configuration, re-ranking an available agent in the same step.
            await self._run(AGENT_SKILLS, [], [self.prefix, agent.id, skills, ""])
            if created:
                if agent.auto_login if agent.auto_login is not None else login:
                    await self.agent_event(agent.id, AgentEvent.LOGIN, now)
                added.append(agent.id)
        return added

    async def retire_agents(self, agent_ids: Iterable[str]) -> None:
        """Forget agents the deployment no longer has (out of every available set)."""
        ids = sorted(agent_ids)
        if ids:
            await self._run(RETIRE_AGENTS, [], [self.prefix, *ids])

    async def agent_event(
        self,
        agent_id: str,
        event: AgentEvent,
        now: float,
        *,
        call: str = "",
        reason: str = "",
        wrap_until: float = 0.0,
        wrapped_by: float | None = None,
        device: str = "",
        audited_by: str = "",
    ) -> tuple[bool, str]:
        """Apply `event` atomically if the agent is in one of its source states (and holds
        `call`, when given; and, with `wrapped_by`, only if a wrap-up was due by then).
        `device`: Asterisk's new device state of the agent's phone, recorded in any case (a
        transition to available with a busy phone lands in device_busy). `audited_by`: a
        supervisor's change, written with its audit entry in the same step. Returns (applied,
        the state before or the state that refused)."""
        args = agent_event_args(
            self.prefix, agent_id, event, now, call=call, reason=reason,
            wrap_until=wrap_until, wrapped_by=wrapped_by, device=device, audited_by=audited_by,
        )  # fmt: skip
        return agent_event_result(await self._run(AGENT_EVENT, [], args))

    async def due_wrapups(self, now: float) -> list[str]:
        """Agents whose wrap-up time is over."""
        due = await self._link.execute("ZRANGEBYSCORE", self.key("wrapups"), "-inf", repr(now))
        return [str(a) for a in due]

    async def enqueue(
        self,
        *,
        uid: str,
        skill: str,
        score: float,
        node: str,
        fields: Mapping[str, str],
        now: float | None = None,
        if_absent: bool = False,
    ) -> bool:
        """Queue a call; with `if_absent`, only if Redis holds no call `uid` (returns whether it
        was queued)."""
        command = self._enqueue_command(uid, skill, score, node, fields, now, if_absent=if_absent)
        (queued,) = await self._link.batch([command])
        return bool(queued)

    async def enqueue_and_claim(
        self,
        *,
        uid: str,
        skill: str,
        score: float,
        node: str,
        fields: Mapping[str, str],
        limit: int,
        now: float | None = None,
    ) -> tuple[list[Claim], bool]:
        """`enqueue`, then claim up to `limit` pairs of the caller's queue, in one round trip:
        a caller who joins while an agent is free leaves Redis paired. Returns what claim_batch
        returns."""
        when = time.time() if now is None else now
        claim: list[Any] = [self.prefix, "skill", skill, repr(when), self._rules, self.node, limit]
        _, claimed = await self._link.batch(
            [
                self._enqueue_command(uid, skill, score, node, fields, when),
                self._link.script_command(CLAIM, [], claim),
            ]
        )
        return self._claims(claimed)

    def _enqueue_command(
        self,
        uid: str,
        skill: str,
        score: float,
        node: str,
        fields: Mapping[str, str],
        now: float | None,
        *,
        if_absent: bool = False,
    ) -> tuple[Any, ...]:
        when = time.time() if now is None else now
        args: list[Any] = [uid, repr(score), CALL_TTL_SECONDS, repr(when), ARRIVAL_WINDOW_SECONDS]
        for k, v in {**fields, "uid": uid, "skill": skill, "node": node}.items():
            args += [k, v]
        keys = [
            self.key("call", uid),
            self.key("q", skill),
            self.key("calls", node),
            self.key("arrivals", skill),
        ]
        return self._link.script_command(ENQUEUE_IF_ABSENT if if_absent else ENQUEUE, keys, args)

    async def queue_figures(
        self,
        skill: str,
        uid: str | None,
        staffed: int,
        default_handle: float,
        now: float,
        *,
        score: float | None = None,
        with_state: bool = False,
    ) -> QueueFigures:
        """What the wait estimate needs about one queue, in one round trip. Free agents count
        from the queue's minimum level (the available sets' scores encode the level). `ahead`:
        the callers ahead of `uid`, or all of them; with `score`, also how many a caller joining
        with that score would have ahead of it (`ahead_of_score`); `with_state`: the queue's
        state too (QUEUE_STATES)."""
        min_level = self._min_levels.get(skill, 1)
        queue, avail = self.key("q", skill), self.key("avail", skill)
        commands: list[tuple[Any, ...]] = [
            ("ZCARD", queue) if uid is None else ("ZRANK", queue, uid),
            ("ZCOUNT", avail, "-inf", f"({(11 - min_level) * 1e10!r}"),
            ("ZRANGE", avail, 0, 0, "WITHSCORES"),
            ("ZCOUNT", self.key("arrivals", skill), repr(now - ARRIVAL_WINDOW_SECONDS), "+inf"),
            ("HGET", self.key("stats", skill), "aht"),
            ("ZCOUNT", queue, "-inf", f"({score!r}" if score is not None else "-inf"),
        ]
        if with_state:
            commands.append(("HGET", self.key("queue_state"), skill))
        ahead, free, best, arrivals, aht, before, *state = await self._link.batch(commands)
        return QueueFigures(
            ahead=int(ahead or 0),
            free=int(free or 0),
            staffed=staffed,
            handle=float(aht) if aht else default_handle,
            rate=int(arrivals or 0) / ARRIVAL_WINDOW_SECONDS,
            best_free_level=10 - int(float(best[1]) // 1e10) if best else 0,
            ahead_of_score=int(before or 0),
            state=str(state[0]) if state and state[0] in QUEUE_STATES else "open",
        )

    async def set_call_field(self, uid: str, name: str, value: str) -> bool:
        """Set a field of a call that still exists (a call that hung up meanwhile is not
        recreated, without its lifetime). Returns whether it was set."""
        return await self.set_call_fields(uid, {name: value})

    async def set_call_fields(self, uid: str, fields: Mapping[str, str]) -> bool:
        """`set_call_field` for several fields at once."""
        flat = [item for pair in fields.items() for item in pair]
        return bool(await self._run(HSET_EXISTING, [self.key("call", uid)], flat))

    async def claim_for_skill(self, skill: str, now: float | None = None) -> Claim | None:
        """The best caller of this queue with the best agent its ring accepts, or None."""
        claims, _ = await self.claim_batch(skill, 1, now)
        return claims[0] if claims else None

    async def claim_batch(
        self, skill: str, limit: int, now: float | None = None
    ) -> tuple[list[Claim], bool]:
        """Up to `limit` pairs of this queue, best first, in one round trip; and whether the
        queue may hold more (it stopped at the limit with callers left): claim again only then."""
        when = repr(time.time() if now is None else now)
        args = [self.prefix, "skill", skill, when, self._rules, self.node, limit]
        return self._claims(await self._run(CLAIM, [], args))

    async def claim_for_agent(self, agent_id: str, now: float | None = None) -> Claim | None:
        """This agent (if available) with the best caller whose ring accepts it, or None."""
        when = repr(time.time() if now is None else now)
        args = [self.prefix, "agent", agent_id, when, self._rules, self.node]
        claims, _ = self._claims(await self._run(CLAIM, [], args))
        return claims[0] if claims else None

    @staticmethod
    def _claims(result: Any) -> tuple[list[Claim], bool]:
        more, flat = bool(int(result[0])), result[1:]
        pairs = [flat[i : i + 7] for i in range(0, len(flat), 7)]
        claims = [
            Claim(
                str(u), str(a), str(s), node=str(n), channel=str(c), kind=str(k),
                held_at=float(h) if h else 0.0,
            )
            for u, a, s, n, c, k, h in pairs
        ]  # fmt: skip
        return claims, more

    async def next_handoff(self, block: float) -> str | None:
        """The next caller another controller claimed for an agent and handed to this node, or
        None after `block` seconds (blocking on a connection of its own)."""
        if self._blocking is None:
            self._blocking = RedisLink(
                self._url, timeout=block + self._timeout, name=f"acd-{self.node}-handoffs"
            )
        result = await self._blocking.execute("BLPOP", self.key("connect", self.node), block)
        return None if result is None else str(result[1])

    async def requeue(self, uid: str) -> bool:
        """Put an offered caller back at the front of its queue."""
        return bool(await self._run(REQUEUE, [], [self.prefix, uid, repr(time.time())]))

    async def end_call(self, uid: str, now: float, wrap_up: float = 0.0) -> tuple[str, str]:
        """Forget a call; returns (agent it held, that agent's new state) or ('', '')."""
        agent, state, *_ = await self._run(
            END_CALL, [], [self.prefix, uid, repr(now), repr(wrap_up), "0"]
        )
        return str(agent or ""), str(state or "")

    async def call(self, uid: str) -> Call | None:
        fields = fields_of(await self._link.execute("HGETALL", self.key("call", uid)))
        return Call.from_fields(uid, fields) if fields else None

    async def calls_of_node(self, node: str) -> set[str]:
        return {str(m) for m in await self._link.execute("SMEMBERS", self.key("calls", node))}

    async def agent(self, agent_id: str) -> dict[str, str]:
        return fields_of(await self._link.execute("HGETALL", self.key("agent", agent_id)))

    async def agent_ids(self) -> list[str]:
        return sorted(str(m) for m in await self._link.execute("SMEMBERS", self.key("agents")))

    async def queue_depth(self, skill: str) -> int:
        return int(await self._link.execute("ZCARD", self.key("q", skill)))

    async def waiting(self, skill: str) -> list[str]:
        return [str(m) for m in await self._link.execute("ZRANGE", self.key("q", skill), 0, -1)]

    # -- what flows branch on, and supervisor toggles -------------------------------------------

    async def tier(self, caller_id: str) -> str:
        if not caller_id:
            return "regular"
        tier = await self._link.execute("HGET", self.key("tiers"), caller_id)
        return str(tier) if tier else "regular"

    async def set_tiers(self, tiers: Mapping[str, str], who: str, now: float) -> int:
        """Merge caller ID -> tier (the tier `regular` removes a caller ID from the table), with
        its audit entry, in one step."""
        keep = [x for c, t in tiers.items() if t != "regular" for x in (c, t)]
        drop = [c for c, t in tiers.items() if t == "regular"]
        args: list[Any] = [who, f"{len(tiers)} caller IDs", repr(now), AUDIT_MAXLEN, len(keep)]
        await self._run(TIERS, [self.key("tiers"), self.key("audit")], [*args, *keep, *drop])
        return len(tiers)

    async def menu_mode(self, number: str, default: str = "normal") -> str:
        """An entry's menu mode: the one a supervisor set, else `default` (its configured mode)."""
        mode = await self._link.execute("HGET", self.key("menu_mode"), number)
        return str(mode) if mode in MENU_MODES else default

    async def menu_modes(
        self, numbers: Iterable[str], defaults: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The menu mode of each entry number (`defaults`: each one's configured mode)."""
        raw = fields_of(await self._link.execute("HGETALL", self.key("menu_mode")))
        fallback = defaults or {}
        return {
            n: str(raw.get(n)) if raw.get(n) in MENU_MODES else fallback.get(n, "normal")
            for n in numbers
        }

    async def _set_toggles(
        self,
        hash_name: str,
        fields: Mapping[str, tuple[str, str]],
        value: str,
        absent: str,
        who: str,
        now: float,
    ) -> dict[str, str]:
        """Set `fields` (field -> (what, the value an absent field stands for)) of P:hash_name
        to `value` (`absent`: the field is removed) and audit each, in one atomic step (see
        lua/toggle.lua). Returns field -> value before."""
        args: list[Any] = [who, repr(now), AUDIT_MAXLEN, value, absent]
        for field, (what, default) in fields.items():
            args += [field, what, default]
        before = await self._run(TOGGLE, [self.key(hash_name), self.key("audit")], args)
        return {field: str(b) for field, b in zip(fields, before, strict=True)}

    async def set_menu_modes(
        self, defaults: Mapping[str, str], mode: str, who: str, now: float
    ) -> dict[str, str]:
        """Set the menu mode of the entries `defaults` names (number -> its configured mode),
        audited, all at once. Returns number -> mode before."""
        if mode not in MENU_MODES:
            raise ValueError(mode)
        fields = {n: (f"menu {n}", default) for n, default in defaults.items()}
        before = await self._set_toggles("menu_mode", fields, mode, "", who, now)
        return {n: b if b in MENU_MODES else defaults[n] for n, b in before.items()}

    async def set_queue_states(
        self, skills: Iterable[str], state: str, who: str, now: float
    ) -> dict[str, str]:
        """Set queues open | closed | paused, audited, at once. Returns skill -> state before."""
        if state not in QUEUE_STATES:
            raise ValueError(state)
        fields = {s: (f"queue {s}", "open") for s in skills}
        return await self._set_toggles("queue_state", fields, state, "open", who, now)

    async def set_callback_modes(
        self, skills: Iterable[str], mode: str, who: str, now: float
    ) -> dict[str, str]:
        """Callback offers on | off for queues, audited, at once. Returns skill -> mode before."""
        if mode not in CALLBACK_MODES:
            raise ValueError(mode)
        fields = {s: (f"callbacks {s}", "on") for s in skills}
        return await self._set_toggles("callback_mode", fields, mode, "on", who, now)

    def _audit_command(self, entry: Mapping[str, str]) -> tuple[Any, ...]:
        flat = [x for pair in entry.items() for x in pair]
        return ("XADD", self.key("audit"), "MAXLEN", "~", AUDIT_MAXLEN, "*", *flat)

    async def overload(self) -> dict[str, str]:
        return fields_of(await self._link.execute("HGETALL", self.key("overload")))

    async def overload_level(self) -> int:
        level = await self._link.execute("HGET", self.key("overload"), "level")
        return int(level) if level is not None and str(level).isdigit() else 0

    async def save_overload(
        self, computed: int, below_since: float | None, now: float, stale_after: float = 10.0
    ) -> int:
        """Store this node's computed level; returns the deployment's effective level: a pin,
        else the highest level a controller reported within `stale_after` seconds. One script:
        a pin set between reading it and writing the level cannot be lost."""
        args = [
            computed, "" if below_since is None else repr(below_since), repr(now),
            self.node or "-", repr(stale_after),
        ]  # fmt: skip
        keys = [self.key("overload"), self.key("overload_nodes")]
        return int(await self._run(OVERLOAD_SAVE, keys, args))

    async def own_overload(self) -> tuple[int, float | None] | None:
        """This node's last report (level, below_since), to go on from after a restart; None
        when it has none."""
        raw = await self._link.execute("HGET", self.key("overload_nodes"), self.node or "-")
        level, _, rest = str(raw or "").partition(" ")
        below = rest.partition(" ")[2]
        if not level.isdigit():
            return None
        try:
            return int(level), float(below) if below else None
        except ValueError:
            return int(level), None

    async def pin_overload(
        self, level: int | None, who: str = "", now: float | None = None
    ) -> dict[str, str]:
        """Pin the level (None: back to the governor's), with its audit entry when `who` is
        given, atomically. Returns the hash as it was before."""
        when = time.time() if now is None else now
        args = ["" if level is None else str(level), who, repr(when), AUDIT_MAXLEN]
        flat = await self._run(OVERLOAD_PIN, [self.key("overload"), self.key("audit")], args)
        return fields_of(flat)

    async def queue_depths(self, skills: Iterable[str]) -> dict[str, int]:
        """Callers waiting in each queue, in one round trip (whatever the size of the floor)."""
        skills = list(skills)
        counts = await self._link.batch([("ZCARD", self.key("q", skill)) for skill in skills])
        return {skill: int(n or 0) for skill, n in zip(skills, counts, strict=True)}

    async def arrival_facts(
        self, number: str, caller_id: str, uid: str = "", now: float = 0.0
    ) -> tuple[str | None, str, int]:
        """What a new call needs before its first prompt, in one round trip: the entry's menu
        mode as a supervisor set it (None: not set), the caller's tier, the overload level. With
        `uid`, the call is marked live (P:live:UID = `now`, its arrival) in the same round trip,
        so that its hangup records its journey's end once (lua/end_call.lua takes the mark)."""
        commands: list[tuple[Any, ...]] = [
            ("HGET", self.key("menu_mode"), number),
            ("HGET", self.key("tiers"), caller_id or "-"),
            ("HGET", self.key("overload"), "level"),
        ]
        if uid:
            commands.append(("SET", self.key("live", uid), repr(now), "EX", CALL_TTL_SECONDS))
        mode, tier, level, *_ = await self._link.batch(commands)
        return (
            str(mode) if mode in MENU_MODES else None,
            str(tier) if tier and caller_id else "regular",
            int(level) if level is not None and str(level).isdigit() else 0,
        )

    async def load(self, skills: Iterable[str]) -> LoadSnapshot:
        """The queues' depths and the floor's agents. Reads every agent's hash: the controller
        asks acd.runtime.load.LoadCache, which does this at most once a second, never per call."""
        skills = list(skills)
        results = await self._link.batch(
            [("ZCARD", self.key("q", skill)) for skill in skills]
            + [("SMEMBERS", self.key("agents"))]
        )
        agent_ids = sorted(str(a) for a in results[-1])
        agents = await self._link.batch(
            [("HMGET", self.key("agent", agent_id), "state", "skills") for agent_id in agent_ids]
        )
        waiting = {skill: int(n) for skill, n in zip(skills, results[: len(skills)], strict=True)}
        talking = staffed = 0
        by_skill = dict.fromkeys(skills, 0)
        for state, agent_skills in agents:
            # Paused agents, and those whose phone is busy elsewhere, serve nobody: they count
            # neither as staffed nor as talking.
            if state in (None, AgentState.LOGGED_OUT, AgentState.PAUSED, AgentState.DEVICE_BUSY):
                continue
            staffed += 1
            if state in BUSY:
                talking += 1
            for part in str(agent_skills or "").split(","):
                name, _, level = part.partition(":")
                if name in by_skill and int(level or 0) >= self._min_levels.get(name, 1):
                    by_skill[name] += 1
        return LoadSnapshot(waiting, talking, staffed, by_skill)

    async def register_callback(
        self,
        *,
        uid: str,
        number: str,
        skill: str,
        score: float,
        enqueued_at: float,
        now: float,
        fields: Mapping[str, str],
        leave_queue: bool = False,
    ) -> bool:
        """Record a callback request durably, keeping the caller's place (its score and join
        time), due at once. A waiting caller (`leave_queue`) leaves its queue in the same atomic
        step, unless an agent was claimed for it meanwhile: then nothing is recorded and this
        returns False."""
        mapping: dict[str, str] = {
            **fields,
            "uid": uid,
            "number": number,
            "skill": skill,
            "score": repr(score),
            "enqueued_at": repr(enqueued_at),
            "requested_at": repr(now),
            "attempts": "0",
            "state": "pending",
        }
        args: list[Any] = [
            self.prefix, uid, skill, repr(now), CALLBACK_TTL_SECONDS, "1" if leave_queue else "0",
        ]  # fmt: skip
        for k, v in mapping.items():
            args += [k, v]
        return bool(await self._run(CALLBACK_REGISTER, [], args))

    async def admit_callbacks(
        self, now: float, share: float, expiry: float, staffed: Mapping[str, int]
    ) -> tuple[list[str], list[str], float | None]:
        """Put due callbacks into their queues, paced against inbound load (see
        lua/callback_admit.lua); `staffed`: the skills open for callbacks now, with their staffed
        agents. Returns (the skills that got one, the callbacks that expired, when the next
        pending one falls due or None)."""
        args: list[Any] = [self.prefix, repr(now), self.node, repr(share), repr(expiry)]
        args.append(CALL_TTL_SECONDS)
        for skill, n in staffed.items():
            args += [skill, int(n)]
        admitted, expired, nxt = await self._run(CALLBACK_ADMIT, [], args)
        return (
            [str(s) for s in admitted],
            [str(e) for e in expired],
            float(nxt) if nxt not in (None, "") else None,
        )

    async def finish_callback_attempt(
        self, callback: str, uid: str, now: float, outcome: str, status: str, at: float = 0.0
    ) -> bool:
        """Close the attempt `uid` of `callback` with `outcome` (see lua/callback_finish.lua)."""
        args = [self.prefix, callback, uid, repr(now), outcome, repr(at), status]
        return bool(await self._run(CALLBACK_FINISH, [], args))

    async def callback(self, callback: str) -> dict[str, str]:
        return fields_of(await self._link.execute("HGETALL", self.key("callback", callback)))

    async def _scan(self, pattern: str) -> list[str]:
        """Every key matching `pattern` (SCAN, 500 at a time)."""
        keys: list[str] = []
        cursor = "0"
        while True:
            cursor, batch = await self._link.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 500)
            keys.extend(str(k) for k in batch)
            if cursor == "0":
                return keys

    async def callbacks(self) -> list[dict[str, str]]:
        """Every callback Redis holds (for status and tests), oldest place first."""
        keys = await self._scan(self.key("callback", "*"))
        rows = await self._link.batch([("HGETALL", key) for key in keys]) if keys else []
        out = [fields_of(raw) for raw in rows if raw]
        return sorted(out, key=lambda c: float(c.get("score") or 0))

    async def trunk_snapshot(self, name: str, uid: str = "") -> TrunkSnapshot:
        """Trunk `name`'s breaker state and channels in use, and whether leg `uid` holds one."""
        state, in_use, held = await self._link.batch(
            [
                ("GET", self.key("trunk", name)),
                ("HLEN", self.key("trunk_legs", name)),
                ("HEXISTS", self.key("trunk_legs", name), uid or "-"),
            ]
        )
        return TrunkSnapshot(str(state or ""), int(in_use), bool(held) and bool(uid))

    async def trunk_snapshots(self, names: Iterable[str]) -> dict[str, TrunkSnapshot]:
        """Every named trunk's breaker state and channels in use, in one round trip."""
        names = list(names)
        raw = await self._link.batch(
            [
                command
                for name in names
                for command in (
                    ("GET", self.key("trunk", name)),
                    ("HLEN", self.key("trunk_legs", name)),
                )
            ]
        )
        return {
            name: TrunkSnapshot(str(raw[2 * i] or ""), int(raw[2 * i + 1]))
            for i, name in enumerate(names)
        }

    async def commit_trunk(
        self,
        name: str,
        seen: TrunkSnapshot,
        state: str,
        op: str = "",
        uid: str = "",
        audit: Mapping[str, str] | None = None,
    ) -> bool:
        """Write trunk `name`'s new breaker `state` and take (`op` take) or release (release)
        leg `uid`'s channel, in one step, if the trunk is still as `seen` (the channels in use
        are checked for a take only). False on a conflict: read again and decide again.
        `audit`: a supervisor's change (who, what, before, after, at), written with its audit
        entry in the same step."""
        count = str(seen.in_use) if op == "take" else ""
        args: list[Any] = [seen.state, count, state, op, uid, self.node]
        if audit is not None:
            args += [audit[k] for k in ("who", "what", "before", "after", "at")] + [AUDIT_MAXLEN]
        keys = [self.key("trunk", name), self.key("trunk_legs", name), self.key("audit")]
        return bool(await self._run(TRUNK_COMMIT, keys, args))

    async def trunks_holding(self, uid: str, names: Iterable[str]) -> list[str]:
        """Which of the named trunks leg `uid` holds a channel of (one round trip)."""
        names = list(names)
        if not names:
            return []
        held = await self._link.batch(
            [("HEXISTS", self.key("trunk_legs", name), uid) for name in names]
        )
        return [name for name, h in zip(names, held, strict=True) if h]

    async def trunk_legs(self, name: str) -> dict[str, str]:
        """Legs holding a channel of trunk `name`: uid -> node."""
        return fields_of(await self._link.execute("HGETALL", self.key("trunk_legs", name)))

    async def set_agent_skills(
        self, agent_id: str, skills: Mapping[str, int], who: str
    ) -> str | None:
        """Replace an agent's skills (kept over restarts); returns the skills before
        ("name:level,..."), or None for an unknown agent. An available agent is re-ranked at
        once. `who`: a supervisor, whose change is written with its audit entry in one step
        ('' for the configuration)."""
        text = ",".join(f"{s}:{lvl}" for s, lvl in sorted(skills.items()))
        args = [self.prefix, agent_id, text, who, repr(time.time()), AUDIT_MAXLEN]
        before = await self._run(AGENT_SKILLS, [], args)
        return None if before is None or before is False else str(before)

    async def journey(
        self,
        entries: Sequence[JourneyEntry],
        min_time: float,
        live_window: float = 3600.0,
    ) -> None:
        """Append journey events to P:journey and move the live counters they cause (`live`,
        P:sl:SKILL:MINUTE, kept `live_window` seconds past their minute), in one transaction:
        all or none. Several events in one call are the Recorder's group commit: the events
        of many calls in one command (lua/journey.lua).

        Entries older than `min_time` are trimmed, roughly: XADD's `~` MINID drops whole stream
        nodes (stream-node-max-entries, 100 by default) that are entirely older, at most 100
        nodes per call, so that no event ever waits on a long trim; the report reads by time,
        so an old entry left in a node is never counted."""
        if not entries:
            return
        args: list[Any] = [self.prefix, str(int(min_time * 1000))]
        for e in entries:
            args += [e.event, e.uid, repr(e.t), e.node, len(e.fields)]
            for name, value in e.fields.items():
                args += [name, value]
            counters = [(c, name, n) for c in e.live for name, n in c.counts.items()]
            args.append(len(counters))
            for c, name, n in counters:
                expire = int((c.minute + 1) * MINUTE + live_window) + 60
                args += [c.skill, c.minute, name, n, expire]
        await self._run(JOURNEY, [], args)

    async def service_counts(
        self, skills: Iterable[str], minutes: range
    ) -> dict[str, dict[str, int]]:
        """Each queue's live counters (LIVE_FIELDS) summed over `minutes`, in one round trip."""
        names = list(skills)
        if not names or not minutes:
            return {s: dict.fromkeys(LIVE_FIELDS, 0) for s in names}
        rows = await self._run(
            SERVICE_COUNTS,
            [],
            [self.prefix, minutes.start, minutes.stop - 1, len(LIVE_FIELDS), *LIVE_FIELDS, *names],
        )
        return {
            skill: {f: int(n) for f, n in zip(LIVE_FIELDS, row, strict=True)}
            for skill, row in zip(names, rows, strict=True)
        }

    async def take_live(self, uid: str) -> str | None:
        """How `uid`, which arrived through the IVR, is marked ('fallback': the dialplan's
        fallback queue took it; else its arrival time), or None if it is not live (it did not
        come through the IVR, or its hangup was recorded already). Forgets it."""
        marker = await self._link.execute("GETDEL", self.key("live", uid))
        return None if marker is None else str(marker)

    async def mark_fallback(self, uid: str) -> None:
        """The dialplan's fallback queue took a live caller: its end will say so."""
        await self._link.execute("SET", self.key("live", uid), "fallback", "XX", "KEEPTTL")

    async def journey_range(self, start: float, end: float) -> list[dict[str, str]]:
        """Journey events with times in [start, end], oldest first."""
        out: list[dict[str, str]] = []
        cursor = str(int(start * 1000))
        last = str(int(end * 1000))
        while True:
            batch = await self._link.execute(
                "XRANGE", self.key("journey"), cursor, last, "COUNT", 5000
            )
            for entry_id, fields in batch:
                out.append(fields_of(fields))
                cursor = "(" + str(entry_id)
            if len(batch) < 5000:
                return out

    async def queue_states(self, skills: Iterable[str]) -> dict[str, str]:
        """open | closed | paused per queue (absent: open)."""
        raw = fields_of(await self._link.execute("HGETALL", self.key("queue_state")))
        return {s: str(raw.get(s) or "open") for s in skills}

    async def callback_modes(self, skills: Iterable[str]) -> dict[str, str]:
        """on | off per queue (absent: on)."""
        raw = fields_of(await self._link.execute("HGETALL", self.key("callback_mode")))
        return {s: str(raw.get(s) or "on") for s in skills}

    async def audit(self, who: str, what: str, before: str, after: str, now: float) -> None:
        entry = {"who": who, "what": what, "before": before, "after": after, "at": repr(now)}
        await self._link.execute(*self._audit_command(entry))
