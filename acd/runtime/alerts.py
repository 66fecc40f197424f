"""The alert notices' sender: POSTs what the outbox holds to the webhook, from a task of its own.

The governor's tick only records a rule's change and its notice in Redis (acd.adapters.alert_store,
one step); this task sends the notices in order, retrying a webhook that fails or cannot be
reached (1 s, doubling to 30 s) for up to `RETRY_FOR` seconds after the change, and never makes the
tick wait on HTTP. A webhook that refuses a notice outright (4xx other than 408 and 429) is not
asked again. Several controllers share the outbox: whichever takes a notice sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

import aiohttp
import structlog

from acd.adapters.alert_store import AlertStore
from acd.errors import StoreUnavailable

log = structlog.get_logger(__name__)

POLL = 1.0  # seconds between two looks at the outbox when nothing woke the sender
RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # seconds before a failed POST is tried again (doubling)
RETRY_FOR = 600.0  # seconds after its change a notice is still worth sending


def retriable(status: int) -> bool:
    """Whether a webhook's HTTP status asks for the notice again later.

    >>> [retriable(s) for s in (200, 204, 400, 404, 408, 429, 500, 503)]
    [False, False, False, False, True, True, True, True]
    """
    return status >= 500 or status in (408, 429)


class AlertSender:
    def __init__(
        self,
        store: AlertStore,
        url: str,
        timeout: float,
        *,
        retry_first: float = RETRY_FIRST,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry_first = retry_first
        self._clock = clock
        self._wake = asyncio.Event()
        self.sent = 0

    def notify(self) -> None:
        """A notice was queued: look now."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                recovered = await self._store.recover()
                break
            except StoreUnavailable:
                await asyncio.sleep(POLL)
        if recovered:
            log.warning("alert.notices_recovered", notices=recovered)
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while True:
                self._wake.clear()
                try:
                    notice = await self._store.take()
                except StoreUnavailable as exc:
                    log.warning("alert.store_unavailable", error=str(exc))
                    notice = None
                if notice is None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(POLL):
                            await self._wake.wait()
                    continue
                await self._deliver(session, notice)

    async def _deliver(self, session: aiohttp.ClientSession, notice: str) -> None:
        """POST `notice` until the webhook takes it (or refuses it for good, or it is too old),
        then drop it from this controller's sending list."""
        try:
            at = float(json.loads(notice).get("at") or 0.0)
        except (ValueError, AttributeError):
            at = 0.0
        delay = self._retry_first
        while True:
            outcome = await self._post(session, notice)
            if outcome is not None:
                if outcome:
                    self.sent += 1
                break
            if self._clock() - at > RETRY_FOR:
                log.error("alert.webhook_gave_up", after=RETRY_FOR)
                break
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX)
        while True:
            try:
                await self._store.sent(notice)
            except StoreUnavailable:
                await asyncio.sleep(POLL)
            else:
                return

    async def _post(self, session: aiohttp.ClientSession, notice: str) -> bool | None:
        """True: taken; False: refused for good; None: try again later."""
        try:
            async with session.post(
                self._url, data=notice, headers={"Content-Type": "application/json"}
            ) as response:
                if response.status < 300:
                    return True
                if retriable(response.status):
                    log.warning("alert.webhook_failed", status=response.status)
                    return None
                log.error("alert.webhook_refused", status=response.status)
                return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("alert.webhook_failed", error=str(exc) or type(exc).__name__)
            return None
