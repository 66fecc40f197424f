"""What happens to a new caller before it queues: callback offers and overflow to the standby
centre by overload level, with level 4's plan (docs/architecture.md): callback-only for low
tiers, VIPs and urgent problems first in-house, overflow to standby lines."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acd.domain.callback import before_queueing, should_offer, should_overflow

QUEUE: dict[str, Any] = {"offer_ewt": None, "target": 120.0, "overflow": True}


@pytest.mark.parametrize(
    ("level", "head_start", "ewt", "waiting", "limits", "plan"),
    [
        # level 4, a regular caller: the callback first, whatever the wait; declining, standby
        (4, 0, 0, 0, {}, ("offer", "overflow")),
        (4, 0, 900, 50, {"waiting_above": 10}, ("offer", "overflow")),
        # level 4, a VIP (tier head start) or an urgent problem (the flow's priority): in-house
        (4, 120, 900, 50, {"waiting_above": 10, "ewt_above": 60}, ()),
        (4, 30, 0, 0, {}, ()),
        # level 3: the queue's limits send callers to standby first, a long wait brings offers
        (3, 0, 300, 0, {}, ("offer",)),
        (3, 120, 300, 0, {}, ("offer",)),
        (3, 0, 300, 11, {"waiting_above": 10}, ("overflow", "offer")),
        # levels 0-2: only the queue's own limits
        (0, 0, 300, 0, {}, ()),
        (2, 0, 61, 0, {"ewt_above": 60}, ("overflow",)),
        (0, 120, 61, 0, {"ewt_above": 60}, ("overflow",)),
    ],
)
def test_the_plan_by_level_and_head_start(
    level: int,
    head_start: float,
    ewt: float,
    waiting: int,
    limits: dict[str, Any],
    plan: tuple[str, ...],
) -> None:
    """The steps tried before queueing, in order, for each case of the table."""
    got = before_queueing(
        ewt=ewt, waiting=waiting, level=level, head_start=head_start, **QUEUE, **limits
    )
    assert got == plan


def test_a_queue_without_an_overflow_never_overflows() -> None:
    """At level 4 a regular caller of a queue with no standby destination is offered the
    callback and, declining, queues."""
    plan = before_queueing(
        ewt=0, waiting=0, level=4, head_start=0, offer_ewt=None, target=120, overflow=False
    )
    assert plan == ("offer",)


def test_level_4_offers_low_tiers_only() -> None:
    """should_offer at level 4 follows the tier alone; should_overflow too."""
    assert should_offer(0, 4, None, 120, low_tier=True)
    assert not should_offer(10_000, 4, 1, 120, low_tier=False)
    assert should_overflow(0, 0, 4, None, None, low_tier=True)
    assert not should_overflow(10_000, 10_000, 4, 1, 1, low_tier=False)


@given(
    level=st.integers(0, 4),
    head_start=st.sampled_from([0.0, 30.0, 120.0]),
    ewt=st.floats(0, 5000),
    waiting=st.integers(0, 200),
    overflow=st.booleans(),
    ewt_above=st.none() | st.floats(1, 1000),
    waiting_above=st.none() | st.integers(0, 100),
    offer_ewt=st.none() | st.floats(0, 1000),
)
def test_plan_invariants(
    level: int,
    head_start: float,
    ewt: float,
    waiting: int,
    overflow: bool,
    ewt_above: float | None,
    waiting_above: int | None,
    offer_ewt: float | None,
) -> None:
    """Whatever the figures: each step at most once; an overflow only for a queue that has
    one; at level 4 a caller with a head start is never sent away nor offered a callback, and
    a low tier is always offered one, before any overflow."""
    plan = before_queueing(
        ewt=ewt,
        waiting=waiting,
        level=level,
        head_start=head_start,
        offer_ewt=offer_ewt,
        target=120,
        overflow=overflow,
        ewt_above=ewt_above,
        waiting_above=waiting_above,
    )
    assert len(set(plan)) == len(plan)
    assert overflow or "overflow" not in plan
    if level == 4 and head_start > 0:
        assert plan == ()
    if level == 4 and head_start == 0:
        assert plan[0] == "offer"
        assert ("overflow" in plan) is overflow
