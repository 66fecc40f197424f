"""A call's answer and end in Redis, one round trip each: the two steps every call takes at the
peak, kept apart from RedisStore (which they share the connection pool and key prefix of).

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
from acd.adapters.store import ANSWER, END_CALL, EWT_LOG_MAXLEN, CallRecord, fields_of


@dataclass(frozen=True)
class Ended:
    """What a hangup ended: the agent the call held and that agent's new state ('' for none),
    the journey's live marker (None: not live, or recorded already), the call as it was (None:
    there was none) and the trunks the leg held a channel of."""

    agent: str
    agent_state: str
    live: str | None
    call: CallRecord | None
    trunks: tuple[str, ...] = ()


class CallStore:
    def __init__(self, link: RedisLink, prefix: str) -> None:
        self._link = link
        self.prefix = prefix

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def answer(self, uid: str, now: float) -> CallRecord | None:
        """Mark an offered call connected at `now`; returns the call as it was before, or None
        when it is gone or was not offered to an agent (then nothing changed)."""
        flat = await self._link.run_script(
            ANSWER, [self.key("call", uid), self.key("ewt_log")], [repr(now), EWT_LOG_MAXLEN]
        )
        return CallRecord(uid, fields_of(flat)) if flat else None

    async def hangup(
        self, uid: str, now: float, wrap_up: float, trunks: Sequence[str] = ()
    ) -> Ended:
        """Leg `uid` hung up: forget its call, move its agent on, take its live marker, and name
        the trunks (of `trunks`) it held a channel of, in one round trip."""
        args = [self.prefix, uid, repr(now), repr(wrap_up), "1"]
        replies = await self._link.batch(
            [self._link.script_command(END_CALL, [], args)]
            + [("HEXISTS", self.key("trunk_legs", name), uid) for name in trunks]
        )
        (agent, state, live, flat), held = replies[0], replies[1:]
        fields = fields_of(flat)
        return Ended(
            agent=str(agent or ""),
            agent_state=str(state or ""),
            live=str(live) if live else None,
            call=CallRecord(uid, fields) if fields else None,
            trunks=tuple(name for name, h in zip(trunks, held, strict=True) if h),
        )
