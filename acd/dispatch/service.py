"""Dispatch: claims (caller, agent) pairs in Redis and connects them through AMI.

Driven by events, never by polling: a caller queued, an agent freed, an AMI event about one of our
calls (hangup, end of the agent's dial, bridge), and a full resync after every AMI (re)connect.
Work items are submitted synchronously (AMI listeners never block the AMI reader) to a
KeyedExecutor (executor.py): what concerns one call, one agent or one queue's claims runs in
order, everything else at once, so one caller's round trips never hold up another's; a resync
runs alone. What events mean is decided by plain functions (policy.py); callback attempts on the
phone are callbacks.py's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import structlog

from acd.adapters.ami import AmiClient
from acd.adapters.calls import CallStore
from acd.adapters.store import Claim, RedisStore
from acd.config import Settings
from acd.dispatch.callbacks import ORIGINATE_SETTLE, CallbackAttempts, Resynced
from acd.dispatch.executor import KeyedExecutor
from acd.dispatch.orphans import adopt_orphans
from acd.dispatch.policy import after_call, hangup_journey, hold_wait, is_agent_leg
from acd.domain.agent import BUSY, AgentEvent, device_event
from acd.domain.call import WITH_AGENT, CallState
from acd.errors import AcdError, AmiActionFailed, AmiError, AmiTimeout, StoreUnavailable
from acd.protocol.ami import AmiMessage
from acd.runtime.ivr import Claimed
from acd.runtime.journey import Recorder
from acd.runtime.trunks import TrunkBoard

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SkillWork:
    skill: str


@dataclass(frozen=True)
class AgentWork:
    agent_id: str


@dataclass(frozen=True)
class WrapUpDone:
    agent_id: str


@dataclass(frozen=True)
class EventWork:
    event: AmiMessage


@dataclass(frozen=True)
class HandoffWork:
    """Another node's controller claimed an agent for a caller this node holds."""

    uid: str


@dataclass(frozen=True)
class ConnectWork:
    """A claimed (caller, agent) pair to connect."""

    claim: Claim


@dataclass(frozen=True)
class ResyncWork:
    done: asyncio.Future[None]


Work = SkillWork | AgentWork | WrapUpDone | EventWork | HandoffWork | ConnectWork | ResyncWork

