"""HTTP lookups for a flow's `lookup` node (e.g. an order's status by its number).

`LookupClient.lookup(service, params)` fills the service's URL template with validated, URL-quoted
caller input, makes one GET and reduces whatever happens to a `LookupResult`: `found` (200 with a
JSON object), `not_found` (404) or `failure` (anything else). It never raises for a network or
peer problem, because a caller in the IVR must always be sent somewhere (`on_failure`); only
cancellation propagates.

Every parameter value is caller input (DTMF digits, usually an order number): it must be 1 to 32
ASCII letters or digits, or no request is made. This holds for every value passed, including ones
the URL does not use, so a flow cannot carry odd input through by accident. Placeholders may only
appear after the host, so caller input can never choose where the request goes; a template that
breaks this, or has a malformed placeholder, is rejected when the client is built (`ConfigError`).

Values may be personal data, so logs carry their lengths, never the values.
"""

from __future__ import annotations

import asyncio
import errno
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import structlog

from acd.config import LookupService
from acd.errors import ConfigError

log = structlog.get_logger(__name__)

Outcome = Literal["found", "not_found", "failure"]

MAX_BODY = 64 * 1024  # bytes; an order status fits many times over, a runaway response does not
MAX_FIELDS = 32
MAX_VALUE = 200  # characters kept per value; enough for a status line, bounded for TTS and logs

_PARAM_VALUE = re.compile(r"[0-9A-Za-z]{1,32}")  # used with fullmatch: `$` would let "1\n" pass
_FIELD_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class LookupResult:
    """What a lookup came to. `data` is empty unless `outcome` is `found`; `detail` is a short
    reason for logs ("http 503", "timeout after 2.0s") and never contains caller input."""

    outcome: Outcome
    data: Mapping[str, str]
    detail: str


@dataclass(frozen=True)
class _Template:
    url: str
    placeholders: tuple[str, ...]
    timeout: float


def _compile(name: str, service: LookupService) -> _Template:
    """Check a service's URL template once, at start, so a typo never surfaces mid-call."""
    url = service.url
    rest = _PLACEHOLDER.sub("", url)
    if "{" in rest or "}" in rest:
        raise ConfigError(f"lookups.{name}.url: malformed placeholder (use {{name}})")
    scheme_end = url.index("://") + 3
    path_start = url.find("/", scheme_end)
    authority = url[scheme_end:] if path_start < 0 else url[scheme_end:path_start]
    if "{" in authority:
        raise ConfigError(
            f"lookups.{name}.url: placeholders are only allowed after the host, "
            "so caller input cannot choose where the request goes"
        )
    return _Template(
        url=url,
        placeholders=tuple(dict.fromkeys(_PLACEHOLDER.findall(url))),
        timeout=service.timeout,
    )


def _render(template: _Template, params: Mapping[str, str]) -> str | LookupResult:
    """The request URL, or the failure that forbids making the request."""
    for key, value in params.items():
        if not isinstance(value, str) or not _PARAM_VALUE.fullmatch(value):
            return LookupResult("failure", {}, f"invalid parameter {key}")
    for key in template.placeholders:
        if key not in params:
            return LookupResult("failure", {}, f"missing parameter {key}")
    # The values are already restricted to letters and digits; quoting anyway keeps the URL safe
    # should that rule ever be relaxed.
    return _PLACEHOLDER.sub(lambda m: quote(params[m.group(1)], safe=""), template.url)


def _fields(document: Mapping[str, Any]) -> dict[str, str]:
    """The object's top-level scalars as strings, shaped for flow variables.

    >>> _fields({"status": "shipped", "eta_days": 2, "gift": False, "note": None, "Bad": "x"})
    {'status': 'shipped', 'eta_days': '2', 'gift': 'false'}
    """
    out: dict[str, str] = {}
    for key, value in document.items():
        if len(out) >= MAX_FIELDS:
            break
        if not _FIELD_KEY.fullmatch(key):
            continue
        if isinstance(value, bool):  # before int: bool is an int subclass
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:  # null, lists and nested objects have no place in a flow variable
            continue
        out[key] = text[:MAX_VALUE]
    return out


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which are not JSON.
    raise ValueError(f"not JSON: {name}")


def _parse(body: bytes) -> LookupResult:
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad syntax and over-long integers; RecursionError a
        # deeply nested body, which fits easily in MAX_BODY.
        return LookupResult("failure", {}, "invalid json")
    if not isinstance(document, dict):
        return LookupResult("failure", {}, "json is not an object")
    return LookupResult("found", _fields(document), "http 200")


async def _read_capped(response: aiohttp.ClientResponse) -> bytes | None:
    """The body, or None once it grows past MAX_BODY (the rest is never read)."""
    if response.content_length is not None and response.content_length > MAX_BODY:
        return None
    body = bytearray()
    while chunk := await response.content.read(MAX_BODY + 1 - len(body)):
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return bytes(body)


def _connection_detail(exc: aiohttp.ClientError | OSError) -> str:
    # Exception texts can include the URL, hence caller input: only classes and errnos go out.
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns lookup failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if exc.os_error.errno == errno.ECONNREFUSED:
            return "connection refused"
        return f"connect failed ({type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"connection error ({type(exc).__name__})"


class LookupClient:
    """Runs lookups for the configured services over one lazily created HTTP session.

    The session is created on first use inside the running loop. `close()` releases it; a lookup
    after `close()` opens a fresh session, so closing is always safe and never breaks a late call.
    Redirects are not followed (a 3xx is a failure) and no cookies are kept between lookups.
    """

    def __init__(self, services: Mapping[str, LookupService]) -> None:
        self._templates = {name: _compile(name, svc) for name, svc in services.items()}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # No await between the check and the assignment, so concurrent lookups share one session.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"Accept": "application/json", "User-Agent": "acd-lookup"},
            )
        return self._session

    async def lookup(self, service: str, params: Mapping[str, str]) -> LookupResult:
        """Query `service` with `params`; every problem becomes a `failure` result."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        status: int | None = None
        template = self._templates.get(service)
        if template is None:
            # Flows are checked against the configured services at load: this is only defensive.
            result = LookupResult("failure", {}, f"unknown service {service}")
        else:
            rendered = _render(template, params)
            if isinstance(rendered, LookupResult):
                result = rendered
            else:
                status, result = await self._fetch(rendered, template)
        log.info(
            "lookup.done",
            service=service,
            outcome=result.outcome,
            status=status,
            detail=result.detail,
            elapsed_ms=round((loop.time() - started) * 1000),
            param_lengths={k: len(v) if isinstance(v, str) else None for k, v in params.items()},
        )
        return result

    async def _fetch(self, url: str, template: _Template) -> tuple[int | None, LookupResult]:
        # aiohttp's total timeout covers connecting, sending and reading the body.
        timeout = template.timeout
        status: int | None = None
        try:
            async with self._client().get(
                url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                status = response.status
                if status == 404:
                    return status, LookupResult("not_found", {}, "http 404")
                if status != 200:
                    return status, LookupResult("failure", {}, f"http {status}")
                body = await _read_capped(response)
        except TimeoutError:
            # Also covers aiohttp's own timeout errors, which subclass TimeoutError.
            return status, LookupResult("failure", {}, f"timeout after {timeout}s")
        except (aiohttp.ClientError, OSError) as exc:
            return status, LookupResult("failure", {}, _connection_detail(exc))
        if body is None:
            return status, LookupResult("failure", {}, f"body over {MAX_BODY} bytes")
        return status, _parse(body)

    async def close(self) -> None:
        """Release the HTTP session; a later lookup opens a new one."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
