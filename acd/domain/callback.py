"""Callbacks: when one may be dialled, what an attempt's outcome leads to, and how many may be in
the queues at once. Pure: time is a parameter.

A callback keeps the caller's place: it joins its skill's queue with the score the caller had
(join time minus head start), so it is dialled in turn, before callers who joined later. The
agent is called first; when the agent answers it hears a whisper, then the customer is dialled.

>>> p = CallbackPolicy(attempts=3, retry_delay=120, expiry=3600)
>>> after_attempt(p, "NOANSWER", attempts=1, requested_at=0.0, now=60.0)
Retry(at=180.0)
>>> after_attempt(p, "ANSWER", attempts=1, requested_at=0.0, now=60.0)
Done(outcome='answered')
>>> after_attempt(p, "BUSY", attempts=3, requested_at=0.0, now=60.0)
Done(outcome='failed')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from acd.domain.hours import BusinessHours


@dataclass(frozen=True)
class CallbackPolicy:
    attempts: int = 3  # dial attempts of the customer before giving up
    retry_delay: float = 120.0  # seconds between attempts
    expiry: float = 4 * 3600.0  # a callback not completed by then is dropped
    share: float = 0.5  # of the staffed agents, at most this share on callbacks at once


@dataclass(frozen=True)
class Retry:
    at: float


@dataclass(frozen=True)
class Done:
    outcome: str  # answered | failed | expired


def after_attempt(
    policy: CallbackPolicy, dial_status: str, attempts: int, requested_at: float, now: float
) -> Retry | Done:
    """What follows an attempt whose customer leg ended with `dial_status` (Dial's DIALSTATUS,
    or NOPROGRESS from the dialplan when the carrier did not ring in time), `attempts` being
    the attempts made so far (this one included). Anything but an answer is tried again."""
    if dial_status == "ANSWER":
        return Done("answered")
    if attempts >= policy.attempts:
        return Done("failed")
    at = now + policy.retry_delay
    if at - requested_at >= policy.expiry:
        return Done("expired")
    return Retry(at)


OFFER_LEVEL = 3  # from this overload level callers whose wait passes the target get an offer
OVERFLOW_LEVEL = 4  # at this level low tiers are offered a callback, then the standby centre

Step = Literal["offer", "overflow"]


def should_offer(
    ewt: float, level: int, offer_ewt: float | None, target: float, low_tier: bool = False
) -> bool:
    """Whether a caller about to queue is offered a callback: its wait estimate passes the
    queue's offer threshold, or, from overload level 3, the queue's answer-time target. At level
    4 every caller of a low tier (no head start) is offered one first, whatever the wait, and
    callers with a head start (VIPs, urgent problems) none: they keep their in-house place.

    >>> should_offer(300, 0, None, 120), should_offer(300, 3, None, 120)
    (False, True)
    >>> should_offer(61, 0, 60, 120), should_offer(0, 4, None, 120, low_tier=True)
    (True, True)
    >>> should_offer(300, 4, 60, 120, low_tier=False)
    False
    """
    if level >= OVERFLOW_LEVEL:
        return low_tier
    if offer_ewt is not None and ewt > offer_ewt:
        return True
    return level >= OFFER_LEVEL and ewt > target


def should_overflow(
    ewt: float,
    waiting: int,
    level: int,
    ewt_above: float | None,
    waiting_above: int | None,
    low_tier: bool = True,
) -> bool:
    """Whether a new caller of a queue that has an overflow destination goes there: when the
    wait estimate or the queue length passes the queue's limits, and at level 4 every caller of
    a low tier; at level 4 a caller with a head start stays in-house whatever the queue.

    >>> should_overflow(10, 50, 0, None, 40), should_overflow(10, 5, 4, None, None)
    (True, True)
    >>> should_overflow(10, 5, 3, 600, 40), should_overflow(10, 50, 4, None, 40, low_tier=False)
    (False, False)
    """
    if level >= OVERFLOW_LEVEL:
        return low_tier
    if ewt_above is not None and ewt > ewt_above:
        return True
    return waiting_above is not None and waiting > waiting_above


def before_queueing(
    *,
    ewt: float,
    waiting: int,
    level: int,
    head_start: float,
    offer_ewt: float | None,
    target: float,
    overflow: bool,
    ewt_above: float | None = None,
    waiting_above: int | None = None,
) -> tuple[Step, ...]:
    """What to try, in order, before a new caller queues: `offer` (a callback; the caller may
    decline) and `overflow` (to the queue's standby destination, when it has one, `overflow`, and
    a trunk is free). The caller queues in-house when nothing is taken: nobody is turned away.
    Below level 4 the overflow comes first (the queue is past its limits: the standby centre
    answers sooner than a callback); at level 4 a low tier is offered the callback first and
    overflows if it declines; a caller with a head start (its tier's or the flow's priority)
    just queues.

    >>> plan = dict(ewt=300, waiting=5, offer_ewt=None, target=120, overflow=True)
    >>> before_queueing(level=4, head_start=0, **plan)
    ('offer', 'overflow')
    >>> before_queueing(level=4, head_start=120, **plan)
    ()
    >>> before_queueing(level=3, head_start=0, waiting_above=4, **plan)
    ('overflow', 'offer')
    >>> before_queueing(level=0, head_start=0, **plan)
    ()
    """
    low_tier = head_start <= 0
    steps: dict[Step, bool] = {
        "offer": should_offer(ewt, level, offer_ewt, target, low_tier),
        "overflow": overflow
        and should_overflow(ewt, waiting, level, ewt_above, waiting_above, low_tier),
    }
    order: tuple[Step, Step] = (
        ("offer", "overflow") if level >= OVERFLOW_LEVEL else ("overflow", "offer")
    )
    return tuple(step for step in order if steps[step])


def may_dial(hours: BusinessHours | None, now: float) -> bool:
    """Callbacks are only dialled while their hours are open (no hours: always); `now` is epoch
    seconds."""
    return hours is None or hours.is_open(datetime.fromtimestamp(now, UTC))


def admission_limit(policy: CallbackPolicy, staffed: int, inbound_waiting: int) -> int:
    """How many callbacks of a skill may be in its queue or on the phone at once, paced against
    live inbound load: while inbound callers wait, the configured share of the skill's staffed
    agents, so callbacks do not flood the floor; while none wait, every staffed agent, so they
    do not starve on a quiet floor. At least one: with nobody staffed, it waits at its place in
    the queue. (lua/callback_admit.lua applies the same rule atomically.)

    >>> admission_limit(CallbackPolicy(share=0.5), staffed=5, inbound_waiting=3)
    2
    >>> admission_limit(CallbackPolicy(share=0.5), staffed=5, inbound_waiting=0)
    5
    >>> admission_limit(CallbackPolicy(share=0.1), 1, 9), admission_limit(CallbackPolicy(), 0, 0)
    (1, 1)
    """
    if inbound_waiting <= 0:
        return max(1, staffed)
    return max(1, math.floor(policy.share * staffed))
