"""IVR flows as data: YAML compiled into a validated graph, and a pure interpreter over it.

`compile_flow` checks a flow once, at load, and reports every problem with file, line and key;
a flow that does not compile is never used. A call then walks the graph with `FlowRun`: the run
returns steps (play these prompts and collect a digit, look this up, queue the caller...) and takes
events back (the digits pressed, the lookup's outcome). No I/O here: the FastAGI adapter carries out
the steps, and time, the caller's tier and the overload level come in as `Facts`.

Node kinds: menu, play, collect, lookup, condition, set, queue, callback_offer, transfer, hangup.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from acd.domain.hours import BusinessHours
from acd.errors import AcdError, ConfigError

PROMPT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_/-]{0,79}\Z")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}\Z")
_VAR = re.compile(r"^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31})?\Z")
# A number we dial or answer on: an entry number, a transfer or overflow destination.
# Also pydantic's pattern for numbers in acd.yaml (Rust regex: `$` is the end of the text); Python
# code uses it with fullmatch, where a trailing newline cannot pass either.
NUMBER_RE = re.compile(r"^[0-9]{2,20}$")
DTMF = frozenset("0123456789*#")


def _member(value: Any, names: Collection[str]) -> TypeGuard[str]:
    """`value` is one of `names`: a string, never a list or mapping a hand-edited file put
    where a name belongs (those are unhashable: `in` would raise instead of refusing)."""
    return isinstance(value, str) and value in names


MAX_HOPS = 50  # nodes visited without asking the caller anything before a run is declared looping


# ---------------------------------------------------------------------------------------------
# The graph


@dataclass(frozen=True)
class Menu:
    name: str
    prompts: tuple[str, ...]
    options: Mapping[str, str]
    timeout_ms: int
    retries: int
    invalid_prompt: str | None
    timeout_prompt: str | None
    on_failure: str


@dataclass(frozen=True)
class PlayNode:
    name: str
    prompts: tuple[str, ...]
    say_digits: str | None
    next: str


@dataclass(frozen=True)
class Collect:
    name: str
    prompts: tuple[str, ...]
    var: str
    min_digits: int
    max_digits: int
    terminator: str | None
    timeout_ms: int
    retries: int
    invalid_prompt: str | None
    shortcuts: Mapping[str, str]
    next: str
    on_failure: str


@dataclass(frozen=True)
class LookupNode:
    name: str
    service: str
    params: Mapping[str, str]  # name -> "$var" or a literal
    into: str
    on_found: str
    on_not_found: str
    on_failure: str


@dataclass(frozen=True)
class Predicate:
    tier: frozenset[str] | None = None
    var: str | None = None
    equals: str | None = None
    one_of: frozenset[str] | None = None
    open: str | None = None
    closed: str | None = None
    date_in: frozenset[date] | None = None
    overload_at_least: int | None = None
    overload_below: int | None = None
    ewt_skill: str | None = None
    ewt_above: float | None = None


@dataclass(frozen=True)
class Condition:
    name: str
    cases: tuple[tuple[Predicate, str], ...]
    otherwise: str


@dataclass(frozen=True)
class SetNode:
    name: str
    skill: str | None
    priority: int | None
    language: str | None
    vars: Mapping[str, str]
    next: str


@dataclass(frozen=True)
class QueueNode:
    name: str
    skill: str | None
    priority: int | None
    prompt: str | None


@dataclass(frozen=True)
class CallbackOffer:
    name: str
    prompts: tuple[str, ...]
    skill: str
    accept_digit: str
    confirm_prompt: str | None
    timeout_ms: int
    on_decline: str


@dataclass(frozen=True)
class TransferNode:
    name: str
    number: str
    trunk: str
    prompt: str | None


@dataclass(frozen=True)
class HangupNode:
    name: str
    prompt: str | None


Node = (
    Menu
    | PlayNode
    | Collect
    | LookupNode
    | Condition
    | SetNode
    | QueueNode
    | CallbackOffer
    | TransferNode
    | HangupNode
)


@dataclass(frozen=True)
class Flow:
    name: str
    start: str
    nodes: Mapping[str, Node]
    fallback: str | None = None
    source: str = ""

    def prompts(self) -> set[str]:
        """Every sound the flow may play, for the prompt check."""
        out: set[str] = set()
        for node in self.nodes.values():
            for attr in ("prompts",):
                out.update(getattr(node, attr, ()))
            for attr in ("invalid_prompt", "timeout_prompt", "confirm_prompt", "prompt"):
                value = getattr(node, attr, None)
                if value:
                    out.add(value)
        return out

    def ewt_skills(self) -> frozenset[str]:
        """The queues whose wait estimate a condition of the flow compares (what Facts.ewt
        needs; a flow that asks none costs no estimate when a call arrives)."""
        return frozenset(
            predicate.ewt_skill
            for node in self.nodes.values()
            if isinstance(node, Condition)
            for predicate, _ in node.cases
            if predicate.ewt_skill is not None and predicate.ewt_above is not None
        )


# ---------------------------------------------------------------------------------------------
# Steps the interpreter asks the adapter to carry out, and the facts it decides with


@dataclass(frozen=True)
class PlayAndCollect:
    """Play prompts (any key ends them), then wait for one digit; `valid_digits` are the choices."""

    node: str
    prompts: tuple[str, ...]
    valid_digits: str
    timeout_ms: int


@dataclass(frozen=True)
class CollectDigits:
    """Play prompts, then collect up to `max_digits` (ended early by the terminator or a pause of
    `timeout_ms`); a first digit in `shortcuts` ends collection at once."""

    node: str
    prompts: tuple[str, ...]
    max_digits: int
    terminator: str | None
    timeout_ms: int
    shortcuts: str


@dataclass(frozen=True)
class Play:
    prompt: str


@dataclass(frozen=True)
class SayDigits:
    digits: str


@dataclass(frozen=True)
class SetLanguage:
    language: str


@dataclass(frozen=True)
class Lookup:
    node: str
    service: str
    params: Mapping[str, str]


@dataclass(frozen=True)
class Enqueue:
    node: str
    skill: str
    priority: int


@dataclass(frozen=True)
class RegisterCallback:
    node: str
    skill: str
    priority: int


@dataclass(frozen=True)
class Transfer:
    node: str
    number: str
    trunk: str


@dataclass(frozen=True)
class Hangup:
    node: str


Step = (
    PlayAndCollect
    | CollectDigits
    | Play
    | SayDigits
    | SetLanguage
    | Lookup
    | Enqueue
    | RegisterCallback
    | Transfer
    | Hangup
)
FINAL = (Enqueue, Transfer, Hangup)


@dataclass(frozen=True)
class Facts:
    """What a flow may branch on, gathered by the adapter when the call arrives."""

    now: datetime
    tier: str = "regular"
    overload_level: int = 0
    ewt: Mapping[str, float] = field(default_factory=dict)
    hours: Mapping[str, BusinessHours] = field(default_factory=dict)


class FlowError(AcdError):
    """A flow could not go on (a loop without input, a missing variable): use its fallback."""


@dataclass
class FlowRun:
    """One call's walk through a flow.

    `start()` returns the first steps; after a PlayAndCollect or a CallbackOffer's collect call
    `on_digits`, after CollectDigits `on_collected`, after Lookup `on_lookup`. The last step of a
    batch is the one that needs an answer, or a final step (Enqueue, Transfer, Hangup).
    """

    flow: Flow
    facts: Facts
    vars: dict[str, str] = field(default_factory=dict)
    node: str = ""
    attempts: int = 0
    path: list[str] = field(default_factory=list)
    skill: str | None = None
    priority: int = 0

    def start(self) -> list[Step]:
        return self._enter(self.flow.start)

    def fall_back(self) -> list[Step]:
        """The flow failed mid-call: continue at its declared fallback node, if it has one."""
        if self.flow.fallback is None:
            raise FlowError(f"flow {self.flow.name} has no fallback node")
        return self._enter(self.flow.fallback)

    def on_digits(self, digits: str) -> list[Step]:
        node = self.flow.nodes[self.node]
        if isinstance(node, CallbackOffer):
            if digits == node.accept_digit:
                steps: list[Step] = [
                    RegisterCallback(node=node.name, skill=node.skill, priority=self.priority)
                ]
                if node.confirm_prompt:
                    steps.append(Play(node.confirm_prompt))
                return [*steps, Hangup(node=node.name)]
            return self._enter(node.on_decline)
        if not isinstance(node, Menu):
            raise FlowError(f"node {self.node} does not take a menu choice")
        target = node.options.get(digits) if digits else None
        if target is not None:
            return self._enter(target)
        return self._retry(node, node.invalid_prompt if digits else node.timeout_prompt)

    def on_collected(self, digits: str) -> list[Step]:
        node = self.flow.nodes[self.node]
        if not isinstance(node, Collect):
            raise FlowError(f"node {self.node} does not collect digits")
        if len(digits) == 1 and digits in node.shortcuts:
            return self._enter(node.shortcuts[digits])
        if node.min_digits <= len(digits) <= node.max_digits and digits.isdigit():
            self.vars[node.var] = digits
            return self._enter(node.next)
        return self._retry(node, node.invalid_prompt)

    def on_lookup(self, outcome: str, data: Mapping[str, str]) -> list[Step]:
        node = self.flow.nodes[self.node]
        if not isinstance(node, LookupNode):
            raise FlowError(f"node {self.node} is not a lookup")
        if outcome == "found":
            for key, value in data.items():
                self.vars[f"{node.into}.{key}"] = value
            return self._enter(node.on_found)
        return self._enter(node.on_not_found if outcome == "not_found" else node.on_failure)

    # -- walking ---------------------------------------------------------------------------

    def _retry(self, node: Menu | Collect, prompt: str | None) -> list[Step]:
        self.attempts += 1
        if self.attempts > node.retries:
            return self._enter(node.on_failure)
        steps: list[Step] = [Play(prompt)] if prompt else []
        return [*steps, self._ask(node)]

    def _enter(self, name: str) -> list[Step]:
        steps: list[Step] = []
        for _ in range(MAX_HOPS):
            self.node = name
            self.attempts = 0
            self.path.append(name)
            node = self.flow.nodes[name]
            if isinstance(node, Menu | Collect):
                return [*steps, self._ask(node)]
            if isinstance(node, CallbackOffer):
                return [
                    *steps,
                    PlayAndCollect(node.name, node.prompts, node.accept_digit, node.timeout_ms),
                ]
            if isinstance(node, PlayNode):
                steps += [Play(p) for p in node.prompts]
                if node.say_digits:
                    steps.append(SayDigits(self._var(node.say_digits)))
                name = node.next
            elif isinstance(node, SetNode):
                if node.skill:
                    self.skill = node.skill
                if node.priority is not None:
                    self.priority = node.priority
                if node.language:
                    steps.append(SetLanguage(node.language))
                self.vars.update(node.vars)
                name = node.next
            elif isinstance(node, Condition):
                name = self._choose(node)
            elif isinstance(node, LookupNode):
                params = {k: self._value(v) for k, v in node.params.items()}
                return [*steps, Lookup(node=node.name, service=node.service, params=params)]
            elif isinstance(node, QueueNode):
                skill = node.skill or self.skill
                if skill is None:
                    raise FlowError(f"queue node {node.name}: no skill set on this path")
                priority = node.priority if node.priority is not None else self.priority
                if node.prompt:
                    steps.append(Play(node.prompt))
                return [*steps, Enqueue(node=node.name, skill=skill, priority=priority)]
            elif isinstance(node, TransferNode):
                if node.prompt:
                    steps.append(Play(node.prompt))
                number = self._value(node.number)
                if not NUMBER_RE.fullmatch(number):
                    raise FlowError(f"transfer node {node.name}: {number!r} is not a number")
                return [*steps, Transfer(node=node.name, number=number, trunk=node.trunk)]
            else:
                if node.prompt:
                    steps.append(Play(node.prompt))
                return [*steps, Hangup(node=node.name)]
        raise FlowError(f"flow {self.flow.name}: {MAX_HOPS} nodes without caller input (a loop?)")

    def _ask(self, node: Menu | Collect) -> PlayAndCollect | CollectDigits:
        if isinstance(node, Menu):
            return PlayAndCollect(
                node=node.name,
                prompts=node.prompts,
                valid_digits="".join(sorted(node.options)),
                timeout_ms=node.timeout_ms,
            )
        return CollectDigits(
            node=node.name,
            prompts=node.prompts,
            max_digits=node.max_digits,
            terminator=node.terminator,
            timeout_ms=node.timeout_ms,
            shortcuts="".join(sorted(node.shortcuts)),
        )

    def _var(self, name: str) -> str:
        if name not in self.vars:
            raise FlowError(f"variable {name} is not set on this path")
        return self.vars[name]

    def _value(self, raw: str) -> str:
        return self._var(raw[1:]) if raw.startswith("$") else raw

    def _choose(self, node: Condition) -> str:
        for predicate, target in node.cases:
            if self._holds(predicate):
                return target
        return node.otherwise

    def _holds(self, p: Predicate) -> bool:
        f = self.facts
        checks: list[Callable[[], bool]] = []
        if p.tier is not None:
            checks.append(lambda: f.tier in (p.tier or ()))
        if p.var is not None:
            value = self.vars.get(p.var)
            if p.equals is not None:
                checks.append(lambda: value == p.equals)
            if p.one_of is not None:
                checks.append(lambda: value in (p.one_of or ()))
            if p.equals is None and p.one_of is None:
                checks.append(lambda: value is not None)
        if p.open is not None:
            checks.append(lambda: f.hours[p.open or ""].is_open(f.now))
        if p.closed is not None:
            checks.append(lambda: not f.hours[p.closed or ""].is_open(f.now))
        if p.date_in is not None:
            checks.append(lambda: f.now.date() in (p.date_in or ()))
        if p.overload_at_least is not None:
            checks.append(lambda: f.overload_level >= (p.overload_at_least or 0))
        if p.overload_below is not None:
            checks.append(lambda: f.overload_level < (p.overload_below or 0))
        if p.ewt_above is not None:
            checks.append(lambda: f.ewt.get(p.ewt_skill or "", 0.0) > (p.ewt_above or 0.0))
        return all(check() for check in checks)


# ---------------------------------------------------------------------------------------------
# Compiling and checking


@dataclass(frozen=True)
class Catalog:
    """What flows may refer to, from the deployment configuration."""

    skills: frozenset[str]
    lookups: frozenset[str] = frozenset()
    trunks: frozenset[str] = frozenset()
    hours: frozenset[str] = frozenset()


class FlowProblems(ConfigError):
    """Every problem found in one or more flow files, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path of a YAML document to its 1-based line, for messages."""
    index: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        index.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                index[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, str(i)))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return index
    if root is not None:
        walk(root, ())
    return index


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_*#-]+")


class _Checker:
    """Collects problems with their key path; turns them into `file:line: key: what` lines."""

    def __init__(self, source: str, lines: Mapping[tuple[str, ...], int]) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[tuple[int, str]] = []

    def add(self, path: tuple[str, ...], what: str) -> None:
        line = 0
        probe = path
        while probe not in self.lines and probe:
            probe = probe[:-1]
        line = self.lines.get(probe, 0)
        # A key that is not a plain name (blank, with spaces or control characters) is quoted,
        # so the line says which key and cannot be broken by it.
        key = ".".join(k if _PLAIN_KEY.fullmatch(k) else repr(k) for k in path) or "(flow)"
        self.problems.append((line, f"{self.source}:{line}: {key}: {what}"))

    def messages(self) -> list[str]:
        return [m for _, m in sorted(self.problems, key=lambda p: p[0])]


_KINDS: dict[str, tuple[set[str], set[str]]] = {
    # kind: (required keys, optional keys) besides "kind"
    # on_failure is required too, reported by _way_out as "no way out"
    "menu": (
        {"prompt", "options"},
        {"timeout", "retries", "invalid_prompt", "timeout_prompt", "on_failure"},
    ),
    "play": ({"prompt", "next"}, {"say_digits"}),
    "collect": (
        {"prompt", "var", "max_digits", "next"},
        {"min_digits", "terminator", "timeout", "retries", "invalid_prompt", "shortcuts"}
        | {"on_failure"},
    ),
    "lookup": ({"service", "into", "on_found", "on_not_found", "on_failure"}, {"params"}),
    "condition": ({"cases", "else"}, set()),
    "set": ({"next"}, {"skill", "priority", "language", "vars"}),
    "queue": (set(), {"skill", "priority", "prompt"}),
    "callback_offer": (
        {"prompt", "skill", "on_decline"},
        {"accept_digit", "confirm_prompt", "timeout"},
    ),
    "transfer": ({"number", "trunk"}, {"prompt"}),
    "hangup": (set(), {"prompt"}),
}
_PREDICATES = {
    "tier",
    "var",
    "equals",
    "in",
    "open",
    "closed",
    "date_in",
    "overload_at_least",
    "overload_below",
    "ewt_above",
}


class _Compiler:
    def __init__(self, raw: Any, check: _Checker, catalog: Catalog) -> None:
        self.raw = raw
        self.c = check
        self.catalog = catalog
        self.names: set[str] = set(raw.get("nodes", {}) or {}) if isinstance(raw, dict) else set()
        self.defined_vars: set[str] = set()
        self.var_uses: list[tuple[tuple[str, ...], str]] = []

    # typed getters: each reports a problem and returns a safe default on bad input
    def ref(self, path: tuple[str, ...], value: Any) -> str:
        if not isinstance(value, str) or value not in self.names:
            self.c.add(path, f"unknown node {value!r}")
            return ""
        return value

    def prompt(self, path: tuple[str, ...], value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not PROMPT_RE.match(value):
            self.c.add(path, f"{value!r} is not a valid sound name")
            return None
        return value

    def prompts(self, path: tuple[str, ...], value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            single = self.prompt(path, value)
            return (single,) if single else ()
        if not isinstance(value, list) or not value:
            self.c.add(path, "needs at least one prompt (a sound name or a list of them)")
            return ()
        return tuple(p for i, v in enumerate(value) if (p := self.prompt((*path, str(i)), v)))

    def number(
        self, path: tuple[str, ...], value: Any, lo: float, hi: float, default: float
    ) -> float:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            self.c.add(path, f"must be a number from {lo:g} to {hi:g}, not {value!r}")
            return default
        return float(value)

    def integer(self, path: tuple[str, ...], value: Any, lo: int, hi: int, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.c.add(path, f"must be an integer from {lo} to {hi}, not {value!r}")
            return default
        return value

    def skill(self, path: tuple[str, ...], value: Any) -> str | None:
        if value is None:
            return None
        if not _member(value, self.catalog.skills):
            known = ", ".join(sorted(self.catalog.skills))
            self.c.add(path, f"unknown skill {value!r} (known: {known})")
            return None
        return str(value)

    def digits_map(self, path: tuple[str, ...], value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.c.add(path, "must be a mapping of DTMF digits to nodes")
            return {}
        out: dict[str, str] = {}
        for digit, target in value.items():
            d = str(digit)
            if len(d) != 1 or d not in DTMF:
                self.c.add((*path, d), "an option key must be one DTMF digit (0-9, * or #)")
                continue
            out[d] = self.ref((*path, d), target)
        return out

    def var_name(self, path: tuple[str, ...], value: Any) -> str:
        if not isinstance(value, str) or not _VAR.match(value):
            self.c.add(path, f"{value!r} is not a variable name (lowercase letters, digits, _)")
            return ""
        return value

    def value(self, path: tuple[str, ...], value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.c.add(path, f"must be a string or a $variable, not {value!r}")
            return ""
        text = str(value)
        if text.startswith("$"):
            self.var_uses.append((path, text[1:]))
        elif not re.fullmatch(r"[A-Za-z0-9_.+-]{0,64}", text):
            self.c.add(path, f"{text!r}: literal values are limited to letters, digits and _.+-")
        return text

    # -- nodes -----------------------------------------------------------------------------

    def node(self, name: str, spec: Any) -> Node | None:
        path = ("nodes", name)
        if not _NAME.match(name):
            self.c.add(path, "invalid node name (lowercase letters, digits, _ and -)")
            return None
        if not isinstance(spec, dict):
            self.c.add(path, "must be a mapping with a kind")
            return None
        kind = spec.get("kind")
        if not _member(kind, _KINDS):
            self.c.add((*path, "kind"), f"unknown node kind {kind!r} (known: {', '.join(_KINDS)})")
            return None
        required, optional = _KINDS[kind]
        for key in sorted(required - set(spec)):
            self.c.add(path, f"a {kind} node needs {key!r}")
        for key in sorted(set(spec) - required - optional - {"kind"}):
            self.c.add((*path, str(key)), f"unknown key for a {kind} node")
        build = getattr(self, f"_{kind}")
        result: Node = build(name, path, spec)
        return result

    def _menu(self, name: str, path: tuple[str, ...], s: dict[str, Any]) -> Menu:
        options = self.digits_map((*path, "options"), s.get("options"))
        if "options" in s and not options:
            self.c.add((*path, "options"), "a menu needs at least one option")
        return Menu(
            name=name,
            prompts=self.prompts((*path, "prompt"), s.get("prompt")),
            options=options,
            timeout_ms=int(self.number((*path, "timeout"), s.get("timeout"), 1, 60, 5) * 1000),
            retries=self.integer((*path, "retries"), s.get("retries"), 0, 9, 2),
            invalid_prompt=self.prompt((*path, "invalid_prompt"), s.get("invalid_prompt")),
            timeout_prompt=self.prompt((*path, "timeout_prompt"), s.get("timeout_prompt")),
            on_failure=self._way_out(path, s),
        )

    def _way_out(self, path: tuple[str, ...], s: dict[str, Any]) -> str:
        if "on_failure" not in s:
            self.c.add(path, "no way out: add on_failure (where callers go after the retries)")
            return ""
        return self.ref((*path, "on_failure"), s["on_failure"])

    def _play(self, name: str, path: tuple[str, ...], s: dict[str, Any]) -> PlayNode:
        say = s.get("say_digits")
        if say is not None:
            say = self.var_name((*path, "say_digits"), say)
            self.var_uses.append(((*path, "say_digits"), say))
        return PlayNode(
            name=name,
            prompts=self.prompts((*path, "prompt"), s.get("prompt")),
            say_digits=say or None,
            next=self.ref((*path, "next"), s.get("next")),
        )

    def _collect(self, name: str, path: tuple[str, ...], s: dict[str, Any]) -> Collect:
        var = self.var_name((*path, "var"), s.get("var"))
        self.defined_vars.add(var)
        max_digits = self.integer((*path, "max_digits"), s.get("max_digits"), 1, 32, 1)
        min_digits = self.integer((*path, "min_digits"), s.get("min_digits"), 1, 32, 1)
        if min_digits > max_digits:
            self.c.add((*path, "min_digits"), "must not exceed max_digits")
        terminator = s.get("terminator")
        if terminator is not None and terminator not in ("#", "*"):
            self.c.add((*path, "terminator"), "must be '#' or '*'")
            terminator = None
        shortcuts = self.digits_map((*path, "shortcuts"), s.get("shortcuts"))
        if terminator in shortcuts:
            self.c.add((*path, "shortcuts"), "the terminator cannot also be a shortcut")
        return Collect(
            name=name,
            prompts=self.prompts((*path, "prompt"), s.get("prompt")),
            var=var,
            min_digits=min_digits,
            max_digits=max_digits,
            terminator=terminator,
            timeout_ms=int(self.number((*path, "timeout"), s.get("timeout"), 1, 30, 5) * 1000),
            retries=self.integer((*path, "retries"), s.get("retries"), 0, 9, 2),
            invalid_prompt=self.prompt((*path, "invalid_prompt"), s.get("invalid_prompt")),
            shortcuts=shortcuts,
            next=self.ref((*path, "next"), s.get("next")),
            on_failure=self._way_out(path, s),
        )

    def _lookup(self, name: str, path: tuple[str, ...], s: dict[str, Any]) -> LookupNode:
        service = s.get("service")
        if not _member(service, self.catalog.lookups):
            known = ", ".join(sorted(self.catalog.lookups)) or "none configured"
            self.c.add((*path, "service"), f"unknown lookup service {service!r} (known: {known})")
        raw_params = s.get("params") or {}
        params: dict[str, str] = {}
        if not isinstance(raw_params, dict):
            self.c.add((*path, "params"), "must be a mapping of names to values or $variables")
        else:
            for key, value in raw_params.items():
                params[str(key)] = self.value((*path, "params", str(key)), value)
        into = s.get("into")
        if not isinstance(into, str) or not _NAME.match(into) or "-" in into:
            self.c.add((*path, "into"), f"{into!r} is not a variable prefix")
            into = ""
        self.defined_vars.add(f"{into}.*")
        return LookupNode(
            name=name,
            service=str(service),
            params=params,
            into=into,
            on_found=self.ref((*path, "on_found"), s.get("on_found")),
            on_not_found=self.ref((*path, "on_not_found"), s.get("on_not_found")),
            on_failure=self.ref((*path, "on_failure"), s.get("on_failure")),
        )

    def _condition(self, name: str, path: tuple[str, ...], s: dict[str, Any]) -> Condition:
        cases_raw = s.get("cases")
        cases: list[tuple[Predicate, str]] = []
        if not isinstance(cases_raw, list) or not cases_raw:
            self.c.add((*path, "cases"), "must be a non-empty list of {if: ..., goto: node}")
            cases_raw = []
        for i, case in enumerate(cases_raw):
            cpath = (*path, "cases", str(i))
            if not isinstance(case, dict) or set(case) != {"if", "goto"}:
                self.c.add(cpath, "each case needs exactly 'if' and 'goto'")
                continue
            predicate = self._predicate((*cpath, "if"), case["if"])
            cases.append((predicate, self.ref((*cpath, "goto"), case["goto"])))
        return Condition(name, tuple(cases), self.ref((*path, "else"), s.get("else")))

    def _predicate(self, path: tuple[str, ...], raw: Any) -> Predicate:
        if not isinstance(raw, dict) or not raw:
            self.c.add(path, "must be a mapping of tests, e.g. {tier: vip}")
            return Predicate()
        for key in sorted(set(raw) - _PREDICATES):
            known = ", ".join(sorted(_PREDICATES))
            self.c.add((*path, str(key)), f"unknown test (known: {known})")
        kw: dict[str, Any] = {}
        if "tier" in raw:
            tiers = raw["tier"] if isinstance(raw["tier"], list) else [raw["tier"]]
            if not all(isinstance(t, str) and _NAME.match(t) for t in tiers):
                self.c.add((*path, "tier"), "must be a tier name or a list of them")
            kw["tier"] = frozenset(str(t) for t in tiers)
        if "var" in raw:
            var = self.var_name((*path, "var"), raw["var"])
            self.var_uses.append(((*path, "var"), var))
            kw["var"] = var
            if "equals" in raw:
                kw["equals"] = str(raw["equals"])
            if "in" in raw:
                if not isinstance(raw["in"], list):
                    self.c.add((*path, "in"), "must be a list of values")
                else:
                    kw["one_of"] = frozenset(str(v) for v in raw["in"])
        elif "equals" in raw or "in" in raw:
            self.c.add(path, "'equals' and 'in' need a 'var'")
        for key in ("open", "closed"):
            if key in raw:
                if not _member(raw[key], self.catalog.hours):
                    known = ", ".join(sorted(self.catalog.hours)) or "none configured"
                    self.c.add((*path, key), f"unknown business hours {raw[key]!r} ({known})")
                kw[key] = str(raw[key])
        if "date_in" in raw:
            dates = raw["date_in"]
            if not isinstance(dates, list) or not all(isinstance(d, date) for d in dates):
                self.c.add((*path, "date_in"), "must be a list of dates like 2026-11-11")
            else:
                kw["date_in"] = frozenset(dates)
        for key in ("overload_at_least", "overload_below"):
            if key in raw:
                kw[key] = self.integer((*path, key), raw[key], 0, 4, 0)
        if "ewt_above" in raw:
            spec = raw["ewt_above"]
            if not isinstance(spec, dict) or set(spec) != {"skill", "seconds"}:
                self.c.add((*path, "ewt_above"), "must be {skill: NAME, seconds: N}")
            else:
                kw["ewt_skill"] = self.skill((*path, "ewt_above", "skill"), spec["skill"])
                kw["ewt_above"] = self.number(
                    (*path, "ewt_above", "seconds"), spec["seconds"], 0, 86400, 0
                )
        return Predicate(**kw)

    def _set(self, name: str, path: tuple[str, ...], s: dict[str, Any]) -> SetNode:
        language = s.get("language")
        if language is not None and not re.fullmatch(r"[a-z]{2}(_[A-Z]{2})?", str(language)):
            self.c.add((*path, "language"), f"{language!r} is not a language like en or zh_CN")
            language = None
        variables: dict[str, str] = {}
        raw_vars = s.get("vars") or {}
        if not isinstance(raw_vars, dict):
            self.c.add((*path, "vars"), "must be a mapping of variable names to values")
        else:
            for key, value in raw_vars.items():
                var = self.var_name((*path, "vars", str(key)), key)
                self.defined_vars.add(var)
                variables[var] = self.value((*path, "vars", str(key)), value)
        priority = s.get("priority")
        return SetNode(
            name=name,
            skill=self.skill((*path, "skill"), s.get("skill")),
            priority=None
            if priority is None
            else self.integer((*path, "priority"), priority, 0, 3600, 0),
            language=language,
            vars=variables,
            next=self.ref((*path, "next"), s.get("next")),
        )

    def _queue(self, name: str, path: tuple[str, ...], s: dict[str, Any]) -> QueueNode:
        priority = s.get("priority")
        return QueueNode(
            name=name,
            skill=self.skill((*path, "skill"), s.get("skill")),
            priority=None
            if priority is None
            else self.integer((*path, "priority"), priority, 0, 3600, 0),
            prompt=self.prompt((*path, "prompt"), s.get("prompt")),
        )

    def _callback_offer(self, name: str, path: tuple[str, ...], s: dict[str, Any]) -> CallbackOffer:
        digit = str(s.get("accept_digit", "1"))
        if len(digit) != 1 or digit not in DTMF:
            self.c.add((*path, "accept_digit"), "must be one DTMF digit")
            digit = "1"
        return CallbackOffer(
            name=name,
            prompts=self.prompts((*path, "prompt"), s.get("prompt")),
            skill=self.skill((*path, "skill"), s.get("skill")) or "",
            accept_digit=digit,
            confirm_prompt=self.prompt((*path, "confirm_prompt"), s.get("confirm_prompt")),
            timeout_ms=int(self.number((*path, "timeout"), s.get("timeout"), 1, 30, 5) * 1000),
            on_decline=self.ref((*path, "on_decline"), s.get("on_decline")),
        )

    def _transfer(self, name: str, path: tuple[str, ...], s: dict[str, Any]) -> TransferNode:
        number = self.value((*path, "number"), s.get("number"))
        if not number.startswith("$") and not NUMBER_RE.fullmatch(number):
            self.c.add((*path, "number"), f"{number!r} is not a number of 2 to 20 digits")
        trunk = s.get("trunk")
        if not _member(trunk, self.catalog.trunks):
            known = ", ".join(sorted(self.catalog.trunks)) or "none with an address"
            self.c.add((*path, "trunk"), f"unknown outbound trunk {trunk!r} (known: {known})")
        return TransferNode(
            name, number, str(trunk), self.prompt((*path, "prompt"), s.get("prompt"))
        )

    def _hangup(self, name: str, path: tuple[str, ...], s: dict[str, Any]) -> HangupNode:
        return HangupNode(name, self.prompt((*path, "prompt"), s.get("prompt")))


def _successors(node: Node) -> list[str]:
    if isinstance(node, Menu):
        return [*node.options.values(), node.on_failure]
    if isinstance(node, Collect):
        return [*node.shortcuts.values(), node.next, node.on_failure]
    if isinstance(node, PlayNode | SetNode):
        return [node.next]
    if isinstance(node, LookupNode):
        return [node.on_found, node.on_not_found, node.on_failure]
    if isinstance(node, Condition):
        return [*(t for _, t in node.cases), node.otherwise]
    if isinstance(node, CallbackOffer):
        return [node.on_decline]
    return []


def _reachable(starts: list[str], nodes: Mapping[str, Node]) -> set[str]:
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        name = todo.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        todo.extend(_successors(nodes[name]))
    return seen


def _silent_cycle(nodes: Mapping[str, Node]) -> list[str] | None:
    """A cycle through nodes that never wait for the caller would spin for ever."""
    silent = {n for n, node in nodes.items() if isinstance(node, PlayNode | SetNode | Condition)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for nxt in _successors(nodes[name]):
            if nxt not in silent:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(silent):
        if name not in state and (found := visit(name)):
            return found
    return None


def compile_flow(text: str, source: str, catalog: Catalog) -> Flow:
    """Parse, validate and build one flow; raise FlowProblems listing every issue with its line."""
    check = _Checker(source, _line_index(text))
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise FlowProblems([f"{source}:{line}: not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise FlowProblems([f"{source}:1: a flow must be a mapping with flow, start and nodes"])
    for key in sorted(set(raw) - {"flow", "start", "nodes", "fallback", "description"}):
        check.add((str(key),), "unknown key")
    name = raw.get("flow")
    if not isinstance(name, str) or not _NAME.match(name):
        check.add(("flow",), f"{name!r} is not a valid flow name")
        name = "?"
    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, dict) or not nodes_raw:
        check.add(("nodes",), "must be a non-empty mapping of node names to nodes")
        raise FlowProblems(check.messages())
    compiler = _Compiler(raw, check, catalog)
    nodes: dict[str, Node] = {}
    for node_name, spec in nodes_raw.items():
        node = compiler.node(str(node_name), spec)
        if node is not None:
            nodes[str(node_name)] = node
    start = raw.get("start")
    if not _member(start, nodes_raw):
        check.add(("start",), f"{start!r} is not a node of this flow")
    fallback = raw.get("fallback")
    if fallback is not None:
        if not _member(fallback, nodes_raw):
            check.add(("fallback",), f"{fallback!r} is not a node of this flow")
        elif not isinstance(nodes.get(fallback), QueueNode | HangupNode | TransferNode):
            check.add(("fallback",), "must be a queue, transfer or hangup node (no more prompts)")
    for path, var in compiler.var_uses:
        defined = var in compiler.defined_vars or (
            "." in var and f"{var.split('.')[0]}.*" in compiler.defined_vars
        )
        if var and not defined:
            check.add(path, f"variable {var!r} is never set by a collect, set or lookup node")
    if not check.problems and isinstance(start, str):
        starts = [start] + ([fallback] if isinstance(fallback, str) else [])
        reachable = _reachable(starts, nodes)
        for node_name in nodes:
            if node_name not in reachable:
                check.add(("nodes", node_name), "unreachable from start")
        cycle = _silent_cycle(nodes)
        if cycle:
            check.add(("nodes", cycle[0]), f"loop without caller input: {' -> '.join(cycle)}")
        for node_name, node in nodes.items():
            if (
                isinstance(node, QueueNode)
                and node.skill is None
                and not any(isinstance(n, SetNode) and n.skill for n in nodes.values())
            ):
                check.add(("nodes", node_name), "a queue node needs a skill (or a set node's)")
    if check.problems:
        raise FlowProblems(check.messages())
    return Flow(name=name, start=str(start), nodes=nodes, fallback=fallback, source=source)


def check_prompts(flow: Flow, sound_dirs: Mapping[str, Path]) -> list[str]:
    """Prompts of `flow` that no sound directory holds, in any format Asterisk plays.

    `sound_dirs` maps a name prefix to a directory: {"": core sounds, "acd/": generated prompts}.
    """
    missing = []
    for prompt in sorted(flow.prompts()):
        found = False
        for prefix, directory in sound_dirs.items():
            if prefix and not prompt.startswith(prefix):
                continue
            relative = Path(prompt[len(prefix) :])
            if any((directory / relative).parent.glob(f"{relative.name}.*")):
                found = True
                break
        if not found:
            missing.append(prompt)
    return missing


def load_flows(
    paths: list[Path], catalog: Catalog, sound_dirs: Mapping[str, Path] | None = None
) -> dict[str, Flow]:
    """Load and validate flow files (directories are searched for *.yaml); all problems at once.

    With `sound_dirs`, every prompt must exist in one of them."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.yaml")) if path.is_dir() else [path])
    flows: dict[str, Flow] = {}
    problems: list[str] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"{file}:0: cannot read: {exc.strerror}")
            continue
        try:
            flow = compile_flow(text, str(file), catalog)
        except FlowProblems as exc:
            problems.extend(exc.problems)
            continue
        if sound_dirs is not None:
            lines = _line_index(text)
            for prompt in check_prompts(flow, sound_dirs):
                line = _prompt_line(text, prompt, lines)
                problems.append(f"{file}:{line}: prompt {prompt!r}: no such sound file")
        if flow.name in flows:
            problems.append(f"{file}:1: flow: duplicate flow name {flow.name!r}")
        flows[flow.name] = flow
    if problems:
        raise FlowProblems(problems)
    return flows


def _prompt_line(text: str, prompt: str, lines: Mapping[tuple[str, ...], int]) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if prompt in line:
            return number
    return 0
