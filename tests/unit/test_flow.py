"""IVR flows: validation at load with file, line and key; the pure interpreter's walk."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from acd.config import load_settings
from acd.domain.flow import (
    Catalog,
    CollectDigits,
    Enqueue,
    Facts,
    Flow,
    FlowError,
    FlowProblems,
    FlowRun,
    Hangup,
    Lookup,
    Play,
    PlayAndCollect,
    RegisterCallback,
    SetLanguage,
    Transfer,
    compile_flow,
    load_flows,
)
from acd.domain.hours import BusinessHours, parse_window
from acd.runtime.flows import flow_catalog, sound_dirs

REPO = Path(__file__).resolve().parents[2]
BROKEN = Path(__file__).parent / "fixtures" / "flows_broken"
CATALOG = Catalog(
    skills=frozenset({"presale", "orders", "payment", "aftersales", "vip"}),
    lookups=frozenset({"order_status"}),
    trunks=frozenset({"standby"}),
    hours=frozenset({"service"}),
)
NOW = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai, Double 11


def _facts(**kw: object) -> Facts:
    return Facts(now=kw.pop("now", NOW), **kw)  # type: ignore[arg-type]


def _shipped() -> dict[str, Flow]:
    settings = load_settings(REPO / "acd.yaml")
    return load_flows([REPO / "ivr_flows"], flow_catalog(settings), sound_dirs(settings))


def test_the_shipped_flows_are_valid_with_their_prompts_on_disk() -> None:
    """Both shipped flows compile against the sample configuration and every prompt exists."""
    flows = _shipped()
    assert set(flows) == {"promo", "promo-lite"}
    lite = flows["promo-lite"]
    menus = [n for n in lite.nodes.values() if type(n).__name__ == "Menu"]
    assert all(len(m.options) <= 2 for m in menus)  # type: ignore[attr-defined]
    assert not any(type(n).__name__ == "LookupNode" for n in lite.nodes.values())


@pytest.mark.parametrize(
    ("fixture", "line", "message"),
    [
        ("unknown_node.yaml", 4, "nodes.root.options.1: unknown node 'nowhere'"),
        ("unreachable.yaml", 6, "nodes.orphan: unreachable from start"),
        ("no_way_out.yaml", 4, "nodes.root: no way out: add on_failure"),
        ("unknown_skill.yaml", 4, "nodes.q.skill: unknown skill 'karaoke'"),
        ("bad_digit.yaml", 4, "nodes.root.options.12: an option key must be one DTMF digit"),
        ("bad_prompt.yaml", 4, "nodes.root.prompt: '../../etc/passwd' is not a valid sound name"),
        ("unknown_kind.yaml", 4, "nodes.root.kind: unknown node kind 'dance'"),
        ("bad_start.yaml", 2, "start: 'lobby' is not a node of this flow"),
        ("bad_type.yaml", 8, "nodes.root.timeout: must be a number from 1 to 60, not 'soon'"),
        ("unknown_service.yaml", 13, "nodes.look.service: unknown lookup service 'weather'"),
        (
            "undefined_variable.yaml",
            7,
            "nodes.look.params.order: variable 'order_number' is never set",
        ),
        ("silent_loop.yaml", 4, "nodes.a: loop without caller input: a -> b -> a"),
        ("bad_fallback.yaml", 3, "fallback: must be a queue, transfer or hangup node"),
    ],
)
def test_each_broken_flow_is_rejected_with_file_line_and_key(
    fixture: str, line: int, message: str
) -> None:
    """A broken flow fixture is refused with `file:line: key: what`."""
    path = BROKEN / fixture
    with pytest.raises(FlowProblems) as info:
        compile_flow(path.read_text(), str(path), CATALOG)
    assert f"{path}:{line}: {message}" in str(info.value)


def test_a_missing_prompt_is_reported_against_the_sounds_on_disk() -> None:
    """A prompt that no sound directory holds is reported with its line."""
    settings = load_settings(REPO / "acd.yaml")
    path = BROKEN / "missing_prompt.yaml"
    with pytest.raises(FlowProblems) as info:
        load_flows([path], CATALOG, sound_dirs(settings))
    assert f"{path}:6: prompt 'acd/no-such-prompt': no such sound file" in str(info.value)


def test_every_broken_fixture_is_rejected() -> None:
    """No fixture in the broken folder passes the checks (so each one tests something)."""
    settings = load_settings(REPO / "acd.yaml")
    for path in sorted(BROKEN.glob("*.yaml")):
        with pytest.raises(FlowProblems):
            load_flows([path], CATALOG, sound_dirs(settings))


def test_invalid_yaml_is_reported_with_its_line() -> None:
    """A YAML syntax error names file and line."""
    with pytest.raises(FlowProblems, match=r"x\.yaml:4: not valid YAML"):
        compile_flow("flow: x\nnodes:\n  a: {kind: queue\n", "x.yaml", CATALOG)


# -- the interpreter --------------------------------------------------------------------------


def test_root_menu_choice_queues_for_that_skill() -> None:
    """A regular caller hears the root menu; pressing 4 queues for after-sales."""
    run = FlowRun(_shipped()["promo"], _facts())
    welcome, collect = run.start()
    assert welcome == Play("acd/promo-welcome")
    assert isinstance(collect, PlayAndCollect)
    assert collect.prompts == ("acd/promo-menu",)
    assert collect.valid_digits == "1234"
    assert run.on_digits("4") == [Enqueue(node="q_aftersales", skill="aftersales", priority=0)]
    assert run.path == ["vip_check", "welcome", "root", "q_aftersales"]


def test_vip_callers_take_the_fast_lane() -> None:
    """A vip caller skips the menu: a welcome, then the vip queue (the tier's head start is
    applied when the caller is queued)."""
    run = FlowRun(_shipped()["promo"], _facts(tier="vip"))
    assert run.start() == [
        Play("acd/vip-welcome"),
        Enqueue(node="q_vip", skill="vip", priority=0),
    ]


def test_payment_problems_get_a_head_start_from_the_set_node() -> None:
    """Option 3 passes a set node that gives the payment queue a 120 s head start."""
    run = FlowRun(_shipped()["promo"], _facts())
    run.start()
    assert run.on_digits("3") == [Enqueue(node="q_payment", skill="payment", priority=120)]
    assert run.vars["reason"] == "payment"


def test_invalid_digits_and_timeouts_retry_then_fall_through() -> None:
    """An invalid digit replays the menu after the invalid prompt, a timeout after the timeout
    prompt; after the allowed retries the caller goes to the menu's on_failure node."""
    run = FlowRun(_shipped()["promo"], _facts())
    run.start()
    first = run.on_digits("9")
    assert first[0] == Play("invalid")
    assert isinstance(first[1], PlayAndCollect)
    second = run.on_digits("")
    assert second[0] == Play("please-try-again")
    assert run.on_digits("#") == [Enqueue(node="q_presale", skill="presale", priority=0)]


