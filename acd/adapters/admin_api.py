"""Admin HTTP API (aiohttp), bound to 127.0.0.1 by default, token-authenticated, JSON in and out.

`/healthz` needs no token (it says only that the process answers); everything else needs
`Authorization: Bearer TOKEN`. Bad requests get `{"error": {"code", "message"}}` with the right
status, and nothing is half-applied: a request is validated whole before anything changes.
`X-Acd-User` names the person behind a change for the audit log (default: `admin`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from aiohttp import web

from acd.errors import AcdError, ConfigError

log = structlog.get_logger(__name__)

_USER = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class Supervised(Protocol):
    """What the API steers; the controller implements it."""

    async def status(self) -> dict[str, Any]: ...
    async def is_ready(self) -> bool: ...
    async def menu_modes(self) -> dict[str, str]: ...
    async def set_menu_mode(self, who: str, mode: str, number: str | None) -> dict[str, str]: ...
    async def overload(self) -> dict[str, Any]: ...
    async def pin_overload(self, who: str, level: int | None) -> dict[str, Any]: ...
    async def reload_flows(self, who: str) -> list[str]: ...


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return body


def _who(request: web.Request) -> str:
    user = request.headers.get("X-Acd-User", "admin")
    if not _USER.match(user):
        raise ApiError(400, "bad_user", "X-Acd-User: 1-64 characters of A-Z a-z 0-9 _ . @ -")
    return user


def build_app(token: str, target: Supervised) -> web.Application:
    if not token:
        raise ValueError("the admin API needs a token")

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path != "/healthz":
            header = request.headers.get("Authorization", "")
            given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
            if not given or not hmac.compare_digest(given.encode(), token.encode()):
                return _error(401, "unauthorized", "missing or wrong bearer token")
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.code, exc.message)
        except ConfigError as exc:
            return _error(422, "invalid", str(exc))
        except AcdError as exc:
            log.warning("admin.request_failed", path=request.path, error=str(exc))
            return _error(503, "unavailable", str(exc))

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
        body = await _body(request)
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
        body = await _body(request)
        level = body.get("level")
        if level == "auto":
            return web.json_response(await target.pin_overload(who, None))
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 4:
            raise ApiError(400, "bad_level", 'level must be "auto" or an integer from 0 to 4')
        return web.json_response(await target.pin_overload(who, level))

    async def reload_flows(request: web.Request) -> web.Response:
        names = await target.reload_flows(_who(request))
        return web.json_response({"flows": names})

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", get_status)
    app.router.add_get("/menu", get_menu)
    app.router.add_put("/menu", put_menu)
    app.router.add_put("/menu/{number}", put_menu)
    app.router.add_get("/overload", get_overload)
    app.router.add_put("/overload", put_overload)
    app.router.add_post("/flows/reload", reload_flows)
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
