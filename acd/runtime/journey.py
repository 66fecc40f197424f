"""Journey events and metrics: what happened to every call, for reports, the wallboard and
Prometheus.

Each event goes to the Redis Stream P:journey (trimmed by age, `journey.retention_days`) and
updates this controller's Prometheus metrics. Events: arrival, menu, queued, callback_requested,
overflow, ring, answer, fallback, callback_attempt, hangup. A `hangup` carries how the call ended:
answered (talked to an agent), abandoned (hung up while waiting), callback (left for a callback),
ivr (ended in the menus: self-service, transfer, or gave up there).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from acd.adapters.store import RedisStore
from acd.errors import StoreUnavailable

log = structlog.get_logger(__name__)

WAIT_BUCKETS = (5, 10, 20, 30, 60, 120, 180, 300, 600, 1200, 1800)


class Recorder:
    def __init__(
        self,
        store: RedisStore,
        retention_days: float,
        node: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._retention = retention_days * 86400
        self._node = node
        self._clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "acd_journey_events", "Journey events recorded", ["event"], registry=r
        )
        self.calls = Counter(
            "acd_calls_ended", "Calls ended, by how they ended", ["outcome"], registry=r
        )
        self.abandons = Counter(
            "acd_abandons", "Callers who hung up while waiting", ["queue"], registry=r
        )
        self.wait = Histogram(
            "acd_wait_seconds",
            "Wait in queue of answered calls",
            ["queue"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.callbacks = Counter(
            "acd_callback_attempts", "Callback attempts, by outcome", ["outcome"], registry=r
        )
        self.queue_waiting = Gauge("acd_queue_waiting", "Callers waiting", ["queue"], registry=r)
        self.queue_longest = Gauge(
            "acd_queue_longest_wait_seconds", "Longest current wait", ["queue"], registry=r
        )
        self.queue_ewt = Gauge(
            "acd_queue_estimated_wait_seconds", "Wait estimate for a new caller", ["queue"],
            registry=r,
        )  # fmt: skip
        self.sl = Gauge(
            "acd_service_level",
            "Share of the last hour's queued callers answered within the target (20 s)",
            ["queue"],
            registry=r,
        )
        self.agents = Gauge("acd_agents", "Agents by state", ["state"], registry=r)
        self.breaker = Gauge(
            "acd_trunk_breaker_state", "1 for the breaker's current state", ["trunk", "state"],
            registry=r,
        )  # fmt: skip
        self.trunk_in_use = Gauge(
            "acd_trunk_channels_in_use", "Outbound channels in use", ["trunk"], registry=r
        )
        self.overload = Gauge("acd_overload_level", "Effective overload level 0-4", registry=r)
        self.ami_up = Gauge("acd_ami_connected", "1 when the AMI session is up", registry=r)
        self.redis_up = Gauge("acd_redis_ok", "1 when Redis answers", registry=r)
        self.loop_lag = Gauge(
            "acd_event_loop_lag_seconds", "How late the event loop woke up, last sample",
            registry=r,
        )  # fmt: skip
        # queue -> [(queued at, answered within target or None while unknown)] of the last hour
        self._sl: dict[str, list[tuple[float, float | None]]] = {}

    async def emit(self, event: str, uid: str, **fields: Any) -> None:
        """Record one journey event; a Redis outage loses the event, never the call."""
        now = self._clock()
        self.events.labels(event).inc()
        self._metrics(event, now, fields)
        values = {k: str(v) for k, v in fields.items() if v is not None and v != ""}
        try:
            await self._store.journey(
                event, uid, now, self._node, values, min_time=now - self._retention
            )
        except StoreUnavailable as exc:
            log.warning("journey.lost", journey_event=event, error=str(exc))

    def _metrics(self, event: str, now: float, fields: dict[str, Any]) -> None:
        queue = str(fields.get("skill") or "")
        if event == "answer" and queue:
            waited = float(fields.get("waited") or 0.0)
            self.wait.labels(queue).observe(waited)
            self._sl.setdefault(queue, []).append((now - waited, waited))
        elif event == "hangup":
            outcome = str(fields.get("outcome") or "ivr")
            self.calls.labels(outcome).inc()
            if outcome == "abandoned" and queue:
                self.abandons.labels(queue).inc()
                self._sl.setdefault(queue, []).append((now, None))
        elif event == "callback_attempt":
            self.callbacks.labels(str(fields.get("outcome") or "")).inc()

    def service_level(self, queue: str, now: float, target: float = 20.0) -> float | None:
        """Answered within `target` / (answered + abandoned), over the last hour."""
        rows = [r for r in self._sl.get(queue, []) if r[0] >= now - 3600]
        self._sl[queue] = rows
        if not rows:
            return None
        return sum(1 for _, w in rows if w is not None and w <= target) / len(rows)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def watch_loop_lag(self, interval: float = 0.5) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.set(max(0.0, loop.time() - start - interval))
