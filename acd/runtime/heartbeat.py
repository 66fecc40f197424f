"""The controller's heartbeat in its node's dialplan.

A controller that is alive but not answering (stopped, starved of CPU, stuck) still has its
FastAGI port open: the kernel accepts Asterisk's connections, Asterisk waits for the first
command, and the caller hears silence while the digits they press are lost (res_agi reads no
DTMF while no command runs). So the controller sets the global ACD_CONTROLLER_ALIVE (the time,
in seconds) over AMI every `agi.heartbeat` seconds while it can serve calls, and the dialplan's
entry sends a caller straight to the static menu when that time is older than
`agi.alive_window`: a frozen controller costs the callers who arrive within the window, not all
those who arrive until it wakes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from acd.adapters.ami import AmiClient
from acd.errors import AmiError

log = structlog.get_logger()

VARIABLE = "ACD_CONTROLLER_ALIVE"


def alive_value(now: float) -> str:
    """The variable's value: seconds since the epoch, to the millisecond, as the dialplan's
    STRFTIME(,,%s.%3q) writes the time it compares it with.

    >>> alive_value(1796601600.25)
    '1796601600.250'
    """
    return f"{now:.3f}"


IDLE_POLL = 0.05  # seconds between two looks while the controller cannot serve yet


class Heartbeat:
    """Sets ACD_CONTROLLER_ALIVE every `interval` seconds while `serving()` and AMI is up.
    `alive()`: the node's dialplan has a fresh enough beat to send callers to us (part of the
    controller's readiness)."""

    def __init__(
        self,
        ami: AmiClient,
        interval: float,
        window: float,
        serving: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ami, self._interval, self._window = ami, interval, window
        self._serving, self._clock = serving, clock
        self.last_ok: float | None = None  # when Asterisk last took a beat (clock)

    def alive(self) -> bool:
        return self.last_ok is not None and self._clock() - self.last_ok < self._window

    async def run(self) -> None:
        failing = False
        while True:
            if not (self._serving() and self._ami.connected):
                await asyncio.sleep(IDLE_POLL)  # the first beat soon after we can serve
                continue
            now = self._clock()
            try:
                await self._ami.send_action(
                    "Setvar", {"Variable": VARIABLE, "Value": alive_value(now)}
                )
                self.last_ok, failing = now, False
            except AmiError as exc:
                if not failing:  # once per outage, not twice a second
                    log.warning("heartbeat.failed", error=str(exc))
                failing = True
            await asyncio.sleep(self._interval)
