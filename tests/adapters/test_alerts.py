"""Alert notices against a real redis-server and a real HTTP webhook: a change and its notice are
one step, the notice is sent from the sender's own task with retries, a controller that stopped
with a notice in hand sends it after its restart, and a rule that was firing resolves after a
restart (issue: webhook alerts could be lost)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import web

from acd.adapters.alert_store import AlertStore
from acd.adapters.store import RedisStore
from acd.config import load_settings
from acd.runtime.alerts import AlertSender
from acd.runtime.controller import Controller
from acd.runtime.flows import load_checked_flows
from tests.adapters.fakes import redis_overrides

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(30)


@dataclass
class Webhook:
    """A webhook that answers the statuses in `answers` in turn, then 200."""

    port: int = 0
    answers: list[int] = field(default_factory=list)
    received: list[dict[str, object]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    async def until(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.received) < n:  # noqa: ASYNC110 - polls what the server records
                await asyncio.sleep(0.01)


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()

    async def receive(request: web.Request) -> web.Response:
        hook.received.append(await request.json())
        status = hook.answers.pop(0) if hook.answers else 200
        return web.json_response({}, status=status)

    app = web.Application()
    app.router.add_post("/alerts", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook.port = runner.addresses[0][1]
    try:
        yield hook
    finally:
        await runner.cleanup()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, "t", node="node-a")
    yield s
    await s.close()


def _notice(status: str, n: int = 1) -> str:
    return json.dumps({"id": f"n{n}", "alert": "presale-waiting", "status": status, "at": 0})


async def _sending(sender: AlertSender) -> AsyncIterator[None]:
    task = asyncio.create_task(sender.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_failing_webhook_is_asked_again_until_it_takes_the_notice(
    store: RedisStore, webhook: Webhook, redis_py: aioredis.Redis
) -> None:
    alerts = AlertStore(store.link, store.prefix, "node-a")
    webhook.answers = [503, 500]
    assert await alerts.change("presale-waiting", "firing", _notice("firing"))
    assert not await alerts.change("presale-waiting", "firing", _notice("firing", 2))  # once
    sender = AlertSender(alerts, webhook.url, 2.0, retry_first=0.05, clock=lambda: 0.0)
    async for _ in _sending(sender):
        await webhook.until(3)
        async with asyncio.timeout(5):
            while sender.sent == 0:  # noqa: ASYNC110 - polls what the sender counts
                await asyncio.sleep(0.01)
    assert [r["id"] for r in webhook.received] == ["n1"] * 3
    assert await redis_py.llen("t:alerts:outbox") == 0
    assert await redis_py.llen("t:alerts:sending:node-a") == 0


async def test_a_refused_notice_is_not_asked_again(
    store: RedisStore, webhook: Webhook, redis_py: aioredis.Redis
) -> None:
    alerts = AlertStore(store.link, store.prefix, "node-a")
    webhook.answers = [400]
    await alerts.change("a", "firing", _notice("firing", 1))
    await alerts.change("b", "firing", _notice("firing", 2))
    sender = AlertSender(alerts, webhook.url, 2.0, retry_first=0.05)
    async for _ in _sending(sender):
        await webhook.until(2)
        async with asyncio.timeout(5):
            while await redis_py.llen("t:alerts:sending:node-a"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    assert [r["id"] for r in webhook.received] == ["n1", "n2"]


async def test_a_notice_taken_by_a_controller_that_stopped_is_sent_after_its_restart(
    store: RedisStore, webhook: Webhook, redis_py: aioredis.Redis
) -> None:
    alerts = AlertStore(store.link, store.prefix, "node-a")
    await alerts.change("a", "firing", _notice("firing", 1))
    await alerts.change("b", "firing", _notice("firing", 2))
    assert await alerts.take() == _notice("firing", 1)  # then the controller died
    assert await redis_py.lrange("t:alerts:outbox", 0, -1) == [_notice("firing", 2)]
    sender = AlertSender(alerts, webhook.url, 2.0)
    async for _ in _sending(sender):
        await webhook.until(2)
    assert [r["id"] for r in webhook.received] == ["n1", "n2"]  # in order


async def test_a_rule_firing_before_a_restart_resolves_after_it(
    redis_url: str, redis_py: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller waits in presale: the rule fires. The controller restarts; the caller is gone:
    the new controller must queue `resolved` (it used to keep the rule's state in memory only,
    so after a restart the rule never resolved)."""
    monkeypatch.setenv("ACD_AMI_SECRET", "s3cret")
    rule = {"name": "presale-waiting", "figure": "waiting", "queue": "presale", "above": 0}
    overrides = {
        "redis": redis_overrides(redis_url, "al"),
        "alerts": {"webhook": "http://127.0.0.1:9/alerts", "rules": [rule]},
    }
    raw = yaml.safe_load((REPO / "acd.yaml").read_text())
    settings = load_settings(REPO / "acd.yaml", {**overrides, "asterisk": raw["asterisk"]})
    flows = load_checked_flows(settings, check_sounds=False)

    first = Controller(settings, flows)
    await first.store.enqueue(
        uid="c1", skill="presale", score=1.0, node="node-a", fields={"channel": "PJSIP/x-1"},
        now=time.time(),
    )  # fmt: skip
    await first._check_alerts()
    await first.store.close()
    outbox = [json.loads(n) for n in await redis_py.lrange("al:alerts:outbox", 0, -1)]
    assert [(n["alert"], n["status"], n["value"]) for n in outbox] == [
        ("presale-waiting", "firing", 1.0)
    ]

    again = Controller(settings, flows)
    try:
        await again.store.end_call("c1", time.time())
        await again._check_alerts()
    finally:
        await again.store.close()
    outbox = [json.loads(n) for n in await redis_py.lrange("al:alerts:outbox", 0, -1)]
    assert [n["status"] for n in outbox] == ["firing", "resolved"]
    assert await redis_py.get("al:alert:presale-waiting") == "resolved"
