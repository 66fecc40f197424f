"""Fuzzing, bounded: what arrives from outside (AMI and AGI byte streams, flow files) never
crashes the code that reads it. Random, truncated and mutated input either decodes or is refused
with the project's own error (ProtocolError, FlowProblems) carrying a message that says where and
what; never an IndexError, a KeyError or a TypeError from deep inside."""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acd import cli, logs
from acd.config import load_settings
from acd.domain.flow import Flow, FlowProblems, compile_flow
from acd.errors import ProtocolError
from acd.protocol.agi import AgiCodec, parse_reply
from acd.protocol.ami import AmiCodec
from acd.runtime.flows import flow_catalog

REPO = Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

AMI_STREAM = (
    b"Asterisk Call Manager/9.0.0\r\n"
    b"Response: Success\r\nActionID: 1\r\nMessage: Authentication accepted\r\n\r\n"
    b"Event: Hangup\r\nChannel: PJSIP/agent-1001-00000001\r\nUniqueid: 1733.1\r\n"
    b"Cause: 16\r\nCause-txt: Normal Clearing\r\n\r\n"
    b"Event: UserEvent\r\nUserEvent: AcdHeld\r\nUniqueid: 1733.2\r\n\r\n"
)
AGI_STREAM = (
    b"agi_network: yes\nagi_network_script: s3cret/inbound\nagi_request: agi://127.0.0.1/x\n"
    b"agi_channel: PJSIP/carrier-in-00000001\nagi_uniqueid: 1733.3\nagi_callerid: 5551234\n\n"
    b"200 result=0\n200 result=49 (timeout) endpos=8000\n"
    b"520-Invalid command syntax.  Proper usage follows:\nUsage: foo\n520 End of proper usage.\n"
    b"HANGUP\n511 result=-1\n"
)


