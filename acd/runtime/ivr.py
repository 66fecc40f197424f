"""The IVR service: runs a call's flow inside its FastAGI session and hands the call on.

The session is short: prompts, digits and lookups, then channel variables that tell the dialplan
what comes next (ACD_RESULT=queued sends the caller to the hold context, transfer to the transfer
context, hangup ends the call). Waiting happens in the dialplan, not here, so a controller restart
drops nobody. If the flow fails mid-call the caller goes to the flow's declared fallback node; if
that fails too, ACD_RESULT stays unset or `error` and the dialplan takes the static fallback path.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from acd.adapters.fastagi import AgiChannel
from acd.adapters.lookup import LookupClient
from acd.adapters.store import Claim, LoadSnapshot, QueueFigures, RedisStore
from acd.config import Entry, Settings
from acd.domain.breaker import failure_status
from acd.domain.call import CallState
from acd.domain.callback import OVERFLOW_LEVEL, before_queueing
from acd.domain.dialing import refusal
from acd.domain.ewt import escalated_wait, estimated_wait
from acd.domain.flow import (
    DTMF,
    NUMBER_RE,
    CollectDigits,
    Enqueue,
    Facts,
    Flow,
    FlowRun,
    Hangup,
    Lookup,
    Play,
    PlayAndCollect,
    RegisterCallback,
    SayDigits,
    SetLanguage,
    Step,
    Transfer,
)
from acd.errors import AcdError, AgiHangup, DialRefused
from acd.runtime.load import LoadCache
from acd.runtime.trunks import NoTrunkFree

if TYPE_CHECKING:
    from acd.runtime.journey import Recorder
    from acd.runtime.trunks import TrunkBoard

log = structlog.get_logger(__name__)

_CALLER_ID = re.compile(r"^\+?[0-9 ()-]{1,40}\Z")
# A number we may call back: what a caller keys in or its caller ID, digits only (and a leading
# '+'), 5 to 16 digits; it goes into a dial string, so nothing else passes.
CALLBACK_NUMBER = re.compile(r"^\+?[0-9]{5,16}\Z")
ALL_DIGITS = "0123456789*#"
FALLBACK_LEVEL = 2  # overload level from which auto mode uses the entry's fallback flow


def clean_caller_id(raw: str) -> str:
    """Caller ID as data: digits and a leading '+', at most 32 characters; '' when unusable."""
    raw = raw.strip()
    if not _CALLER_ID.match(raw):
        return ""
    digits = re.sub(r"[^0-9]", "", raw)[:32]
    if not digits:
        return ""
    return "+" + digits if raw.startswith("+") else digits


def choose_flow(entry: Entry, mode: str, level: int) -> str:
    """Which flow answers: `fallback` mode, or `auto` at overload level 2 and above, use the
    entry's fallback flow (when it has one)."""
    if entry.fallback_flow and (mode == "fallback" or (mode == "auto" and level >= FALLBACK_LEVEL)):
        return entry.fallback_flow
    return entry.flow


@dataclass
class _Call:
    channel: AgiChannel
    entry: str
    caller_id: str
    run: FlowRun


async def _first_digit(channel: AgiChannel, prompts: Sequence[str], timeout_ms: int) -> str:
    """Play `prompts` (any key ends them) and wait up to `timeout_ms` for a key: the last prompt
    and the wait are ONE command (GET OPTION), so a key pressed as the prompt ends never falls
    between two commands (res_agi drops digits that arrive while no command runs)."""
    for prompt in prompts[:-1]:
        if digit := await channel.stream_file(prompt, ALL_DIGITS):
            return digit
    if prompts:
        return await channel.get_option(prompts[-1], ALL_DIGITS, timeout_ms)
    return await channel.wait_for_digit(timeout_ms)


def _dtmf_or_nothing(digit: str) -> str:
    """A digit Asterisk reported, or '' when it is no DTMF key (garbage counts as silence)."""
    if digit and digit not in DTMF:
        log.warning("ivr.garbage_digit", digit=repr(digit[:4]))
        return ""
    return digit


