"""Admin HTTP API (aiohttp), bound to 127.0.0.1 by default, token-authenticated, JSON in and out.

`/healthz` needs no token (it says only that the process answers); everything else needs
`Authorization: Bearer TOKEN`. A viewer's token only reads (VIEWER_READS: 403 on anything else),
for wallboards and dashboards. Every token belongs to a user (acd.config.admin_tokens), and that
user is who a change is audited under; an `X-Acd-User` header is kept only as detail beside it
(`alice (cli:root)`): anyone holding a token can write any header. Bad requests get
`{"error": {"code", "message"}}` with the right status, and nothing is half-applied: a request is
validated whole before anything changes, and each change is one Redis step.
`/events` streams the status to every wallboard from one producer (StatusFeed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib import resources
from typing import Any, Protocol

import structlog
from aiohttp import web

from acd.domain.agent import IllegalTransition
from acd.errors import (
    AcdError,
    AmiError,
    ConfigError,
    InvalidInput,
    StoreUnavailable,
    UnknownName,
)

log = structlog.get_logger(__name__)

ADMIN_USER = "admin"  # the user of a single token given as a string
_USER = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}\Z")
_REASON = re.compile(r"^[a-z0-9_-]{0,32}\Z")
_CALLER = re.compile(r"^\+?[0-9]{2,32}\Z")
_TIER = re.compile(r"^[a-z][a-z0-9_-]{0,39}\Z")
_QUERY_TOKEN_PATHS = frozenset({"/wallboard", "/events"})
# What a viewer's (read-only) token may GET: the floor's figures, never a change, nor the
# callbacks' customer numbers.
VIEWER_READS = frozenset(
    {"/status", "/metrics", "/wallboard", "/events", "/readyz", "/queues", "/trunks", "/overload",
     "/menu", "/agents", "/openapi.json"}
)  # fmt: skip
EVENTS_INTERVAL = 1.0  # seconds between two status pushes on /events
EVENTS_DEPTH = 2  # status events a slow /events client may have queued; older ones are dropped


def error_status(exc: AcdError) -> tuple[int, str]:
    """The HTTP status and error code of an error raised behind a request."""
    if isinstance(exc, UnknownName):
        return 404, exc.code
    if isinstance(exc, IllegalTransition):
        return 409, "conflict"
    if isinstance(exc, ConfigError):
        return 422, "invalid"
    if isinstance(exc, InvalidInput):
        return 400, "bad_request"
    if exc.retriable or isinstance(exc, StoreUnavailable | AmiError):
        return 503, "unavailable"
    return 500, "internal"


class Supervised(Protocol):
    """What the API steers; the controller implements it."""

    async def status(self) -> dict[str, Any]: ...
    async def is_ready(self) -> bool: ...
    async def menu_modes(self) -> dict[str, str]: ...
    async def set_menu_mode(self, who: str, mode: str, number: str | None) -> dict[str, str]: ...
    async def overload(self) -> dict[str, Any]: ...
    async def pin_overload(self, who: str, level: int | None) -> dict[str, Any]: ...
    async def reload_flows(self, who: str) -> list[str]: ...
    async def agents(self) -> dict[str, dict[str, Any]]: ...
    async def agent_action(
        self, who: str, agent_id: str, action: str, reason: str
    ) -> dict[str, Any]: ...
    async def set_tiers(self, who: str, tiers: dict[str, str]) -> int: ...
    async def callbacks(self) -> list[dict[str, str]]: ...
    async def queues(self) -> dict[str, dict[str, Any]]: ...
    async def metrics(self) -> bytes: ...
    async def set_queue_state(self, who: str, skill: str, state: str) -> dict[str, Any]: ...
    async def set_callback_mode(self, who: str, mode: str, skill: str | None) -> dict[str, str]: ...
    async def set_agent_skills(
        self, who: str, agent_id: str, skills: dict[str, int]
    ) -> dict[str, Any]: ...
    async def trunk_summary(self) -> dict[str, dict[str, Any]]: ...
    async def trunk_action(self, who: str, name: str, action: str) -> dict[str, Any]: ...


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _body(request: web.Request, *fields: str) -> dict[str, Any]:
    """The JSON object body, with no field but `fields` (an unknown one is refused: a typo must
    not pass for a change that was made)."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ApiError(
            400,
            "unknown_field",
            f"unknown field {unknown[0][:40]!r} (expected: {', '.join(fields)})",
        )
    return body


