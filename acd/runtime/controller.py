"""The composition root of the controller: builds every component and owns their tasks.

One TaskGroup owns the AMI client, the FastAGI server, the dispatcher and the admin API; when one of
them fails the others are cancelled and the error propagates (the process supervisor restarts us;
callers keep waiting in Asterisk meanwhile).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from acd.adapters import admin_api
from acd.adapters.ami import AmiClient
from acd.adapters.fastagi import FastAgiServer
from acd.adapters.store import RedisStore
from acd.config import Settings, read_secret
from acd.domain.flow import Flow
from acd.errors import AmiActionFailed
from acd.runtime.dispatch import EVENTS, Dispatcher
from acd.runtime.ivr import IvrService

log = structlog.get_logger(__name__)


class Controller:
    def __init__(self, settings: Settings, flows: dict[str, Flow]) -> None:
        self.settings = settings
        ami = settings.asterisk.ami
        self.store = RedisStore(settings.redis.url, settings.redis.prefix)
        self.ami = AmiClient(
            host=ami.host,
            port=ami.port,
            username=ami.username,
            secret=read_secret(settings, ami.secret_file, "ACD_AMI_SECRET"),
            ping_interval=ami.ping_interval,
            ping_timeout=ami.ping_timeout,
            on_connected=self._on_ami_connected,
        )
        self.dispatcher = Dispatcher(settings, self.store, self.ami)
        self.ami.add_listener(self.dispatcher.on_ami_event)
        self.ivr = IvrService(settings, flows, self.store, self.dispatcher.skill_ready)
        self.agi = FastAgiServer(
            {"inbound": self.ivr.inbound},
            host=settings.agi.host,
            port=settings.agi.port,
            command_timeout=settings.agi.command_timeout,
        )
        self._admin_token = read_secret(settings, settings.admin.token_file, "ACD_ADMIN_TOKEN")
        self.resyncs = 0
        self._listening: set[str] = set()
        self.ready = asyncio.Event()

    async def _on_ami_connected(self) -> None:
        await self._filter_events()
        await self.dispatcher.resync()
        self.resyncs += 1
        log.info("controller.ami_resynced", resyncs=self.resyncs)
        self._component_ready("ami")

    async def _filter_events(self) -> None:
        """Ask Asterisk to send this session only the events we act on (hash-based name filters of
        Asterisk 22), so a busy node does not flood the controller. Per session: redone after every
        reconnect. Other AMI users (supervisors, tests) still see everything."""
        for name in sorted(EVENTS):
            try:
                await self.ami.send_action(
                    "Filter",
                    {"Operation": "Add", "MatchCriteria": f"action(include),name({name})"},
                )
            except AmiActionFailed as exc:
                log.warning("controller.ami_filter_refused", ami_event=name, error=exc.message)
                return

    def _component_ready(self, name: str) -> None:
        self._listening.add(name)
        if {"agi", "admin", "ami"} <= self._listening:
            self.ready.set()

    async def status(self) -> dict[str, Any]:
        queues = {}
        for skill in self.settings.skill_names():
            queues[skill] = {"waiting": await self.store.queue_depth(skill)}
        agents = {}
        for agent_id in await self.store.agent_ids():
            agent = await self.store.agent(agent_id)
            agents[agent_id] = {"state": agent.get("state"), "call": agent.get("call") or None}
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
            "connects": self.dispatcher.connects,
        }

    async def is_ready(self) -> bool:
        return self.ami.connected and await self.store.ping() and "agi" in self._listening

    async def run(self) -> None:
        await self.store.register_agents(self.settings.agents, time.time())
        app = admin_api.build_app(self._admin_token, self.status, self.is_ready)
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
                log.info("controller.started", node=self.settings.asterisk.node)
        finally:
            await asyncio.shield(self.store.close())