@dataclass(frozen=True)
class Claimed:
    """Pairs a caller's enqueue claimed in the same round trip, and whether its queue may hold
    more (claim again only then)."""

    claims: list[Claim]
    more: bool


@dataclass(frozen=True)
class Joining:
    """A caller about to queue: when it joins, and its wait estimate at that moment."""

    now: float
    ewt: float


class IvrService:
    def __init__(
        self,
        settings: Settings,
        flows: Mapping[str, Flow],
        store: RedisStore,
        lookups: LookupClient,
        on_enqueued: Callable[[str, Claimed | None], None],
        clock: Callable[[], float] = time.time,
        on_callback: Callable[[], None] = lambda: None,
        trunks: TrunkBoard | None = None,
        recorder: Recorder | None = None,
        load: LoadCache | None = None,
        claim_batch: int = 0,
    ) -> None:
        """`on_enqueued(skill, claimed)`: a caller joined `skill`'s queue; with `claim_batch`, the
        enqueue also claimed up to that many pairs of the queue in the same round trip, and
        `claimed` holds them (else None: nobody claimed yet)."""
        self._claim_batch = claim_batch
        self._settings = settings
        self._dial_policy = settings.dial_policy.to_domain()
        self._load = load if load is not None else LoadCache(store, settings.skill_names())
        self._flows = dict(flows)
        self._entries = {e.number: e for e in settings.entries}
        self._hours = {name: h.to_domain() for name, h in settings.hours.items()}
        self._store = store
        self._lookups = lookups
        self._on_enqueued = on_enqueued
        self._on_callback = on_callback
        self._trunks = trunks
        self._recorder = recorder
        self._skills = {sk.name: sk for sk in settings.skills}
        self._clock = clock
        self.turns = 0

    async def _emit(self, event: str, uid: str, **fields: object) -> None:
        if self._recorder is not None:
            await self._recorder.emit(event, uid, **fields)

    @property
    def flows(self) -> Mapping[str, Flow]:
        return self._flows

    def replace_flows(self, flows: Mapping[str, Flow]) -> None:
        """Swap in freshly validated flows; running calls keep the flow they started with."""
        self._flows = dict(flows)

    async def inbound(self, channel: AgiChannel) -> None:
        number = channel.env.get("arg_1", "")
        entry = self._entries.get(number) if NUMBER_RE.fullmatch(number) else None
        if entry is None:
            log.warning("ivr.unknown_entry", entry=number[:32])
            await channel.set_variable("ACD_RESULT", "error")
            return
        caller_id = clean_caller_id(channel.env.get("callerid", ""))
        # One round trip before the first prompt: a caller who presses early must find a
        # prompt running (res_agi drops digits that arrive while no command runs).
        set_mode, tier, level = await self._store.arrival_facts(
            entry.number, caller_id, channel.uniqueid, self._clock()
        )
        mode = set_mode or entry.mode
        flow = self._flows[choose_flow(entry, mode, level)]
        facts = await self._facts(tier, level, flow.ewt_skills())
        with structlog.contextvars.bound_contextvars(flow=flow.name, entry=entry.number):
            log.info(
                "ivr.call_arrived",
                **({"caller_id": caller_id} if self._settings.log_caller_ids else {}),
                tier=facts.tier,
                menu_mode=mode,
                overload_level=facts.overload_level,
            )
            await self._emit(
                "arrival",
                channel.uniqueid,
                entry=entry.number,
                caller_id=caller_id,
                tier=facts.tier,
                flow=flow.name,
            )
            call = _Call(channel, entry.number, caller_id, FlowRun(flow, facts))
            await channel.set_variable("ACD_FLOW", flow.name)
            try:
                await self._walk(call, call.run.start())
            except AgiHangup:
                raise
            except AcdError as exc:
                # Never hang up on our own failure: the flow's fallback node, else the dialplan's
                # static path (ACD_RESULT unset).
                log.warning("ivr.flow_failed", node=call.run.node, error=str(exc))
                if flow.fallback is None:
                    raise
                await self._walk(call, call.run.fall_back())

    async def _facts(self, tier: str, level: int, ewt_skills: frozenset[str]) -> Facts:
        """What the flow branches on; the wait estimates only of the queues it asks about."""
        now = self._clock()
        ewt: dict[str, float] = {}
        if ewt_skills:
            load = await self._load.get(sorted(ewt_skills))
            ewt = {skill: await self._estimate(skill, None, load, now) for skill in load.waiting}
        return Facts(
            now=datetime.fromtimestamp(now, UTC),
            tier=tier,
            overload_level=level,
            ewt=ewt,
            hours=self._hours,
        )

    async def estimate(self, skill: str, load: LoadSnapshot, now: float) -> float:
        """Estimated wait for a new caller of `skill` (for status and the wallboard)."""
        return await self._estimate(skill, None, load, now)

    async def _estimate(
        self,
        skill: str,
        uid: str | None,
        load: LoadSnapshot,
        now: float,
        waited: float | None = None,
    ) -> float:
        """Estimated wait in `skill`'s queue: for a new caller (uid None), or for one waiting
        (`waited`: how long it has, when the caller knows; else read from its call)."""
        figures = await self._store.queue_figures(
            skill, uid, load.staffed_by_skill.get(skill, 0),
            self._settings.overload.handle_seconds, now,
        )  # fmt: skip
        config = self._skills.get(skill)
        if waited is None:
            waited = 0.0
            if uid is not None and config is not None and config.escalation:
                record = await self._store.call(uid)
                waited = record.waited(now) if record else 0.0
        return self._wait_from(skill, figures, figures.ahead, waited)

    def _wait_from(self, skill: str, figures: QueueFigures, ahead: int, waited: float) -> float:
        """The wait estimate from a queue's figures, for a caller with `ahead` callers before it
        who has waited `waited` seconds (the queue's escalation widens its ring with that)."""
        ewt = estimated_wait(
            ahead=ahead,
            free=figures.free,
            staffed=figures.staffed,
            handle=figures.handle,
            rate=figures.rate,
        )
        config = self._skills.get(skill)
        if config is None or not config.escalation:
            return ewt
        steps = [(step.after, step.min_level) for step in config.escalation]
        return escalated_wait(ewt, waited, steps, figures.best_free_level)

    async def announce(self, channel: AgiChannel) -> None:
        """The hold context's periodic announcement: the caller's position and estimated wait.
        Short by design: waiting never depends on this session (it may fail; music goes on)."""
        uid = channel.uniqueid
        call = await self._store.call(uid)
        if call is None or call.state != CallState.QUEUED:
            return
        skill = call.skill
        now = self._clock()
        load = await self._load.get([skill])
        ewt = await self._estimate(skill, uid, load, now)
        position = (await self._store.queue_figures(skill, uid, 0, 0.0, now)).ahead + 1
        with structlog.contextvars.bound_contextvars(queue=skill):
            log.info("ivr.announced", position=position, ewt=round(ewt, 1))
            if position == 1:
                await channel.stream_file("queue-youarenext")
            else:
                await channel.stream_file("queue-thereare")
                await channel.command("SAY NUMBER", str(position), "")
                await channel.stream_file("queue-callswaiting")
            await channel.stream_file("queue-holdtime")
            if ewt < 60:
                await channel.stream_file("queue-less-than")
                await channel.command("SAY NUMBER", "1", "")
                await channel.stream_file("queue-minute")
            else:
                minutes = min(math.ceil(ewt / 60), 99)
                await channel.command("SAY NUMBER", str(minutes), "")
                await channel.stream_file("queue-minutes")
            await channel.stream_file("queue-thankyou")
            if self._settings.callbacks.offer_in_hold and await self._callbacks_on(skill):
                await channel.stream_file("acd/callback-press-1")

    async def _walk(self, call: _Call, steps: list[Step]) -> None:
        while steps:
            steps = await self._perform(call, steps)

    async def _perform(self, call: _Call, steps: list[Step]) -> list[Step]:
        channel, run = call.channel, call.run
        # Type-ahead: a caller who knows the menu may press during the announcements before it.
        ask = steps[-1] if steps and isinstance(steps[-1], PlayAndCollect | CollectDigits) else None
        # Any key: the menu that follows tells a valid choice from an invalid one.
        escape = "" if ask is None else ALL_DIGITS
        early = ""
        for step in steps:
            if isinstance(step, Play):
                if not early:
                    early = _dtmf_or_nothing(await channel.stream_file(step.prompt, escape))
            elif isinstance(step, SayDigits):
                if not early:
                    reply = await channel.command("SAY DIGITS", step.digits, escape)
                    code = int(reply.result) if reply.result.isdigit() else 0
                    early = _dtmf_or_nothing(chr(code) if 0 < code < 128 else "")
            elif isinstance(step, SetLanguage):
                await channel.set_variable("CHANNEL(language)", step.language)
            elif isinstance(step, PlayAndCollect):
                digit = early or await self._menu_digit(channel, step)
                self.turns += 1
                # Routine: the journey stream keeps every menu choice for the report.
                log.debug("ivr.menu_choice", node=step.node, digit=digit or None)
                await self._emit("menu", channel.uniqueid, at=step.node, digit=digit)
                return run.on_digits(digit)
            elif isinstance(step, CollectDigits):
                digits = await self._collect(channel, step, early)
                self.turns += 1
                log.info("ivr.digits_collected", node=step.node, length=len(digits))
                return run.on_collected(digits)
            elif isinstance(step, Lookup):
                result = await self._lookups.lookup(step.service, step.params)
                log.info("ivr.lookup", node=step.node, outcome=result.outcome)
                return run.on_lookup(result.outcome, result.data)
            elif isinstance(step, RegisterCallback):
                if not await self._register_callback(call, step):
                    # No callback (off for the queue, or no number we can call): the caller
                    # waits in the queue instead, unless the queue is closed.
                    enqueue = Enqueue(step.node, step.skill, step.priority)
                    if not await self._closed(call, enqueue, offer=False):
                        await self._enqueue(call, enqueue)
                    return []
            elif isinstance(step, Enqueue):
                handled, joining = await self._overflow_or_offer(call, step)
                if not handled:
                    await self._enqueue(call, step, joining)
                return []
            elif isinstance(step, Transfer):
                await self._transfer(call, step)
                return []
            elif isinstance(step, Hangup):
                await channel.set_variable("ACD_RESULT", "hangup")
                log.info("ivr.hangup", node=step.node)
                return []
        return []

    @staticmethod
    async def _menu_digit(channel: AgiChannel, step: PlayAndCollect) -> str:
        """The caller's choice (see `_first_digit`); the menu tells a valid one from an invalid."""
        digit = await _first_digit(channel, step.prompts, step.timeout_ms)
        if digit and digit not in DTMF:
            log.warning("ivr.garbage_digit", node=step.node)
            return ""
        return digit

    @staticmethod
    async def _collect(channel: AgiChannel, step: CollectDigits, digit: str = "") -> str:
        """Digits until the terminator, `max_digits`, or a pause longer than the timeout."""
        if not digit:
            digit = await _first_digit(channel, step.prompts, step.timeout_ms)
        if digit and digit in step.shortcuts:
            return digit
        digits = ""
        while digit and digit in DTMF and digit != step.terminator:
            digits += digit
            if len(digits) >= step.max_digits:
                break
            digit = await channel.wait_for_digit(step.timeout_ms)
        if digit and digit not in DTMF:
            log.warning("ivr.garbage_digit", node=step.node)
            return ""
        return digits

    async def _register_callback(self, call: _Call, step: RegisterCallback) -> bool:
        """The caller accepted a callback offered by the flow: confirm the number, record it. The
        caller had no place yet: its place is now (minus its head start). With callbacks off for
        the queue, or no valid number, the caller queues instead."""
        if not await self._callbacks_on(step.skill):
            log.info("ivr.callback_off", queue=step.skill)
            return False
        number = await self.confirm_number(call.channel, call.caller_id)
        if number is None:
            return False
        now = self._clock()
        head_start = step.priority + self._settings.tiers.get(call.run.facts.tier, 0.0)
        await self._store.register_callback(
            uid=call.channel.uniqueid,
            number=number,
            skill=step.skill,
            score=now - head_start,
            enqueued_at=now,
            now=now,
            fields={
                "entry": call.entry,
                "flow": call.run.flow.name,
                "caller_id": call.caller_id,
                "node": self._settings.asterisk.node,
            },
        )
        keyed = number != call.caller_id
        log.info("ivr.callback_requested", node=step.node, queue=step.skill, keyed=keyed)
        await self._emit("callback_requested", call.channel.uniqueid, skill=step.skill, via="ivr")
        self._on_callback()
        return True

    def may_call_back(self, number: str) -> bool:
        """A number we can take for a callback: well-formed and inside the dial policy."""
        return bool(CALLBACK_NUMBER.match(number)) and refusal(self._dial_policy, number) is None

    async def confirm_number(self, channel: AgiChannel, caller_id: str) -> str | None:
        """Which number to call back: the caller ID, confirmed with '#', or another one keyed in
        and ended with '#', which is read back and confirmed with '#' in its turn (or replaced by
        yet another). Three rounds; None when no valid number was confirmed."""
        policy = self._dial_policy
        usable = caller_id if self.may_call_back(caller_id) else ""
        for _ in range(3):
            if usable:
                digit = _dtmf_or_nothing(
                    await channel.stream_file("acd/callback-number-is", ALL_DIGITS)
                )
                if not digit:
                    reply = await channel.command("SAY DIGITS", usable, ALL_DIGITS)
                    code = int(reply.result) if reply.result.isdigit() else 0
                    digit = _dtmf_or_nothing(chr(code) if 0 < code < 128 else "")
                if not digit:
                    digit = _dtmf_or_nothing(
                        await channel.stream_file("acd/callback-confirm-or-enter", ALL_DIGITS)
                    )
            else:
                digit = _dtmf_or_nothing(
                    await channel.stream_file("acd/callback-enter-number", ALL_DIGITS)
                )
            if not digit:
                digit = _dtmf_or_nothing(await channel.wait_for_digit(5000))
            if digit == "#" and usable:
                return usable
            keyed = ""
            while digit and digit != "#" and len(keyed) < 17:
                keyed += digit
                digit = _dtmf_or_nothing(await channel.wait_for_digit(5000))
            if CALLBACK_NUMBER.match(keyed):
                why = refusal(policy, keyed)
                if why is not None:
                    # Outside the dial policy (international, premium rate...): the caller
                    # hears so and may key another number.
                    log.info("ivr.callback_number_refused", reason=why, length=len(keyed))
                    await channel.stream_file("acd/callback-number-refused")
                    continue
                usable = keyed  # read back next round, for the caller to confirm
                continue
            if keyed:
                log.info("ivr.callback_number_invalid", length=len(keyed))
                await channel.stream_file("invalid")
        return None

    async def hold_callback(self, channel: AgiChannel) -> None:
        """A waiting caller pressed 1 in the hold context: confirm the number, then the callback
        takes the caller's place (its score and join time) and the caller leaves the queue.
        ACD_RESULT=callback tells the dialplan to say goodbye and hang up."""
        uid = channel.uniqueid
        call = await self._store.call(uid)
        if not self._settings.callbacks.offer_in_hold or call is None:
            return
        if call.state != CallState.QUEUED:
            return  # not waiting (or being connected right now): back to the music
        if not await self._callbacks_on(call.skill):
            return
        number = await self.confirm_number(channel, call.caller_id)
        if number is None:
            return
        now = self._clock()
        # One atomic step: out of the queue and into the callbacks. If an agent was claimed for
        # the caller meanwhile, nothing changes and the caller is connected.
        registered = await self._store.register_callback(
            leave_queue=True,
            uid=uid,
            number=number,
            skill=call.skill,
            score=call.score if call.score is not None else now,
            enqueued_at=call.enqueued_at if call.enqueued_at is not None else now,
            now=now,
            fields={
                "entry": call.entry,
                "caller_id": call.caller_id,
                "node": self._settings.asterisk.node,
                "from_hold": "1",
            },
        )
        if not registered:
            log.info("ivr.callback_too_late", uniqueid=uid)
            return
        await channel.set_variable("ACD_RESULT", "callback")
        log.info("ivr.callback_requested", uniqueid=uid, queue=call.skill, from_hold=True)
        await self._emit("callback_requested", uid, skill=call.skill, via="hold")
        self._on_callback()

    async def _callbacks_on(self, skill: str) -> bool:
        return (await self._store.callback_modes([skill]))[skill] == "on"

    async def _offer(self, call: _Call, step: Enqueue, why: str) -> bool:
        """Offer a callback instead of the wait; True if the caller took it."""
        digit = _dtmf_or_nothing(await call.channel.get_option("acd/callback-offer", "12", 5000))
        log.info("ivr.callback_offered", queue=step.skill, why=why, accepted=digit == "1")
        if digit != "1":
            return False
        registered = await self._register_callback(
            call, RegisterCallback(step.node, step.skill, step.priority)
        )
        if registered:
            await call.channel.stream_file("acd/callback-confirmed")
            await call.channel.set_variable("ACD_RESULT", "hangup")
        return registered

    async def _overflow_or_offer(self, call: _Call, step: Enqueue) -> tuple[bool, Joining | None]:
        """Before a caller queues: a closed queue (its announcement, a callback offer, else the
        dialplan's fallback path), then what acd.domain.callback.before_queueing plans: the
        queue's overflow to a standby destination and a callback offer, in its order (at level
        4 a low tier is offered the callback first and overflows if it declines; a caller with
        a head start keeps its in-house place). Returns (handled, joining): handled, the caller
        is taken care of; else it queues, with `joining` the time and wait estimate read on the
        way (None when the plan asked something of the caller meanwhile: the figures are old)."""
        skill = self._skills.get(step.skill)
        if skill is None:
            return False, None
        now = self._clock()
        head_start = step.priority + self._settings.tiers.get(call.run.facts.tier, 0.0)
        floor = await self._load.floor()
        # One round trip: the queue's state, depth and wait figures, and the place this caller
        # would take.
        figures = await self._store.queue_figures(
            step.skill, None, floor.staffed_by_skill.get(step.skill, 0),
            self._settings.overload.handle_seconds, now, score=now - head_start, with_state=True,
        )  # fmt: skip
        if await self._closed(call, step, offer=True, state=figures.state):
            return True, None
        ewt = self._wait_from(step.skill, figures, figures.ahead, 0.0)
        level = call.run.facts.overload_level
        trunks = self._trunks
        over = skill.overflow_to if trunks is not None else None
        plan = before_queueing(
            ewt=ewt,
            waiting=figures.ahead,  # a new caller's: everybody waiting
            level=level,
            head_start=head_start,
            offer_ewt=skill.callback_offer_ewt,
            target=skill.ewt_target,
            overflow=over is not None,
            ewt_above=over.ewt_above if over is not None else None,
            waiting_above=over.waiting_above if over is not None else None,
        )
        for action in plan:
            if action == "offer":
                why = f"level {level}" if level >= OVERFLOW_LEVEL else f"ewt {round(ewt)} s"
                if await self._callbacks_on(step.skill) and await self._offer(call, step, why):
                    return True, None
            elif (
                over is not None
                and trunks is not None
                and await self._overflow(call, step, trunks, over.number, ewt)
            ):
                return True, None
        if plan:
            return False, None  # time went by (an offer declined): the caller's figures are old
        return False, Joining(
            now, self._wait_from(step.skill, figures, figures.ahead_of_score, 0.0)
        )

    async def _closed(
        self, call: _Call, step: Enqueue, *, offer: bool, state: str | None = None
    ) -> bool:
        """A closed queue takes no new callers: they hear its announcement and, with `offer`
        (and callbacks on), a callback offer, else go to the dialplan's static fallback path.
        False when the queue is not closed. `state`: the queue's, when read already."""
        if state is None:
            state = (await self._store.queue_states([step.skill]))[step.skill]
        if state != "closed":
            return False
        log.info("ivr.queue_closed", queue=step.skill)
        await call.channel.stream_file("acd/queue-closed")
        offered = offer and await self._callbacks_on(step.skill)
        if offered and await self._offer(call, step, "closed"):
            return True
        await call.channel.set_variable("ACD_RESULT", "closed")  # the static fallback path
        return True

    async def _overflow(
        self, call: _Call, step: Enqueue, trunks: TrunkBoard, number: str, ewt: float
    ) -> bool:
        """Send the caller to the standby destination over the best trunk; False when no trunk
        can take the leg (the caller then queues)."""
        channel = call.channel
        if refusal(self._dial_policy, number) is not None:  # the configuration is checked too
            log.error("ivr.overflow_refused", queue=step.skill)
            return False
        trunk = await trunks.choose(channel.uniqueid)
        if trunk is None:
            log.warning("ivr.overflow_no_trunk", queue=step.skill)
            return False
        # Should every trunk fail this leg, the caller joins this queue after all.
        await channel.set_variable("ACD_OVERFLOW_SKILL", step.skill)
        await channel.set_variable("ACD_OVERFLOW_PRIORITY", repr(float(step.priority)))
        await self._set_transfer(channel, number, trunk)
        log.info("ivr.overflow", queue=step.skill, trunk=trunk, ewt=round(ewt, 1))
        await self._emit("overflow", channel.uniqueid, skill=step.skill, trunk=trunk)
        return True

    async def _transfer(self, call: _Call, step: Transfer) -> None:
        """A flow's transfer node. Its trunk is a preference: taken when its breaker lets the
        call through and it has a free channel, else the best other trunk (primaries, then
        standbys), like every outbound leg. When no trunk can take the call, NoTrunkFree: the
        flow's fallback node, else the dialplan's static path (static menu, fallback queue)."""
        channel = call.channel
        trunk = step.trunk
        why = refusal(self._dial_policy, step.number)
        if why is not None:
            # A number outside the dial policy (a caller's keyed digits, a lookup's field): the
            # caller hears so, and the flow goes on at its fallback node.
            log.warning("ivr.transfer_refused", node=step.node, reason=why)
            await channel.stream_file("acd/number-refused")
            raise DialRefused(step.number, why)
        if self._trunks is not None:
            chosen = await self._trunks.choose(channel.uniqueid, prefer=step.trunk)
            if chosen is None:
                log.warning("ivr.transfer_no_trunk", node=step.node, trunk=step.trunk)
                raise NoTrunkFree(step.trunk)
            trunk = chosen
        await self._set_transfer(channel, step.number, trunk)
        log.info("ivr.transfer", node=step.node, trunk=trunk, preferred=step.trunk)

    async def _enqueue(self, call: _Call, step: Enqueue, joining: Joining | None = None) -> None:
        run = call.run
        await self._enqueue_channel(
            call.channel,
            joining=joining,
            skill=step.skill,
            priority=step.priority,
            entry=call.entry,
            caller_id=call.caller_id,
            tier=run.facts.tier,
            flow=run.flow.name,
            path=",".join(run.path),
        )

    async def _enqueue_channel(
        self,
        channel: AgiChannel,
        *,
        skill: str,
        priority: float,
        entry: str,
        caller_id: str,
        tier: str,
        flow: str,
        path: str,
        joining: Joining | None = None,
    ) -> None:
        """Queue the caller. `joining`: the time and wait estimate read just before (else both
        are taken now, and the estimate read after the caller has its place)."""
        now = self._clock() if joining is None else joining.now
        await channel.set_variable("ACD_QUEUE", skill)
        await channel.set_variable("ACD_RESULT", "queued")
        # Aging priority: the tier's and the flow's head starts are seconds of wait credited at
        # join, so a regular caller who has waited longer still goes first.
        head_start = priority + self._settings.tiers.get(tier, 0.0)
        known = {} if joining is None else {"ewt_at_join": repr(round(joining.ewt, 3))}
        uid, score, node = channel.uniqueid, now - head_start, self._settings.asterisk.node
        fields = {
            "channel": channel.env.get("channel", ""),
            "entry": entry,
            "flow": flow,
            "caller_id": caller_id,
            "tier": tier,
            "priority": str(priority),
            "head_start": repr(head_start),
            "enqueued_at": repr(now),
            "path": path,
            **known,
        }
        claimed: Claimed | None = None
        if self._claim_batch:
            # The caller's first claim rides with its enqueue: one round trip, not two.
            claimed = Claimed(
                *await self._store.enqueue_and_claim(
                    uid=uid, skill=skill, score=score, node=node, fields=fields,
                    limit=self._claim_batch, now=now,
                )
            )  # fmt: skip
        else:
            await self._store.enqueue(uid=uid, skill=skill, score=score, node=node, fields=fields)
        if joining is None:
            load = await self._load.get([skill])
            ewt = await self._estimate(skill, channel.uniqueid, load, now, waited=0.0)
            await self._store.set_call_field(channel.uniqueid, "ewt_at_join", repr(round(ewt, 3)))
        else:
            ewt = joining.ewt
        log.info("ivr.queued", queue=skill, priority=priority, ewt=round(ewt, 1))
        await self._emit("queued", channel.uniqueid, skill=skill, tier=tier, ewt=round(ewt, 1))
        self._on_enqueued(skill, claimed)

    async def transfer_failed(self, channel: AgiChannel) -> None:
        """The dialplan's transfer leg (an overflow, or a flow's transfer node) ended unanswered
        with Dial's status (arg 1). When the carrier failed it (503, no route, no progress in
        time), the caller goes out again over the best trunk not tried yet, at once; otherwise,
        or when none is left, an overflowed caller joins its queue after all and a flow's
        transfer goes to the dialplan's static path (ACD_RESULT unset)."""
        uid = channel.uniqueid
        status = channel.env.get("arg_1", "")
        tried_before = await channel.get_variable("ACD_TRANSFER_TRIED") or ""
        tried = set(filter(None, tried_before.split(",")))
        number = await channel.get_variable("ACD_TRANSFER_NUMBER") or ""
        if self._trunks is not None and failure_status(status) and NUMBER_RE.fullmatch(number):
            trunk = await self._trunks.choose(uid, exclude=tried)
            if trunk is not None:
                await self._set_transfer(channel, number, trunk, tried)
                log.warning("ivr.transfer_failover", uniqueid=uid, status=status, trunk=trunk)
                await self._emit("transfer_failover", uid, trunk=trunk, after=status)
                return
        skill = await channel.get_variable("ACD_OVERFLOW_SKILL") or ""
        if skill not in self._skills:
            log.info("ivr.transfer_failed", uniqueid=uid, status=status)
            return
        caller_id = clean_caller_id(channel.env.get("callerid", ""))
        priority = float(await channel.get_variable("ACD_OVERFLOW_PRIORITY") or 0)
        log.info("ivr.overflow_failed", uniqueid=uid, status=status, queue=skill)
        await self._enqueue_channel(
            channel,
            skill=skill,
            priority=priority,
            entry=await channel.get_variable("ACD_ENTRY") or "",
            caller_id=caller_id,
            tier=await self._store.tier(caller_id),
            flow=await channel.get_variable("ACD_FLOW") or "",
            path="",
        )

    @staticmethod
    async def _set_transfer(
        channel: AgiChannel, number: str, trunk: str, tried: set[str] | None = None
    ) -> None:
        """Send the caller to `number` over `trunk` (the dialplan's acd-transfer), noting the
        trunks tried for this caller so that a failover never goes back to one."""
        await channel.set_variable("ACD_TRANSFER_DIAL", f"PJSIP/{number}@{trunk}")
        await channel.set_variable("ACD_TRANSFER_TRUNK", trunk)
        await channel.set_variable("ACD_TRANSFER_NUMBER", number)
        await channel.set_variable("ACD_TRANSFER_TRIED", ",".join(sorted({*(tried or ()), trunk})))
        await channel.set_variable("ACD_RESULT", "transfer")
