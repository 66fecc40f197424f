"""The dial policy: which numbers the engine may dial out (callbacks, flow transfers, overflow).

Against toll fraud: a callback number is keyed by a caller, a flow's transfer may take its number
from what a caller keyed or a lookup returned. Every number the engine dials out passes this
policy first. By default a number of 5 to 16 digits, national only (no `+` or `00`), not a
premium-rate prefix; a deployment lists what it allows instead (`dial_policy` in acd.yaml).

>>> policy = DialPolicy()
>>> [refusal(policy, n) for n in ("13800000000", "+441234567", "0044123456", "19001234", "12")]
[None, 'international', 'international', 'premium', 'length']
>>> shop = DialPolicy(allowed=(Allowed("1", 11, 11), Allowed("400", 10, 10)))
>>> [refusal(shop, n) for n in ("13800000000", "4008001234", "02161234567")]
[None, None, 'not_allowed']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Refusal = Literal["malformed", "international", "premium", "length", "not_allowed"]

_DIALLABLE = re.compile(r"\+?[0-9]{1,32}")  # used with fullmatch
DEFAULT_BLOCKED = ("900", "0900", "1900")  # premium-rate services in many numbering plans


@dataclass(frozen=True)
class Allowed:
    """Numbers starting with `prefix` ('' = any) with `min_length` to `max_length` digits."""

    prefix: str
    min_length: int
    max_length: int

    def admits(self, digits: str) -> bool:
        return digits.startswith(self.prefix) and self.min_length <= len(digits) <= self.max_length


@dataclass(frozen=True)
class DialPolicy:
    allowed: tuple[Allowed, ...] = (Allowed("", 5, 16),)
    international: bool = False  # numbers starting with + or 00
    blocked: tuple[str, ...] = field(default=DEFAULT_BLOCKED)  # prefixes never dialled


def refusal(policy: DialPolicy, number: str) -> Refusal | None:
    """Why `number` may not be dialled, or None when it may."""
    if not _DIALLABLE.fullmatch(number):
        return "malformed"
    digits = number
    if number.startswith(("+", "00")):
        if not policy.international:
            return "international"
        digits = number[1:] if number.startswith("+") else number[2:]
    if any(digits.startswith(p) for p in policy.blocked):
        return "premium"
    if any(a.admits(digits) for a in policy.allowed):
        return None
    if all(a.prefix == "" for a in policy.allowed):
        return "length"
    return "not_allowed"