def _chunks(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


def _feed_all(codec: AmiCodec | AgiCodec, chunks: list[bytes]) -> list[object]:
    """Every message the chunks decode to, or the ProtocolError that refused them (which must
    say something: a refusal is a clear error)."""
    out: list[object] = []
    try:
        for chunk in chunks:
            out.extend(codec.feed(chunk))
    except ProtocolError as exc:
        out.append(exc)
    refusals = [m for m in out if isinstance(m, ProtocolError)]
    assert all(str(exc).strip() for exc in refusals)
    return out


@pytest.mark.parametrize(
    "codec", [lambda: AmiCodec(max_message_bytes=1024), lambda: AgiCodec(max_line_bytes=512)],
    ids=["ami", "agi"],
)  # fmt: skip
@FUZZ
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_random_bytes_on_a_link_decode_or_are_refused_clearly(
    codec: Callable[[], AmiCodec | AgiCodec], data: bytes, cuts: list[int]
) -> None:
    _feed_all(codec(), _chunks(data, cuts))


@FUZZ
@given(
    end=st.integers(0, len(AMI_STREAM)),
    flips=st.lists(st.tuples(st.integers(0, len(AMI_STREAM) - 1), st.integers(0, 255)), max_size=4),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_a_truncated_or_corrupted_ami_stream_yields_whole_messages_only(
    end: int, flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    """A stream cut anywhere decodes to the messages it holds whole, never to a half message;
    bytes flipped anywhere decode or are refused, never crash."""
    whole = AmiCodec().feed(AMI_STREAM)
    cut = AmiCodec().feed(AMI_STREAM[:end])
    assert cut == whole[: len(cut)]
    assert all(m.fields for m in cut)
    corrupted = bytearray(AMI_STREAM)
    for at, byte in flips:
        corrupted[at] = byte
    _feed_all(AmiCodec(), _chunks(bytes(corrupted), cuts))


@FUZZ
@given(
    end=st.integers(0, len(AGI_STREAM)),
    flips=st.lists(st.tuples(st.integers(0, len(AGI_STREAM) - 1), st.integers(0, 255)), max_size=4),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_a_truncated_or_corrupted_agi_stream_yields_whole_messages_only(
    end: int, flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    whole = _feed_all(AgiCodec(), [AGI_STREAM])
    cut = _feed_all(AgiCodec(), [AGI_STREAM[:end]])
    assert cut == whole[: len(cut)]
    corrupted = bytearray(AGI_STREAM)
    for at, byte in flips:
        corrupted[at] = byte
    _feed_all(AgiCodec(), _chunks(bytes(corrupted), cuts))


@FUZZ
@given(line=st.text(max_size=200))
def test_any_agi_reply_line_parses_or_is_refused_clearly(line: str) -> None:
    refusal = ""
    try:
        parse_reply(line)
    except ProtocolError as exc:
        refusal = str(exc) or "(empty)"
    assert refusal.strip() != "(empty)"


# -- flows ------------------------------------------------------------------------------------

SETTINGS = load_settings(REPO / "acd.yaml")
CATALOG = flow_catalog(SETTINGS)
SHIPPED = {
    path.name: yaml.safe_load(path.read_text())
    for path in sorted((REPO / "ivr_flows").glob("*.yaml"))
}
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["1", "#", "*", "q_presale", "presale", "acd/menu", ""]),
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a parsed YAML tree."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out.extend(_paths(value, (*prefix, i)))
    return out


@st.composite
def mutated_flows(draw: st.DrawFn) -> str:
    """A shipped flow with a few values replaced, deleted or added: mostly the right shape,
    wrong in the details, as a hand-edited file is."""
    tree = copy.deepcopy(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(tree)))
        parent = tree
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(_values)
        else:
            parent.append(draw(_values))
        if not _paths(tree):
            break
    return yaml.safe_dump(tree, allow_unicode=True)


def _compiled(text: str) -> tuple[Flow | None, list[str]]:
    """The flow, or None and its problems (FlowProblems: any other exception is a crash)."""
    try:
        return compile_flow(text, "fuzz.yaml", CATALOG), []
    except FlowProblems as exc:
        return None, exc.problems


@FUZZ
@given(text=mutated_flows())
def test_a_mutated_flow_compiles_or_every_problem_names_its_file_and_line(text: str) -> None:
    flow, problems = _compiled(text)
    if flow is None:
        assert problems
        for problem in problems:
            assert re.match(r"fuzz\.yaml:\d+: \S", problem), problem
    else:
        assert flow.start in flow.nodes


@FUZZ
@given(text=st.text(max_size=400))
def test_any_text_as_a_flow_compiles_or_is_refused_with_its_line(text: str) -> None:
    _, problems = _compiled(text)
    assert all(re.match(r"fuzz\.yaml:\d+: \S", p) for p in problems), problems


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=mutated_flows())
def test_acd_flows_check_answers_a_generated_file_with_ok_or_a_clear_refusal(
    text: str, tmp_path: Path
) -> None:
    """`acd flows check FILE` as an operator runs it: exit 0 and `ok: flow ...`, or exit 2 and
    `acd: FILE:LINE: ...` on stderr; never a traceback."""
    path = tmp_path / "generated.yaml"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    # The CLI configures logging for the process; left alone, later tests' logs would go to
    # this test's captured stderr.
    with redirect_stdout(out), redirect_stderr(err), patch.object(logs, "configure"):
        code = cli.main(["--config", str(REPO / "acd.yaml"), "flows", "check", str(path)])
    if code == 0:
        assert out.getvalue().startswith("ok: flow ")
    else:
        assert code == 2, (code, err.getvalue())
        assert err.getvalue().startswith(f"acd: {path}:")
        assert "Traceback" not in err.getvalue()


def test_the_shipped_flows_compile() -> None:
    """The base the mutations start from is valid: a refusal above is the mutation's doing."""
    for name, tree in SHIPPED.items():
        assert isinstance(compile_flow(yaml.safe_dump(tree), name, CATALOG), Flow)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_line_of_a_problem_points_at_the_mutated_key(name: str) -> None:
    """A problem's line number is the line of the offending key in the file, so an operator
    finds it: a start node that does not exist is reported on the `start:` line."""
    text = yaml.safe_dump({**SHIPPED[name], "start": "no_such_node"}, sort_keys=False)
    with pytest.raises(FlowProblems) as raised:
        compile_flow(text, "f.yaml", CATALOG)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith("start:"))
    assert any(p.startswith(f"f.yaml:{line}: ") for p in raised.value.problems), raised.value
