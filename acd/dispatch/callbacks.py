"""Callback attempts on the phone: dialled agent first, their outcome, and what a resync finds.

A callback that reaches an agent (a claim pairs the agent with the attempt's virtual caller) is
originated to the agent's phone with the attempt's id as the leg's uniqueid; the dialplan
(acd-callback) whispers, then dials the customer over the trunk chosen here and reports Dial's
status (AcdCallbackEnd, and the node's AstDB for a controller that missed it). Each attempt is
closed once (lua/callback_finish.lua): answered, retried, failed, expired, or due again at once
when the customer was never dialled. The decisions are acd.domain.callback's; this does the I/O.
The dispatcher hands it these calls and lends it what moves agents and forgets calls.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

import structlog

from acd.adapters.ami import AmiClient
from acd.adapters.calls import CallStore
from acd.adapters.store import Claim, RedisStore
from acd.config import Settings
from acd.domain.agent import AgentEvent
from acd.domain.call import Call, CallState
from acd.domain.callback import CallbackPolicy, Done, after_attempt, may_dial
from acd.domain.dialing import refusal
from acd.errors import AmiActionFailed, AmiError
from acd.protocol.ami import AmiMessage
from acd.runtime.ivr import CALLBACK_NUMBER
from acd.runtime.journey import Recorder
from acd.runtime.trunks import TrunkBoard

log = structlog.get_logger(__name__)

CALLBACK_DB_FAMILY = "acd_callback"  # the node's AstDB family of callback attempts (dialplan)


def mark_day(originated_at: float) -> str:
    """The AstDB key under which the dialplan marks an attempt originated at `originated_at`
    (acd_callback/DAY/UNIQUEID, DAY in UTC): the controller passes it as ACD_CB_DAY, so both
    agree even when the whisper runs past midnight.

    >>> mark_day(1796601600.0)
    '20261207'
    """
    return time.strftime("%Y%m%d", time.gmtime(originated_at))


REFUSED_RETRY = 30.0  # seconds before a callback whose origination Asterisk refused is due again
# How long after an Originate whose reply was lost a resync must wait before it takes "no leg, no
# AstDB mark" for "never dialled": Asterisk starts the leg of an Originate it took within this.
ORIGINATE_SETTLE = 10.0  # seconds


class Resynced(StrEnum):
    """What a resync did with a callback attempt whose agent leg it did not find."""

    REQUEUED = "requeued"  # never originated: back to its queue's front
    DECIDED = "decided"  # closed from the AstDB's record: its call is over
    UNDECIDED = "undecided"  # an Originate may still start its leg: look again later


# Lent by the dispatcher: apply an agent event (agent, event, call, reason), forget a call
# (moving its agent on).
ApplyAgentEvent = Callable[[str, AgentEvent, str, str], Awaitable[bool]]
ForgetCall = Callable[[str], Awaitable[None]]


class CallbackAttempts:
    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        ami: AmiClient,
        trunks: TrunkBoard,
        recorder: Recorder,
        *,
        agent: ApplyAgentEvent,
        forget: ForgetCall,
        on_slot: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`on_slot`: called when an attempt closed (a callback may be admitted now)."""
        self._settings = settings
        self._store = store
        self._calls = CallStore(store.link, store.prefix)
        self._ami = ami
        self._trunks = trunks
        self._recorder = recorder
        self._agent_event = agent
        self._forget = forget
        self._on_slot = on_slot
        self._clock = clock
        cb = settings.callbacks
        self._policy = CallbackPolicy(cb.attempts, cb.retry_delay, cb.expiry, cb.share)
        self._hours = settings.hours[cb.hours].to_domain() if cb.hours else None
        self._dial_policy = settings.dial_policy.to_domain()
        self._entry_number = settings.entries[0].number
        self.dialled = 0

    async def _agent(
        self, agent_id: str, event: AgentEvent, uid: str = "", reason: str = ""
    ) -> bool:
        return await self._agent_event(agent_id, event, uid, reason)

    async def originated(self, event: AmiMessage) -> None:
        """OriginateResponse of an attempt's agent leg: the agent answered (the call is
        connected), or not (the leg is gone: see leg_gone)."""
        uid = event.get("Uniqueid") or ""
        record = await self._store.call(uid)
        if record is None or not record.agent or record.state != CallState.OFFERED:
            return
        if event.get("Response") == "Success":
            await self._calls.answer(uid, self._clock())
            await self._agent(record.agent, AgentEvent.ANSWER, uid)
            log.info("dispatch.callback_agent_answered", uniqueid=uid, agent=record.agent)
        else:
            log.info(
                "dispatch.callback_agent_missed",
                uniqueid=uid,
                agent=record.agent,
                reason=event.get("Reason"),
            )
            await self.leg_gone(uid)
            await self._forget(uid)

    async def dial(self, claim: Claim, record: Call, agent_dial: str) -> None:
        """A callback reached an agent: originate agent-first. The agent's leg gets the attempt's
        id as its uniqueid, so its events (and its hangup) are this call's."""
        now = self._clock()
        callback = record.callback
        number = record.fields.get("number", "")
        bound = structlog.contextvars.bound_contextvars(
            uniqueid=claim.uid, callback=callback, queue=claim.skill, agent=claim.agent_id
        )
        with bound:
            if not CALLBACK_NUMBER.match(number) or refusal(self._dial_policy, number):
                # Checked when the caller asked; the policy may have changed since.
                log.error("dispatch.callback_bad_number", reason=refusal(self._dial_policy, number))
                await self._close_attempt(callback, claim.uid, now, "failed", "")
                await self._forget(claim.uid)
                return
            delay = None
            if not may_dial(self._hours, now):
                delay, why = 60.0, "closed"
            trunk = None if delay is not None else await self._trunks.choose(claim.uid)
            if delay is None and trunk is None:
                delay, why = self._policy.retry_delay, "no trunk"
            if delay is not None or trunk is None:
                log.warning("dispatch.callback_deferred", reason=why)
                await self._close_attempt(
                    callback, claim.uid, now, "again", "", at=now + (delay or 60.0)
                )
                await self._forget(claim.uid)
                return
            # When it was asked for: a resync that finds neither its leg nor its AstDB mark
            # decides only once Asterisk has had ORIGINATE_SETTLE to start the leg.
            await self._store.set_call_fields(
                claim.uid, {"trunk": trunk, "originated_at": repr(now)}
            )
            variables = {
                "ACD_CALLBACK": callback,
                "ACD_AGENT": claim.agent_id,
                "ACD_CB_DIAL": f"PJSIP/{number}@{trunk}",
                "ACD_CB_TRUNK": trunk,
                "ACD_CB_CLI": self._settings.callbacks.caller_id
                or record.entry
                or self._entry_number,
                "ACD_CB_RING": str(self._settings.callbacks.ring_timeout),
                "ACD_CB_DAY": mark_day(now),
            }
            try:
                await self._ami.send_action(
                    "Originate",
                    {
                        "Channel": agent_dial,
                        "Context": "acd-callback",
                        "Exten": "s",
                        "Priority": "1",
                        "ChannelId": claim.uid,
                        "Timeout": str(self._settings.asterisk.ring_timeout * 1000),
                        "CallerID": f"Callback <{number}>",
                        "Async": "true",
                        "Variable": [f"{k}={v}" for k, v in variables.items()],
                    },
                )
            except AmiActionFailed as exc:
                log.warning("dispatch.callback_originate_refused", error=exc.message)
                await self._trunks.cancelled(trunk, claim.uid)
                # Not at once: a refusal that would repeat must not spin.
                await self._close_attempt(
                    callback, claim.uid, now, "again", "", at=now + REFUSED_RETRY
                )
                await self._forget(claim.uid)
                return
            except AmiError:
                # No reply is no refusal: Asterisk may have run it, and dialling again could
                # call the customer twice. The attempt stays as it is (its agent held, its
                # trunk channel taken) until a resync decides it from what Asterisk reports:
                # the attempt's channel (its uniqueid is the attempt's), its AstDB mark.
                log.warning("dispatch.callback_originate_unsure")
                raise
            self.dialled += 1
            log.info("dispatch.callback_dialling", trunk=trunk, dial=agent_dial)

    async def _close_attempt(
        self, callback: str, uid: str, now: float, outcome: str, status: str, at: float = 0.0
    ) -> bool:
        """Close a callback attempt (once: see lua/callback_finish.lua); its slot is free."""
        closed = await self._store.finish_callback_attempt(
            callback, uid, now, outcome, status, at=at
        )
        if closed:
            self._on_slot()
        return closed

    async def ended(self, event: AmiMessage) -> None:
        """AcdCallbackEnd: the attempt's customer leg is over; decide what follows."""
        uid = event.get("Uniqueid") or ""
        record = await self._store.call(uid)
        callback = event.get("Callback") or (record.callback if record else "")
        trunk, status = event.get("Trunk") or "", event.get("DialStatus") or ""
        await self._attempt_over(uid, callback, trunk, status)

    async def _attempt_over(self, uid: str, callback: str, trunk: str, status: str) -> None:
        """The customer leg of attempt `uid` ended with Dial's `status` ('' = never dialled)."""
        fields = await self._store.callback(callback)
        if not fields:
            return
        now = self._clock()
        if status == "":
            outcome, at = "again", now  # the customer was never dialled
        else:
            decision = after_attempt(
                self._policy,
                status,
                int(fields.get("attempts") or 1),
                float(fields.get("requested_at") or now),
                now,
            )
            outcome, at = (
                (decision.outcome, 0.0) if isinstance(decision, Done) else ("retry", decision.at)
            )
        if await self._close_attempt(callback, uid, now, outcome, status, at=at):
            if status == "":
                await self._trunks.cancelled(trunk, uid)
            else:
                await self._trunks.ended(trunk, uid, status)
            await self._recorder.emit(
                "callback_attempt",
                uid,
                callback=callback,
                skill=fields.get("skill"),
                trunk=trunk,
                status=status,
                outcome=outcome,
            )
            log.info(
                "dispatch.callback_attempt_ended",
                uniqueid=uid,
                callback=callback,
                trunk=trunk,
                dial_status=status,
                outcome=outcome,
            )

    async def _dial_mark(self, uid: str, originated_at: float) -> str | None:
        """What the node's AstDB says of attempt `uid` (acd-callback in the dialplan, under the
        day it was originated: mark_day): None, the customer was never dialled; 'dialling'; or
        'ended STATUS'. The dialplan drops the marks of days before yesterday by itself: the
        controller's AMI user may not write AstDB."""
        key = f"{mark_day(originated_at)}/{uid}"
        try:
            events = await self._ami.send_list_action(
                "DBGet", {"Family": CALLBACK_DB_FAMILY, "Key": key}
            )
        except AmiActionFailed:
            return None  # no such entry
        return (events[0].get("Val") or "") if events else None

    async def leg_gone(self, uid: str) -> None:
        """A callback attempt's agent leg is gone. If no AcdCallbackEnd closed the attempt, the
        customer was never dialled (the agent did not answer): the attempt does not count, the
        callback is due again at once, and the agent counts as missed."""
        record = await self._store.call(uid)
        if record is None:
            return
        callback = record.callback
        now = self._clock()
        missed = record.state == CallState.OFFERED and record.agent
        if missed and self._settings.agent_policy.pause_on_missed:
            await self._agent(record.agent, AgentEvent.MISSED, uid, reason="missed")
        if await self._close_attempt(callback, uid, now, "again", "", at=now):
            trunk = record.trunk
            if trunk:
                await self._trunks.cancelled(trunk, uid)
            log.info("dispatch.callback_not_dialled", uniqueid=uid, callback=callback)

    async def resync(self, record: Call) -> Resynced:
        """A callback attempt claimed before we lost sight of it, whose agent leg is not live.
        Not originated yet: back to the queue's front (REQUEUED). Originated: the node's AstDB
        tells whether the customer was dialled and how that ended (DECIDED: the attempt is
        closed, its call is the caller's to forget). Never dialled: the attempt does not count,
        but only once Asterisk has had ORIGINATE_SETTLE to start its leg (an Originate whose
        reply was lost may still be on its way: UNDECIDED, look again later). Ended: decided as
        if its AcdCallbackEnd had been seen. Dialled with no end recorded (Asterisk itself went
        down): a callback is dialled at most once, so it ends 'unknown'."""
        uid, callback, now = record.uid, record.callback, self._clock()
        trunk = record.trunk
        if not trunk:
            await self._store.requeue(uid)
            if record.agent:
                await self._agent(record.agent, AgentEvent.RELEASE, uid)
            return Resynced.REQUEUED
        originated = float(record.fields.get("originated_at") or 0.0)
        mark = await self._dial_mark(uid, originated)
        if mark is None and now - originated < ORIGINATE_SETTLE:
            log.info("dispatch.callback_originate_pending", uniqueid=uid, callback=callback)
            return Resynced.UNDECIDED
        if mark is None or mark.startswith("ended"):
            status = mark.partition(" ")[2].strip() if mark else ""
            log.info("dispatch.callback_end_recovered", uniqueid=uid, dial_status=status)
            await self._attempt_over(uid, callback, trunk, status)
        else:
            await self._close_attempt(callback, uid, now, "unknown", "")
            await self._trunks.cancelled(trunk, uid)
            log.warning("dispatch.callback_outcome_unknown", uniqueid=uid, callback=callback)
        return Resynced.DECIDED
        await self._forget(uid)
