"""IVR flows as data: YAML compiled into a validated graph, and a pure interpreter over it.

A flow is loaded and checked once (`compile_flow`); a call then walks it with `FlowRun`, which takes
events (the digits the caller pressed, or none on timeout) and returns the next step to carry out.
No I/O here: the FastAGI adapter performs the steps.

This first version knows the node kinds the vertical slice needs: `menu` and `queue`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acd.errors import ConfigError

_PROMPT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_/-]{0,79}$")
_NODE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
DTMF = frozenset("0123456789*#")


@dataclass(frozen=True)
class MenuNode:
    name: str
    prompts: tuple[str, ...]
    options: Mapping[str, str]
    timeout_ms: int
    retries: int
    invalid_prompt: str | None
    timeout_prompt: str | None
    on_failure: str


@dataclass(frozen=True)
class QueueNode:
    name: str
    skill: str
    priority: int


Node = MenuNode | QueueNode


@dataclass(frozen=True)
class Flow:
    name: str
    start: str
    nodes: Mapping[str, Node]


# Steps the interpreter asks the adapter to carry out.
@dataclass(frozen=True)
class PlayAndCollect:
    """Play prompts (interruptible by any option digit) then wait for one digit."""

    node: str
    prompts: tuple[str, ...]
    valid_digits: str
    timeout_ms: int


@dataclass(frozen=True)
class Play:
    prompt: str


@dataclass(frozen=True)
class Enqueue:
    node: str
    skill: str
    priority: int


Step = PlayAndCollect | Play | Enqueue


@dataclass
class FlowRun:
    """One call's walk through a flow. `start()` then `on_digits()` after each PlayAndCollect."""

    flow: Flow
    node: str = ""
    attempts: int = 0
    path: list[str] = field(default_factory=list)

    def start(self) -> list[Step]:
        return self._enter(self.flow.start)

    def on_digits(self, digits: str) -> list[Step]:
        """The caller pressed `digits` ("" when the menu timed out)."""
        node = self.flow.nodes[self.node]
        if not isinstance(node, MenuNode):
            raise TypeError(f"flow {self.flow.name}: node {self.node} does not take digits")
        target = node.options.get(digits) if digits else None
        if target is not None:
            return self._enter(target)
        self.attempts += 1
        if self.attempts > node.retries:
            return self._enter(node.on_failure)
        retry_prompt = node.invalid_prompt if digits else node.timeout_prompt
        steps: list[Step] = [Play(retry_prompt)] if retry_prompt else []
        return [*steps, self._collect(node)]

    def _enter(self, name: str) -> list[Step]:
        self.node = name
        self.attempts = 0
        self.path.append(name)
        node = self.flow.nodes[name]
        if isinstance(node, MenuNode):
            return [self._collect(node)]
        return [Enqueue(node=name, skill=node.skill, priority=node.priority)]

    @staticmethod
    def _collect(node: MenuNode) -> PlayAndCollect:
        return PlayAndCollect(
            node=node.name,
            prompts=node.prompts,
            valid_digits="".join(sorted(node.options)),
            timeout_ms=node.timeout_ms,
        )


class FlowProblems(ConfigError):
    """Every problem found in one flow file, one per line."""


def compile_flow(raw: Any, source: str, skills: frozenset[str]) -> Flow:
    """Validate a parsed flow and build its graph; raise FlowProblems listing every issue."""
    problems: list[str] = []

    def problem(where: str, what: str) -> None:
        problems.append(f"{source}: {where}: {what}")

    if not isinstance(raw, dict):
        raise FlowProblems(f"{source}: a flow must be a mapping with flow, start and nodes")
    for key in raw:
        if key not in {"flow", "start", "nodes", "description"}:
            problem(str(key), "unknown key")
    name = raw.get("flow")
    if not isinstance(name, str) or not _NODE.match(name):
        problem("flow", f"{name!r} is not a valid flow name")
        name = "?"
    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, dict) or not nodes_raw:
        raise FlowProblems("\n".join([*problems, f"{source}: nodes: must be a non-empty mapping"]))
    start = raw.get("start")
    if start not in nodes_raw:
        problem("start", f"{start!r} is not a node of this flow")

    nodes: dict[str, Node] = {}
    for node_name, spec in nodes_raw.items():
        where = f"nodes.{node_name}"
        if not isinstance(node_name, str) or not _NODE.match(node_name):
            problem(where, "invalid node name")
            continue
        if not isinstance(spec, dict):
            problem(where, "must be a mapping")
            continue
        kind = spec.get("kind")
        if kind == "menu":
            menu = _menu(node_name, spec, nodes_raw, problem)
            if menu is not None:
                nodes[node_name] = menu
        elif kind == "queue":
            skill = spec.get("skill")
            if skill not in skills:
                problem(f"{where}.skill", f"unknown skill {skill!r}")
            priority = spec.get("priority", 0)
            if not isinstance(priority, int) or not 0 <= priority <= 3600:
                problem(
                    f"{where}.priority", "must be an integer from 0 to 3600 (seconds of head start)"
                )
            extra = set(spec) - {"kind", "skill", "priority"}
            for key in sorted(extra):
                problem(f"{where}.{key}", "unknown key")
            nodes[node_name] = QueueNode(
                node_name, str(skill), int(priority) if isinstance(priority, int) else 0
            )
        else:
            problem(f"{where}.kind", f"unknown node kind {kind!r} (known: menu, queue)")

    if not problems and isinstance(start, str):
        reachable = _reachable(start, nodes)
        for node_name in nodes:
            if node_name not in reachable:
                problem(f"nodes.{node_name}", "unreachable from start")
    if problems:
        raise FlowProblems("\n".join(problems))
    return Flow(name=name, start=str(start), nodes=nodes)


