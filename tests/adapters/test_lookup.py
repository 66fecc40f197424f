"""LookupClient against real HTTP servers on 127.0.0.1:0: the example order service, and a scripted
peer that misbehaves on purpose (errors, stalls, bad bodies, redirects, cookies).

The peer records every request it receives, so a test can prove that rejected input never left the
process, and can wait for a request to arrive instead of sleeping."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from acd.adapters.lookup import MAX_BODY, LookupClient, LookupResult
from acd.config import LookupService
from acd.errors import ConfigError
from examples.order_service import DEFAULT_DATA, build_app, load_orders

pytestmark = pytest.mark.timeout(10)

STEP = 2.0  # seconds any single awaited step may take before the test fails
SHORT = 0.2  # a service timeout short enough to keep the timeout tests fast
VALID_RE = re.compile(r"[0-9A-Za-z]{1,32}")
VALID = st.from_regex(VALID_RE, fullmatch=True)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 with a free port; yields the base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class Peer:
    """A scripted HTTP peer. `bodies[name]` is served at /body/{name} with status 200."""

    def __init__(self) -> None:
        self.base = ""
        self.seen: list[str] = []
        self.arrivals: asyncio.Queue[str] = asyncio.Queue()
        self.bodies: dict[str, bytes] = {}
        self.release = asyncio.Event()  # set at teardown so stalled handlers can finish

    async def arrived(self, path: str) -> None:
        """Wait until the peer has received a request for `path`."""
        async with asyncio.timeout(STEP):
            while (got := await self.arrivals.get()) != path:
                pass
        assert got == path

    def app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.seen.append(request.raw_path)
            self.arrivals.put_nowait(request.raw_path)
            return await handler(request)

        async def status(request: web.Request) -> web.Response:
            return web.json_response({"status": "x"}, status=int(request.match_info["code"]))

        async def body(request: web.Request) -> web.Response:
            return web.Response(body=self.bodies[request.match_info["name"]])

        async def chunked(request: web.Request) -> web.StreamResponse:
            # No Content-Length: the size limit must hold while reading, not only up front.
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b'{"pad": "')
            for _ in range(MAX_BODY // 1024 + 1):
                await response.write(b"x" * 1024)
            await response.write(b'"}')
            await response.write_eof()
            return response

        async def stall_headers(_: web.Request) -> web.Response:
            await self.release.wait()
            return web.json_response({"status": "late"})

        async def stall_body(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b'{"status": ')
            await self.release.wait()
            return response

        async def redirect(_: web.Request) -> web.Response:
            raise web.HTTPFound("/body/target")

        async def echo(request: web.Request) -> web.Response:
            return web.json_response(
                {"value": request.match_info["value"], "raw_path": request.raw_path}
            )

        async def cookie(request: web.Request) -> web.Response:
            response = web.json_response({"cookie": request.headers.get("Cookie", "none")})
            response.set_cookie("session", "abc")
            return response

        app = web.Application(middlewares=[record])
        app.router.add_get("/status/{code}", status)
        app.router.add_get("/body/{name}", body)
        app.router.add_get("/chunked", chunked)
        app.router.add_get("/stall-headers", stall_headers)
        app.router.add_get("/stall-body", stall_body)
        app.router.add_get("/redirect", redirect)
        app.router.add_get("/echo/{value}", echo)
        app.router.add_get("/cookie", cookie)
        return app


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    """The scripted peer, serving until the test ends."""
    p = Peer()
    async with running(p.app()) as base:
        p.base = base
        yield p
        p.release.set()


@pytest.fixture
async def orders_base() -> AsyncIterator[str]:
    """The example order service over the sample CSV."""
    async with running(build_app(load_orders(DEFAULT_DATA))) as base:
        yield base


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., LookupClient]]:
    """Builds LookupClients from `name=url` or `name=(url, timeout)`; closes them at the end."""
    made: list[LookupClient] = []

    def make(**services: str | tuple[str, float]) -> LookupClient:
        config = {
            name: LookupService(url=s)
            if isinstance(s, str)
            else LookupService(url=s[0], timeout=s[1])
            for name, s in services.items()
        }
        client = LookupClient(config)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- outcomes against the example service --------------------------------------------------


async def test_known_order_is_found_with_its_fields_as_strings(
    orders_base: str, clients: Callable[..., LookupClient]
) -> None:
    """A 200 JSON object is `found`, its scalars turned into strings for flow variables."""
    client = clients(orders=f"{orders_base}/orders/{{order}}")
    result = await client.lookup("orders", {"order": "12345678"})
    assert result == LookupResult(
        "found", {"order": "12345678", "status": "shipped", "eta_days": "2"}, "http 200"
    )


async def test_null_fields_are_left_out(
    orders_base: str, clients: Callable[..., LookupClient]
) -> None:
    """A JSON null (a delivered order has no ETA) sets no variable rather than an empty one."""
    client = clients(orders=f"{orders_base}/orders/{{order}}")
    result = await client.lookup("orders", {"order": "34567890"})
    assert result.outcome == "found"
    assert dict(result.data) == {"order": "34567890", "status": "delivered"}


async def test_unknown_order_is_not_found(
    orders_base: str, clients: Callable[..., LookupClient]
) -> None:
    """A 404 is `not_found` with no data, so the flow can say the order does not exist."""
    client = clients(orders=f"{orders_base}/orders/{{order}}")
    result = await client.lookup("orders", {"order": "99999999"})
    assert result == LookupResult("not_found", {}, "http 404")


async def test_concurrent_lookups_share_the_client(
    orders_base: str, clients: Callable[..., LookupClient]
) -> None:
    """Many lookups at once on one client each get their own answer."""
    client = clients(orders=f"{orders_base}/orders/{{order}}")
    numbers = ["12345678", "23456789", "45678901", "99999999"] * 5
    results = await asyncio.gather(*(client.lookup("orders", {"order": n}) for n in numbers))
    assert [r.data.get("status") for r in results[:4]] == [
        "shipped",
        "processing",
        "cancelled",
        None,
    ]
    assert [r.outcome for r in results] == ["found", "found", "found", "not_found"] * 5


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [201, 204, 400, 401, 500, 503])
async def test_any_status_but_200_and_404_is_a_failure(
    peer: Peer, clients: Callable[..., LookupClient], code: int
) -> None:
    """Statuses other than 200 and 404 are failures naming the status, even with a JSON body."""
    client = clients(svc=f"{peer.base}/status/{{code}}")
    result = await client.lookup("svc", {"code": str(code)})
    assert result == LookupResult("failure", {}, f"http {code}")


async def test_redirect_is_not_followed(peer: Peer, clients: Callable[..., LookupClient]) -> None:
    """A 3xx is a failure and its target is never requested."""
    peer.bodies["target"] = b'{"status": "shipped"}'
    client = clients(svc=f"{peer.base}/redirect?x={{x}}")
    result = await client.lookup("svc", {"x": "1"})
    assert result == LookupResult("failure", {}, "http 302")
    assert peer.seen == ["/redirect?x=1"]


async def test_slow_headers_time_out(peer: Peer, clients: Callable[..., LookupClient]) -> None:
    """A service that does not answer within its timeout is a failure naming the timeout."""
    client = clients(svc=(f"{peer.base}/stall-headers?x={{x}}", SHORT))
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await client.lookup("svc", {"x": "1"})
    assert result == LookupResult("failure", {}, f"timeout after {SHORT}s")
    assert loop.time() - started < SHORT + 1.0


async def test_slow_body_times_out(peer: Peer, clients: Callable[..., LookupClient]) -> None:
    """The timeout covers reading the body too, not only waiting for the headers."""
    client = clients(svc=(f"{peer.base}/stall-body?x={{x}}", SHORT))
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await client.lookup("svc", {"x": "1"})
    assert result == LookupResult("failure", {}, f"timeout after {SHORT}s")
    assert loop.time() - started < SHORT + 1.0


async def test_connection_refused_is_a_failure(clients: Callable[..., LookupClient]) -> None:
    """Nothing listening is a failure, not an exception."""
    client = clients(svc=f"http://127.0.0.1:{free_port()}/orders/{{order}}")
    result = await client.lookup("svc", {"order": "12345678"})
    assert result == LookupResult("failure", {}, "connection refused")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(b"{not json", "invalid json", id="syntax"),
        pytest.param(b"", "invalid json", id="empty"),
        pytest.param(b'{"status": "\xff"}', "invalid json", id="bad-utf8"),
        pytest.param(b'{"eta_days": NaN}', "invalid json", id="nan"),
        pytest.param(b"[" * 30_000 + b"]" * 30_000, "invalid json", id="deep-nesting"),
        pytest.param(b"[1, 2]", "json is not an object", id="list"),
        pytest.param(b'"shipped"', "json is not an object", id="string"),
        pytest.param(b"null", "json is not an object", id="null"),
        pytest.param(
            b'{"pad": "' + b"x" * MAX_BODY + b'"}', f"body over {MAX_BODY} bytes", id="oversized"
        ),
    ],
)
async def test_a_200_without_a_usable_json_object_is_a_failure(
    peer: Peer, clients: Callable[..., LookupClient], body: bytes, detail: str
) -> None:
    """Bodies that are not a JSON object within the size limit are failures, never exceptions."""
    peer.bodies["b"] = body
    client = clients(svc=f"{peer.base}/body/{{name}}")
    assert await client.lookup("svc", {"name": "b"}) == LookupResult("failure", {}, detail)


async def test_oversized_chunked_body_is_cut_off(
    peer: Peer, clients: Callable[..., LookupClient]
) -> None:
    """Without a Content-Length the size limit is enforced while reading."""
    client = clients(svc=f"{peer.base}/chunked?x={{x}}")
    result = await client.lookup("svc", {"x": "1"})
    assert result == LookupResult("failure", {}, f"body over {MAX_BODY} bytes")


async def test_body_of_exactly_the_limit_is_accepted(
    peer: Peer, clients: Callable[..., LookupClient]
) -> None:
    """The limit is inclusive: a body of exactly MAX_BODY bytes is read and parsed."""
    head, tail = b'{"status": "ok", "pad": "', b'"}'
    peer.bodies["b"] = head + b"x" * (MAX_BODY - len(head) - len(tail)) + tail
    assert len(peer.bodies["b"]) == MAX_BODY
    client = clients(svc=f"{peer.base}/body/{{name}}")
    result = await client.lookup("svc", {"name": "b"})
    assert result.outcome == "found"
    assert result.data["status"] == "ok"


async def test_fields_are_shaped_for_flow_variables(
    peer: Peer, clients: Callable[..., LookupClient]
) -> None:
    """Booleans become true/false; nulls, nesting and odd keys are dropped; sizes are capped."""
    document: dict[str, object] = {
        "paid": True,
        "gift": False,
        "total": 12.5,
        "items": 3,
        "note": None,
        "lines": [1, 2],
        "address": {"city": "x"},
        "Status": "upper-case key",
        "9lives": "leading digit",
        "with-dash": "dash",
        "k" * 33: "key too long",
        "long": "y" * 500,
    }
    document.update({f"f{i:02d}": str(i) for i in range(40)})
    peer.bodies["b"] = json.dumps(document).encode()
    client = clients(svc=f"{peer.base}/body/{{name}}")
    result = await client.lookup("svc", {"name": "b"})
    assert result.outcome == "found"
    expected = {"paid": "true", "gift": "false", "total": "12.5", "items": "3", "long": "y" * 200}
    expected.update({f"f{i:02d}": str(i) for i in range(32 - len(expected))})
    assert dict(result.data) == expected


async def test_cookies_are_not_kept_between_lookups(
    peer: Peer, clients: Callable[..., LookupClient]
) -> None:
    """A cookie set by the service is not sent back: lookups do not share state."""
    # By host name: aiohttp's default jar ignores cookies from IP addresses anyway.
    base = peer.base.replace("127.0.0.1", "localhost")
    client = clients(svc=f"{base}/cookie?x={{x}}")
    first = await client.lookup("svc", {"x": "1"})
    second = await client.lookup("svc", {"x": "2"})
    assert first.data == second.data == {"cookie": "none"}


# -- caller input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("1234/5678", id="slash"),
        pytest.param("..", id="dots"),
        pytest.param("12 34", id="space"),
        pytest.param("123\n", id="trailing-newline"),
        pytest.param("%41", id="percent"),
        pytest.param("١٢٣", id="arabic-digits"),
        pytest.param("1" * 33, id="too-long"),
    ],
)
async def test_invalid_parameter_makes_no_request(
    peer: Peer, clients: Callable[..., LookupClient], value: str
) -> None:
    """A value outside 1-32 ASCII letters/digits is a failure before anything is sent."""
    client = clients(svc=f"{peer.base}/echo/{{order}}")
    result = await client.lookup("svc", {"order": value})
    assert result == LookupResult("failure", {}, "invalid parameter order")
    assert peer.seen == []


async def test_an_invalid_unused_parameter_also_refuses(
    peer: Peer, clients: Callable[..., LookupClient]
) -> None:
    """Every value is checked, even one the URL does not use."""
    client = clients(svc=f"{peer.base}/echo/{{order}}")
    result = await client.lookup("svc", {"order": "12345678", "lang": "en-GB"})
    assert result == LookupResult("failure", {}, "invalid parameter lang")
    assert peer.seen == []


@settings(
    max_examples=60,
    deadline=None,
    # The peer is shared across examples on purpose; no request may ever reach it.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=st.text(max_size=40).filter(lambda v: not VALID_RE.fullmatch(v)))
async def test_any_invalid_value_is_refused_without_a_request(
    peer: Peer, clients: Callable[..., LookupClient], value: str
) -> None:
    """Property: whatever the text, if it is not 1-32 ASCII letters/digits nothing is sent."""
    client = clients(svc=f"{peer.base}/echo/{{order}}")
    result = await client.lookup("svc", {"order": value})
    assert result == LookupResult("failure", {}, "invalid parameter order")
    assert peer.seen == []


@settings(
    max_examples=60,
    deadline=None,
    # The peer is stateless per request, so sharing it across examples is harmless.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=VALID)
async def test_any_valid_value_reaches_the_server_path_unchanged(
    peer: Peer, clients: Callable[..., LookupClient], value: str
) -> None:
    """Property: a valid value arrives as exactly that path segment, neither altered nor split."""
    client = clients(svc=f"{peer.base}/echo/{{order}}?lang=en")
    result = await client.lookup("svc", {"order": value})
    assert result.outcome == "found"
    assert dict(result.data) == {"value": value, "raw_path": f"/echo/{value}?lang=en"}


async def test_missing_parameter_makes_no_request(
    peer: Peer, clients: Callable[..., LookupClient]
) -> None:
    """A placeholder with no value is a failure naming it, and nothing is sent."""
    client = clients(svc=f"{peer.base}/echo/{{order}}?lang={{lang}}")
    result = await client.lookup("svc", {"order": "12345678"})
    assert result == LookupResult("failure", {}, "missing parameter lang")
    assert peer.seen == []


async def test_unused_parameters_are_ignored(
    peer: Peer, clients: Callable[..., LookupClient]
) -> None:
    """A valid value the URL does not use changes nothing in the request."""
    client = clients(svc=f"{peer.base}/echo/{{order}}")
    result = await client.lookup("svc", {"order": "12345678", "lang": "en"})
    assert result.data == {"value": "12345678", "raw_path": "/echo/12345678"}


async def test_a_placeholder_used_twice_gets_the_same_value(
    peer: Peer, clients: Callable[..., LookupClient]
) -> None:
    """Every occurrence of a placeholder is filled."""
    client = clients(svc=f"{peer.base}/echo/{{order}}?again={{order}}")
    result = await client.lookup("svc", {"order": "42"})
    assert result.data["raw_path"] == "/echo/42?again=42"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://{host}/orders/{order}", "only allowed after the host"),
        ("http://127.0.0.1:{port}/orders", "only allowed after the host"),
        ("http://127.0.0.1/orders/{order", "malformed placeholder"),
        ("http://127.0.0.1/orders/{order-id}", "malformed placeholder"),
    ],
)
def test_an_unusable_url_template_is_refused_at_start(url: str, message: str) -> None:
    """Templates letting input pick the host, or holding a typo, fail when the client is built."""
    with pytest.raises(ConfigError, match=message) as caught:
        LookupClient({"svc": LookupService(url=url)})
    assert "lookups.svc.url" in str(caught.value)


# -- lifecycle -------------------------------------------------------------------------------


async def test_unknown_service_is_a_failure(clients: Callable[..., LookupClient]) -> None:
    """A service name not configured is a failure result, not a KeyError."""
    client = clients()
    result = await client.lookup("nope", {"order": "12345678"})
    assert result == LookupResult("failure", {}, "unknown service nope")


async def test_lookup_after_close_opens_a_new_session(
    orders_base: str, clients: Callable[..., LookupClient]
) -> None:
    """close() is not final: a later lookup works on a fresh session, and closing twice is fine."""
    client = clients(orders=f"{orders_base}/orders/{{order}}")
    await client.close()  # before any use: nothing to release
    assert (await client.lookup("orders", {"order": "12345678"})).outcome == "found"
    await client.close()
    await client.close()
    assert (await client.lookup("orders", {"order": "23456789"})).data["status"] == "processing"


async def test_cancellation_propagates(peer: Peer, clients: Callable[..., LookupClient]) -> None:
    """Cancelling a lookup in flight cancels it; it is not turned into a failure result."""
    client = clients(svc=f"{peer.base}/stall-headers?x={{x}}")
    async with asyncio.TaskGroup() as group:
        task = group.create_task(client.lookup("svc", {"x": "1"}))
        await peer.arrived("/stall-headers?x=1")
        task.cancel()
    assert task.cancelled()


async def test_log_event_carries_outcome_but_never_the_values(
    orders_base: str, clients: Callable[..., LookupClient]
) -> None:
    """`lookup.done` names service, outcome, status and time, and only the values' lengths."""
    client = clients(orders=f"{orders_base}/orders/{{order}}")
    with capture_logs() as logs:
        await client.lookup("orders", {"order": "12345678"})
        await client.lookup("orders", {"order": "1234/567"})
    done = [entry for entry in logs if entry["event"] == "lookup.done"]
    assert [(e["outcome"], e["status"]) for e in done] == [("found", 200), ("failure", None)]
    for entry in done:
        assert entry["log_level"] == "info"
        assert entry["service"] == "orders"
        assert entry["param_lengths"] == {"order": 8}
        assert isinstance(entry["elapsed_ms"], int)
        assert entry["elapsed_ms"] >= 0
        assert "12345678" not in repr(entry)
        assert "1234/567" not in repr(entry)