def test_order_status_self_service_found() -> None:
    """Option 2 collects an 8-digit order number, looks it up and plays the status prompt."""
    run = FlowRun(_shipped()["promo"], _facts())
    run.start()
    (collect,) = run.on_digits("2")
    assert isinstance(collect, CollectDigits)
    assert (collect.max_digits, collect.terminator, collect.shortcuts) == (8, "#", "0")
    (lookup,) = run.on_collected("12345678")
    assert lookup == Lookup(
        node="order_lookup", service="order_status", params={"order": "12345678"}
    )
    steps = run.on_lookup("found", {"status": "shipped", "eta_days": "2"})
    assert steps[0] == Play("acd/order-shipped")
    assert isinstance(steps[1], PlayAndCollect)
    assert run.on_digits("0") == [Enqueue(node="q_orders", skill="orders", priority=0)]


def test_order_status_not_found_asks_again_and_failure_goes_to_an_agent() -> None:
    """Not found: a prompt and one more try; a failing lookup service: straight to an agent."""
    run = FlowRun(_shipped()["promo"], _facts())
    run.start()
    run.on_digits("2")
    run.on_collected("99999999")
    steps = run.on_lookup("not_found", {})
    assert steps[0] == Play("acd/order-not-found")
    assert isinstance(steps[1], CollectDigits)
    run.on_collected("12345678")
    assert run.on_lookup("failure", {}) == [
        Play("acd/order-lookup-failed"),
        Enqueue(node="q_orders", skill="orders", priority=0),
    ]


def test_collect_rejects_wrong_lengths_and_honours_the_shortcut() -> None:
    """A too-short number is invalid (retry prompt); 0 alone is the agent shortcut."""
    run = FlowRun(_shipped()["promo"], _facts())
    run.start()
    run.on_digits("2")
    retry = run.on_collected("123")
    assert retry[0] == Play("acd/order-invalid")
    assert run.on_collected("0") == [Enqueue(node="q_orders", skill="orders", priority=0)]