def _menu(
    name: str, spec: dict[str, Any], all_nodes: dict[str, Any], problem: Any
) -> MenuNode | None:
    where = f"nodes.{name}"
    allowed = {
        "kind",
        "prompt",
        "options",
        "timeout",
        "retries",
        "invalid_prompt",
        "timeout_prompt",
        "on_failure",
    }
    for key in sorted(set(spec) - allowed):
        problem(f"{where}.{key}", "unknown key")
    prompt = spec.get("prompt")
    prompts = (
        (prompt,) if isinstance(prompt, str) else tuple(prompt) if isinstance(prompt, list) else ()
    )
    if not prompts:
        problem(f"{where}.prompt", "a menu needs at least one prompt")
    for p in prompts:
        if not isinstance(p, str) or not _PROMPT.match(p):
            problem(f"{where}.prompt", f"{p!r} is not a valid sound name")
    options = spec.get("options")
    if not isinstance(options, dict) or not options:
        problem(f"{where}.options", "a menu needs at least one option")
        options = {}
    clean: dict[str, str] = {}
    for digit, target in options.items():
        d = str(digit)
        if len(d) != 1 or d not in DTMF:
            problem(f"{where}.options.{d}", "an option key must be one DTMF digit (0-9, * or #)")
        if target not in all_nodes:
            problem(f"{where}.options.{d}", f"unknown node {target!r}")
        clean[d] = str(target)
    on_failure = spec.get("on_failure")
    if on_failure not in all_nodes:
        problem(f"{where}.on_failure", f"unknown node {on_failure!r}: a menu needs a way out")
    timeout = spec.get("timeout", 5)
    retries = spec.get("retries", 2)
    if not isinstance(timeout, int | float) or not 1 <= timeout <= 60:
        problem(f"{where}.timeout", "must be a number of seconds from 1 to 60")
        timeout = 5
    if not isinstance(retries, int) or not 0 <= retries <= 9:
        problem(f"{where}.retries", "must be an integer from 0 to 9")
        retries = 2
    optional: dict[str, str | None] = {}
    for key in ("invalid_prompt", "timeout_prompt"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, str) or not _PROMPT.match(value)):
            problem(f"{where}.{key}", f"{value!r} is not a valid sound name")
            value = None
        optional[key] = value
    return MenuNode(
        name=name,
        prompts=tuple(str(p) for p in prompts),
        options=clean,
        timeout_ms=int(timeout * 1000),
        retries=retries,
        invalid_prompt=optional["invalid_prompt"],
        timeout_prompt=optional["timeout_prompt"],
        on_failure=str(on_failure),
    )


def _reachable(start: str, nodes: Mapping[str, Node]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        node = nodes[name]
        if isinstance(node, MenuNode):
            todo.extend(node.options.values())
            todo.append(node.on_failure)
    return seen


def load_flows(directory: Path, skills: frozenset[str]) -> dict[str, Flow]:
    """Load and validate every `*.yaml` flow in `directory`; all problems are reported together."""
    flows: dict[str, Flow] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            flow = compile_flow(raw, str(path), skills)
        except yaml.YAMLError as exc:
            problems.append(f"{path}: not valid YAML: {exc}")
            continue
        except FlowProblems as exc:
            problems.append(str(exc))
            continue
        if flow.name in flows:
            problems.append(f"{path}: flow: duplicate flow name {flow.name!r}")
        flows[flow.name] = flow
    if problems:
        raise FlowProblems("\n".join(problems))
    return flows