# -- the example service ----------------------------------------------------------------------


def test_sample_orders_cover_every_status() -> None:
    """The sample CSV holds the documented demo orders, all 8-digit numbers."""
    orders = load_orders(DEFAULT_DATA)
    assert {n: orders[n]["status"] for n in ("12345678", "23456789", "34567890", "45678901")} == {
        "12345678": "shipped",
        "23456789": "processing",
        "34567890": "delivered",
        "45678901": "cancelled",
    }
    assert all(len(n) == 8 and n[0] != "0" and n.isdigit() for n in orders)
    assert {row["status"] for row in orders.values()} == {
        "processing",
        "shipped",
        "delivered",
        "cancelled",
    }


def test_orders_file_without_a_column_is_refused(tmp_path: Path) -> None:
    """A CSV missing a required column fails loudly instead of serving half the data."""
    data = tmp_path / "orders.csv"
    data.write_text("order,status\n12345678,shipped\n", encoding="utf-8")
    with pytest.raises(ValueError, match="eta_days"):
        load_orders(data)


async def test_example_service_health_and_not_found_bodies(orders_base: str) -> None:
    """/healthz answers 200 and an unknown order gets a JSON 404 body."""
    async with ClientSession() as session:
        async with session.get(f"{orders_base}/healthz") as response:
            assert response.status == 200
        async with session.get(f"{orders_base}/orders/99999999") as response:
            assert response.status == 404
            assert await response.json() == {"error": "not found"}


async def test_example_service_script_announces_its_address(
    clients: Callable[..., LookupClient],
) -> None:
    """Run as a script, it prints `order-service listening on HOST:PORT` once it serves."""
    script = DEFAULT_DATA.with_name("order_service.py")  # both live in examples/
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(5):
            line = (await proc.stdout.readline()).decode()
        prefix = "order-service listening on 127.0.0.1:"
        assert line.startswith(prefix), line
        port = int(line.removeprefix(prefix))
        client = clients(orders=f"http://127.0.0.1:{port}/orders/{{order}}")
        result = await client.lookup("orders", {"order": "45678901"})
        assert result.data["status"] == "cancelled"
    finally:
        proc.terminate()
        await proc.wait()
