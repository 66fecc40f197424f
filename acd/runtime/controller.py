"""The composition root of the controller: builds every component and owns their tasks.

One TaskGroup owns the AMI client, the FastAGI server, the dispatcher, the overload governor and the
admin API; when one of them fails the others are cancelled and the error propagates (`acd up`
restarts the controller; callers keep waiting in Asterisk meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import structlog

from acd.adapters import admin_api
from acd.adapters.alert_store import AlertStore
from acd.adapters.ami import AmiClient
from acd.adapters.fastagi import AgiChannel, FastAgiServer
from acd.adapters.leases import LeaseStore
from acd.adapters.lookup import LookupClient
from acd.adapters.openapi import build_spec
from acd.adapters.store import RedisStore
from acd.config import (
    Settings,
    admin_tokens,
    agi_secret,
    read_secret,
    redis_url,
    viewer_tokens,
)
from acd.dispatch.leases import LeaseKeeper, lease_length
from acd.dispatch.service import CLAIM_BATCH, Dispatcher
from acd.domain.agent import AgentEvent, AgentState, IllegalTransition
from acd.domain.alerts import AlertRule, AlertState
from acd.domain.alerts import step as alert_step
from acd.domain.callback import may_dial
from acd.domain.flow import Flow
from acd.domain.overload import (
    GovernorPolicy,
    GovernorState,
    link_down_since,
    link_failed,
    load_of,
    next_state,
)
from acd.errors import AmiError, StoreUnavailable, UnknownName
from acd.runtime.alerts import AlertSender
from acd.runtime.flows import load_checked_flows
from acd.runtime.heartbeat import Heartbeat
from acd.runtime.ivr import IvrService
from acd.runtime.journey import Recorder, report_targets
from acd.runtime.load import LoadCache
from acd.runtime.trunks import TrunkBoard

log = structlog.get_logger(__name__)

# Callback admission runs on events and when the next callback falls due; this bounds the wait
# for what only another controller saw (a callback it recorded, an agent it freed).
ADMISSION_SAFETY_SECONDS = 5.0
RESYNC_RETRY_FIRST = 0.5  # seconds before a failed resync is tried again (doubling, up to:)
RESYNC_RETRY_MAX = 10.0
STORE_PROBE = 0.25  # seconds between two pings of a Redis that went away
ADMISSION_MIN_INTERVAL = 0.25  # seconds between two admission rounds at most: a peak frees
# agents many times a second, and one round admits for all of them
# What an agent's phone hears after a star code (core sounds).
AGENT_CODE_PROMPTS = {
    "login": "agent-loginok",
    "logout": "agent-loggedoff",
    "pause": "beep",
    "resume": "beep",
}


def endpoint_of(channel: str) -> str:
    """The PJSIP endpoint of a channel name (PJSIP/agent-1001-0000002a -> agent-1001).

    >>> endpoint_of("PJSIP/agent-1001-0000002a"), endpoint_of("Local/x@y-0001;1")
    ('agent-1001', '')
    """
    if not channel.startswith("PJSIP/"):
        return ""
    return channel.removeprefix("PJSIP/").rpartition("-")[0]


class UnknownAgent(UnknownName):
    code = "unknown_agent"

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"no agent {agent_id!r}")


class Controller:
    def __init__(self, settings: Settings, flows: dict[str, Flow]) -> None:
        self.settings = settings
        ami = settings.asterisk.ami
        self.store = RedisStore(
            redis_url(settings),
            settings.redis.prefix,
            settings.escalation_rules(),
            node=settings.asterisk.node,
            timeout=settings.redis.timeout,
        )
        self.ami = AmiClient(
            host=ami.host,
            port=ami.port,
            username=ami.username,
            secret=read_secret(settings, ami.secret_file, "ACD_AMI_SECRET"),
            ping_interval=ami.ping_interval,
            ping_timeout=ami.ping_timeout,
            on_connected=self._on_ami_connected,
        )
        self.trunks = TrunkBoard(settings, self.store)
        self.load = LoadCache(self.store, settings.skill_names())
        self.recorder = Recorder(
            self.store,
            settings.reports.retention_days,
            settings.asterisk.node,
            targets=report_targets(settings.reports),
            window=settings.reports.service_window,
        )
        self._callbacks_due = asyncio.Event()
        self._resync_needed = asyncio.Event()  # the dispatcher asks for a resync (no reconnect)
        self.dispatcher = Dispatcher(
            settings,
            self.store,
            self.ami,
            self.trunks,
            self.recorder,
            on_callback_slot=self._callbacks_due.set,
            on_resync_needed=self._resync_needed.set,
        )
        self.ami.add_listener(self.dispatcher.on_ami_event)
        self.leases = LeaseKeeper(
            LeaseStore(self.store.link, self.store.prefix),
            lease_length(settings.asterisk.ring_timeout),
            agent_ready=self.dispatcher.agent_ready,
            queue_ready=self.dispatcher.queue_ready,
        )
        self.lookups = LookupClient(settings.lookups)
        self.ivr = IvrService(
            settings,
            flows,
            self.store,
            self.lookups,
            self.dispatcher.enqueued,
            on_callback=self._callbacks_due.set,
            trunks=self.trunks,
            recorder=self.recorder,
            load=self.load,
            claim_batch=CLAIM_BATCH,
        )
        self.agi = FastAgiServer(
            {
                "inbound": self.ivr.inbound,
                "announce": self.ivr.announce,
                "callback": self.ivr.hold_callback,
                "transfer_failed": self.ivr.transfer_failed,
                "agent": self.agent_code,
            },
            host=settings.agi.host,
            port=settings.agi.port,
            command_timeout=settings.agi.command_timeout,
            secret=agi_secret(settings),
        )
        self._admin_tokens = admin_tokens(settings)
        self._viewer_tokens = viewer_tokens(settings, self._admin_tokens)
        self._policy = GovernorPolicy(
            thresholds=settings.overload.thresholds,
            hysteresis=settings.overload.hysteresis,
            cool_down=settings.overload.cool_down,
            failure_after=settings.overload.failure_after,
        )
        self._ami_down_since: float | None = None
        self._alert_rules = [
            (
                AlertRule(r.name, r.figure, r.queue, r.above, r.below, r.for_seconds),
                AlertState(),
            )
            for r in settings.alerts.rules
        ]
        self._alerts_loaded = False
        self.alert_store = AlertStore(self.store.link, self.store.prefix, settings.asterisk.node)
        self.alert_sender = (
            AlertSender(self.alert_store, settings.alerts.webhook, settings.alerts.timeout)
            if settings.alerts.webhook
            else None
        )
        self._agent_of_endpoint = {a.endpoint: a.id for a in settings.local_agents()}
        self.resyncs = 0
        self._listening: set[str] = set()
        self.ready = asyncio.Event()
        self.heartbeat = Heartbeat(
            self.ami, settings.agi.heartbeat, settings.agi.alive_window, self.ready.is_set
        )

    # -- AMI ---------------------------------------------------------------------------------

    async def _on_ami_connected(self) -> None:
        """After every AMI login: resync, again and again until a resync succeeds (a refused or
        timed-out list, or Redis down, is no resync); only then is AMI ready. A lost session
        cancels this, and the next login starts over. (The session gets only the events we act
        on: manager.conf filters them for the controller's user.)"""
        delay = RESYNC_RETRY_FIRST
        while True:
            try:
                await self.dispatcher.resync()
                break
            except (AmiError, StoreUnavailable) as exc:
                log.warning("controller.resync_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, RESYNC_RETRY_MAX)
        self.resyncs += 1
        log.info("controller.ami_resynced", resyncs=self.resyncs)
        self._component_ready("ami")

    async def resync_on_demand(self) -> None:
        """Resync when the dispatcher asks, with no AMI reconnect to do it: it dropped work
        because Redis was away (AMI events among it: a hangup, a bridge), an AMI action got no
        reply, a callback attempt was left undecided. Waits until Redis answers (pinged every
        STORE_PROBE); with AMI down the next login resyncs. A resync that fails is tried again
        the same way."""
        while True:
            await self._resync_needed.wait()
            await asyncio.sleep(STORE_PROBE)
            if not await self.store.ping():
                continue
            self._resync_needed.clear()
            if not self.ami.connected:
                continue
            try:
                await self.dispatcher.resync()
            except (AmiError, StoreUnavailable) as exc:
                log.warning("controller.resync_failed", error=str(exc), retry_in=STORE_PROBE)
                self._resync_needed.set()
                continue
            self.resyncs += 1
            log.info("controller.resynced_on_demand", resyncs=self.resyncs)

    def _component_ready(self, name: str) -> None:
        self._listening.add(name)
        if {"agi", "admin", "ami"} <= self._listening:
            self.ready.set()

    # -- overload governor -------------------------------------------------------------------

    async def _govern(self) -> None:
        """Recompute the overload level every `interval` seconds from what Redis holds."""
        await self.ready.wait()  # before AMI is up the governor would see a failure
        own = await self.store.own_overload()  # go on from this node's last report
        state = GovernorState() if own is None else GovernorState(level=own[0], below_since=own[1])
        while True:
            try:
                state = await self._govern_once(state)
            except StoreUnavailable as exc:
                log.warning("overload.store_unavailable", error=str(exc))
            await asyncio.sleep(self.settings.overload.interval)

    async def _govern_once(self, state: GovernorState) -> GovernorState:
        await self.dispatcher.sweep_wrapups()
        await self.leases.sweep()
        if self._alert_rules:
            await self._check_alerts()
        load = await self.load.get()
        now = time.time()
        value = load_of(load.waiting_total, load.talking, load.staffed)
        # A reconnect of a second is no failure: only a link down for `failure_after` is.
        self._ami_down_since = link_down_since(self._ami_down_since, self.ami.connected, now)
        failure = link_failed(self._ami_down_since, now, self._policy)
        new = next_state(state, value, now, self._policy, failure=failure)
        # A report older than three ticks is a controller that stopped: it no longer counts.
        stale_after = 3 * self.settings.overload.interval
        effective = await self.store.save_overload(new.level, new.below_since, now, stale_after)
        if new.level != state.level:
            log.info(
                "overload.level_changed",
                before=state.level,
                after=new.level,
                effective=effective,
                load=round(value, 2) if value != float("inf") else "inf",
            )
        return new

    async def _admit_callbacks(self) -> None:
        """Due callbacks join their queues at their caller's place, within the callback hours
        and paced against inbound load (the admission script is atomic, so several controllers
        admit each attempt once). Runs when the next callback falls due, when a caller asks for
        one, when an attempt ends or an agent comes free, and at least every few seconds (for
        what other controllers changed)."""
        cb = self.settings.callbacks
        hours = self.settings.hours[cb.hours].to_domain() if cb.hours else None
        await self.ready.wait()
        while True:
            # Cleared before the round: a wake during the round (or the pause after it) is kept.
            self._callbacks_due.clear()
            wait = ADMISSION_SAFETY_SECONDS
            try:
                now = time.time()
                if may_dial(hours, now):
                    load = await self.load.floor()  # staffed agents only
                    admitted, expired, next_due = await self.store.admit_callbacks(
                        now, cb.share, cb.expiry, load.staffed_by_skill
                    )
                    for skill in admitted:
                        log.info("callback.admitted", queue=skill)
                        self.dispatcher.skill_ready(skill)
                    for callback in expired:
                        queue = (await self.store.callback(callback)).get("skill")
                        log.warning("callback.expired", callback=callback, queue=queue)
                        await self.recorder.emit("callback_expired", callback, skill=queue)
                    if next_due is not None and next_due > now:
                        wait = min(wait, max(0.05, next_due - now))
            except StoreUnavailable as exc:
                log.warning("callback.store_unavailable", error=str(exc))
            await asyncio.sleep(ADMISSION_MIN_INTERVAL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._callbacks_due.wait(), max(0.0, wait - ADMISSION_MIN_INTERVAL)
                )

    async def _take_handoffs(self) -> None:
        """Callers of this node that another node's controller claimed an agent for (multi-node:
        only the controller of the caller's node can redirect its channel)."""
        await self.ready.wait()
        while True:
            try:
                uid = await self.store.next_handoff(block=2.0)
            except StoreUnavailable as exc:
                log.warning("dispatch.handoff_store_unavailable", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            if uid is not None:
                self.dispatcher.handed(uid)

    async def _check_alerts(self) -> None:
        """Evaluate the alert rules on live figures; a change is recorded in Redis with its
        notice for the webhook, in one step and once for the deployment (every controller
        evaluates the rules). The notice is sent by the sender's own task: the tick never waits
        on HTTP."""
        if not self._alerts_loaded:
            # A restarted controller goes on from the deployment's statuses: a rule that was
            # firing resolves (and says so) when its figure is back.
            statuses = await self.alert_store.statuses(r.name for r, _ in self._alert_rules)
            for rule, state in self._alert_rules:
                state.firing = statuses.get(rule.name) == "firing"
            self._alerts_loaded = True
        now = time.time()
        queues = await self.queues()
        trunks = await self.trunks.summary()
        floor = {
            "overload_level": (await self.overload())["level"],
            "breakers_open": sum(1 for t in trunks.values() if t["state"] != "closed"),
        }
        for rule, state in self._alert_rules:
            change = alert_step(rule, state, queues, floor, now)
            if change is None:
                continue
            payload = {
                "id": uuid.uuid4().hex,
                "alert": rule.name,
                "status": change,
                "figure": rule.figure,
                "queue": rule.queue,
                "value": state.value,
                "above": rule.above,
                "below": rule.below,
                "node": self.settings.asterisk.node,
                "at": now,
            }
            notice = json.dumps(payload) if self.alert_sender is not None else ""
            if not await self.alert_store.change(rule.name, change, notice):
                continue  # another controller saw it first
            log.warning("alert.changed", alert=rule.name, status=change, value=state.value)
            if self.alert_sender is not None:
                self.alert_sender.notify()

    # -- what the admin API steers -----------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        queues = await self.queues()
        agents = {}
        for agent_id in await self.store.agent_ids():
            agent = await self.store.agent(agent_id)
            agents[agent_id] = {
                "state": agent.get("state"),
                "reason": agent.get("reason") or None,
                "call": agent.get("call") or None,
            }
        return {
            "node": self.settings.asterisk.node,
            "components": {
                "ami": {
                    "connected": self.ami.connected,
                    "reconnects": self.ami.reconnects,
                    "resyncs": self.resyncs,
                },
                "redis": {"ok": await self.store.ping()},
                "agi": {"listening": "agi" in self._listening},
                "admin": {"listening": "admin" in self._listening},
            },
            "queues": queues,
            "agents": agents,
            "overload": await self.overload(),
            "menu_modes": await self.menu_modes(),
            "flows": sorted(self.ivr.flows),
            "connects": self.dispatcher.connects,
            "trunks": await self.trunks.summary(),
            "callbacks": await self.callback_counts(),
            "callbacks_dialled": self.dispatcher.callbacks_dialled,
            "ivr_turns": self.ivr.turns,
        }

    async def is_ready(self) -> bool:
        """AMI, Redis and FastAGI up, and the node's dialplan told so (a caller arriving now is
        sent to us, not to the static menu)."""
        return (
            self.ami.connected
            and await self.store.ping()
            and "agi" in self._listening
            and self.heartbeat.alive()
        )

    async def menu_modes(self) -> dict[str, str]:
        """Each entry's menu mode: the one a supervisor set, else the entry's configured one."""
        defaults = {e.number: e.mode for e in self.settings.entries}
        return await self.store.menu_modes(defaults, defaults)

    async def set_menu_mode(self, who: str, mode: str, number: str | None) -> dict[str, str]:
        """One entry's menu mode, or every entry's, in one audited Redis step."""
        defaults = {e.number: e.mode for e in self.settings.entries if number in (None, e.number)}
        before = await self.store.set_menu_modes(defaults, mode, who, time.time())
        for n, was in before.items():
            log.info("admin.menu_mode_set", who=who, entry=n, before=was, after=mode)
        return await self.menu_modes()

    async def overload(self) -> dict[str, Any]:
        raw = await self.store.overload()
        pinned = raw.get("pinned", "")
        return {
            "level": int(raw.get("level") or 0),
            "computed": int(raw.get("computed") or 0),
            "pinned": int(pinned) if pinned else None,
        }

    async def pin_overload(self, who: str, level: int | None) -> dict[str, Any]:
        """Pin the level (None: the governor's), audited, in one step no governor tick undoes."""
        before = await self.store.pin_overload(level, who, time.time())
        after = "auto" if level is None else str(level)
        was = before.get("pinned") or "auto"
        log.info("admin.overload_pinned", who=who, before=was, level=after)
        return await self.overload()

    async def reload_flows(self, who: str) -> list[str]:
        """Load and validate every flow from disk; on any problem keep the running ones."""
        flows = await asyncio.to_thread(load_checked_flows, self.settings)
        # The entry before the change (which is this controller's, in memory): no reload goes
        # unaudited; one whose entry cannot be written is not made.
        await self.store.audit(who, "flows reload", "", ",".join(sorted(flows)), time.time())
        self.ivr.replace_flows(flows)
        log.info("admin.flows_reloaded", who=who, flows=sorted(flows))
        return sorted(flows)

    async def agents(self) -> dict[str, dict[str, Any]]:
        out = {}
        for agent_id in await self.store.agent_ids():
            fields = await self.store.agent(agent_id)
            out[agent_id] = {
                "state": fields.get("state"),
                "reason": fields.get("reason") or None,
                "call": fields.get("call") or None,
                "skills": fields.get("skills", ""),
            }
        return out

    async def agent_action(
        self, who: str, agent_id: str, action: str, reason: str
    ) -> dict[str, Any]:
        event = AgentEvent(action)
        now = time.time()
        applied, before = await self.store.agent_event(
            agent_id, event, now, reason=reason, audited_by=who
        )
        if not applied:
            raise IllegalTransition(before, event)
        after = (await self.store.agent(agent_id)).get("state", "")
        log.info("admin.agent_changed", who=who, agent=agent_id, before=before, after=after)
        self.load.invalidate()  # a supervisor's change shows in the next figures at once
        if after == AgentState.AVAILABLE:
            self.dispatcher.agent_ready(agent_id)
        return {"agent": agent_id, "before": before, "state": after}

    async def agent_code(self, channel: AgiChannel) -> None:
        """An agent's phone dialled a star code (the dialplan's acd-agent-code): apply it to the
        agent whose phone it is, audited as that phone, and answer with a prompt: logged in,
        logged off, a beep for pause and resume, an error beep when it is not allowed now."""
        action = channel.env.get("arg_1", "")
        endpoint = endpoint_of(channel.env.get("channel", ""))
        agent = self._agent_of_endpoint.get(endpoint)
        if agent is None or action not in AGENT_CODE_PROMPTS:
            log.warning("agent_code.refused", endpoint=endpoint[:40], action=action[:16])
            await channel.stream_file("beeperr")
            return
        try:
            reason = "phone" if action == "pause" else ""
            await self.agent_action(f"phone {endpoint}", agent, action, reason)
        except IllegalTransition as exc:
            log.info("agent_code.not_now", agent=agent, action=action, state=exc.state)
            await channel.stream_file("beeperr")
            return
        await channel.stream_file(AGENT_CODE_PROMPTS[action])

    async def callback_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cb in await self.store.callbacks():
            state = cb.get("state", "")
            counts[state] = counts.get(state, 0) + 1
        return counts

    async def callbacks(self) -> list[dict[str, str]]:
        return await self.store.callbacks()

    async def trunk_summary(self) -> dict[str, dict[str, Any]]:
        return await self.trunks.summary()

    async def trunk_action(self, who: str, name: str, action: str) -> dict[str, Any]:
        if action == "trip":
            return await self.trunks.trip(who, name)
        return await self.trunks.reset(who, name)

    async def queues(self) -> dict[str, dict[str, Any]]:
        """Per queue: state, callback mode, callers waiting and the longest wait, the estimated
        wait for a new caller, and its agents by state."""
        skills = self.settings.skill_names()
        now = time.time()
        load = await self.load.get(skills)
        states = await self.store.queue_states(skills)
        modes = await self.store.callback_modes(skills)
        agents = await self.agents()
        levels = await self.recorder.service_levels(skills, now)
        out: dict[str, dict[str, Any]] = {}
        for skill in skills:
            head = await self.store.waiting(skill)
            longest = 0.0
            if head:
                record = await self.store.call(head[0])
                longest = record.waited(now) if record else 0.0
            by_state: dict[str, int] = {}
            for agent in agents.values():
                if any(part.split(":")[0] == skill for part in agent["skills"].split(",")):
                    by_state[agent["state"]] = by_state.get(agent["state"], 0) + 1
            ewt = await self.ivr.estimate(skill, load, now)
            sl = levels[skill]
            out[skill] = {
                "service_level": None if sl is None else round(sl, 3),
                "state": states[skill],
                "callbacks": modes[skill],
                "waiting": load.waiting.get(skill, 0),
                "longest_wait": round(longest, 1),
                "ewt": round(ewt, 1),
                "agents": by_state,
            }
        return out

    async def set_queue_state(self, who: str, skill: str, state: str) -> dict[str, Any]:
        before = (await self.store.set_queue_states([skill], state, who, time.time()))[skill]
        log.info("admin.queue_state_set", who=who, queue=skill, before=before, after=state)
        if state == "open" and before == "paused":
            self.dispatcher.skill_ready(skill)  # its callers go on from their places, now
        return (await self.queues())[skill]

    async def set_callback_mode(self, who: str, mode: str, skill: str | None) -> dict[str, str]:
        """Callback offers of one queue or all, in one audited Redis step."""
        skills = [skill] if skill else self.settings.skill_names()
        before = await self.store.set_callback_modes(skills, mode, who, time.time())
        for name, was in before.items():
            log.info("admin.callback_mode_set", who=who, queue=name, before=was, after=mode)
        return await self.store.callback_modes(self.settings.skill_names())

    async def set_agent_skills(
        self, who: str, agent_id: str, skills: dict[str, int]
    ) -> dict[str, Any]:
        before = await self.store.set_agent_skills(agent_id, skills, who)
        if before is None:
            raise UnknownAgent(agent_id)
        after = ",".join(f"{s}:{lvl}" for s, lvl in sorted(skills.items()))
        log.info("admin.agent_skills_set", who=who, agent=agent_id, before=before, after=after)
        self.dispatcher.agent_ready(agent_id)  # it may serve a queue it could not before
        return {"agent": agent_id, "before": before, "skills": after}

    async def metrics(self) -> bytes:
        """Prometheus text: this controller's counters, and gauges read now from Redis/AMI."""
        r = self.recorder
        r.ami_up.set(1 if self.ami.connected else 0)
        ok = await self.store.ping()
        r.redis_up.set(1 if ok else 0)
        if ok:
            queues = await self.queues()
            # Shared by every controller (queues() reads it from Redis); a queue nobody counts
            # for in the window has no figure rather than a stale one.
            r.sl.clear()
            for skill, q in queues.items():
                r.queue_waiting.labels(skill).set(q["waiting"])
                r.queue_longest.labels(skill).set(q["longest_wait"])
                r.queue_ewt.labels(skill).set(q["ewt"])
                if q["service_level"] is not None:
                    r.sl.labels(skill).set(q["service_level"])
            counts: dict[str, int] = dict.fromkeys([s.value for s in AgentState], 0)
            for agent in (await self.agents()).values():
                counts[str(agent["state"])] = counts.get(str(agent["state"]), 0) + 1
            for state, n in counts.items():
                r.agents.labels(state).set(n)
            r.overload.set((await self.overload())["level"])
            for name, t in (await self.trunks.summary()).items():
                for state in ("closed", "open", "half_open"):
                    r.breaker.labels(name, state).set(1 if t["state"] == state else 0)
                r.trunk_in_use.labels(name).set(t["in_use"])
        return r.exposition()

    async def set_tiers(self, who: str, tiers: dict[str, str]) -> int:
        return await self.store.set_tiers(tiers, who, time.time())

    def openapi(self) -> dict[str, Any]:
        s = self.settings
        return build_spec(
            skills=s.skill_names(),
            agents=[a.id for a in s.agents],
            trunks=self.trunks.names(),
            entries=[e.number for e in s.entries],
        )

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        # Agents this deployment no longer has must not keep taking callers. (Every controller
        # of a deployment has the same agents list: see examples/multinode/.)
        configured = {a.id for a in self.settings.agents}
        await self.store.retire_agents(set(await self.store.agent_ids()) - configured)
        await self.store.register_agents(
            self.settings.agents, time.time(), login=self.settings.agent_policy.auto_login
        )
        app = admin_api.build_app(
            self._admin_tokens, self, self.openapi(), viewers=self._viewer_tokens
        )
        admin = self.settings.admin
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.dispatcher.run(), name="dispatcher")
                tg.create_task(self.ami.run(), name="ami")
                tg.create_task(
                    self.agi.serve(ready=lambda _port: self._component_ready("agi")), name="agi"
                )
                tg.create_task(
                    admin_api.serve(
                        app, admin.host, admin.port, lambda: self._component_ready("admin")
                    ),
                    name="admin",
                )
                tg.create_task(self._govern(), name="governor")
                tg.create_task(self._take_handoffs(), name="handoffs")
                tg.create_task(self.resync_on_demand(), name="resync-on-demand")
                tg.create_task(self._admit_callbacks(), name="callbacks")
                tg.create_task(self.recorder.watch_loop_lag(), name="loop-lag")
                tg.create_task(self.heartbeat.run(), name="heartbeat")
                if self.alert_sender is not None:
                    tg.create_task(self.alert_sender.run(), name="alerts")
                log.info("controller.started", node=self.settings.asterisk.node)
        finally:
            await asyncio.shield(self.recorder.flush())
            await asyncio.shield(self.lookups.close())
            await asyncio.shield(self.store.close())
