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
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from acd.adapters.store import EWT_LOG_MAXLEN, CallRecord, script_text
from acd.errors import StoreUnavailable


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


def _fields(flat: Sequence[Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in zip(flat[0::2], flat[1::2], strict=True)}


class CallStore:
    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self.prefix = prefix
        self._end_call = redis.register_script(script_text("end_call"))
        self._answer = redis.register_script(script_text("answer"))

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def answer(self, uid: str, now: float) -> CallRecord | None:
        """Mark an offered call connected at `now`; returns the call as it was before, or None
        when it is gone or was not offered to an agent (then nothing changed)."""
        try:
            flat = await self._answer(
                keys=[self.key("call", uid), self.key("ewt_log")], args=[repr(now), EWT_LOG_MAXLEN]
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return CallRecord(uid, _fields(flat)) if flat else None

    async def hangup(
        self, uid: str, now: float, wrap_up: float, trunks: Sequence[str] = ()
    ) -> Ended:
        """Leg `uid` hung up: forget its call, move its agent on, take its live marker, and name
        the trunks (of `trunks`) it held a channel of, in one round trip."""
        args = [self.prefix, uid, repr(now), repr(wrap_up), "1"]
        try:
            replies = await self._pipelined(
                self._end_call, args, [self.key("trunk_legs", name) for name in trunks], uid
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        (agent, state, live, flat), held = replies[0], replies[1:]
        fields = _fields(flat)
        return Ended(
            agent=str(agent or ""),
            agent_state=str(state or ""),
            live=str(live) if live else None,
            call=CallRecord(uid, fields) if fields else None,
            trunks=tuple(name for name, h in zip(trunks, held, strict=True) if h),
        )

    async def _pipelined(
        self, script: AsyncScript, args: list[Any], hashes: list[str], member: str
    ) -> list[Any]:
        """EVALSHA `script` then HEXISTS `member` in each of `hashes`, in one write. (redis-py's
        own scripts in a pipeline ask SCRIPT EXISTS first: a second round trip every time.)
        Loads the script once if this Redis does not know it yet (a restart flushed it)."""
        for attempt in (1, 2):
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.evalsha(script.sha, 0, *args)
                    for name in hashes:
                        pipe.hexists(name, member)
                    return list(await pipe.execute())
            except NoScriptError:
                if attempt == 2:
                    raise
                await self._redis.script_load(script.script)
        raise AssertionError("unreachable")
