"""AGI codec: environment, replies, HANGUP notices, multi-line replies, caps, command encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acd.errors import ProtocolError
from acd.protocol.agi import (
    MAX_COMMAND_BYTES,
    AgiCodec,
    AgiEnvironment,
    AgiHangupNotice,
    AgiReply,
    encode_command,
    parse_reply,
    route_of_script,
)

HEADER = (
    b"agi_network: yes\n"
    b"agi_network_script: inbound?x=1\n"
    b"agi_request: agi://127.0.0.1/inbound?x=1\n"
    b"agi_channel: PJSIP/trunk-00000001\n"
    b"agi_uniqueid: 1700000000.1\n"
    b"agi_callerid: 5551234\n"
    b"agi_calleridname: M\xc3\xbcller\n"
    b"agi_rdnis: unknown\n"
    b"agi_arg_1: first arg\n"
    b"agi_arg_2:\n"
    b"\n"
)
USAGE_520 = (
    b"520-Invalid command syntax.  Proper usage follows:\n"
    b" Usage: GET DATA <file to be streamed> [timeout] [max digits]\n"
    b"   Stream the given file, and receive DTMF data.\n"
    b"520 End of proper usage.\n"
)


def asterisk_parse_args(line: str) -> list[str]:
    """A port of res_agi.c `parse_args`: how Asterisk splits a command line into words."""
    args: list[str] = []
    quoted = escaped = False
    whitespace = True
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and whitespace:
                args.append("")
                whitespace = False
            continue
        if ch in " \t" and not quoted and not escaped:
            whitespace = True
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if whitespace:
            args.append("")
            whitespace = False
        args[-1] += ch
        escaped = False
    return args


def test_environment_parsed_after_blank_line() -> None:
    """The environment comes out once the blank line arrives, keys without the agi_ prefix."""
    codec = AgiCodec()
    assert codec.feed(HEADER[:-1]) == []
    assert not codec.header_complete
    [env] = codec.feed(b"\n")
    assert codec.header_complete
    assert isinstance(env, AgiEnvironment)
    assert env.variables["network_script"] == "inbound?x=1"
    assert env.variables["uniqueid"] == "1700000000.1"
    assert env.variables["calleridname"] == "Müller"
    assert env.variables["arg_1"] == "first arg"
    assert env.variables["arg_2"] == ""


def test_environment_then_replies_in_one_chunk() -> None:
    """Environment, a HANGUP notice and replies in one read come out in order."""
    messages = AgiCodec().feed(HEADER + b"HANGUP\n200 result=0\r\n")
    assert [type(m) for m in messages] == [AgiEnvironment, AgiHangupNotice, AgiReply]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("200 result=1", AgiReply(200, "1", None, {}, "200 result=1")),
        (
            "200 result=0 endpos=1234",
            AgiReply(200, "0", None, {"endpos": "1234"}, "200 result=0 endpos=1234"),
        ),
        (
            "200 result=1 (timeout) endpos=1234",
            AgiReply(200, "1", "timeout", {"endpos": "1234"}, "200 result=1 (timeout) endpos=1234"),
        ),
        ("200 result=12 (timeout)", AgiReply(200, "12", "timeout", {}, "200 result=12 (timeout)")),
        ("200 result= (timeout)", AgiReply(200, "", "timeout", {}, "200 result= (timeout)")),
        ("200 result=", AgiReply(200, "", None, {}, "200 result=")),
        ("200 result=-1", AgiReply(200, "-1", None, {}, "200 result=-1")),
        (
            "200 result=1 (a (b) c) d)",
            AgiReply(200, "1", "a (b) c) d", {}, "200 result=1 (a (b) c) d)"),
        ),
        ("200 result=1 ()", AgiReply(200, "1", "", {}, "200 result=1 ()")),
        (
            "510 Invalid or unknown command",
            AgiReply(510, "", None, {}, "510 Invalid or unknown command"),
        ),
        (
            "511 Command Not Permitted on a dead channel or intercept routine",
            AgiReply(
                511,
                "",
                None,
                {},
                "511 Command Not Permitted on a dead channel or intercept routine",
            ),
        ),
        ("520 Invalid command syntax.", AgiReply(520, "", None, {}, "520 Invalid command syntax.")),
    ],
)
def test_parse_reply(line: str, expected: AgiReply) -> None:
    """A reply line parses into code, result, data in parentheses and key=value extras."""
    assert parse_reply(line) == expected
    [reply] = AgiCodec().feed(HEADER + line.encode() + b"\n")[1:]
    assert reply == expected


@pytest.mark.parametrize(
    "line", ["garbage", "20 result=1", "200 no result", "200 result=1 (unclosed", "2000 x"]
)
def test_malformed_reply_raises(line: str) -> None:
    """A line that is no AGI reply raises ProtocolError instead of being guessed at."""
    with pytest.raises(ProtocolError):
        AgiCodec().feed(HEADER + line.encode() + b"\n")


def test_hangup_line_is_a_notice_not_a_reply() -> None:
    """Defect (panoramisk: HANGUP taken as the reply): a bare HANGUP line is its own message."""
    messages = AgiCodec().feed(HEADER + b"HANGUP\n511 Command Not Permitted\n")[1:]
    assert messages == [AgiHangupNotice(), parse_reply("511 Command Not Permitted")]


def test_multiline_520_is_one_reply() -> None:
    """Defect (panoramisk: 520 usage desynchronises): a 520- usage block is ONE reply."""
    messages = AgiCodec().feed(HEADER + USAGE_520 + b"200 result=1\n")[1:]
    assert len(messages) == 2
    usage, after = messages
    assert isinstance(usage, AgiReply)
    assert usage.code == 520
    assert usage.raw.splitlines()[0].startswith("520-Invalid command syntax")
    assert usage.raw.splitlines()[-1] == "520 End of proper usage."
    assert "Usage: GET DATA" in usage.raw
    assert after == parse_reply("200 result=1")


def test_line_over_cap_raises() -> None:
    """A line longer than max_line_bytes raises ProtocolError, with or without its newline."""
    with pytest.raises(ProtocolError):
        AgiCodec(max_line_bytes=32).feed(b"agi_x: " + b"y" * 40)
    with pytest.raises(ProtocolError):
        AgiCodec(max_line_bytes=32).feed(b"agi_x: " + b"y" * 40 + b"\n")


def test_header_count_over_cap_raises() -> None:
    """More environment lines than max_headers raise ProtocolError."""
    codec = AgiCodec(max_headers=3)
    with pytest.raises(ProtocolError, match="more than 3"):
        codec.feed(b"".join(b"agi_v%d: x\n" % i for i in range(4)))


@pytest.mark.parametrize("line", [b"no colon here\n", b"other_prefix: x\n"])
def test_malformed_environment_raises(line: bytes) -> None:
    """An environment line that is not `agi_name: value` raises ProtocolError."""
    with pytest.raises(ProtocolError):
        AgiCodec().feed(line)


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ("ANSWER", (), b"ANSWER\n"),
        ("STREAM FILE", ("welcome", ""), b'STREAM FILE "welcome" ""\n'),
        ("GET DATA", ("menu", "5000", "4"), b'GET DATA "menu" "5000" "4"\n'),
        ("SET VARIABLE", ("X", 'say "hi"'), b'SET VARIABLE "X" "say \\"hi\\""\n'),
        ("SET VARIABLE", ("X", "a\\b"), b'SET VARIABLE "X" "a\\\\b"\n'),
        ("VERBOSE", ("Müller", "3"), 'VERBOSE "Müller" "3"\n'.encode()),
    ],
)
def test_encode_command(command: str, args: tuple[str, ...], expected: bytes) -> None:
    """Every argument is double-quoted with backslash and quote escaped; the line ends in LF."""
    assert encode_command(command, *args) == expected


@pytest.mark.parametrize("arg", ["x\nHANGUP", "x\r\nEXEC Dial", "x\rY", "nul\0byte"])
def test_encode_command_rejects_line_breaks(arg: str) -> None:
    """Defect (panoramisk: unquoted args): CR, LF or NUL in an argument cannot inject a command."""
    with pytest.raises(ProtocolError):
        encode_command("SET VARIABLE", "CALLER", arg)


@pytest.mark.parametrize("command", ["answer", "", "EXEC\n", "SET VARIABLE;", "1ANSWER"])
def test_encode_command_rejects_bad_command(command: str) -> None:
    """Command words must be upper-case letters and spaces."""
    with pytest.raises(ProtocolError):
        encode_command(command)


def test_encode_command_rejects_line_asterisk_would_cut() -> None:
    """A line longer than Asterisk's AGI buffer is refused rather than cut in two."""
    with pytest.raises(ProtocolError, match="buffer"):
        encode_command("VERBOSE", "x" * MAX_COMMAND_BYTES)


