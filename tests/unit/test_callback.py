"""Callback scheduling decisions, with time as a parameter."""

from __future__ import annotations

from datetime import UTC, datetime

from acd.domain.callback import (
    CallbackPolicy,
    Done,
    Retry,
    admission_limit,
    after_attempt,
    may_dial,
)
from acd.domain.hours import BusinessHours, parse_window

POLICY = CallbackPolicy(attempts=3, retry_delay=100, expiry=1000, share=0.25)


def test_no_answer_and_busy_retry_after_the_delay_until_the_attempts_run_out() -> None:
    assert after_attempt(POLICY, "NOANSWER", 1, 0.0, 10.0) == Retry(110.0)
    assert after_attempt(POLICY, "BUSY", 2, 0.0, 200.0) == Retry(300.0)
    assert after_attempt(POLICY, "CONGESTION", 3, 0.0, 400.0) == Done("failed")


def test_an_answer_completes_it() -> None:
    assert after_attempt(POLICY, "ANSWER", 1, 0.0, 10.0) == Done("answered")


def test_a_retry_past_the_expiry_expires_it() -> None:
    assert after_attempt(POLICY, "NOANSWER", 1, 0.0, 950.0) == Done("expired")


def test_dialling_follows_the_hours() -> None:
    hours = BusinessHours("Asia/Shanghai", weekly={"sun": (parse_window("09:00-21:00"),)})
    sunday_10 = datetime(2026, 11, 22, 2, 0, tzinfo=UTC).timestamp()  # 10:00 in Shanghai
    sunday_22 = datetime(2026, 11, 22, 14, 0, tzinfo=UTC).timestamp()  # 22:00 in Shanghai
    assert may_dial(hours, sunday_10)
    assert not may_dial(hours, sunday_22)
    assert may_dial(None, sunday_22)


def test_callbacks_keep_to_their_share_while_inbound_callers_wait() -> None:
    """While inbound callers wait: the share of the staffed agents, at least one (with nobody
    staffed, one waits at its place)."""
    assert admission_limit(POLICY, 8, inbound_waiting=1) == 2
    assert admission_limit(POLICY, 1, inbound_waiting=5) == 1
    assert admission_limit(POLICY, 0, inbound_waiting=5) == 1


def test_on_a_quiet_floor_callbacks_may_take_every_staffed_agent() -> None:
    """No inbound caller waiting: every staffed agent may take a callback."""
    assert admission_limit(POLICY, 8, inbound_waiting=0) == 8
    assert admission_limit(POLICY, 0, inbound_waiting=0) == 1
