"""Admin HTTP API (aiohttp), bound to 127.0.0.1 by default, token-authenticated.

This first version serves health, readiness and status; supervisor toggles come with their issue.
`/healthz` needs no token (it says only that the process answers); everything else needs
`Authorization: Bearer TOKEN`, and a wrong or missing token gets a JSON 401.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]
ReadyProvider = Callable[[], Awaitable[bool]]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def build_app(token: str, status: StatusProvider, ready: ReadyProvider) -> web.Application:
    if not token:
        raise ValueError("the admin API needs a token")

    @web.middleware
    async def auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            return _error(401, "unauthorized", "missing or wrong bearer token")
        return await handler(request)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok = await ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def get_status(_: web.Request) -> web.Response:
        return web.json_response(await status())

    app = web.Application(middlewares=[auth])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", get_status)
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
