"""The CLI's own input: a tiers CSV is checked whole before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from acd.cli import _read_tiers
from acd.errors import AcdError


def test_a_tiers_csv_with_a_header_loads(tmp_path: Path) -> None:
    """caller_id,tier rows after an optional header become a mapping."""
    path = tmp_path / "vip.csv"
    path.write_text("caller_id,tier\n+8613800138000,vip\n5551234,gold\n\n")
    assert _read_tiers(path) == {"+8613800138000": "vip", "5551234": "gold"}


def test_every_bad_row_is_reported_and_none_applied(tmp_path: Path) -> None:
    """Bad caller IDs, bad tiers and short rows are each named with their line."""
    path = tmp_path / "vip.csv"
    path.write_text("5551234,vip\n55x1,vip\n5551235,VIP!\n5551236\n")
    with pytest.raises(AcdError) as info:
        _read_tiers(path)
    message = str(info.value)
    assert f"{path}:2:" in message
    assert f"{path}:3:" in message
    assert f"{path}:4: expected caller_id,tier" in message
    assert f"{path}:1" not in message
