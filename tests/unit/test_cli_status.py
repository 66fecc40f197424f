"""`acd status` as a person reads it: every figure the supervisor needs, from /status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from acd import cli
from acd.cli import status_lines
from acd.config import load_settings
from acd.errors import AcdError

REPO = Path(__file__).resolve().parents[2]

STATUS: dict[str, Any] = {
    "node": "node-a",
    "components": {"ami": {"connected": True}, "redis": {"ok": True}},
    "overload": {"level": 3, "computed": 1, "pinned": 3},
    "menu_modes": {"1000": "auto"},
    "queues": {
        "presale": {
            "state": "paused",
            "callbacks": "off",
            "waiting": 4,
            "longest_wait": 95.4,
            "ewt": 240.0,
            "service_level": 0.825,
            "agents": {"available": 1, "on_call": 2},
        },
        "vip": {
            "state": "open",
            "callbacks": "on",
            "waiting": 0,
            "longest_wait": 0.0,
            "ewt": 86400.0,
            "service_level": None,
            "agents": {},
        },
    },
    "trunks": {
        "carrier-out": {
            "role": "primary",
            "state": "open",
            "tripped": True,
            "in_use": 2,
            "capacity": 10,
            "window_calls": 5,
            "window_failures": 3,
        }
    },
    "agents": {"1001": {"state": "paused", "reason": "lunch"}},
}


def test_status_shows_every_figure_per_queue_trunk_level_and_menu() -> None:
    """Per queue: state, waiting, longest wait, estimate, service level, callbacks and agents by
    state; trunks with their breaker; the level (and that it is pinned); menu modes; agents."""
    lines = status_lines(STATUS)
    assert lines[0] == "node node-a: AMI up, Redis up, overload level 3 (pinned; governor says 1)"
    assert "  entry 1000     menu auto" in lines
    presale = next(line for line in lines if line.startswith("  queue presale"))
    assert presale.split() == [
        *("queue", "presale", "paused", "4", "95", "s", "240", "s", "82%", "off"),
        *("1", "available,", "2", "on_call"),
    ]
    vip = next(line for line in lines if line.startswith("  queue vip"))
    assert vip.split() == ["queue", "vip", "open", "0", "0", "s", "no", "agent", "-", "on", "none"]
    trunk = next(line for line in lines if "carrier-out" in line)
    assert "primary  open (tripped by hand)  2/10 channels, window 3/5 failed" in trunk
    assert "  agent 1001     paused (lunch)" in lines


def test_count_needs_watch() -> None:
    """`--count` without `--watch` is refused before any request is made (nothing listens on
    the sample's admin port here)."""
    args = cli._parser().parse_args(["status", "--count", "2"])
    with pytest.raises(AcdError, match="--count goes with --watch"):
        cli._dispatch(args, load_settings(REPO / "acd.yaml"))
