"""Benchmark: atomic (caller, agent) claims against a real Redis, on a floor at its peak.

1,000 waiting callers over 10 skills and 200 agents with 2-3 skills each at levels 1-10; half the
skills have a minimum level and escalation steps (lower levels after 20 s, an overflow skill after
60 s), as in a real deployment. After the floor fills (every agent on a call, the rest waiting),
the steady state is what a peak looks like: callers keep arriving (enqueue, then a claim for their
skill, which mostly finds no free agent) and agents keep freeing up (the call ends, then a claim
for that agent, which finds the best caller across its skills and the queues that overflow into
them). Both kinds of claim are timed, whether or not they pair anyone; the callers who arrive and
the agents who free up balance, so the floor stays at 1,000 waiting.

Redis runs with the shipped configuration (redis/redis.conf: AOF, fsync every second) on TCP
loopback, as `acd up` runs it.

    .venv/bin/python bench/claims.py [--rate 500] [--seconds 10] [--redis-url URL]

Without --redis-url it starts a private redis-server (the shipped config, a free port, a
temporary directory) so it never touches a running stack's data, and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from acd.adapters.store import RedisStore
from acd.config import Agent
from acd.domain.agent import AgentEvent

SKILLS = [f"skill{i}" for i in range(10)]
REDIS_CONF = Path(__file__).resolve().parents[1] / "redis" / "redis.conf"
# Half the skills start at level 5, accept any level after 20 s, and borrow the next skill's
# agents after 60 s (the claim script's rule format: Settings.escalation_rules()).
RULES = {
    SKILLS[i]: {"min": 5, "steps": [[20.0, 1, []], [60.0, None, [SKILLS[(i + 1) % 10]]]]}
    for i in range(0, 10, 2)
}


@dataclass
class Floor:
    store: RedisStore
    rng: random.Random
    talking: dict[str, str] = field(default_factory=dict)  # agent -> caller uid
    seq: int = 0
    timings: dict[str, list[float]] = field(default_factory=lambda: {"caller": [], "agent": []})
    paired: dict[str, int] = field(default_factory=lambda: {"caller": 0, "agent": 0})

    async def arrive(self, timed: bool) -> None:
        """A caller arrives: queued, then a claim for its skill."""
        self.seq += 1
        skill = self.rng.choice(SKILLS)
        await self.store.enqueue(
            uid=f"c{self.seq}",
            skill=skill,
            score=time.time() - self.rng.choice([0, 0, 0, 30, 120]),
            node="bench",
            fields={"channel": f"PJSIP/bench-{self.seq}", "enqueued_at": repr(time.time())},
        )
        start = time.perf_counter()
        claim = await self.store.claim_for_skill(skill)
        self._note("caller", start, timed, claim is not None)
        if claim is not None:
            await self._talk(claim.agent_id, claim.uid)

    async def free_one(self, timed: bool) -> None:
        """An agent's call ends: it is free, and a claim for it takes the best caller it may
        serve."""
        if not self.talking:
            return
        agent = self.rng.choice(list(self.talking))
        await self.store.end_call(self.talking.pop(agent), time.time(), wrap_up=0.0)
        start = time.perf_counter()
        claim = await self.store.claim_for_agent(agent)
        self._note("agent", start, timed, claim is not None)
        if claim is not None:
            await self._talk(claim.agent_id, claim.uid)

    async def _talk(self, agent: str, uid: str) -> None:
        await self.store.agent_event(agent, AgentEvent.ANSWER, time.time(), call=uid)
        self.talking[agent] = uid

    def _note(self, kind: str, start: float, timed: bool, paired: bool) -> None:
        if timed:
            self.timings[kind].append(time.perf_counter() - start)
            self.paired[kind] += paired


async def fill(floor: Floor, callers: int, agents: int) -> None:
    pool = [
        Agent(
            id=f"a{i}",
            endpoint=f"agent-{i}",
            skills={
                s: floor.rng.randint(1, 10)
                for s in floor.rng.sample(SKILLS, floor.rng.randint(2, 3))
            },
        )
        for i in range(agents)
    ]
    await floor.store.register_agents(pool, now=time.time())
    for _ in range(callers + agents):
        await floor.arrive(timed=False)


async def step(floor: Floor, timed: bool) -> None:
    """One event of the steady state: an arrival or an agent freeing up, as often as each other,
    so the queues neither drain nor grow."""
    if floor.rng.random() < 0.5:
        await floor.arrive(timed)
    else:
        await floor.free_one(timed)


def quantiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=100)
    return q[49] * 1000, q[98] * 1000


async def run(url: str, rate: float, seconds: float) -> None:
    store = RedisStore(url, "bench", RULES)
    floor = Floor(store, random.Random(7))
    await fill(floor, callers=1000, agents=200)
    waiting = sum([await store.queue_depth(s) for s in SKILLS])

    # Unpaced: how many claims per second one controller gets through (with the enqueues and
    # call ends around them).
    claims_before = sum(len(t) for t in floor.timings.values())
    start = time.perf_counter()
    while time.perf_counter() - start < min(seconds, 5):
        await step(floor, timed=True)
    unpaced = (sum(len(t) for t in floor.timings.values()) - claims_before) / (
        time.perf_counter() - start
    )
    for kind in floor.timings:
        floor.timings[kind].clear()
        floor.paired[kind] = 0

    # Paced at the target rate of claims: the latency of each.
    interval = 1.0 / rate
    next_at = time.perf_counter()
    end = next_at + seconds
    while next_at < end:
        await step(floor, timed=True)
        next_at += interval
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    waiting_after = sum([await store.queue_depth(s) for s in SKILLS])
    await store.close()

    every = sorted(floor.timings["caller"] + floor.timings["agent"])
    p50, p99 = quantiles(every)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        "claims benchmark: 200 agents on calls, 10 skills (5 with escalation), real Redis "
        "(AOF everysec, TCP)"
    )
    print(f"  waiting callers: {waiting} at the start of the run, {waiting_after} at its end")
    print(f"  unpaced: {unpaced:,.0f} claims/s (one client, with the enqueues and call ends)")
    print(
        f"  paced at {rate:.0f}/s for {seconds:.0f} s: {len(every)} claims, "
        f"p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {every[-1] * 1000:.3f} ms"
    )
    for kind, what in (("caller", "a caller arrives"), ("agent", "an agent frees up")):
        timings = floor.timings[kind]
        k50, k99 = quantiles(sorted(timings))
        print(
            f"    {what}: {len(timings)} claims, {floor.paired[kind]} paired, "
            f"p50 {k50:.3f} ms, p99 {k99:.3f} ms"
        )
    print(f"  benchmark process max RSS: {rss_mb:.0f} MiB")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_redis(prefix: str = "acd-bench-") -> Iterator[tuple[str, int]]:
    """A redis-server with the shipped configuration, a free port and a temporary directory:
    yields its URL and pid (bench/ami_ingest.py uses it too)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        port = _free_port()
        proc = subprocess.Popen(
            ["redis-server", str(REDIS_CONF), "--port", str(port), "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("redis-server did not start") from None
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0", proc.pid
        finally:
            proc.terminate()
            proc.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(run(args.redis_url, args.rate, args.seconds))
        return
    with private_redis() as (url, _pid):
        asyncio.run(run(url, args.rate, args.seconds))


if __name__ == "__main__":
    main()
