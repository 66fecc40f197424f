"""Sans-IO codec for the Asterisk Manager Interface (AMI).

`AmiCodec.feed(bytes)` returns the complete messages found so far; `encode_action(...)` builds one
action as bytes. The codec frames on the blank line (`\\r\\n\\r\\n`) *before* decoding, so a UTF-8
character split across two reads survives (panoramisk decodes each chunk with errors ignored and
loses it), and it caps what it buffers so a peer that never ends a message cannot exhaust memory.

    >>> codec = AmiCodec()
    >>> codec.feed(b"Asterisk Call Manager/9.0.0\\r\\nResponse: Success\\r\\nActionID: 1\\r\\n")
    []
    >>> [m.response for m in codec.feed(b"\\r\\n")], codec.banner
    (['Success'], 'Asterisk Call Manager/9.0.0')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

from acd.errors import ProtocolError

__all__ = [
    "BANNER_PREFIX",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "AmiCodec",
    "AmiMessage",
    "FieldValue",
    "encode_action",
]

BANNER_PREFIX = b"Asterisk Call Manager/"
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
_TERMINATOR = b"\r\n\r\n"
_EOL = b"\r\n"

FieldValue = str | int | Sequence[str]
_NO_FIELDS: Mapping[str, FieldValue] = MappingProxyType({})


@dataclass(frozen=True)
class AmiMessage:
    """One AMI message (response or event): header lines in order, names as Asterisk sent them.

    Headers may repeat (`Variable:` in some events, `Output:` in `Command` responses), so they are
    kept as pairs; lookups are case-insensitive because Asterisk modules disagree on spellings such
    as `ActionID` and `ActionId`.
    """

    fields: tuple[tuple[str, str], ...]

    @cached_property
    def _first(self) -> dict[str, str]:
        """The first value of each header, by its lower-cased name: built once, on the first
        lookup (an event is read several times on its way through the dispatcher)."""
        index: dict[str, str] = {}
        for key, value in self.fields:
            index.setdefault(key.lower(), value)
        return index

    def get(self, name: str, default: str | None = None) -> str | None:
        """Value of the first header called `name` (any case), else `default`."""
        return self._first.get(name.lower(), default)

    def get_all(self, name: str) -> list[str]:
        """Values of every header called `name` (any case), in order."""
        wanted = name.lower()
        return [value for key, value in self.fields if key.lower() == wanted]

    @property
    def is_event(self) -> bool:
        return self.get("Event") is not None

    @property
    def is_response(self) -> bool:
        return self.get("Response") is not None

    @property
    def event(self) -> str | None:
        return self.get("Event")

    @property
    def response(self) -> str | None:
        return self.get("Response")

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")

    def as_dict(self) -> dict[str, str]:
        """Headers as a dict; for a repeated header the first occurrence wins, as with `get`."""
        result: dict[str, str] = {}
        seen: set[str] = set()
        for key, value in self.fields:
            folded = key.lower()
            if folded not in seen:
                seen.add(folded)
                result[key] = value
        return result


def _parse_message(frame: bytes) -> AmiMessage:
    # Decode only whole frames: any multi-byte character is complete by now. `replace` keeps a bad
    # byte visible instead of silently dropping it.
    text = frame.decode("utf-8", errors="replace")
    fields: list[tuple[str, str]] = []
    for line in text.split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            # A header without a colon is not valid AMI but Asterisk modules have emitted free text
            # (old `Command` output); keep it under an empty name rather than lose it.
            fields.append(("", line))
            continue
        fields.append((name.strip(), value[1:] if value.startswith(" ") else value))
    return AmiMessage(tuple(fields))


class AmiCodec:
    """Turns the AMI byte stream into `AmiMessage`s; one instance per TCP connection.

    The first line Asterisk sends is the banner `Asterisk Call Manager/x.y.z` with no blank line
    after it; it is recognised only at the very start of the stream and exposed as `banner`.
    Everything after it is messages separated by an empty line.
    """

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self.banner: str | None = None
        self._buffer = bytearray()
        self._at_start = True
        # Where to resume looking for the terminator, so a message arriving in many small reads is
        # scanned once in total rather than once per read.
        self._search_from = 0

    def feed(self, data: bytes) -> list[AmiMessage]:
        """Buffer `data`; return every message it completes, in order.

        Raises ProtocolError when a message (or the banner) grows beyond `max_message_bytes`.
        """
        self._buffer += data
        if self._at_start and not self._take_banner():
            return []
        messages: list[AmiMessage] = []
        while True:
            end = self._buffer.find(_TERMINATOR, self._search_from)
            if end < 0:
                break
            if end > self.max_message_bytes:
                raise ProtocolError(f"AMI message of {end} bytes exceeds {self.max_message_bytes}")
            frame = bytes(self._buffer[:end])
            del self._buffer[: end + len(_TERMINATOR)]
            self._search_from = 0
            if frame.strip(b"\r\n"):
                messages.append(_parse_message(frame))
        if len(self._buffer) > self.max_message_bytes:
            raise ProtocolError(
                f"AMI message exceeds {self.max_message_bytes} bytes without an end"
            )
        # A terminator may straddle this read and the next: back up by its length minus one.
        self._search_from = max(0, len(self._buffer) - (len(_TERMINATOR) - 1))
        return messages

    def _take_banner(self) -> bool:
        """Consume the banner if the stream starts with one; False while that is still undecided."""
        head = bytes(self._buffer[: len(BANNER_PREFIX)])
        if not BANNER_PREFIX.startswith(head):
            # Not a banner (a codec fed from mid-stream, or the server side reading actions).
            self._at_start = False
            return True
        if len(head) < len(BANNER_PREFIX):
            return False
        end = self._buffer.find(_EOL)
        if end < 0:
            if len(self._buffer) > self.max_message_bytes:
                raise ProtocolError(f"AMI banner exceeds {self.max_message_bytes} bytes")
            return False
        self.banner = self._buffer[:end].decode("utf-8", errors="replace")
        del self._buffer[: end + len(_EOL)]
        self._at_start = False
        return True


def _check_header_text(name: str, text: str) -> None:
    if "\r" in text or "\n" in text:
        # A line break would end the header early and let the rest be read as new headers or a new
        # action: header injection. The text is not quoted in the error: it may be a secret.
        raise ProtocolError(f"AMI header {name!r} contains a line break")


def _field_values(name: str, value: FieldValue) -> list[str]:
    if isinstance(value, bool):
        # bool is an int; Asterisk's ast_true() wants words, and `True` would read oddly in logs.
        return ["true" if value else "false"]
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, str):
        return [value]
    values = list(value)
    for item in values:
        if not isinstance(item, str):
            raise ProtocolError(f"AMI header {name!r} has a non-string item {item!r}")
    return values


def encode_action(
    action: str,
    action_id: str,
    fields: Mapping[str, FieldValue] = _NO_FIELDS,
) -> bytes:
    """Build one AMI action as bytes; a sequence value becomes one header line per item.

    >>> action = encode_action("Originate", "a1", {"Async": True, "Variable": ["A=1", "B=2"]})
    >>> action.decode().split("\\r\\n")
    ['Action: Originate', 'ActionID: a1', 'Async: true', 'Variable: A=1', 'Variable: B=2', '', '']

    Raises ProtocolError for a CR or LF anywhere (header injection), for an empty name or one with a
    colon, and for fields that would override `Action` or `ActionID` (correlation depends on them).
    """
    lines: list[str] = []
    for key, text in (("Action", action), ("ActionID", action_id)):
        _check_header_text(key, text)
        if not text:
            raise ProtocolError(f"AMI {key} must not be empty")
        lines.append(f"{key}: {text}")
    for name, value in fields.items():
        if not name or ":" in name or "\r" in name or "\n" in name or name.strip() != name:
            raise ProtocolError(f"invalid AMI header name {name!r}")
        if name.lower() in ("action", "actionid"):
            raise ProtocolError(f"AMI header {name!r} is set by the client, not by fields")
        for item in _field_values(name, value):
            _check_header_text(name, item)
            lines.append(f"{name}: {item}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
