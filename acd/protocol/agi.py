"""Sans-IO codec for Asterisk's AGI protocol as spoken over FastAGI.

Asterisk opens the connection and writes the channel environment (`agi_name: value` lines ended by a
blank line); after that every command we write gets exactly one reply. `AgiCodec.feed(bytes)` turns
the stream into an `AgiEnvironment` followed by `AgiReply`s and `AgiHangupNotice`s, and
`encode_command(...)` builds a command line with every argument quoted.

Two stream quirks that desynchronise naive clients (panoramisk among them) are handled here, where
they can be tested without sockets:
- Asterisk writes a bare `HANGUP` line into the stream when the caller hangs up; it is not a reply.
- A `520-` usage reply spans several lines up to `520 End of proper usage.`; it is one reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from acd.errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_LINE_BYTES",
    "MAX_COMMAND_BYTES",
    "AgiCodec",
    "AgiEnvironment",
    "AgiHangupNotice",
    "AgiMessage",
    "AgiReply",
    "encode_command",
    "parse_reply",
    "route_of_script",
]

DEFAULT_MAX_LINE_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 512
# res_agi reads a command into a buffer of AGI_BUF_LEN (2048) bytes, newline included; a longer line
# would be cut and the rest read as the next command.
MAX_COMMAND_BYTES = 2048

_COMMAND_RE = re.compile(r"[A-Z][A-Z ]*")
_REPLY_RE = re.compile(r"^(\d{3})(?:([ -])(.*))?$", re.DOTALL)
_RESULT_RE = re.compile(r"^result=(\S*)")


@dataclass(frozen=True)
class AgiEnvironment:
    """The channel environment Asterisk sends first; keys without the `agi_` prefix."""

    variables: dict[str, str]


@dataclass(frozen=True)
class AgiReply:
    """One reply: `200 result=1 (timeout) endpos=1234` -> code 200, result "1", data "timeout",
    extra {"endpos": "1234"}. A multi-line reply's `raw` holds all its lines joined by newlines."""

    code: int
    result: str
    data: str | None
    extra: dict[str, str] = field(default_factory=dict)
    raw: str = ""


@dataclass(frozen=True)
class AgiHangupNotice:
    """The bare `HANGUP` line Asterisk writes when the channel hangs up; not a reply to anything."""


AgiMessage = AgiEnvironment | AgiReply | AgiHangupNotice


def parse_reply(raw: str) -> AgiReply:
    """Parse one reply; `raw` is a single line, or all lines of a multi-line reply joined by "\\n".

    Data in parentheses may itself contain parentheses and spaces (GET VARIABLE returns the value
    verbatim), so it runs to the *last* closing parenthesis; what follows is key=value pairs.
    """
    match = _REPLY_RE.match(raw)
    if match is None:
        raise ProtocolError(f"malformed AGI reply {raw[:200]!r}")
    code = int(match.group(1))
    rest = match.group(3) or ""
    if code != 200 or match.group(2) == "-":
        return AgiReply(code=code, result="", data=None, extra={}, raw=raw)
    result_match = _RESULT_RE.match(rest)
    if result_match is None:
        raise ProtocolError(f"AGI 200 reply without result= {raw[:200]!r}")
    result = result_match.group(1)
    tail = rest[result_match.end() :].lstrip(" ")
    data: str | None = None
    if tail.startswith("("):
        close = tail.rfind(")")
        if close < 0:
            raise ProtocolError(f"unbalanced parenthesis in AGI reply {raw[:200]!r}")
        data = tail[1:close]
        tail = tail[close + 1 :]
    extra: dict[str, str] = {}
    for token in tail.split():
        key, sep, value = token.partition("=")
        if sep:
            extra[key] = value
    return AgiReply(code=code, result=result, data=data, extra=extra, raw=raw)


