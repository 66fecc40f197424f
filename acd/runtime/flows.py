"""Loading the deployment's flows: validated against the configuration and the sounds on disk."""

from __future__ import annotations

from pathlib import Path

import structlog

from acd.config import Settings
from acd.domain.flow import Catalog, Flow, load_flows
from acd.errors import ConfigError
from acd.runtime import asterisk

log = structlog.get_logger(__name__)


def flow_catalog(settings: Settings) -> Catalog:
    return Catalog(
        skills=frozenset(settings.skill_names()),
        lookups=frozenset(settings.lookups),
        trunks=frozenset(t.name for t in settings.trunks if t.address is not None),
        hours=frozenset(settings.hours),
    )


def sound_dirs(settings: Settings) -> dict[str, Path] | None:
    """Where Asterisk finds prompts, by name prefix: the root's English sounds, and our generated
    prompts as `acd/`. None when the Asterisk root is not on this machine (no check then)."""
    core = (settings.asterisk.root / asterisk.SOUNDS_MOUNT).parent
    if not core.is_dir():
        return None
    return {"": core, "acd/": settings.resolve(settings.asterisk.sounds_dir)}


def load_checked_flows(
    settings: Settings, paths: list[Path] | None = None, *, check_sounds: bool = True
) -> dict[str, Flow]:
    """Every flow, validated against the configuration (and the sounds on this machine)."""
    dirs = sound_dirs(settings) if check_sounds else None
    if check_sounds and dirs is None:
        log.warning("flows.prompts_unchecked", root=str(settings.asterisk.root))
    flows = load_flows(
        paths or [settings.resolve(settings.flows_dir)], flow_catalog(settings), dirs
    )
    if paths is None:
        for entry in settings.entries:
            for name in filter(None, (entry.flow, entry.fallback_flow)):
                if name not in flows:
                    raise ConfigError(
                        f"{settings.source}: entries: number {entry.number} uses flow {name!r}, "
                        f"which is not in {settings.resolve(settings.flows_dir)}"
                    )
    return flows
