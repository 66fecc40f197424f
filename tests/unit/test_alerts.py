"""Alert rules, edge-triggered, with time as a parameter."""

from __future__ import annotations

from acd.domain.alerts import AlertRule, AlertState, step


def test_a_rule_fires_only_after_its_hold_time_and_once() -> None:
    rule = AlertRule("slow", "ewt", queue="orders", above=120, for_seconds=10)
    state = AlertState()
    queues = {"orders": {"ewt": 200.0}, "presale": {"ewt": 500.0}}
    assert step(rule, state, queues, {}, 0.0) is None
    assert step(rule, state, queues, {}, 9.9) is None
    assert step(rule, state, queues, {}, 10.0) == "firing"
    assert state.value == 200.0
    assert step(rule, state, queues, {}, 20.0) is None
    assert step(rule, state, {"orders": {"ewt": 30.0}}, {}, 21.0) == "resolved"


def test_a_dip_restarts_the_hold_time() -> None:
    rule = AlertRule("slow", "waiting", above=3, for_seconds=10)  # any queue
    state = AlertState()
    assert step(rule, state, {"a": {"waiting": 5}}, {}, 0.0) is None
    assert step(rule, state, {"a": {"waiting": 1}}, {}, 5.0) is None
    assert step(rule, state, {"b": {"waiting": 9}}, {}, 6.0) is None
    assert step(rule, state, {"b": {"waiting": 9}}, {}, 16.0) == "firing"


def test_below_and_floor_figures() -> None:
    sl = AlertRule("sl", "service_level", queue="orders", below=0.8)
    state = AlertState()
    assert step(sl, state, {"orders": {"service_level": None}}, {}, 0.0) is None
    assert step(sl, state, {"orders": {"service_level": 0.5}}, {}, 1.0) == "firing"
    trunks = AlertRule("trunks", "breakers_open", above=0)
    assert step(trunks, AlertState(), {}, {"breakers_open": 1}, 0.0) == "firing"
