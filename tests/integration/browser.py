"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol: open a page,
evaluate JavaScript in it, take a screenshot. Just what the wallboard test needs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp


class Browser:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json(timeout=30)
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode((await self.send("Page.captureScreenshot"))["data"])
        await asyncio.to_thread(path.write_bytes, data)
        return data


def _start(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("chromium")
    assert binary is not None, "chromium is not installed (make setup installs it)"
    with (workdir / "chromium.log").open("wb") as log:
        return subprocess.Popen(
            [
                binary, "--headless=new", "--no-sandbox", "--no-zygote", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--window-size=1280,900",
                f"--user-data-dir={workdir / 'chromium-profile'}",
                f"--remote-debugging-port={port}", "about:blank",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def chromium(url: str, workdir: Path, port: int = 9333) -> AsyncIterator[Browser]:
    """Chromium headless on `url` (1280x900), with a private profile under `workdir`."""
    proc = await asyncio.to_thread(_start, workdir, port)
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/json") as response:
                        targets = json.loads(await response.text())
                    page = next(t for t in targets if t.get("type") == "page")
                    break
                except (aiohttp.ClientError, StopIteration):
                    assert proc.poll() is None, (workdir / "chromium.log").read_text()[-2000:]
                    assert time.monotonic() < deadline, "chromium did not open its debug port"
                    await asyncio.sleep(0.2)
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                browser = Browser(ws)
                await browser.send("Page.enable")
                await browser.send("Page.navigate", url=url)
                yield browser
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
