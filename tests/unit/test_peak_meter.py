"""The peak bench's AMI meter (bench/peak.py) tells a caller bridged twice and an agent on two
calls at once: the burst test (tests/integration/test_burst.py) relies on it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from acd.protocol.ami import AmiMessage

REPO = Path(__file__).resolve().parents[2]


def _peak() -> ModuleType:
    sys.path.insert(0, str(REPO / "bench"))  # its siblings (ivr_turn, claims), as when run
    spec = importlib.util.spec_from_file_location("peak_bench", REPO / "bench" / "peak.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["peak_bench"] = module
    spec.loader.exec_module(module)
    return module


peak = _peak()


def _event(name: str, at: float, **fields: str) -> AmiMessage:
    return AmiMessage([("Event", name), ("Timestamp", f"{at:.6f}"), *fields.items()])


def _call(meter: object, caller: str, leg: str, agent: str, start: float, end: float) -> None:
    """A caller's agent leg to `agent`, answered at `start`, hung up at `end`."""
    for event in (
        _event("DialBegin", start, Uniqueid=caller, DestUniqueid=leg,
               DestChannel=f"PJSIP/{agent}-000000{leg[-2:]}"),
        _event("DialEnd", start, Uniqueid=caller, DestUniqueid=leg, DialStatus="ANSWER"),
        _event("Hangup", end, Uniqueid=leg),
    ):  # fmt: skip
        meter(event)  # type: ignore[operator]


def test_agents_on_two_calls_at_once_and_callers_bridged_twice_are_counted() -> None:
    meter = peak.Meter()
    for i, uid in enumerate(("c1", "c2", "c3", "c4")):
        meter(_event("Newchannel", 100.0 + i, Uniqueid=uid, Channel=f"PJSIP/{peak.TRUNK}-0{i}"))
    _call(meter, "c1", "l01", "agent-7001", 101.0, 105.0)
    _call(meter, "c2", "l02", "agent-7001", 105.0, 109.0)  # back to back: not double-booked
    _call(meter, "c3", "l03", "agent-7002", 101.0, 110.0)
    _call(meter, "c4", "l04", "agent-7002", 104.0, 106.0)  # while 7002 talks to c3
    _call(meter, "c4", "l05", "agent-7003", 107.0, 108.0)  # c4's second answered leg
    assert peak.double_booked(meter.legs.values()) == {"PJSIP/agent-7002"}
    assert [c.answers for c in meter.callers.values()] == [1, 1, 1, 2]
