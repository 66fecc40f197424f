"""Every pattern that validates outside data (caller ID, numbers, names, tokens, API fields) is
anchored with \\Z, not $: `$` also matches before a trailing newline, so "1000\\n" would pass
and carry a newline on into AGI, the dialplan, a dial string or a log line."""

from __future__ import annotations

import re

import pytest

from acd import config
from acd.adapters import admin_api
from acd.domain import flow, hours
from acd.runtime import ivr

PATTERNS = [
    (ivr._CALLER_ID, "+86 (10) 5555-0100"),
    (ivr.CALLBACK_NUMBER, "13800138000"),
    (config._TOKEN, "abcDEF123_.~+/=-"),
    (config._ENV_REF, "ACD_ADMIN_TOKEN"),
    (flow.PROMPT_RE, "acd/welcome"),
    (flow._NAME, "promo-lite"),
    (flow._VAR, "order.status"),
    (hours._WINDOW, "09:00-18:00"),
    (admin_api._USER, "lead@floor-1"),
    (admin_api._REASON, "meeting"),
    (admin_api._CALLER, "+8613800138000"),
    (admin_api._TIER, "vip"),
]


@pytest.mark.parametrize(("pattern", "valid"), PATTERNS, ids=[p.pattern for p, _ in PATTERNS])
def test_a_trailing_newline_is_refused(pattern: re.Pattern[str], valid: str) -> None:
    assert pattern.match(valid)
    assert pattern.match(valid + "\n") is None
    assert pattern.match(valid + "\r\n") is None


def test_numbers_are_checked_whole() -> None:
    """NUMBER_RE is also pydantic's pattern (whose `$` is the end of the text): Python code uses
    it with fullmatch, which refuses a trailing newline too."""
    assert flow.NUMBER_RE.fullmatch("88001234")
    assert flow.NUMBER_RE.fullmatch("88001234\n") is None
