"""Leases on held agents, in Redis: an agent reserved for a caller (claim.lua) or ringing for
it is held for one call, and a hold that outlives its lease is taken back by whichever
controller looks first. Without it an agent claimed for a caller of a node whose controller is
down (the claim handed the connect to that node: P:connect:NODE) stays reserved for ever.

- `expired`: the agents held longer than the lease (lua/lease_sweep.lua; the set's entries of
  agents no longer held are dropped on the way, so P:leases holds about a lease's worth of
  claims);
- `reclaim`: checked again atomically, the agent's call back to the front of its queue if it is
  still offered to it (lua/lease_reclaim.lua), then the agent's RELEASE (lua/agent_event.lua,
  which checks that the agent still holds that call). A controller that dies between the two
  leaves a held agent the next sweep finds again.
"""

from __future__ import annotations

from dataclasses import dataclass

from acd.adapters.redis_link import RedisLink
from acd.adapters.store import AGENT_EVENT, agent_event_args, agent_event_result, lua
from acd.domain.agent import AgentEvent, sources

LEASE_SWEEP, LEASE_RECLAIM = lua("lease_sweep"), lua("lease_reclaim")
SWEEP_LIMIT = 500  # entries a sweep looks at in one script call


@dataclass(frozen=True)
class Held:
    """An agent held past its lease, and the call it holds ('' for none)."""

    agent: str
    uid: str


@dataclass(frozen=True)
class Reclaimed:
    """What a reclaim did: the call's queue when the call went back to it ('' when it did not:
    gone, talking, offered to someone else, or a callback already dialled) and whether the agent
    was released (False: it had moved on meanwhile)."""

    requeued: str
    released: bool


class LeaseStore:
    def __init__(self, link: RedisLink, prefix: str) -> None:
        self._link = link
        self.prefix = prefix

    async def expired(self, now: float, lease: float) -> list[Held]:
        """The agents reserved or ringing for `lease` seconds or more at `now` (among the
        SWEEP_LIMIT oldest entries: the next sweep goes on from there)."""
        flat = await self._link.run_script(
            LEASE_SWEEP, [], [self.prefix, repr(now), repr(lease), SWEEP_LIMIT, *_held_states()]
        )
        return [Held(str(a), str(u)) for a, u in zip(flat[0::2], flat[1::2], strict=True)]

    async def reclaim(self, held: Held, now: float, lease: float) -> Reclaimed | None:
        """Put `held`'s call back at the front of its queue (if still offered to it), then
        release the agent (if it still holds that call). None: the agent's lease was not over
        after all (another controller took it back first, or it moved on)."""
        expired, requeued = await self._link.run_script(
            LEASE_RECLAIM,
            [],
            [self.prefix, held.agent, held.uid, repr(now), repr(lease), *_held_states()],
        )
        if not expired:
            return None
        args = agent_event_args(self.prefix, held.agent, AgentEvent.RELEASE, now, call=held.uid)
        released, _ = agent_event_result(await self._link.run_script(AGENT_EVENT, [], args))
        return Reclaimed(str(requeued or ""), released)


def _held_states() -> list[str]:
    """The states of an agent held for one call: those it may be released from."""
    return [state.value for state in sources(AgentEvent.RELEASE)]
