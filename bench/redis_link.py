"""What one Redis command costs the controller's CPU: redis-py's pooled client against RedisLink.

Both on uvloop against the same private redis-server (the shipped configuration, AOF on, TCP on
127.0.0.1), running the same script (an HSET and an HGETALL of a small hash, the size of the
agent and call scripts' work) with one caller, then with `--tasks` callers at once (a peak: many
calls in flight). redis-py is set up as the controller used it before RedisLink: a blocking pool
of 64, socket and connect timeouts, retries on connection errors, a health check interval.

    .venv/bin/python bench/redis_link.py [--commands 5000] [--tasks 20]

Prints, for each client and concurrency: CPU microseconds per command (this process only, so
Redis's own work is not counted), wall microseconds per command, and writes per command (the
link's: how many commands shared a write).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import uvloop
from claims import private_redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from acd.adapters.redis_link import RedisLink, Script

SCRIPT = "redis.call('HSET', KEYS[1], 'n', ARGV[1]) return redis.call('HGETALL', KEYS[1])"


async def measure(
    name: str, run: Callable[[int, int], Awaitable[None]], tasks: int, commands: int
) -> tuple[float, float]:
    each = max(1, commands // tasks)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(run(i, each) for i in range(tasks)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = each * tasks
    print(
        f"  {name:9s} {tasks:3d} at once: {1e6 * cpu / n:7.1f} us CPU/command, "
        f"{1e6 * wall / n:7.1f} us wall/command",
        end="",
    )
    return cpu, wall


async def bench(url: str, commands: int, tasks: int) -> None:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=5.0,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    client = aioredis.Redis(connection_pool=pool)
    script = client.register_script(SCRIPT)
    link = RedisLink(url)
    linked = Script(SCRIPT)

    async def by_redis_py(i: int, n: int) -> None:
        for j in range(n):
            await script(keys=[f"k{i}"], args=[j])

    async def by_link(i: int, n: int) -> None:
        for j in range(n):
            await link.run_script(linked, [f"k{i}"], [j])

    await by_redis_py(0, 10)  # connections open, scripts loaded: not measured
    await by_link(0, 10)
    try:
        for at_once in (1, tasks):
            await measure("redis-py", by_redis_py, at_once, commands)
            print()
            before = link.stats()
            await measure("RedisLink", by_link, at_once, commands)
            after = link.stats()
            writes = (after.writes - before.writes) / max(1, after.commands - before.commands)
            print(f", {writes:.2f} writes/command")
    finally:
        await client.aclose()
        await link.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=5000, help="commands per measurement")
    parser.add_argument("--tasks", type=int, default=20, help="callers at once (the peak)")
    args = parser.parse_args()
    if args.commands < 1 or not 1 <= args.tasks <= 1000:
        parser.error("--commands at least 1, --tasks 1-1000")
    with private_redis("acd-bench-link-") as (url, _pid):
        print(f"redis commands (EVALSHA of a small script), {args.commands} per measurement:")
        uvloop.run(bench(url, args.commands, args.tasks))


if __name__ == "__main__":
    main()
