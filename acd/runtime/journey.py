"""Journey events and metrics: what happened to every call, for reports, the wallboard and
Prometheus.

Each event goes to the Redis Stream P:journey (trimmed by age, `reports.retention_days`) and
updates this controller's Prometheus counters. Events: arrival, menu, queued, callback_requested,
overflow, transfer_failover, ring, answer, fallback, callback_attempt, callback_expired, hangup.
A `hangup` carries how the call ended: answered (talked to an agent), abandoned (hung up while
waiting), callback (left for a callback), fallback (the hold limit passed), ivr (ended in the
menus: self-service, transfer, or gave up there).

Events are written in batches (Recorder.emit never waits on Redis): one command every 50 ms
carries the events of every call of this controller (lua/journey.lua).

The live service level is shared by every controller: in the same atomic step as the event,
`queued`, `answer`, `fallback` and a `hangup` as abandoned move per-queue per-minute counters in
Redis (acd.domain.report.live_counts); /metrics, /status, the wallboard and the alerts read them
summed over the last `reports.service_window` seconds. So the figure is the same on every
controller, survives restarts, and has the report's definition (short abandons excluded).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from acd.adapters.store import JourneyEntry, RedisStore
from acd.config import ReportSettings
from acd.domain.report import Targets, live_counts, live_minutes, live_service_level
from acd.errors import StoreUnavailable

log = structlog.get_logger(__name__)

MAX_BATCH = 500  # events in one write at most
LINGER = 0.05  # seconds an event waits for others to share its write

WAIT_BUCKETS = (5, 10, 20, 30, 60, 120, 180, 300, 600, 1200, 1800)


def report_targets(reports: ReportSettings) -> Targets:
    """The report's targets as configured (`reports` in acd.yaml)."""
    return Targets(
        service_seconds=reports.service_seconds,
        service_target=reports.service_target,
        short_abandon=reports.short_abandon,
        answer_target=reports.answer_target,
        abandon_target=reports.abandon_target,
        first_contact_target=reports.first_contact_target,
    )


class Recorder:
    def __init__(
        self,
        store: RedisStore,
        retention_days: float,
        node: str,
        clock: Callable[[], float] = time.time,
        *,
        targets: Targets = Targets(),  # noqa: B008 (frozen, so one shared default is safe)
        window: float = 3600.0,
        linger: float = LINGER,
    ) -> None:
        """`targets`: the service-level threshold and the short-abandon threshold of the live
        counters; `window`: the seconds the live service level covers; `linger`: how long an
        event may wait for others to share its write."""
        self._store = store
        self._retention = retention_days * 86400
        self._node = node
        self._clock = clock
        self._targets = targets
        self._window = window
        self._linger = linger
        self._pending: list[JourneyEntry] = []
        self._writer: asyncio.Future[None] | None = None
        self.batches = 0  # batches written (events / batches: what the group commit saves)
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
            f"Callers who queued in the last {window:g} s, shared by every controller: answered "
            f"within {targets.service_seconds:g} s / (answered + abandoned after "
            f"{targets.short_abandon:g} s + sent to the fallback)",
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

    async def emit(self, event: str, uid: str, **fields: Any) -> None:
        """Record one journey event and the live counters it moves. Never waits on Redis: the
        event joins the batch that goes out within `linger` seconds, the events of every call
        in one command (a peak second's events in a few round trips instead of one each). A
        Redis outage loses the batch's events (logged), never a call; a stop writes what is
        pending (`flush`), a crash loses at most `linger` seconds of events."""
        now = self._clock()
        self.events.labels(event).inc()
        self._metrics(event, fields)
        values = {k: str(v) for k, v in fields.items() if v is not None and v != ""}
        live = tuple(live_counts(event, fields, now, self._targets, self._window))
        self._pending.append(JourneyEntry(event, uid, now, self._node, values, live))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_batches())

    async def flush(self) -> None:
        """Wait until every event emitted so far is written (or lost to an outage)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def _write_batches(self) -> None:
        """Write what is pending, a batch every `linger` seconds, until nothing is."""
        while self._pending:
            await asyncio.sleep(self._linger)
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                await self._store.journey(
                    batch, min_time=self._clock() - self._retention, live_window=self._window
                )
            except StoreUnavailable as exc:
                log.warning("journey.lost", journey_events=len(batch), error=str(exc))
            except Exception:  # a bug must not stop the journey for good
                log.exception("journey.write_failed", journey_events=len(batch))
            self.batches += 1

    def _metrics(self, event: str, fields: dict[str, Any]) -> None:
        queue = str(fields.get("skill") or "")
        if event == "answer" and queue:
            self.wait.labels(queue).observe(float(fields.get("waited") or 0.0))
        elif event == "hangup":
            outcome = str(fields.get("outcome") or "ivr")
            self.calls.labels(outcome).inc()
            if outcome == "abandoned" and queue:
                self.abandons.labels(queue).inc()
        elif event == "callback_attempt":
            self.callbacks.labels(str(fields.get("outcome") or "")).inc()

    async def service_counts(self, skills: Iterable[str], now: float) -> dict[str, dict[str, int]]:
        """Each queue's live counters over the window ending at `now`, as every controller
        moved them (this controller's own events written first)."""
        await self.flush()
        return await self._store.service_counts(skills, live_minutes(now, self._window))

    async def service_levels(self, skills: Iterable[str], now: float) -> dict[str, float | None]:
        """Each queue's live service level over the window ending at `now` (None: nobody
        counts yet), in one round trip."""
        counts = await self.service_counts(skills, now)
        return {skill: live_service_level(c) for skill, c in counts.items()}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def watch_loop_lag(self, interval: float = 0.5) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.set(max(0.0, loop.time() - start - interval))