# The only AMI events the dispatcher acts on; the controller's AMI session filters on them.
EVENTS = frozenset(
    {"Hangup", "UserEvent", "BridgeEnter", "DialBegin", "OriginateResponse", "DeviceStateChange"}
)
WRAP_UP_SLACK = 0.25  # seconds
REFUSED_RETRY = 30.0  # seconds before a callback whose origination Asterisk refused is due again
ROUTINE_AGENT_EVENTS = frozenset(
    {AgentEvent.RING, AgentEvent.ANSWER, AgentEvent.DEVICE_BUSY, AgentEvent.DEVICE_IDLE}
)
# The longest a connect waits for its caller's AcdHeld (the dialplan's word that the channel is
# in the hold context), counted from when the caller headed there: a Redirect that lands while
# the dialplan is still on its way is lost by Asterisk. An AcdHeld this controller missed (it
# restarted) costs a caller this much, no more.
HOLD_SETTLE = 0.1  # seconds
CLAIM_BATCH = 16  # pairs claimed in one script call at most
DISPATCH_CONCURRENCY = 64  # work items inside their round trips at once, at most


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        ami: AmiClient,
        trunks: TrunkBoard,
        recorder: Recorder,
        clock: Callable[[], float] = time.time,
        on_callback_slot: Callable[[], None] = lambda: None,
        on_resync_needed: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_callback_slot`: called when a callback may be admitted now (an attempt ended, an
        agent came free). `on_resync_needed`: called when Redis and Asterisk may disagree with
        no AMI reconnect to resync them: a work item met no Redis and was dropped, an AMI action
        got no reply (it may have run), a resync left a callback attempt undecided."""
        self._on_callback_slot = on_callback_slot
        self._on_resync_needed = on_resync_needed
        self._settings = settings
        self._store = store
        self._calls = CallStore(store.link, store.prefix)
        self._ami = ami
        self._clock = clock
        self._node = settings.asterisk.node
        self._trunks = trunks
        self._recorder = recorder
        self._attempts = CallbackAttempts(
            settings, store, ami, trunks, recorder,
            agent=self._agent, forget=self._forget, on_slot=on_callback_slot, clock=clock,
        )  # fmt: skip
        self._agents = {a.id: a for a in settings.agents}
        # This node's agents' phones, by the device Asterisk reports their state under.
        self._devices = {f"PJSIP/{a.endpoint}": a.id for a in settings.local_agents()}
        self._escalation = {s.name: s.escalation for s in settings.skills}
        self._executor = KeyedExecutor(limit=DISPATCH_CONCURRENCY)
        # Callers this controller redirected to an agent: uid -> (agent, queue), until the dial
        # ends, so that the dial's events need not read the call back from Redis.
        self._dialling: dict[str, tuple[str, str]] = {}
        # Callers with a connect still to run (claimed, not yet redirected): a resync that finds
        # one on hold leaves it to that connect rather than putting it back.
        self._connecting: set[str] = set()
        # Callers of this node seen arriving in the hold context (AcdHeld) and not taken out
        # since, and the connects waiting for that word: see HOLD_SETTLE.
        self._held: set[str] = set()
        self._hold_waiters: dict[str, asyncio.Future[None]] = {}
        self.connects = 0

    def _key(self, work: Work) -> tuple[str, str]:
        """What `work` must stay in order with: its call, its agent, or its queue's claims."""
        if isinstance(work, SkillWork):
            return ("skill", work.skill)
        if isinstance(work, AgentWork | WrapUpDone):
            return ("agent", work.agent_id)
        if isinstance(work, HandoffWork):
            return ("call", work.uid)
        if isinstance(work, ConnectWork):
            return ("call", work.claim.uid)
        if isinstance(work, EventWork):
            event = work.event
            if event.event == "DeviceStateChange":
                device = event.get("Device") or ""
                return ("agent", self._devices.get(device, device))
            return ("call", event.get("Uniqueid") or "")
        return ("resync", "")

    def _put(self, work: Work) -> None:
        if isinstance(work, ConnectWork):
            self._connecting.add(work.claim.uid)
        job = partial(self._guarded, work)
        if isinstance(work, ResyncWork):
            self._executor.submit_exclusive(job)
        else:
            self._executor.submit(self._key(work), job)

    @property
    def callbacks_dialled(self) -> int:
        """Callback attempts originated by this controller (for status)."""
        return self._attempts.dialled

    def stats(self) -> dict[str, int]:
        """The executor's counters (for the status page and benchmarks)."""
        return self._executor.stats()._asdict()

    # Synchronous entry points: safe to call from AMI listeners and the IVR.
    def skill_ready(self, skill: str, waited: float = 0.0) -> None:
        """A caller joined `skill`'s queue (having waited `waited` s already): try now, and again
        at each escalation step, when its ring widens (the overflow skills' agents too)."""
        self._put(SkillWork(skill))
        self._escalate(skill, waited)

    def enqueued(self, skill: str, claimed: Claimed | None = None) -> None:
        """The IVR queued a caller for `skill`; `claimed`: the pairs its enqueue claimed in the
        same round trip (connected now; the queue claimed again only if it may hold more), or
        None (claim now)."""
        if claimed is None:
            self.skill_ready(skill)
            return
        for pair in claimed.claims:
            self._put(ConnectWork(pair))
        if claimed.more:
            self._put(SkillWork(skill))
        self._escalate(skill, 0.0)

    def _escalate(self, skill: str, waited: float) -> None:
        """Claim for `skill` again at each escalation step still ahead of a caller who has
        waited `waited` s: its ring widens then."""
        loop = asyncio.get_running_loop()
        for step in self._escalation.get(skill, ()):
            if step.after > waited:
                loop.call_later(step.after - waited, self._put, SkillWork(skill))

    def queue_ready(self, skill: str) -> None:
        """A caller went back to the front of `skill`'s queue (its agent's lease was over)."""
        self._put(SkillWork(skill))

    def handed(self, uid: str) -> None:
        """A caller of this node was claimed by another node's controller: connect it here."""
        self._put(HandoffWork(uid))

    def agent_ready(self, agent_id: str) -> None:
        """An agent may take a caller now (logged in, resumed); a callback may be admitted for
        it too."""
        self._put(AgentWork(agent_id))
        self._on_callback_slot()

    async def sweep_wrapups(self) -> None:
        """Finish wrap-ups whose time is over (a safety net for timers lost in a restart)."""
        for agent_id in await self._store.due_wrapups(self._clock()):
            self._put(WrapUpDone(agent_id))

    def on_ami_event(self, event: AmiMessage) -> None:
        if event.event in EVENTS:
            if event.event == "UserEvent" and event.get("UserEvent") == "AcdHeld":
                self._on_held(event.get("Uniqueid") or "")
                return
            self._put(EventWork(event))

    def _on_held(self, uid: str) -> None:
        """The caller's channel is in the hold context: a Redirect may take it out now. (No
        Redis: it only tells a connect of this node that it may go.)"""
        self._held.add(uid)
        waiter = self._hold_waiters.pop(uid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _until_held(self, claim: Claim) -> None:
        """Wait until the caller is in the hold context: its AcdHeld came, or HOLD_SETTLE after
        it headed there (the word was missed)."""
        uid = claim.uid
        wait = hold_wait(uid in self._held, claim.held_at, self._clock(), HOLD_SETTLE)
        if wait > 0:
            waiter = self._hold_waiters.setdefault(uid, asyncio.get_running_loop().create_future())
            try:
                async with asyncio.timeout(wait):
                    await waiter
            except TimeoutError:
                log.info("dispatch.hold_unconfirmed", uniqueid=uid)
            finally:
                if self._hold_waiters.get(uid) is waiter:
                    del self._hold_waiters[uid]
        self._held.discard(uid)  # it leaves the hold context with this Redirect

    async def resync(self) -> None:
        """Called after every AMI (re)connect; returns when the resync has been carried out."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put(ResyncWork(done))
        await done

    async def run(self) -> None:
        await self._executor.run()

    async def _guarded(self, work: Work) -> None:
        """Do one work item; the errors of the adapters it meets are logged, and settle a
        resync's waiter."""
        try:
            await self._handle(work)
        except StoreUnavailable as exc:
            log.error(  # noqa: TRY400 - a Redis outage is expected; its message is enough
                "dispatch.store_unavailable", error=str(exc), work=type(work).__name__
            )
            self._settle(work, exc)
            self._on_resync_needed()
        except AmiError as exc:
            # The AMI link dropped mid-way (or Asterisk refused or timed out a list): the resync
            # after reconnect puts things right; a resync that failed says so to its waiter,
            # who tries again (Controller._on_ami_connected).
            log.warning("dispatch.ami_unavailable", error=str(exc), work=type(work).__name__)
            self._settle(work, exc)
            if isinstance(exc, AmiTimeout):
                # The link may be up (no reconnect, no resync follows): resync on demand.
                self._on_resync_needed()
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
            # Claim in batches while the queue may hold pairs; each connect goes on beside the
            # next claim.
            more = True
            while more:
                claims, more = await self._store.claim_batch(work.skill, CLAIM_BATCH)
                for pair in claims:
                    self._put(ConnectWork(pair))
        elif isinstance(work, AgentWork):
            claim = await self._store.claim_for_agent(work.agent_id)
            if claim is not None:
                self._put(ConnectWork(claim))
        elif isinstance(work, ConnectWork):
            try:
                await self._connect(work.claim)
            finally:
                self._connecting.discard(work.claim.uid)
        elif isinstance(work, HandoffWork):
            record = await self._store.call(work.uid)
            if record is None or record.state != CallState.OFFERED or not record.agent:
                # Gone, or put back by a resync meanwhile (which released the agent too).
                log.info("dispatch.handoff_stale", uniqueid=work.uid)
                return
            await self._connect(
                Claim(work.uid, record.agent, record.skill, self._node), handed=True
            )
        elif isinstance(work, WrapUpDone):
            now = self._clock()
            # Timers fire on the loop's clock: a little slack against the wall clock's.
            done, _ = await self._store.agent_event(
                work.agent_id, AgentEvent.WRAP_UP_DONE, now, wrapped_by=now + WRAP_UP_SLACK
            )
            if done:
                log.info("dispatch.wrap_up_done", agent=work.agent_id)
                self._put(AgentWork(work.agent_id))
        elif isinstance(work, EventWork):
            await self._on_event(work.event)
        else:
            await self._resync()
            if not work.done.done():
                work.done.set_result(None)

    async def _connect(self, claim: Claim, *, handed: bool = False) -> None:
        if claim.node and claim.node != self._node:
            # The claim script handed it to the controller of the caller's node.
            log.info(
                "dispatch.handed_off", uniqueid=claim.uid, agent=claim.agent_id, node=claim.node
            )
            return
        # What the claim said of the call is enough for a caller; a callback needs its record.
        known = bool(claim.channel) and claim.kind != "callback"
        record = None if known else await self._store.call(claim.uid)
        agent = self._agents.get(claim.agent_id)
        if agent is None:
            # Redis knows an agent this deployment no longer has: it must not take callers (and
            # releasing it would only claim it again). The caller goes back to the front.
            log.warning("dispatch.unknown_agent", uniqueid=claim.uid, agent=claim.agent_id)
            await self._store.retire_agents([claim.agent_id])
            if await self._store.requeue(claim.uid):
                self._put(SkillWork(claim.skill))
            return
        if record is None and not known:
            log.warning("dispatch.claim_dropped", uniqueid=claim.uid, agent=claim.agent_id)
            await self._agent(claim.agent_id, AgentEvent.RELEASE, claim.uid)
            return
        if record is not None and record.is_callback:
            await self._attempts.dial(claim, record, self._settings.agent_dial(agent))
            return
        bound = structlog.contextvars.bound_contextvars(
            uniqueid=claim.uid, queue=claim.skill, agent=claim.agent_id
        )
        dial = self._settings.agent_dial(agent)
        # A caller claimed the moment it queued (or was put back) may still be on its way to the
        # hold context: a Redirect that lands while the dialplan runs its Goto there is lost by
        # Asterisk (the channel falls through the dialplan and hangs up, seen at 30 calls/s).
        await self._until_held(claim)
        with bound:
            try:
                # One write, one round trip: Asterisk runs them in this order.
                channel = claim.channel if record is None else record.channel
                await self._ami.send_actions(
                    [
                        (
                            "Setvar",
                            {"Channel": channel, "Variable": "ACD_AGENT", "Value": claim.agent_id},
                        ),
                        (
                            "Setvar",
                            {"Channel": channel, "Variable": "ACD_AGENT_DIAL", "Value": dial},
                        ),
                        (
                            "Redirect",
                            {
                                "Channel": channel,
                                "Context": "acd-connect",
                                "Exten": "s",
                                "Priority": "1",
                            },
                        ),
                    ]
                )
            except AmiActionFailed as exc:
                # The channel is gone (it hung up between the claim and now). Its agent is
                # released even if its call is gone too (nothing else would release it).
                log.info("dispatch.connect_failed", error=exc.message)
                await self._end_call(claim.uid)
                await self._agent(claim.agent_id, AgentEvent.RELEASE, claim.uid)
                return
            except AmiError:
                # No reply is no refusal: Asterisk may have run the Redirect, and the caller be
                # ringing its agent. Put back now, it would be claimed and redirected again,
                # out of that call (bridged twice). The call stays offered until a resync
                # (after the reconnect, or asked for on a timeout) finds where the caller is:
                # back in the hold context, it is requeued and its agent released.
                log.warning("dispatch.connect_unsure", uniqueid=claim.uid, agent=claim.agent_id)
                raise
            self.connects += 1
            self._dialling[claim.uid] = (claim.agent_id, claim.skill)
            log.debug("dispatch.connecting", dial=dial, handed=handed)

    async def _agent(
        self, agent_id: str, event: AgentEvent, uid: str = "", reason: str = "", device: str = ""
    ) -> bool:
        """Apply an agent event; when it makes the agent available, look for a caller for it."""
        applied, before = await self._store.agent_event(
            agent_id, event, self._clock(), call=uid, reason=reason, device=device
        )
        if applied:
            # A call's routine steps are in the journey: the log keeps the rest.
            emit = log.debug if event in ROUTINE_AGENT_EVENTS else log.info
            emit("dispatch.agent_event", agent=agent_id, agent_event=event.value, before=before)
            if event in (
                AgentEvent.RELEASE,
                AgentEvent.RESUME,
                AgentEvent.LOGIN,
                AgentEvent.DEVICE_IDLE,
            ):
                self.agent_ready(agent_id)
        return applied

    async def _end_call(self, uid: str) -> None:
        """The caller is gone (or a callback attempt's agent leg): its agent goes to wrap-up
        (after talking) or back to work."""
        if uid.startswith("cb-"):
            await self._attempts.leg_gone(uid)
        await self._forget(uid)

    async def _forget(self, uid: str) -> None:
        """Forget a call; a reserved agent is released as it was (nobody rang it), an agent who
        talked goes to wrap-up. (A callback attempt that is put off before its agent is dialled
        comes here directly: the agent missed nothing.)"""
        wrap_up = self._settings.agent_policy.wrap_up
        agent, state = await self._store.end_call(uid, self._clock(), wrap_up)
        if not agent:
            return
        self._agent_after_call(uid, agent, state)

    def _agent_after_call(
        self, uid: str, agent: str, state: str, waiting: int | None = None
    ) -> None:
        log.info("dispatch.call_ended", uniqueid=uid, agent=agent, agent_state=state)
        then = after_call(state, self._settings.agent_policy.wrap_up, waiting)
        if then.claim:
            self._put(AgentWork(agent))
        elif then.wrap_up:
            asyncio.get_running_loop().call_later(then.wrap_up, self._put, WrapUpDone(agent))

    async def _record_hangup(self, uid: str, cause: str, *, fallback: bool = False) -> None:
        """The journey's last event for a caller who came in through the IVR: how it ended
        (`fallback`: the dialplan's fallback queue had taken it over)."""
        record = await self._store.call(uid)
        fields = hangup_journey(record, cause, self._clock(), fallback=fallback)
        await self._recorder.emit("hangup", uid, **fields)

    async def _hung_up(self, uid: str, cause: str) -> None:
        """A caller's (or a trunk leg's) channel hung up: one round trip ends its call, moves
        its agent on, takes its journey marker and names the trunk channels it held."""
        self._dialling.pop(uid, None)
        self._held.discard(uid)
        now = self._clock()
        wrap_up = self._settings.agent_policy.wrap_up
        ended = await self._calls.hangup(
            uid, now, wrap_up, self._trunks.names(), self._settings.skill_names()
        )
        if ended.live is not None:
            fields = hangup_journey(ended.call, cause, now, fallback=ended.live == "fallback")
            await self._recorder.emit("hangup", uid, **fields)
        if ended.agent:
            self._agent_after_call(uid, ended.agent, ended.agent_state, ended.waiting)
        if ended.trunks:
            await self._trunks.leg_gone(uid, held=list(ended.trunks))

    async def _on_event(self, event: AmiMessage) -> None:
        name = event.event
        uid = event.get("Uniqueid") or ""
        if name in ("Hangup", "BridgeEnter") and is_agent_leg(
            event.get("Channel") or "", uid, self._devices
        ):
            return  # an agent's leg: its caller's events say all
        if name == "Hangup":
            if uid.startswith("cb-"):
                # A callback attempt's agent leg: the attempt reads its call before it ends.
                marker = await self._store.take_live(uid)
                if marker is not None:
                    await self._record_hangup(
                        uid, event.get("Cause-txt") or "", fallback=marker == "fallback"
                    )
                await self._end_call(uid)
                await self._trunks.leg_gone(uid)
            else:
                await self._hung_up(uid, event.get("Cause-txt") or "")
        elif name == "DialBegin":
            dialling = self._dialling.get(uid)
            if dialling is None:
                record = await self._store.call(uid)
                if record is None or not record.agent:
                    return
                dialling = (record.agent, record.skill)
            agent, skill = dialling
            await self._agent(agent, AgentEvent.RING, uid)
            await self._recorder.emit("ring", uid, skill=skill, agent=agent)
        elif name == "BridgeEnter":
            # The agent this controller rang, when it did: its ANSWER goes with the call's.
            rang, _ = self._dialling.pop(uid, ("", ""))
            answered = await self._calls.answer(uid, self._clock(), agent=rang)
            record = answered.call
            if record is not None:
                if record.agent != rang or answered.agent_answered is None:
                    await self._agent(record.agent, AgentEvent.ANSWER, uid)
                waited = record.waited(self._clock())
                await self._recorder.emit(
                    "answer", uid, skill=record.skill, agent=record.agent, waited=round(waited, 3)
                )
                log.info(
                    "dispatch.connected",
                    uniqueid=uid,
                    agent=record.agent,
                    waited=round(waited, 2),
                    ewt_at_join=record.ewt_at_join,
                )
        elif name == "DeviceStateChange":
            await self._device_changed(event.get("Device") or "", event.get("State") or "")
        elif name == "UserEvent":
            await self._on_user_event(event)
        elif name == "OriginateResponse" and uid.startswith("cb-"):
            await self._attempts.originated(event)

    async def _device_changed(self, device: str, state: str) -> None:
        """An agent's phone changed state in Asterisk: a phone in use outside the ACD (or
        unreachable) takes its agent out of the available sets until it is free again. The
        state is recorded whatever the agent is doing (a call of ours keeps it busy too)."""
        agent = self._devices.get(device)
        if agent is None or not state:
            return
        event = device_event(state)
        applied = await self._agent(agent, event, device=state, reason=state)
        if applied:
            log.info("dispatch.agent_device", agent=agent, device_state=state)

    async def _on_user_event(self, event: AmiMessage) -> None:
        kind = event.get("UserEvent")
        uid = event.get("Uniqueid") or ""
        if kind == "AcdDialEnd":
            status = event.get("DialStatus") or ""
            agent = event.get("Agent") or ""
            if status == "ANSWER":
                return  # the conversation is over; the caller's hangup frees the agent
            log.info("dispatch.agent_missed", uniqueid=uid, agent=agent, dial_status=status)
            self._dialling.pop(uid, None)
            record = await self._store.call(uid)
            if await self._store.requeue(uid) and record is not None:
                self._put(SkillWork(record.skill))
            if agent and status == "INUSE":
                # Its phone was busy (the dialplan did not ring it): not missed; released with
                # the phone's state, it waits in device_busy until the phone is free.
                await self._agent(
                    agent, AgentEvent.RELEASE, uid, device=event.get("Device") or "INUSE"
                )
            elif agent:
                if self._settings.agent_policy.pause_on_missed:
                    await self._agent(agent, AgentEvent.MISSED, uid, reason="missed")
                else:
                    await self._agent(agent, AgentEvent.RELEASE, uid)
        elif kind == "AcdTransferEnd":
            # An overflow leg over a trunk we chose: the breaker learns from it.
            trunk = event.get("Trunk") or ""
            if trunk:
                await self._trunks.ended(trunk, uid, event.get("DialStatus") or "")
        elif kind == "AcdCallbackEnd":
            await self._attempts.ended(event)
        elif kind == "AcdHoldExpired":
            log.warning("dispatch.hold_expired", uniqueid=uid)
            record = await self._store.call(uid)
            fields: dict[str, object] = {}
            if record is not None:
                fields = {"skill": record.skill, "waited": round(record.waited(self._clock()), 3)}
            await self._recorder.emit("fallback", uid, **fields)
            await self._store.mark_fallback(uid)
            await self._end_call(uid)

    async def _resync(self) -> None:
        """Make Redis agree with what Asterisk has, after anything we may have missed."""
        # The node's calls first, then Asterisk's channels: a caller the IVR queues between the
        # two reads is not judged, where the other way round it would be taken for gone.
        ours = await self._store.calls_of_node(self._settings.asterisk.node)
        channels = await self._ami.send_list_action("CoreShowChannels")
        live = {c.get("Uniqueid") or c.get("UniqueID") or "": c for c in channels}
        now = self._clock()
        ended = requeued = undecided = 0
        for uid in ours:
            record = await self._store.call(uid)
            channel = live.get(uid)
            if record is not None and record.is_callback:
                if record.state in WITH_AGENT and channel is None:
                    resynced = await self._attempts.resync(record)
                    if resynced == Resynced.DECIDED:
                        await self._forget(uid)  # its agent was not on it: back to work
                        ended += 1
                    elif resynced == Resynced.UNDECIDED:
                        undecided += 1
                continue  # queued callbacks have no channel: they wait in Redis alone
            if channel is None or record is None:
                # It hung up while we were not listening: its journey ends here.
                marker = await self._store.take_live(uid)
                if marker is not None:
                    await self._record_hangup(uid, "unseen", fallback=marker == "fallback")
                await self._end_call(uid)
                ended += 1
                continue
            if (
                record.state in WITH_AGENT
                and channel.get("Context") == "acd-hold"
                and uid not in self._connecting
            ):
                # The agent's dial ended while we were not listening: back to the queue. (A
                # caller claimed just now, its connect waiting behind this resync, is that
                # connect's: put back, it would be claimed again and redirected twice.)
                agent = record.agent
                await self._store.requeue(uid)
                if agent:
                    await self._agent(agent, AgentEvent.RELEASE, uid)
                requeued += 1
        adopted = await adopt_orphans(
            live, ours, settings=self._settings, store=self._store, ami=self._ami,
            agent_devices=self._devices, now=now,
        )  # fmt: skip
        for agent_id in await self._store.agent_ids():
            fields = await self._store.agent(agent_id)
            call = fields.get("call", "")
            if fields.get("state") in BUSY and (not call or await self._store.call(call) is None):
                # Its call ended unseen: through wrap-up (already over) back to work.
                await self._store.agent_event(agent_id, AgentEvent.CALL_ENDED, now, wrap_until=now)
        await self.sweep_wrapups()
        # The agents' phones as Asterisk has them now (changes we missed while away).
        devices = 0
        try:
            changes = await self._ami.send_list_action("DeviceStateList")
        except AmiActionFailed as exc:  # res_manager_devicestate not loaded: no device states
            log.warning("dispatch.device_states_unavailable", error=exc.message)
            changes = []
        for change in changes:
            if change.get("Device") in self._devices:
                await self._device_changed(change.get("Device") or "", change.get("State") or "")
                devices += 1
        released = await self._trunks.reconcile(live)
        log.info(
            "dispatch.resynced",
            channels=len(live),
            ended=ended,
            requeued=requeued,
            adopted=adopted,
            callbacks_undecided=undecided,
            agent_phones=devices,
            trunk_channels_released=released,
        )
        if undecided:
            asyncio.get_running_loop().call_later(ORIGINATE_SETTLE, self._on_resync_needed)
        for skill in self._settings.skill_names():
            self._put(SkillWork(skill))
        # Escalation timers of callers who were already waiting (ours were lost in a restart).
        for uid in await self._store.calls_of_node(self._settings.asterisk.node):
            record = await self._store.call(uid)
            if record is not None and record.state == CallState.QUEUED:
                self.skill_ready(record.skill, waited=record.waited(now))
