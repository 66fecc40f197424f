"""A tiny order-status service for the demo and the tests: what a flow's `lookup` node queries.

    GET /orders/{order}  200 {"order": "12345678", "status": "shipped", "eta_days": 2}
                         404 {"error": "not found"}
    GET /healthz         200 {"status": "ok"}

Orders come from a CSV file with the columns order,status,eta_days (eta_days may be empty, e.g. for
a delivered order, and is then null). Run it with

    python examples/order_service.py --host 127.0.0.1 --port 8090 --data examples/orders.csv

It prints `order-service listening on HOST:PORT` once it accepts connections (with the real port
when given --port 0), so a script or a test can wait for that line instead of polling.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web

DEFAULT_DATA = Path(__file__).resolve().with_name("orders.csv")
COLUMNS = ("order", "status", "eta_days")


def load_orders(path: str | Path) -> dict[str, dict[str, str]]:
    """The orders in a CSV file, keyed by order number; a missing column is a ValueError."""
    with Path(path).open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        return {
            row["order"].strip(): {column: (row[column] or "").strip() for column in COLUMNS}
            for row in reader
        }


def _as_json(row: Mapping[str, str]) -> dict[str, str | int | None]:
    eta = row.get("eta_days", "")
    return {
        "order": row["order"],
        "status": row["status"],
        # A number, as a real service would send it; none once there is nothing left to wait for.
        "eta_days": int(eta) if eta.isdigit() else None,
    }


def build_app(orders: Mapping[str, Mapping[str, str]]) -> web.Application:
    """The service over a fixed set of orders."""

    async def get_order(request: web.Request) -> web.Response:
        row = orders.get(request.match_info["order"])
        if row is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(_as_json(row))

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/orders/{order}", get_order)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve until cancelled, announcing the bound address once listening."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        print(f"order-service listening on {bound_host}:{bound_port}", flush=True)
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(runner.cleanup())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="order,status,eta_days CSV")
    args = parser.parse_args(argv)
    app = build_app(load_orders(args.data))
    try:
        asyncio.run(serve(app, args.host, args.port))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how the demo stops it; no traceback for that


if __name__ == "__main__":
    main()