@given(
    st.lists(
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\0")),
        max_size=5,
    )
)
def test_quoted_arguments_reach_asterisk_unchanged(args: list[str]) -> None:
    """Whatever the text (quotes, backslashes, spaces, empty), Asterisk's parser gets our args."""
    line = encode_command("SET VARIABLE", *args).decode()
    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert asterisk_parse_args(line[:-1]) == ["SET", "VARIABLE", *args]


@pytest.mark.parametrize(
    ("script", "route"),
    [
        ("inbound", "inbound"),
        ("inbound?x=1", "inbound"),
        ("/inbound/", "inbound"),
        ("ivr/main?lang=de&x=/y", "ivr/main"),
        ("agi://127.0.0.1/inbound?x=1", "inbound"),
        ("agi://controller:4573/ivr/main/", "ivr/main"),
        ("", ""),
    ],
)
def test_route_of_script(script: str, route: str) -> None:
    """Defect (panoramisk: ?query routes never match): the route drops the query and slashes."""
    assert route_of_script(script) == route


_reply_lines = st.sampled_from(
    [
        b"200 result=1\n",
        b"200 result=1 (timeout) endpos=1234\n",
        b"200 result=1 (M\xc3\xbcller \xe2\x82\xac)\n",
        b"HANGUP\n",
        b"510 Invalid or unknown command\n",
        b"511 Command Not Permitted on a dead channel or intercept routine\r\n",
        USAGE_520,
    ]
)


@given(
    replies=st.lists(_reply_lines, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=15),
)
def test_split_points_do_not_change_messages(replies: list[bytes], cuts: list[int]) -> None:
    """Splitting the AGI byte stream at arbitrary points yields the same messages."""
    stream = HEADER + b"".join(replies)
    whole = AgiCodec().feed(stream)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    codec = AgiCodec()
    split = [m for piece in pieces for m in codec.feed(piece)]
    assert split == whole
    assert len(whole) == 1 + len(replies)
