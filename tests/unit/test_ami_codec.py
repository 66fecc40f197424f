"""AMI codec: framing, banner, decoding after framing, size caps, and action encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acd.errors import ProtocolError
from acd.protocol.ami import AmiCodec, AmiMessage, encode_action

BANNER = b"Asterisk Call Manager/9.0.0\r\n"


def fields_of(messages: list[AmiMessage]) -> list[tuple[tuple[str, str], ...]]:
    return [m.fields for m in messages]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(
            b"Response: Success\r\nActionID: 1\r\nMessage: Pong\r\n\r\n",
            [(("Response", "Success"), ("ActionID", "1"), ("Message", "Pong"))],
            id="one-response",
        ),
        pytest.param(
            b"Event: A\r\n\r\nEvent: B\r\nX: 1\r\n\r\n",
            [(("Event", "A"),), (("Event", "B"), ("X", "1"))],
            id="two-events-one-chunk",
        ),
        pytest.param(
            b"Event: Newexten\r\nAppData: Set(X=a:b)\r\nTimestamp: 12:34:56\r\n\r\n",
            [(("Event", "Newexten"), ("AppData", "Set(X=a:b)"), ("Timestamp", "12:34:56"))],
            id="colons-in-value",
        ),
        pytest.param(
            b"Event: VarSet\r\nValue:\r\nOther: \r\n\r\n",
            [(("Event", "VarSet"), ("Value", ""), ("Other", ""))],
            id="empty-values",
        ),
        pytest.param(
            b"Response: Success\r\nOutput: line 1\r\nOutput: line 2\r\n\r\n",
            [(("Response", "Success"), ("Output", "line 1"), ("Output", "line 2"))],
            id="repeated-header",
        ),
        pytest.param(b"Event: Partial\r\nX: 1\r\n", [], id="incomplete-message"),
        pytest.param(
            b"Response: Follows\r\nfree text line\r\n\r\n",
            [(("Response", "Follows"), ("", "free text line"))],
            id="line-without-colon-kept",
        ),
        pytest.param(
            b"Event: Bad\r\nName: \xff\xfe\r\n\r\n",
            [(("Event", "Bad"), ("Name", "\ufffd\ufffd"))],
            id="invalid-utf8-replaced-not-dropped",
        ),
    ],
)
def test_feed_frames_messages(stream: bytes, expected: list[tuple[tuple[str, str], ...]]) -> None:
    """A byte stream decodes to the listed messages, headers in order with values verbatim."""
    assert fields_of(AmiCodec().feed(stream)) == expected


def test_banner_is_taken_once_at_start() -> None:
    """The banner line is exposed as `banner` and is not parsed as (part of) a message."""
    codec = AmiCodec()
    messages = codec.feed(BANNER + b"Response: Success\r\n\r\n")
    assert codec.banner == "Asterisk Call Manager/9.0.0"
    assert fields_of(messages) == [(("Response", "Success"),)]


def test_banner_split_across_reads() -> None:
    """A banner arriving in pieces is still recognised, however the reads fall."""
    codec = AmiCodec()
    assert codec.feed(b"Aster") == []
    assert codec.feed(b"isk Call Manager/9.") == []
    assert codec.banner is None
    assert codec.feed(b"0.0\r\nEvent: X\r\n\r\n")[0].event == "X"
    assert codec.banner == "Asterisk Call Manager/9.0.0"


def test_stream_without_banner_starting_with_a() -> None:
    """A stream that starts with `Action:` (the server side) is not mistaken for a banner."""
    codec = AmiCodec()
    assert codec.feed(b"A") == []
    messages = codec.feed(b"ction: Ping\r\nActionID: 7\r\n\r\n")
    assert codec.banner is None
    assert messages[0].get("Action") == "Ping"


def test_utf8_character_split_across_reads_survives() -> None:
    """Defect (panoramisk: decode before framing): a UTF-8 character split across reads survives."""
    data = "Event: Newchannel\r\nCallerIDName: Müller €\r\n\r\n".encode()
    cut = data.index("ü".encode()) + 1
    codec = AmiCodec()
    assert codec.feed(data[:cut]) == []
    [message] = codec.feed(data[cut:])
    assert message.get("CallerIDName") == "Müller €"


def test_message_without_end_over_cap_raises() -> None:
    """A peer that never ends a message hits the size cap (ProtocolError), not unbounded memory."""
    codec = AmiCodec(max_message_bytes=64)
    codec.feed(b"Event: Big\r\n")
    with pytest.raises(ProtocolError, match="exceeds"):
        codec.feed(b"X: " + b"a" * 80)


def test_complete_message_over_cap_raises() -> None:
    """A complete message larger than the cap is refused too."""
    codec = AmiCodec(max_message_bytes=64)
    with pytest.raises(ProtocolError):
        codec.feed(b"Event: Big\r\nX: " + b"a" * 80 + b"\r\n\r\n")


def test_banner_over_cap_raises() -> None:
    """A banner line that never ends is capped as well."""
    codec = AmiCodec(max_message_bytes=64)
    with pytest.raises(ProtocolError, match="banner"):
        codec.feed(b"Asterisk Call Manager/" + b"9" * 80)


def test_messages_under_cap_in_one_big_chunk_pass() -> None:
    """The cap is per message: many small messages in one read are fine."""
    codec = AmiCodec(max_message_bytes=64)
    chunk = b"Event: Small\r\nX: 1\r\n\r\n" * 50
    assert len(codec.feed(chunk)) == 50


def test_message_accessors() -> None:
    """get is case-insensitive and first-wins; get_all, as_dict and the kind properties agree."""
    msg = AmiMessage(
        (
            ("Event", "OriginateResponse"),
            ("ActionId", "a.1"),
            ("Response", "Success"),
            ("Variable", "A=1"),
            ("variable", "B=2"),
        )
    )
    assert msg.get("actionid") == "a.1"
    assert msg.action_id == "a.1"
    assert msg.get("Missing") is None
    assert msg.get("Missing", "dflt") == "dflt"
    assert msg.get_all("VARIABLE") == ["A=1", "B=2"]
    assert msg.as_dict() == {
        "Event": "OriginateResponse",
        "ActionId": "a.1",
        "Response": "Success",
        "Variable": "A=1",
    }
    assert msg.is_event
    assert msg.is_response
    assert msg.event == "OriginateResponse"
    assert msg.response == "Success"
    plain = AmiMessage((("Response", "Error"),))
    assert not plain.is_event
    assert plain.event is None


@pytest.mark.parametrize(
    ("fields", "expected_lines"),
    [
        pytest.param({}, [], id="no-fields"),
        pytest.param({"Channel": "PJSIP/100"}, ["Channel: PJSIP/100"], id="string"),
        pytest.param({"Timeout": 30000}, ["Timeout: 30000"], id="int"),
        pytest.param({"Async": True, "Early": False}, ["Async: true", "Early: false"], id="bool"),
        pytest.param(
            {"Variable": ["A=1", "B=2"]}, ["Variable: A=1", "Variable: B=2"], id="sequence"
        ),
        pytest.param({"Variable": ()}, [], id="empty-sequence"),
        pytest.param({"CallerID": '"Müller" <100>'}, ['CallerID: "Müller" <100>'], id="utf8"),
    ],
)
def test_encode_action(fields: dict[str, object], expected_lines: list[str]) -> None:
    """An action is Action and ActionID first, then one line per value, then a blank line."""
    data = encode_action("Originate", "x.1", fields)  # type: ignore[arg-type]
    lines = ["Action: Originate", "ActionID: x.1", *expected_lines]
    assert data == ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("action", "fields"),
    [
        pytest.param("Ping\r\nAction: Logoff", {}, id="crlf-in-action"),
        pytest.param("Setvar", {"Value": "x\r\nAction: Hangup"}, id="crlf-in-value"),
        pytest.param("Setvar", {"Value": "x\nAction: Hangup"}, id="lf-in-value"),
        pytest.param("Setvar", {"Value": "x\rY: 1"}, id="cr-in-value"),
        pytest.param("Setvar", {"Variable": ["A=1", "B=2\r\nAction: Hangup"]}, id="in-sequence"),
        pytest.param("Setvar", {"Na\nme": "x"}, id="lf-in-name"),
        pytest.param("Setvar", {"Na: me": "x"}, id="colon-in-name"),
        pytest.param("Setvar", {"": "x"}, id="empty-name"),
        pytest.param("Setvar", {"ActionID": "other"}, id="override-actionid"),
        pytest.param("", {}, id="empty-action"),
    ],
)
def test_encode_action_rejects_injection(action: str, fields: dict[str, object]) -> None:
    """Any CR/LF in a name or value, or a bad name, raises ProtocolError (header injection)."""
    with pytest.raises(ProtocolError):
        encode_action(action, "x.1", fields)  # type: ignore[arg-type]


def test_encoded_action_decodes_back() -> None:
    """What encode_action writes, the codec reads back as the same headers."""
    data = encode_action("Setvar", "a.9", {"Variable": "NAME", "Value": "Jürgen: 1"})
    [message] = AmiCodec().feed(data)
    assert message.fields == (
        ("Action", "Setvar"),
        ("ActionID", "a.9"),
        ("Variable", "NAME"),
        ("Value", "Jürgen: 1"),
    )


_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,11}", fullmatch=True)
_values = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=20)
_messages = st.lists(st.tuples(_names, _values), min_size=1, max_size=5)


@given(
    banner=st.booleans(),
    messages=st.lists(_messages, min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_split_points_do_not_change_messages(
    banner: bool, messages: list[list[tuple[str, str]]], cuts: list[int]
) -> None:
    """Splitting the stream at arbitrary points (mid-character too) yields the same messages."""
    stream = (BANNER if banner else b"") + b"".join(
        "".join(f"{k}: {v}\r\n" for k, v in m).encode() + b"\r\n" for m in messages
    )
    whole_codec = AmiCodec()
    whole = whole_codec.feed(stream)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    split_codec = AmiCodec()
    split = [m for piece in pieces for m in split_codec.feed(piece)]
    assert split == whole
    assert [list(m.fields) for m in whole] == [[(k, v) for k, v in m] for m in messages]
    assert split_codec.banner == whole_codec.banner
