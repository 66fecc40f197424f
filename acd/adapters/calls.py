"""A call's answer and end in Redis, one round trip each: the two steps every call takes at the
peak, kept apart from RedisStore (whose Redis connection and key prefix they share).

- `answer`: the caller's channel entered its agent's bridge; the call becomes connected (only
  if it was offered to an agent) and its wait is logged against the estimate given at join.
- `hangup`: a channel hung up; its call is forgotten, its agent moves on (lua/end_call.lua), the
  journey's live marker is taken (so the call's end is recorded once) and the trunks the leg
  held a channel of are named, all in one pipelined write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from acd.adapters.redis_link import RedisLink
from acd.adapters.store import (
    AGENT_EVENT,
    ANSWER,
    END_CALL,
    EWT_LOG_MAXLEN,
    agent_event_args,
    agent_event_result,
    fields_of,
)
from acd.domain.agent import AgentEvent
from acd.domain.call import Call


@dataclass(frozen=True)
class Ended:
    """What a hangup ended: the agent the call held and that agent's new state ('' for none),
    the journey's live marker (None: not live, or recorded already), the call as it was (None:
    there was none) and the trunks the leg held a channel of."""

    agent: str
    agent_state: str
    live: str | None
    call: Call | None
    trunks: tuple[str, ...] = ()
    waiting: int | None = None  # callers in the queues asked about, just after (None: not asked)


@dataclass(frozen=True)
class Answered:
    """What an answer changed: the call as it was before (None: gone, or not offered to an
    agent) and whether its agent's ANSWER transition applied (None: not asked)."""

    call: Call | None
    agent_answered: bool | None = None


class CallStore:
    def __init__(self, link: RedisLink, prefix: str) -> None:
        self._link = link
        self.prefix = prefix

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def answer(self, uid: str, now: float, agent: str = "") -> Answered:
        """Mark an offered call connected at `now`, and with `agent` (when the caller knows
        whom it rang) apply that agent's ANSWER in the same round trip (the transition holds
        only if the agent is ringing for this very call). Nothing changes for a call that is
        gone or was not offered to an agent."""
        answer = self._link.script_command(
            ANSWER, [self.key("call", uid), self.key("ewt_log")], [repr(now), EWT_LOG_MAXLEN]
        )
        if not agent:
            (flat,) = await self._link.batch([answer])
            return Answered(Call.from_fields(uid, fields_of(flat)) if flat else None)
        args = agent_event_args(self.prefix, agent, AgentEvent.ANSWER, now, call=uid)
        flat, reply = await self._link.batch(
            [answer, self._link.script_command(AGENT_EVENT, [], args)]
        )
        applied, _ = agent_event_result(reply)
        return Answered(Call.from_fields(uid, fields_of(flat)) if flat else None, applied)

    async def hangup(
        self,
        uid: str,
        now: float,
        wrap_up: float,
        trunks: Sequence[str] = (),
        queues: Sequence[str] = (),
    ) -> Ended:
        """Leg `uid` hung up: forget its call, move its agent on, take its live marker, name
        the trunks (of `trunks`) it held a channel of, and count the callers waiting in
        `queues` just after (so that a freed agent nobody waits for is not claimed for), in one
        round trip."""
        args = [self.prefix, uid, repr(now), repr(wrap_up), "1"]
        replies = await self._link.batch(
            [self._link.script_command(END_CALL, [], args)]
            + [("HEXISTS", self.key("trunk_legs", name), uid) for name in trunks]
            + [("ZCARD", self.key("q", skill)) for skill in queues]
        )
        (agent, state, live, flat) = replies[0]
        held, counts = replies[1 : 1 + len(trunks)], replies[1 + len(trunks) :]
        fields = fields_of(flat)
        return Ended(
            agent=str(agent or ""),
            agent_state=str(state or ""),
            live=str(live) if live else None,
            call=Call.from_fields(uid, fields) if fields else None,
            trunks=tuple(name for name, h in zip(trunks, held, strict=True) if h),
            waiting=sum(int(n) for n in counts) if queues else None,
        )
