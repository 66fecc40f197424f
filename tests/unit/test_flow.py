"""IVR flows: validation at load with precise messages, and the pure interpreter's walk."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from acd.domain.flow import (
    Enqueue,
    FlowProblems,
    FlowRun,
    Play,
    PlayAndCollect,
    compile_flow,
    load_flows,
)

REPO = Path(__file__).resolve().parents[2]
BROKEN = Path(__file__).parent / "fixtures" / "flows_broken"
SKILLS = frozenset({"presale", "orders", "payment", "aftersales"})


def test_the_shipped_flows_are_valid() -> None:
    """Every flow in ivr_flows/ compiles against the sample skills."""
    flows = load_flows(REPO / "ivr_flows", SKILLS)
    assert "promo" in flows
    assert flows["promo"].start == "root"


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("unknown_node.yaml", "nodes.root.options.1: unknown node 'nowhere'"),
        ("unreachable.yaml", "nodes.orphan: unreachable from start"),
        ("no_way_out.yaml", "nodes.root.on_failure: unknown node None: a menu needs a way out"),
        ("unknown_skill.yaml", "nodes.q.skill: unknown skill 'karaoke'"),
        ("bad_digit.yaml", "nodes.root.options.12: an option key must be one DTMF digit"),
        ("bad_prompt.yaml", "nodes.root.prompt: '../../etc/passwd' is not a valid sound name"),
        ("unknown_kind.yaml", "nodes.root.kind: unknown node kind 'dance'"),
        ("bad_start.yaml", "start: 'lobby' is not a node of this flow"),
    ],
)
def test_each_broken_flow_is_rejected_with_its_message(fixture: str, message: str) -> None:
    """A broken flow fixture is refused, naming the file and the faulty key."""
    path = BROKEN / fixture
    with pytest.raises(FlowProblems) as info:
        compile_flow(yaml.safe_load(path.read_text()), str(path), SKILLS)
    assert f"{path}: {message}" in str(info.value)


def _promo() -> FlowRun:
    return FlowRun(load_flows(REPO / "ivr_flows", SKILLS)["promo"])


def test_a_valid_choice_enqueues_for_that_skill() -> None:
    """Pressing 3 at the root menu queues for payment with the flow's priority."""
    run = _promo()
    (collect,) = run.start()
    assert isinstance(collect, PlayAndCollect)
    assert collect.prompts == ("acd/promo-welcome", "acd/promo-menu")
    assert collect.valid_digits == "1234"
    assert run.on_digits("3") == [Enqueue(node="payment", skill="payment", priority=10)]
    assert run.path == ["root", "payment"]


def test_invalid_digits_and_timeouts_retry_then_fall_through() -> None:
    """An invalid digit replays the menu after the invalid prompt, a timeout after the timeout
    prompt; after the allowed retries the caller goes to the menu's on_failure node."""
    run = _promo()
    run.start()
    first = run.on_digits("9")
    assert first[0] == Play("invalid")
    assert isinstance(first[1], PlayAndCollect)
    second = run.on_digits("")
    assert second[0] == Play("please-try-again")
    assert run.on_digits("#") == [Enqueue(node="presale", skill="presale", priority=0)]