class AgiCodec:
    """Turns the bytes Asterisk writes on a FastAGI connection into messages; one per connection.

    Caps: a line longer than `max_line_bytes` or more than `max_headers` environment lines raise
    ProtocolError, so a peer that never sends a newline cannot make us buffer without bound.
    """

    def __init__(
        self,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_headers = max_headers
        self.header_complete = False
        self._buffer = bytearray()
        self._search_from = 0
        self._headers: dict[str, str] = {}
        self._header_lines = 0
        # Lines of a multi-line reply read so far, and the code that ends it.
        self._continuation: list[str] = []
        self._continuation_code: str | None = None

    def feed(self, data: bytes) -> list[AgiMessage]:
        """Buffer `data`; return every message it completes, in order."""
        self._buffer += data
        messages: list[AgiMessage] = []
        while True:
            end = self._buffer.find(b"\n", self._search_from)
            if end < 0:
                break
            if end > self.max_line_bytes:
                raise ProtocolError(f"AGI line of {end} bytes exceeds {self.max_line_bytes}")
            raw_line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._search_from = 0
            # Decode after framing so a multi-byte character split across reads stays whole.
            line = raw_line.decode("utf-8", errors="replace").rstrip("\r")
            message = self._on_line(line)
            if message is not None:
                messages.append(message)
        if len(self._buffer) > self.max_line_bytes:
            raise ProtocolError(f"AGI line exceeds {self.max_line_bytes} bytes without an end")
        self._search_from = len(self._buffer)
        return messages

    def _on_line(self, line: str) -> AgiMessage | None:
        if not self.header_complete:
            return self._on_header_line(line)
        if self._continuation_code is not None:
            self._continuation.append(line)
            if line == self._continuation_code or line.startswith(self._continuation_code + " "):
                raw = "\n".join(self._continuation)
                self._continuation = []
                self._continuation_code = None
                return AgiReply(code=int(raw[:3]), result="", data=None, extra={}, raw=raw)
            if len(self._continuation) > self.max_headers:
                raise ProtocolError("AGI multi-line reply has too many lines")
            return None
        if not line:
            return None
        if line == "HANGUP":
            return AgiHangupNotice()
        if len(line) >= 4 and line[:3].isdigit() and line[3] == "-":
            self._continuation = [line]
            self._continuation_code = line[:3]
            return None
        return parse_reply(line)

    def _on_header_line(self, line: str) -> AgiEnvironment | None:
        if not line:
            if not self._headers:
                # Tolerate blank lines before the first header rather than report an empty env.
                return None
            self.header_complete = True
            return AgiEnvironment(variables=dict(self._headers))
        self._header_lines += 1
        if self._header_lines > self.max_headers:
            raise ProtocolError(f"AGI environment has more than {self.max_headers} lines")
        name, sep, value = line.partition(":")
        if not sep or not name.startswith("agi_"):
            raise ProtocolError(f"malformed AGI environment line {line[:200]!r}")
        self._headers[name.removeprefix("agi_")] = value.strip(" ")
        return None


def _quote(arg: str) -> str:
    if "\r" in arg or "\n" in arg or "\0" in arg:
        # res_agi reads one command per line: a newline in caller-supplied data would end this
        # command and let the rest run as another one.
        # The argument is not quoted in the error: it is caller data.
        raise ProtocolError("AGI argument contains CR, LF or NUL")
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def encode_command(command: str, *args: str) -> bytes:
    """Build one AGI command line; every argument double-quoted with `\\` and `"` escaped.

    >>> encode_command("STREAM FILE", "welcome", "")
    b'STREAM FILE "welcome" ""\\n'

    Asterisk's argument parser (res_agi `parse_args`) drops the quotes and the escaping backslashes,
    and a quoted empty string stays an argument. Raises ProtocolError for a command that is not
    upper-case words, for CR/LF/NUL in an argument, and for a line Asterisk's buffer would cut.
    """
    if not _COMMAND_RE.fullmatch(command):
        raise ProtocolError(f"invalid AGI command {command!r}")
    line = " ".join([command.strip(), *(_quote(arg) for arg in args)]) + "\n"
    encoded = line.encode("utf-8")
    if len(encoded) >= MAX_COMMAND_BYTES:
        raise ProtocolError(f"AGI command of {len(encoded)} bytes exceeds Asterisk's buffer")
    return encoded


def route_of_script(script: str) -> str:
    """The route name of an `agi_network_script` (or a whole `agi_request` URL).

    >>> route_of_script("inbound?x=1"), route_of_script("agi://127.0.0.1:4573/ivr/main/?a=b")
    ('inbound', 'ivr/main')
    """
    path = script.split("?", 1)[0]
    scheme, sep, rest = path.partition("://")
    if sep and "/" not in scheme:
        path = rest.partition("/")[2]
    return path.strip("/")
