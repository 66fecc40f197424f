"""Shared fixtures of the adapter tests: real local servers, never mocks of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import uvloop

from tests.adapters.servers import RedisServer

# Tests of adapters whose behaviour depends on the loop's transports run on both loops.
BOTH_LOOPS = frozenset({"test_redis_link.py"})


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """asyncio's own loop, and uvloop's (the controller's) too for the modules in BOTH_LOOPS."""
    if item.path.name in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server on a unix socket, gone after the test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that the test may stop and start again (RedisServer)."""
    directory = tmp_path / "restartable-redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_py(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An independent client (redis-py) on the same Redis, to look at keys, or set them up,
    behind the back of the code under test."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()
