"""Dispatch: claims (caller, agent) pairs in Redis and connects them through AMI.

Driven by events, never by polling: a caller queued, an agent freed, an AMI event about one of our
calls (hangup, end of the agent's dial, bridge), and a full resync after every AMI (re)connect.
Work items go through one asyncio queue so that AMI listeners stay synchronous and never block the
AMI reader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from acd.adapters.ami import AmiClient
from acd.adapters.store import Claim, RedisStore
from acd.config import Settings
from acd.errors import AcdError, AmiActionFailed, AmiError, StoreUnavailable
from acd.protocol.ami import AmiMessage

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SkillWork:
    skill: str


@dataclass(frozen=True)
class AgentWork:
    agent_id: str


@dataclass(frozen=True)
class EventWork:
    event: AmiMessage


@dataclass(frozen=True)
class ResyncWork:
    done: asyncio.Future[None]


Work = SkillWork | AgentWork | EventWork | ResyncWork

# The only AMI events the dispatcher acts on; the controller's AMI session filters on them.
EVENTS = frozenset({"Hangup", "UserEvent", "BridgeEnter"})


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        ami: AmiClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._ami = ami
        self._clock = clock
        self._endpoints = {a.id: a.endpoint for a in settings.agents}
        self._work: asyncio.Queue[Work] = asyncio.Queue()
        self.connects = 0

    # Synchronous entry points: safe to call from AMI listeners and the IVR.
    def skill_ready(self, skill: str) -> None:
        self._work.put_nowait(SkillWork(skill))

    def on_ami_event(self, event: AmiMessage) -> None:
        if event.event in EVENTS:
            self._work.put_nowait(EventWork(event))

    async def resync(self) -> None:
        """Called after every AMI (re)connect; returns when the resync has been carried out."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._work.put_nowait(ResyncWork(done))
        await done

    async def run(self) -> None:
        while True:
            work = await self._work.get()
            try:
                await self._handle(work)
            except StoreUnavailable as exc:
                log.error(  # noqa: TRY400 - a Redis outage is expected; its message is enough
                    "dispatch.store_unavailable", error=str(exc), work=type(work).__name__
                )
                self._settle(work, exc)
            except AmiError as exc:
                # The AMI link dropped mid-way; the resync after reconnect puts things right.
                log.warning("dispatch.ami_unavailable", error=str(exc), work=type(work).__name__)
                self._settle(work, None)
            except AcdError as exc:
                log.exception("dispatch.failed", work=type(work).__name__)
                self._settle(work, exc)

    @staticmethod
    def _settle(work: Work, exc: Exception | None) -> None:
        if isinstance(work, ResyncWork) and not work.done.done():
            if exc is None:
                work.done.set_result(None)
            else:
                work.done.set_exception(exc)

    async def _handle(self, work: Work) -> None:
        if isinstance(work, SkillWork):
            while (claim := await self._store.claim_for_skill(work.skill)) is not None:
                await self._connect(claim)
        elif isinstance(work, AgentWork):
            claim = await self._store.claim_for_agent(work.agent_id)
            if claim is not None:
                await self._connect(claim)
        elif isinstance(work, EventWork):
            await self._on_event(work.event)
        else:
            await self._resync()
            if not work.done.done():
                work.done.set_result(None)

    async def _connect(self, claim: Claim) -> None:
        record = await self._store.call(claim.uid)
        endpoint = self._endpoints.get(claim.agent_id)
        if record is None or endpoint is None:
            log.warning("dispatch.claim_dropped", uniqueid=claim.uid, agent=claim.agent_id)
            await self._release(claim.agent_id, claim.uid)
            return
        bound = structlog.contextvars.bound_contextvars(
            uniqueid=claim.uid, queue=claim.skill, agent=claim.agent_id
        )
        with bound:
            try:
                await self._ami.send_action(
                    "Setvar",
                    {"Channel": record.channel, "Variable": "ACD_AGENT", "Value": claim.agent_id},
                )
                await self._ami.send_action(
                    "Setvar",
                    {
                        "Channel": record.channel,
                        "Variable": "ACD_AGENT_DIAL",
                        "Value": f"PJSIP/{endpoint}",
                    },
                )
                await self._ami.send_action(
                    "Redirect",
                    {
                        "Channel": record.channel,
                        "Context": "acd-connect",
                        "Exten": "s",
                        "Priority": "1",
                    },
                )
            except AmiActionFailed as exc:
                # The channel is gone (it hung up between the claim and now).
                log.info("dispatch.connect_failed", error=exc.message)
                agent = await self._store.end_call(claim.uid, self._clock())
                if agent:
                    self._work.put_nowait(AgentWork(agent))
                return
            except AmiError:
                await self._store.requeue(claim.uid)
                await self._release(claim.agent_id, claim.uid)
                raise
            self.connects += 1
            log.info("dispatch.connecting", endpoint=endpoint)

    async def _release(self, agent_id: str, uid: str) -> None:
        if await self._store.release_agent(agent_id, uid, self._clock()):
            self._work.put_nowait(AgentWork(agent_id))

    async def _on_event(self, event: AmiMessage) -> None:
        name = event.event
        if name == "Hangup":
            uid = event.get("Uniqueid") or ""
            agent = await self._store.end_call(uid, self._clock())
            if agent:
                log.info("dispatch.call_ended", uniqueid=uid, agent=agent)
                self._work.put_nowait(AgentWork(agent))
        elif name == "BridgeEnter":
            uid = event.get("Uniqueid") or ""
            record = await self._store.call(uid)
            if record is not None and record.state == "offered" and record.agent:
                await self._store.mark_connected(uid, record.agent)
                log.info("dispatch.connected", uniqueid=uid, agent=record.agent)
        elif name == "UserEvent":
            await self._on_user_event(event)

    async def _on_user_event(self, event: AmiMessage) -> None:
        kind = event.get("UserEvent")
        uid = event.get("Uniqueid") or ""
        if kind == "AcdDialEnd":
            status = event.get("DialStatus") or ""
            agent = event.get("Agent") or ""
            if status == "ANSWER":
                return  # the conversation is over; the caller's hangup frees the agent
            log.info("dispatch.agent_missed", uniqueid=uid, agent=agent, dial_status=status)
            record = await self._store.call(uid)
            if await self._store.requeue(uid) and record is not None:
                self._work.put_nowait(SkillWork(record.fields.get("skill", "")))
            if agent:
                await self._release(agent, uid)
        elif kind == "AcdHoldExpired":
            agent = await self._store.end_call(uid, self._clock())
            log.warning("dispatch.hold_expired", uniqueid=uid)
            if agent:
                self._work.put_nowait(AgentWork(agent))

    async def _resync(self) -> None:
        """Make Redis agree with what Asterisk has, after anything we may have missed."""
        channels = await self._ami.send_list_action("CoreShowChannels")
        live = {c.get("Uniqueid") or c.get("UniqueID") or "": c for c in channels}
        now = self._clock()
        ended = requeued = 0
        for uid in await self._store.calls_of_node(self._settings.asterisk.node):
            record = await self._store.call(uid)
            channel = live.get(uid)
            if channel is None or record is None:
                await self._store.end_call(uid, now)
                ended += 1
                continue
            if record.state in ("offered", "connected") and channel.get("Context") == "acd-hold":
                # The agent's dial ended while we were not listening: back to the queue.
                agent = record.agent
                await self._store.requeue(uid)
                if agent:
                    await self._store.release_agent(agent, uid, now)
                requeued += 1
        for agent_id in await self._store.agent_ids():
            fields = await self._store.agent(agent_id)
            call = fields.get("call", "")
            if fields.get("state") in ("reserved", "on_call") and (
                not call or await self._store.call(call) is None
            ):
                await self._store.release_agent(agent_id, call, now)
        log.info("dispatch.resynced", channels=len(live), ended=ended, requeued=requeued)
        for skill in self._settings.skill_names():
            self._work.put_nowait(SkillWork(skill))