def _integer(value: Any) -> int | None:
    """A JSON integer (5 or 5.0, as JSON Schema counts them), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


USER = web.RequestKey("user", str)  # the user the request's bearer token belongs to


def _who(request: web.Request) -> str:
    """Who makes this change, for the audit log: the user the bearer token belongs to, with
    what the client says in X-Acd-User as detail (never as the identity)."""
    user = request[USER]
    claimed = request.headers.get("X-Acd-User")
    if claimed is None or claimed == user:
        return user
    if not _USER.match(claimed):
        raise ApiError(400, "bad_user", "X-Acd-User: 1-64 characters of A-Z a-z 0-9 _ . @ : -")
    return f"{user} ({claimed})"


def _digest(token: str) -> bytes:
    # Compared as digests: equal lengths, so the comparison time says nothing of the token.
    return hashlib.sha256(token.encode()).digest()


class StatusFeed:
    """The status for /events, built once per interval for every connected client.

    One producer (`run`, owned by the app) builds it while anyone listens and idles when nobody
    does; each client has a bounded queue, and a client too slow to take its events loses the
    oldest ones, so it can neither hold the others up nor grow the controller's memory. When the
    status cannot be built (Redis down) the clients get a `problem` event and the stream goes on.
    """

    def __init__(
        self,
        build: Callable[[], Awaitable[dict[str, Any]]],
        interval: float = EVENTS_INTERVAL,
        depth: int = EVENTS_DEPTH,
    ) -> None:
        self._build = build
        self.interval = interval
        self.depth = depth
        self._clients: set[asyncio.Queue[bytes]] = set()
        self._listening = asyncio.Event()
        self._last: tuple[float, bytes] | None = None
        self.builds = 0  # statuses built (statistics, for tests)
        self.dropped = 0  # events a slow client never took

    @property
    def clients(self) -> int:
        return len(self._clients)

    def subscribe(self) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=self.depth)
        now = asyncio.get_running_loop().time()
        if self._last is not None and now - self._last[0] < self.interval:
            queue.put_nowait(self._last[1])  # the current status at once, not a second later
        self._clients.add(queue)
        self._listening.set()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes]) -> None:
        self._clients.discard(queue)
        if not self._clients:
            self._listening.clear()

    def publish_nowait(self, chunk: bytes) -> None:
        for queue in self._clients:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(chunk)

    async def run(self) -> None:
        sequence = 0
        while True:
            await self._listening.wait()
            sequence += 1
            chunk = await self._chunk(sequence)
            self._last = (asyncio.get_running_loop().time(), chunk)
            self.publish_nowait(chunk)
            await asyncio.sleep(self.interval)

    async def _chunk(self, sequence: int) -> bytes:
        self.builds += 1
        try:
            data = json.dumps(await self._build(), separators=(",", ":"))
            event = "status"
        except AcdError as exc:
            event = "problem"
            data = json.dumps({"error": str(exc), "retriable": exc.retriable})
        except Exception as exc:  # a bug must not end every wallboard's stream
            log.exception("admin.events_failed")
            event = "problem"
            data = json.dumps({"error": f"internal error: {type(exc).__name__}"})
        return f"id: {sequence}\nevent: {event}\ndata: {data}\n\n".encode()


FEED = web.AppKey("feed", StatusFeed)


def build_app(
    tokens: Mapping[str, str] | str,
    target: Supervised,
    spec: dict[str, Any] | None = None,
    *,
    events_interval: float = EVENTS_INTERVAL,
    viewers: Mapping[str, str] | None = None,
) -> web.Application:
    """The admin API. `tokens`: token -> the user it belongs to (a single string: user admin);
    `viewers`: read-only tokens, token -> user (VIEWER_READS only)."""
    table = {tokens: ADMIN_USER} if isinstance(tokens, str) else dict(tokens)
    if not table or not all(table):
        raise ValueError("the admin API needs a token")
    readers = dict(viewers or {})
    if set(readers) & set(table):
        raise ValueError("a viewer's token cannot be a supervisor's too")
    digests = [(_digest(token), user, False) for token, user in table.items()]
    digests += [(_digest(token), user, True) for token, user in readers.items()]

    def user_of(given: str) -> tuple[str, bool] | None:
        """The token's user and whether it only reads."""
        digest = _digest(given)
        found = None
        for known, user, reads in digests:  # every one compared: the time says nothing of which
            if hmac.compare_digest(digest, known):
                found = (user, reads)
        return found

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path != "/healthz":
            header = request.headers.get("Authorization", "")
            given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
            if not given and request.path in _QUERY_TOKEN_PATHS:
                # A browser's EventSource cannot send headers: the wallboard passes ?token=.
                given = request.query.get("token", "")
            found = user_of(given) if given else None
            if found is None:
                return _error(401, "unauthorized", "missing or wrong bearer token")
            user, reads = found
            if reads and (
                request.method not in ("GET", "HEAD") or request.path not in VIEWER_READS
            ):
                return _error(
                    403, "forbidden", "this token only reads status, metrics and the wallboard"
                )
            request[USER] = user
        try:
            return await handler(request)
        except web.HTTPException as exc:
            # No such route or method: the same JSON error shape as everything else.
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
            return _error(exc.status, code, exc.reason)
        except ApiError as exc:
            return _error(exc.status, exc.code, exc.message)
        except AcdError as exc:
            status, code = error_status(exc)
            if status >= 500:
                log.warning("admin.request_failed", path=request.path, error=str(exc))
            return _error(status, code, str(exc))
        except Exception:  # a bug answers in JSON too, and is logged
            log.exception("admin.request_crashed", path=request.path)
            return _error(500, "internal", "internal error (logged by the controller)")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok = await target.is_ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def get_status(_: web.Request) -> web.Response:
        return web.json_response(await target.status())

    async def get_menu(_: web.Request) -> web.Response:
        return web.json_response({"modes": await target.menu_modes()})

    async def put_menu(request: web.Request) -> web.Response:
        who = _who(request)
        body = await _body(request, "mode")
        mode = body.get("mode")
        if mode not in ("normal", "fallback", "auto"):
            raise ApiError(400, "bad_mode", "mode must be one of normal, fallback, auto")
        number = request.match_info.get("number")
        modes = await target.menu_modes()
        if number is not None and number not in modes:
            raise ApiError(404, "unknown_entry", f"no entry number {number!r}")
        return web.json_response({"modes": await target.set_menu_mode(who, mode, number)})

    async def get_overload(_: web.Request) -> web.Response:
        return web.json_response(await target.overload())

    async def put_overload(request: web.Request) -> web.Response:
        who = _who(request)
        body = await _body(request, "level")
        level = body.get("level")
        if level == "auto":
            return web.json_response(await target.pin_overload(who, None))
        pinned = _integer(level)
        if pinned is None or not 0 <= pinned <= 4:
            raise ApiError(400, "bad_level", 'level must be "auto" or an integer from 0 to 4')
        return web.json_response(await target.pin_overload(who, pinned))

    async def reload_flows(request: web.Request) -> web.Response:
        names = await target.reload_flows(_who(request))
        return web.json_response({"flows": names})

    async def get_agents(_: web.Request) -> web.Response:
        return web.json_response({"agents": await target.agents()})

    async def put_agent(request: web.Request) -> web.Response:
        who = _who(request)
        body = await _body(request, "action", "reason")
        action = body.get("action")
        if action not in ("login", "logout", "pause", "resume"):
            raise ApiError(400, "bad_action", "action must be login, logout, pause or resume")
        reason = body.get("reason", "")
        if not isinstance(reason, str) or not _REASON.match(reason):
            raise ApiError(400, "bad_reason", "reason: up to 32 of a-z 0-9 _ -")
        agent_id = request.match_info["agent"]
        if agent_id not in await target.agents():
            raise ApiError(404, "unknown_agent", f"no agent {agent_id!r}")
        try:
            result = await target.agent_action(who, agent_id, action, reason)
        except IllegalTransition as exc:
            raise ApiError(409, "conflict", str(exc)) from exc
        return web.json_response(result)

    async def put_tiers(request: web.Request) -> web.Response:
        who = _who(request)
        body = await _body(request, "tiers")
        tiers = body.get("tiers")
        if not isinstance(tiers, dict) or not tiers or len(tiers) > 100_000:
            raise ApiError(400, "bad_tiers", "tiers: a non-empty object of caller ID -> tier")
        for caller_id, tier in tiers.items():
            if not _CALLER.match(caller_id) or not isinstance(tier, str) or not _TIER.match(tier):
                raise ApiError(
                    400,
                    "bad_tiers",
                    f"caller ID {caller_id[:40]!r}: digits (a leading +) and a "
                    "tier name (a-z 0-9 _ -) expected",
                )
        return web.json_response({"updated": await target.set_tiers(who, tiers)})

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(spec or {})

    async def wallboard(_: web.Request) -> web.Response:
        page = resources.files("acd.adapters").joinpath("web/wallboard.html").read_bytes()
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    feed = StatusFeed(lambda: target.status(), events_interval)

    async def events(request: web.Request) -> web.StreamResponse:
        """Server-sent events: the status every interval (or a `problem` while it cannot be
        built), until the client goes away."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue = feed.subscribe()
        try:
            while True:
                chunk = await queue.get()
                try:
                    await response.write(chunk)
                except (ConnectionResetError, RuntimeError):
                    return response
        finally:
            feed.unsubscribe(queue)

    async def run_feed(_: web.Application) -> AsyncIterator[None]:
        # The app owns the producer for its lifetime: started with it, cancelled with it.
        task = asyncio.create_task(feed.run(), name="admin-events-feed")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def get_metrics(_: web.Request) -> web.Response:
        body = await target.metrics()
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def get_queues(_: web.Request) -> web.Response:
        return web.json_response({"queues": await target.queues()})

    async def put_queue(request: web.Request) -> web.Response:
        who = _who(request)
        body = await _body(request, "state")
        state = body.get("state")
        if state not in ("open", "closed", "paused"):
            raise ApiError(400, "bad_state", "state must be one of open, closed, paused")
        skill = request.match_info["queue"]
        if skill not in await target.queues():
            raise ApiError(404, "unknown_queue", f"no queue {skill!r}")
        return web.json_response(await target.set_queue_state(who, skill, state))

    async def put_callback_mode(request: web.Request) -> web.Response:
        who = _who(request)
        body = await _body(request, "mode", "queue")
        mode, queue = body.get("mode"), body.get("queue")
        if mode not in ("on", "off"):
            raise ApiError(400, "bad_mode", "mode must be on or off")
        if "queue" in body and not isinstance(queue, str):
            # Every queue is asked for by leaving `queue` out; a null is no queue name.
            raise ApiError(400, "bad_queue", "queue must be a queue name (leave it out for all)")
        if queue is not None and queue not in await target.queues():
            raise ApiError(404, "unknown_queue", f"no queue {str(queue)[:40]!r}")
        return web.json_response({"modes": await target.set_callback_mode(who, mode, queue)})

    async def put_agent_skills(request: web.Request) -> web.Response:
        who = _who(request)
        body = await _body(request, "skills")
        skills = body.get("skills")
        queues = await target.queues()
        if not isinstance(skills, dict) or not skills:
            raise ApiError(400, "bad_skills", "skills: a non-empty object of skill -> level 1-10")
        levels: dict[str, int] = {}
        for name, level in skills.items():
            if name not in queues:
                raise ApiError(400, "bad_skills", f"unknown skill {str(name)[:40]!r}")
            value = _integer(level)
            if value is None or not 1 <= value <= 10:
                raise ApiError(400, "bad_skills", f"{name}: the level must be an integer 1-10")
            levels[name] = value
        agent_id = request.match_info["agent"]
        if agent_id not in await target.agents():
            raise ApiError(404, "unknown_agent", f"no agent {agent_id!r}")
        return web.json_response(await target.set_agent_skills(who, agent_id, levels))

    async def get_callbacks(_: web.Request) -> web.Response:
        return web.json_response({"callbacks": await target.callbacks()})

    async def get_trunks(_: web.Request) -> web.Response:
        return web.json_response({"trunks": await target.trunk_summary()})

    async def post_trunk(request: web.Request) -> web.Response:
        who = _who(request)
        name, action = request.match_info["trunk"], request.match_info["action"]
        if name not in await target.trunk_summary():
            raise ApiError(404, "unknown_trunk", f"no outbound trunk {name!r}")
        return web.json_response(await target.trunk_action(who, name, action))

    app = web.Application(middlewares=[guard], client_max_size=8 * 1024 * 1024)
    app[FEED] = feed
    app.cleanup_ctx.append(run_feed)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", get_status)
    app.router.add_get("/menu", get_menu)
    app.router.add_put("/menu", put_menu)
    app.router.add_put("/menu/{number}", put_menu)
    app.router.add_get("/overload", get_overload)
    app.router.add_put("/overload", put_overload)
    app.router.add_post("/flows/reload", reload_flows)
    app.router.add_get("/agents", get_agents)
    app.router.add_put("/agents/{agent}", put_agent)
    app.router.add_put("/tiers", put_tiers)
    app.router.add_get("/callbacks", get_callbacks)
    app.router.add_put("/callbacks/mode", put_callback_mode)
    app.router.add_get("/queues", get_queues)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/wallboard", wallboard)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/events", events)
    app.router.add_put("/queues/{queue}", put_queue)
    app.router.add_put("/agents/{agent}/skills", put_agent_skills)
    app.router.add_get("/trunks", get_trunks)
    app.router.add_post(r"/trunks/{trunk}/{action:trip|reset}", post_trunk)
    return app


async def serve(app: web.Application, host: str, port: int, ready: Callable[[], None]) -> None:
    """Serve until cancelled; cleanup is shielded so the port is always released."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("admin.listening", host=host, port=port)
        ready()
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(runner.cleanup())
