"""Alerts in Redis: each rule's status, and an outbox of notices for the webhook.

- P:alert:NAME          a rule's last status (firing | resolved), for the deployment;
- P:alerts:outbox       notices (JSON) waiting to be sent, oldest first;
- P:alerts:sending:NODE the notices a node's controller took and has not sent yet.

A status change and its notice are one step (lua/alert_change.lua), so a notice is never lost
between them; a controller takes a notice into its own sending list (LMOVE, atomic) and drops it
once the webhook took it. A controller that died with notices there puts them back at the
outbox's head when it starts again: a notice may be sent twice (each carries an id), never lost.
"""

from __future__ import annotations

from collections.abc import Iterable

from acd.adapters.redis_link import RedisLink
from acd.adapters.store import lua

ALERT_CHANGE = lua("alert_change")


class AlertStore:
    def __init__(self, link: RedisLink, prefix: str, node: str) -> None:
        self._link = link
        self.prefix = prefix
        self._outbox = f"{prefix}:alerts:outbox"
        self._sending = f"{prefix}:alerts:sending:{node}"

    async def statuses(self, names: Iterable[str]) -> dict[str, str]:
        """Each rule's last status ('' for none yet)."""
        names = list(names)
        if not names:
            return {}
        values = await self._link.execute("MGET", *(f"{self.prefix}:alert:{n}" for n in names))
        return {n: str(v or "") for n, v in zip(names, values, strict=True)}

    async def change(self, name: str, status: str, notice: str = "") -> bool:
        """Record rule `name`'s new status and queue its notice ('': no webhook, nothing to
        send); False (nothing queued) when the deployment had that status already."""
        keys = [f"{self.prefix}:alert:{name}", self._outbox]
        return bool(await self._link.run_script(ALERT_CHANGE, keys, [status, notice]))

    async def take(self) -> str | None:
        """The oldest notice waiting, moved to this controller's sending list."""
        notice = await self._link.execute("LMOVE", self._outbox, self._sending, "LEFT", "RIGHT")
        return None if notice is None else str(notice)

    async def sent(self, notice: str) -> None:
        await self._link.execute("LREM", self._sending, 1, notice)

    async def recover(self) -> int:
        """Put back what this controller had taken and not sent (it stopped meanwhile), at the
        outbox's head, in order; returns how many."""
        moved = 0
        while await self._link.execute("LMOVE", self._sending, self._outbox, "RIGHT", "LEFT"):
            moved += 1
        return moved

    async def waiting(self) -> int:
        return int(await self._link.execute("LLEN", self._outbox))
