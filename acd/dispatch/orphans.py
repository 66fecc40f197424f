"""Callers on hold that Redis does not know: adopted by the resync.

The IVR tells the dialplan a caller is queued (ACD_QUEUE, ACD_RESULT=queued) and then queues it
in Redis; a controller that dies between the two (or a Redis that lost the call) leaves a caller
in the hold context whom no claim can find, until the hold limit sends it to the fallback queue
(30 minutes by default). The resync after every AMI login (a restarted controller's first) finds
such channels among Asterisk's live ones and queues them again, at no later a place than where
they stood: as if they had joined when their call began, with their tier's head start.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import structlog

from acd.adapters.ami import AmiClient
from acd.adapters.store import RedisStore
from acd.config import Settings
from acd.dispatch.policy import in_call_since, is_orphan
from acd.errors import AmiActionFailed
from acd.protocol.ami import AmiMessage

log = structlog.get_logger(__name__)

_CALLER_ID = re.compile(r"\+?[0-9]{1,32}")  # used with fullmatch; anything else is not kept


async def adopt_orphans(
    live: Mapping[str, AmiMessage],
    known: set[str],
    *,
    settings: Settings,
    store: RedisStore,
    ami: AmiClient,
    agent_devices: Mapping[str, str],
    now: float,
) -> int:
    """Queue the callers on hold among `live` (uniqueid -> CoreShowChannel) whose uniqueid is
    not in `known` (the node's calls in Redis); returns how many were. The queue is the channel's
    ACD_QUEUE; a call the IVR queued meanwhile is left as it is."""
    adopted = 0
    skills = set(settings.skill_names())
    for uid, channel in live.items():
        name = channel.get("Channel") or ""
        if not is_orphan(uid, channel.get("Context") or "", name, known, agent_devices):
            continue
        try:
            reply = await ami.send_action("Getvar", {"Channel": name, "Variable": "ACD_QUEUE"})
        except AmiActionFailed:
            continue  # gone meanwhile
        skill = reply.get("Value") or ""
        if skill not in skills:
            log.error("dispatch.orphan_unknown_queue", uniqueid=uid, queue=skill[:40])
            continue
        caller_id = channel.get("CallerIDNum") or ""
        if not _CALLER_ID.fullmatch(caller_id):
            caller_id = ""
        tier = await store.tier(caller_id) if caller_id else ""
        head_start = settings.tiers.get(tier, 0.0)
        since = in_call_since(channel.get("Duration") or "", now)
        fields = {
            "channel": name,
            "caller_id": caller_id,
            "tier": tier,
            "head_start": repr(head_start),
            "enqueued_at": repr(since),
            "adopted": "1",
        }
        queued = await store.enqueue(
            uid=uid, skill=skill, score=since - head_start, node=settings.asterisk.node,
            fields=fields, now=now, if_absent=True,
        )  # fmt: skip
        if queued:
            adopted += 1
            log.warning("dispatch.orphan_adopted", uniqueid=uid, queue=skill, since=round(since, 3))
    return adopted
