"""Benchmark: atomic (caller, agent) claims against a real Redis.

1,000 waiting callers over 10 skills and 200 agents with 2-3 skills each. Each claim is the Lua
script the dispatcher runs; a claimed pair is ended at once (the agent freed, a new caller
queued) so the pool stays full. Prints claims/s unpaced, and claim latency p50/p99 paced at a
target rate.

    .venv/bin/python bench/claims.py [--rate 500] [--seconds 10] [--redis-url URL]

Without --redis-url it starts a private redis-server on a unix socket (so it never touches a
running stack's data) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from acd.adapters.store import RedisStore
from acd.config import Agent

SKILLS = [f"skill{i}" for i in range(10)]


async def populate(store: RedisStore, rng: random.Random, callers: int, agents: int) -> int:
    pool = [
        Agent(
            id=f"a{i}",
            endpoint=f"agent-{i}",
            skills={s: rng.randint(1, 10) for s in rng.sample(SKILLS, rng.randint(2, 3))},
        )
        for i in range(agents)
    ]
    await store.register_agents(pool, now=time.time())
    for i in range(callers):
        await enqueue(store, rng, f"c{i}")
    return callers


async def enqueue(store: RedisStore, rng: random.Random, uid: str) -> None:
    await store.enqueue(
        uid=uid,
        skill=rng.choice(SKILLS),
        score=time.time() - rng.choice([0, 0, 0, 30, 120]),
        node="bench",
        fields={"channel": f"PJSIP/bench-{uid}"},
    )


async def one_cycle(store: RedisStore, rng: random.Random, seq: int) -> float | None:
    """One claim (timed), then end the call and queue a new caller (untimed)."""
    skill = rng.choice(SKILLS)
    start = time.perf_counter()
    claim = await store.claim_for_skill(skill)
    elapsed = time.perf_counter() - start
    if claim is None:
        return None
    await store.end_call(claim.uid, time.time(), wrap_up=0.0)
    await enqueue(store, rng, f"n{seq}")
    return elapsed


async def run(url: str, rate: float, seconds: float) -> None:
    store = RedisStore(url, "bench")
    rng = random.Random(7)
    await populate(store, rng, callers=1000, agents=200)

    # Unpaced: how many claims per second one controller gets through.
    claims = 0
    seq = 0
    start = time.perf_counter()
    while time.perf_counter() - start < min(seconds, 5):
        seq += 1
        if await one_cycle(store, rng, seq) is not None:
            claims += 1
    unpaced = claims / (time.perf_counter() - start)

    # Paced at the target rate: latency of each claim.
    latencies: list[float] = []
    interval = 1.0 / rate
    next_at = time.perf_counter()
    end = next_at + seconds
    while next_at < end:
        seq += 1
        latency = await one_cycle(store, rng, seq)
        if latency is not None:
            latencies.append(latency)
        next_at += interval
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await store.close()

    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("claims benchmark: 1000 waiting callers, 200 agents, 10 skills, real Redis")
    print(f"  unpaced: {unpaced:,.0f} claims/s (one client, claim + end + enqueue per cycle)")
    print(
        f"  paced at {rate:.0f}/s for {seconds:.0f} s: {len(latencies)} claims, "
        f"p50 {q[49] * 1000:.3f} ms, p99 {q[98] * 1000:.3f} ms, max {latencies[-1] * 1000:.3f} ms"
    )
    print(f"  benchmark process max RSS: {rss_mb:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(run(args.redis_url, args.rate, args.seconds))
        return
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "redis.sock"
        proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not sock.exists():
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start")
                time.sleep(0.02)
            asyncio.run(run(f"unix://{sock}", args.rate, args.seconds))
        finally:
            proc.terminate()
            proc.wait(5)


if __name__ == "__main__":
    main()
