"""The IVR service: runs a call's flow inside its FastAGI session and hands it to a skill queue.

The session is short: prompts and digits, then channel variables that tell the dialplan what comes
next (ACD_RESULT=queued sends the caller to the hold context). Waiting happens in the dialplan, not
here, so a controller restart drops nobody. Any failure leaves ACD_RESULT unset or `error`, which
the dialplan answers with the static fallback path.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping

import structlog

from acd.adapters.fastagi import AgiChannel
from acd.adapters.store import RedisStore
from acd.config import Settings
from acd.domain.flow import DTMF, Enqueue, Flow, FlowRun, Play, PlayAndCollect, Step

log = structlog.get_logger(__name__)

_ENTRY = re.compile(r"^[0-9]{2,20}$")


_CALLER_ID = re.compile(r"^\+?[0-9 ()-]{1,40}$")


def clean_caller_id(raw: str) -> str:
    """Caller ID as data: digits and a leading '+', at most 32 characters; '' when unusable."""
    raw = raw.strip()
    if not _CALLER_ID.match(raw):
        return ""
    digits = re.sub(r"[^0-9]", "", raw)[:32]
    if not digits:
        return ""
    return "+" + digits if raw.startswith("+") else digits


class IvrService:
    def __init__(
        self,
        settings: Settings,
        flows: Mapping[str, Flow],
        store: RedisStore,
        on_enqueued: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._flows = dict(flows)
        self._entries = {e.number: e.flow for e in settings.entries}
        self._store = store
        self._on_enqueued = on_enqueued
        self._clock = clock

    def replace_flows(self, flows: Mapping[str, Flow]) -> None:
        """Swap in freshly validated flows; running calls keep the flow they started with."""
        self._flows = dict(flows)

    async def inbound(self, channel: AgiChannel) -> None:
        entry = channel.env.get("arg_1", "")
        if not _ENTRY.match(entry) or entry not in self._entries:
            log.warning("ivr.unknown_entry", entry=entry[:32])
            await channel.set_variable("ACD_RESULT", "error")
            return
        flow = self._flows[self._entries[entry]]
        caller_id = clean_caller_id(channel.env.get("callerid", ""))
        with structlog.contextvars.bound_contextvars(flow=flow.name, entry=entry):
            log.info("ivr.call_arrived", caller_id=caller_id, channel=channel.env.get("channel"))
            run = FlowRun(flow)
            steps = run.start()
            while steps:
                steps = await self._perform(channel, run, steps, entry, caller_id)

    async def _perform(
        self, channel: AgiChannel, run: FlowRun, steps: list[Step], entry: str, caller_id: str
    ) -> list[Step]:
        for step in steps:
            if isinstance(step, Play):
                await channel.stream_file(step.prompt)
            elif isinstance(step, PlayAndCollect):
                digit = ""
                for prompt in step.prompts:
                    digit = await channel.stream_file(prompt, step.valid_digits)
                    if digit:
                        break
                if not digit:
                    digit = await channel.wait_for_digit(step.timeout_ms)
                if digit and digit not in DTMF:
                    log.warning("ivr.garbage_digit", node=step.node, digit=repr(digit[:4]))
                    digit = ""
                log.info("ivr.menu_choice", node=step.node, digit=digit or None)
                return run.on_digits(digit)
            elif isinstance(step, Enqueue):
                await self._enqueue(channel, run, step, entry, caller_id)
                return []
        return []

    async def _enqueue(
        self, channel: AgiChannel, run: FlowRun, step: Enqueue, entry: str, caller_id: str
    ) -> None:
        now = self._clock()
        await channel.set_variable("ACD_QUEUE", step.skill)
        await channel.set_variable("ACD_RESULT", "queued")
        await self._store.enqueue(
            uid=channel.uniqueid,
            skill=step.skill,
            score=now - step.priority,
            node=self._settings.asterisk.node,
            fields={
                "channel": channel.env.get("channel", ""),
                "entry": entry,
                "flow": run.flow.name,
                "caller_id": caller_id,
                "priority": str(step.priority),
                "enqueued_at": repr(now),
                "path": ",".join(run.path),
            },
        )
        log.info("ivr.queued", queue=step.skill, priority=step.priority)
        self._on_enqueued(step.skill)