def test_the_lite_flow_offers_a_callback() -> None:
    """promo-lite: two choices, then a callback offer; accepting registers it and hangs up,
    declining queues."""
    lite = _shipped()["promo-lite"]
    run = FlowRun(lite, _facts())
    (menu,) = run.start()
    assert isinstance(menu, PlayAndCollect)
    assert menu.valid_digits == "12"
    (offer,) = run.on_digits("1")
    assert isinstance(offer, PlayAndCollect)
    assert offer.valid_digits == "1"
    assert run.on_digits("1") == [
        RegisterCallback(node="offer_orders", skill="orders", priority=0),
        Play("acd/callback-confirmed"),
        Hangup(node="offer_orders"),
    ]
    declined = FlowRun(lite, _facts())
    declined.start()
    declined.on_digits("2")
    assert declined.on_digits("2") == [Enqueue(node="q_presale", skill="presale", priority=0)]


def test_fall_back_goes_to_the_declared_node() -> None:
    """When a flow fails mid-call, fall_back() continues at its fallback node."""
    run = FlowRun(_shipped()["promo"], _facts())
    run.start()
    run.on_digits("2")
    assert run.fall_back() == [Enqueue(node="q_presale", skill="presale", priority=0)]


CONDITIONS = """
flow: conds
start: c
nodes:
  c:
    kind: condition
    cases:
      - if: {overload_at_least: 3}
        goto: busy
      - if: {ewt_above: {skill: orders, seconds: 300}}
        goto: long_wait
      - if: {closed: service}
        goto: closed
      - if: {date_in: [2026-11-11]}
        goto: double11
    else: normal
  busy: {kind: hangup, prompt: acd/lite-menu}
  long_wait: {kind: transfer, number: "4008001234", trunk: standby}
  closed: {kind: hangup}
  double11: {kind: set, language: zh, skill: presale, priority: 5, next: q}
  normal: {kind: queue, skill: orders}
  q: {kind: queue}
"""


def _hours() -> dict[str, BusinessHours]:
    nine_to_nine = (parse_window("09:00-21:00"),)
    return {
        "service": BusinessHours(
            "Asia/Shanghai", {d: nine_to_nine for d in ("mon", "tue", "wed", "thu", "fri")}
        )
    }


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ({"overload_level": 3}, [Play("acd/lite-menu"), Hangup(node="busy")]),
        (
            {"ewt": {"orders": 301.0}},
            [Transfer(node="long_wait", number="4008001234", trunk="standby")],
        ),
        ({"now": datetime(2026, 11, 11, 14, 0, tzinfo=UTC)}, [Hangup(node="closed")]),
        ({}, [SetLanguage("zh"), Enqueue(node="q", skill="presale", priority=5)]),
        (
            {"now": datetime(2026, 11, 12, 2, 0, tzinfo=UTC)},
            [Enqueue(node="normal", skill="orders", priority=0)],
        ),
    ],
)
def test_conditions_branch_on_level_wait_hours_and_dates(facts: dict, expected: list) -> None:
    """Condition cases are tried in order: overload level, estimated wait, business hours
    (22:00 in Shanghai is closed), dates; a set node feeds skill, priority and language."""
    flow = compile_flow(CONDITIONS, "conds.yaml", CATALOG)
    run = FlowRun(flow, _facts(hours=_hours(), **facts))
    assert run.start() == expected


def test_a_flow_without_fallback_raises_flow_error() -> None:
    """fall_back() on a flow that declares no fallback node is a FlowError (the dialplan's static
    path then takes the caller)."""
    flow = compile_flow(CONDITIONS, "conds.yaml", CATALOG)
    with pytest.raises(FlowError):
        FlowRun(flow, _facts()).fall_back()


NODES = "nodes:\n  a: {kind: hangup}\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # Found by tests/unit/test_fuzz.py: a list or mapping where a name belongs raised
        # TypeError (unhashable) out of the checker instead of a refusal.
        (f"start: [a]\n{NODES}", "x.yaml:2: start: ['a'] is not a node"),
        ("start: a\nnodes:\n  a: {kind: [hangup]}\n", "x.yaml:4: nodes.a.kind: unknown node"),
        ("start: a\nnodes:\n  a: {kind: queue, skill: {x: 1}}\n", "x.yaml:4: nodes.a.skill:"),
        (f"start: a\nfallback: {{b: 1}}\n{NODES}", "x.yaml:3: fallback:"),
        # A blank key is quoted, so the line says which key.
        (f"start: a\n' ': 1\n{NODES}", "x.yaml:3: ' ': unknown key"),
    ],
)  # fmt: skip
def test_a_value_of_the_wrong_type_where_a_name_belongs_is_refused_not_a_crash(
    text: str, problem: str
) -> None:
    with pytest.raises(FlowProblems) as raised:
        compile_flow("flow: f\n" + text, "x.yaml", CATALOG)
    assert any(p.startswith(problem) for p in raised.value.problems), raised.value.problems
