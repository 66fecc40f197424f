"""Agents held too long are taken back: the lease on a reserved or ringing agent.

A claim reserves an agent for a caller and, when the caller is held by another node, hands the
connect to that node's controller (P:connect:NODE). If that controller is down, or crash-loops,
nobody ever redirects the caller nor releases the agent: the agent would stay reserved for ever.
Every controller sweeps the leases on its governor's tick (acd.adapters.leases): an agent held
for one call longer than the lease goes back to work and its caller, still offered to it, back to
the front of its queue, where any node's agents can take it (the hand-off goes to the caller's
node again: if that node's controller is still down, the next agent waits a lease too, one at a
time, while the callers of live nodes are served).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from acd.adapters.leases import LeaseStore

log = structlog.get_logger(__name__)

# Beyond the longest an agent rings (Dial's and Originate's timeout: asterisk.ring_timeout), the
# time a connect may take on a loaded node (hand-off, hold settle, Redirect, the dialplan).
LEASE_SLACK = 30.0  # seconds


def lease_length(ring_timeout: float) -> float:
    """How long an agent may stay reserved or ringing for one call.

    >>> lease_length(15)
    45.0
    """
    return float(ring_timeout) + LEASE_SLACK


class LeaseKeeper:
    def __init__(
        self,
        store: LeaseStore,
        lease: float,
        *,
        agent_ready: Callable[[str], None],
        queue_ready: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`agent_ready(agent)`: an agent taken back may take a caller; `queue_ready(skill)`: a
        caller went back to the front of `skill`'s queue."""
        self._store = store
        self.lease = lease
        self._agent_ready = agent_ready
        self._queue_ready = queue_ready
        self._clock = clock
        self.reclaimed = 0

    async def sweep(self) -> int:
        """Take back the agents whose lease is over; returns how many were."""
        now = self._clock()
        taken = 0
        for held in await self._store.expired(now, self.lease):
            done = await self._store.reclaim(held, now, self.lease)
            if done is None:
                continue
            taken += 1
            log.warning(
                "dispatch.lease_expired",
                agent=held.agent,
                uniqueid=held.uid,
                requeued=done.requeued,
                released=done.released,
            )
            if done.requeued:
                self._queue_ready(done.requeued)
            if done.released:
                self._agent_ready(held.agent)
        self.reclaimed += taken
        return taken
