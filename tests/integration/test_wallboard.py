"""The live wallboard in headless Chromium: it streams the status over server-sent events and
shows a SIPp caller waiting, then the same caller with an agent, and saves a screenshot."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.browser import Browser, chromium
from tests.integration.conftest import PORTS, EventLog, Stack, bridge_partner, caller_uid
from tests.integration.sipp import Script

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CELLS = """Array.from(document.querySelectorAll('#queues tbody tr'))
  .map(tr => Array.from(tr.cells).map(td => td.textContent))"""


async def _until(browser: Browser, expression: str, what: str, timeout: float = 20) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = await browser.evaluate(expression)
        if value:
            return value
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.3)


async def test_the_wallboard_follows_a_live_call(stack: Stack, ami_events: EventLog) -> None:
    for agent in ("1001", "1002"):
        assert stack.acd("agent", "pause", agent).returncode == 0
    url = f"http://127.0.0.1:{PORTS['admin']}/wallboard?token={stack.admin_token}"
    caller = stack.call(Script().at(1.0, "10").wait(30), "5558001")
    try:
        async with chromium(url, stack.workdir) as browser:
            uid = await caller_uid(ami_events, "5558001")
            # The presale row shows the waiting caller.
            await _until(
                browser,
                f"({CELLS}).some(r => r[0] === 'presale' && r[2] === '1')",
                "the wallboard never showed the presale caller waiting",
            )
            first = int(await browser.evaluate("document.body.dataset.updates"))
            shot = await browser.screenshot(stack.workdir / "wallboard-waiting.png")
            assert shot.startswith(b"\x89PNG")
            assert await browser.evaluate("document.querySelector('#level').textContent.length > 0")
            assert await browser.evaluate(
                "Array.from(document.querySelectorAll('#trunks tbody tr'))"
                ".some(tr => tr.cells[0].textContent === 'carrier-out')"
            )
            # An agent resumes: the caller is connected, and the board moves on by itself.
            assert stack.acd("agent", "resume", "1001").returncode == 0
            await bridge_partner(ami_events, uid, 15)
            await _until(
                browser,
                f"({CELLS}).some(r => r[0] === 'presale' && r[2] === '0')",
                "the wallboard never showed the presale queue empty again",
            )
            await _until(
                browser,
                "Array.from(document.querySelectorAll('#agents tbody tr'))"
                ".some(tr => tr.cells[0].textContent === '1001' && "
                "tr.cells[1].textContent === 'on_call')",
                "the wallboard never showed agent 1001 on a call",
            )
            assert int(await browser.evaluate("document.body.dataset.updates")) > first
            path = stack.workdir / "wallboard.png"
            assert len(await browser.screenshot(path)) > 10_000
            print(f"wallboard screenshot: {path}")
    finally:
        caller.stop()
        for agent in ("1001", "1002"):
            stack.acd("agent", "resume", agent)


def test_the_wallboard_needs_the_token(stack: Stack) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{PORTS['admin']}/events?token=wrong", timeout=5)
    assert info.value.code == 401
    info.value.close()
