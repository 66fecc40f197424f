"""The deployment configuration: one YAML file loaded into typed, frozen settings.

`load_settings(path)` validates everything at start and raises `ConfigError` whose message names the
file, the key (as a dotted path such as `agents[2].skills.presale`) and what is wrong. Relative
paths in the file are resolved against the file's own directory, so the sample works from any cwd.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from acd.domain.dialing import DEFAULT_BLOCKED, Allowed, DialPolicy, refusal
from acd.domain.flow import NUMBER_RE
from acd.domain.hours import BusinessHours, parse_window
from acd.errors import ConfigError

DEFAULT_ASTERISK_ROOT = "/var/cache/acd/asterisk-root"

# Names that end up inside Asterisk configuration and dialplan strings: a conservative charset so no
# value can break out of a config line or a dialplan argument.
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
EndpointName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")]
AgentId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]
Number = Annotated[str, StringConstraints(pattern=NUMBER_RE.pattern)]
Host = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.:-]{1,253}$")]
Port = Annotated[int, Field(ge=1, le=65535)]
SkillLevel = Annotated[int, Field(ge=1, le=10)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class Address(_Frozen):
    host: Host = "127.0.0.1"
    port: Port


class AmiSettings(_Frozen):
    host: Host = "127.0.0.1"
    port: Port = 5038
    username: Name = "acd"
    secret_file: Path = Path(".state/ami.secret")
    ping_interval: Annotated[float, Field(gt=0, le=60)] = 5.0
    ping_timeout: Annotated[float, Field(gt=0, le=60)] = 3.0


class AsteriskSettings(_Frozen):
    """One Asterisk node: where its SIP, AMI and our FastAGI listener are, and dialplan timings."""

    node: Name = "node-a"
    root: Path = Path(os.environ.get("ACD_ASTERISK_ROOT", DEFAULT_ASTERISK_ROOT))
    config_dir: Path = Path("asterisk-config")
    sounds_dir: Path = Path(".state/sounds")
    sip: Address = Address(port=5060)
    ami: AmiSettings = AmiSettings()
    hold_period: Annotated[int, Field(ge=5, le=600)] = 30
    hold_limit: Annotated[int, Field(ge=30, le=7200)] = 1800
    ring_timeout: Annotated[int, Field(ge=5, le=120)] = 15


class AgiSettings(_Frozen):
    """Where the controller's FastAGI server listens (and so where Asterisk connects)."""

    host: Host = "127.0.0.1"
    port: Port = 4573
    command_timeout: Annotated[float, Field(gt=0, le=600)] = 60.0


class RedisSettings(_Frozen):
    # redis://, rediss:// or unix:// (a socket: `acd up` then leaves starting Redis to you)
    url: Annotated[str, StringConstraints(pattern=r"^(rediss?|unix)://")] = (
        "redis://127.0.0.1:6379/0"
    )
    prefix: Name = "acd"
    # The longest a command waits for Redis, connecting included; then it fails and the call
    # takes its fallback (the controller shares one multiplexed connection: no pool to size).
    timeout: Annotated[float, Field(gt=0, le=60)] = 3.0


# Who changed what: the names the admin API knows its callers by (and records in the audit log).
UserName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
ADMIN_USER = "admin"  # the user of the generated token (`token_file`, or ACD_ADMIN_TOKEN)
VIEWER_USER = "viewer"  # the user of the generated read-only token (`viewer_token_file`)
MIN_TOKEN_LENGTH = 16
_TOKEN = re.compile(r"^[A-Za-z0-9_.~+/=-]+\Z")


class AdminSettings(_Frozen):
    """The admin API: where it listens, and its bearer tokens. Each token belongs to a user,
    who is the `who` of every change it makes: the generated one (`token_file`, user `admin`)
    and named ones, user -> token file (`tokens`), or ACD_ADMIN_TOKENS="alice:TOKEN,...". There
    is no default token: a missing or empty file is an error. Viewers' tokens only read (status,
    metrics, wallboard, events; no callback numbers): the generated one (`viewer_token_file`, user
    `viewer`, when the file exists) and named ones (`viewers`, or ACD_VIEWER_TOKENS)."""

    host: Host = "127.0.0.1"
    port: Port = 8088
    token_file: Path = Path(".state/admin.token")
    tokens: dict[UserName, Path] = Field(default_factory=dict)
    viewer_token_file: Path = Path(".state/viewer.token")
    viewers: dict[UserName, Path] = Field(default_factory=dict)

    @field_validator("tokens")
    @classmethod
    def _not_admin(cls, tokens: dict[str, Path]) -> dict[str, Path]:
        if ADMIN_USER in tokens:
            raise ValueError(f"{ADMIN_USER!r} is the user of token_file; choose another name")
        return tokens

    @field_validator("viewers")
    @classmethod
    def _not_viewer(cls, viewers: dict[str, Path]) -> dict[str, Path]:
        if VIEWER_USER in viewers:
            raise ValueError(f"{VIEWER_USER!r} is the user of viewer_token_file; choose another")
        return viewers


class Entry(_Frozen):
    """A number customers dial, the flow that answers it, and the simplified flow that takes over
    under overload or when a supervisor switches the menu to fallback."""

    number: Number
    flow: Name
    fallback_flow: Name | None = None
    # The menu mode while no supervisor has set one (`acd menu`): auto switches to the fallback
    # flow by itself from overload level 2.
    mode: Literal["normal", "fallback", "auto"] = "auto"


class LookupService(_Frozen):
    """An HTTP service a flow can query (e.g. order status). `url` holds `{param}` placeholders,
    filled with URL-quoted, validated caller input."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")]
    timeout: Annotated[float, Field(gt=0, le=10)] = 2.0


class EscalationStep(_Frozen):
    """After `after` seconds of wait, a caller also accepts agents down to `min_level`, and
    agents of the `overflow` skills (at any level)."""

    after: Annotated[float, Field(gt=0, le=86400)]
    min_level: SkillLevel | None = None
    overflow: list[Name] = Field(default_factory=list)


class Overflow(_Frozen):
    """New callers of a queue go to a standby destination (e.g. an outsourced centre) over the
    best trunk when the wait estimate or the queue length passes these (or at overload level 4)."""

    number: Number
    ewt_above: Annotated[float, Field(gt=0)] | None = None
    waiting_above: Annotated[int, Field(ge=0)] | None = None


class Skill(_Frozen):
    """A skill and its queue: callers first accept agents at or above `min_level`; the
    escalation steps widen that ring as they wait (applied to callers already waiting).
    New callers are offered a callback when the wait estimate passes `callback_offer_ewt`, or
    `ewt_target` from overload level 3; `overflow` sends them elsewhere instead."""

    name: Name
    description: str = ""
    min_level: SkillLevel = 1
    escalation: list[EscalationStep] = Field(default_factory=list)
    ewt_target: Annotated[float, Field(gt=0, le=86400)] = 120.0
    callback_offer_ewt: Annotated[float, Field(ge=0, le=86400)] | None = None
    overflow_to: Overflow | None = None

    @field_validator("escalation")
    @classmethod
    def _ascending(cls, steps: list[EscalationStep]) -> list[EscalationStep]:
        if any(b.after <= a.after for a, b in itertools.pairwise(steps)):
            raise ValueError("escalation steps must have strictly increasing 'after'")
        return steps

    def rules(self) -> dict[str, Any]:
        """The form the claim script takes."""
        return {
            "min": self.min_level,
            "steps": [[s.after, s.min_level, list(s.overflow)] for s in self.escalation],
        }


class Agent(_Frozen):
    id: AgentId
    endpoint: EndpointName
    skills: dict[Name, SkillLevel]
    contact: Address | None = None
    auto_login: bool | None = None  # None: agent_policy.auto_login
    # The Asterisk node the agent's phone belongs to (None: this node). Callers on another node
    # reach the agent over the inter-node trunk to it (`nodes`).
    node: Name | None = None


class Trunk(_Frozen):
    """A carrier trunk. Inbound traffic is recognised by source address (`match`)."""

    name: EndpointName
    match: list[Host] = Field(default_factory=list)
    address: Address | None = None
    role: Literal["primary", "standby"] = "primary"
    capacity: Annotated[int, Field(ge=1, le=10000)] = 30


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Hours(_Frozen):
    """Opening hours a flow can branch on (`condition` with `open: NAME`)."""

    timezone: str = "Asia/Shanghai"
    weekly: dict[Day, list[str]] = Field(default_factory=dict)
    closed_dates: list[date] = Field(default_factory=list)
    open_dates: dict[date, list[str]] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("weekly", "open_dates")
    @classmethod
    def _windows(cls, value: dict[Any, list[str]]) -> dict[Any, list[str]]:
        for windows in value.values():
            for window in windows:
                parse_window(window)
        return value

    def to_domain(self) -> BusinessHours:
        return BusinessHours(
            timezone=self.timezone,
            weekly={d: tuple(parse_window(w) for w in ws) for d, ws in self.weekly.items()},
            closed_dates=frozenset(self.closed_dates),
            open_dates={d: tuple(parse_window(w) for w in ws) for d, ws in self.open_dates.items()},
        )


class OverloadSettings(_Frozen):
    """The overload governor: load is (waiting + talking callers) per staffed agent; levels 1-4
    start at these loads, and a level is left only `hysteresis` below its threshold, after
    `cool_down` seconds there, so it does not flap."""

    thresholds: tuple[float, float, float, float] = (1.2, 1.4, 1.6, 2.0)
    hysteresis: Annotated[float, Field(ge=0, le=1)] = 0.1
    cool_down: Annotated[float, Field(ge=0, le=3600)] = 30.0
    interval: Annotated[float, Field(gt=0, le=60)] = 2.0
    handle_seconds: Annotated[float, Field(gt=0, le=3600)] = 180.0
    # The AMI link counts as a failure (level 4) only once it has been down this long: a
    # reconnect of a second or two must not send callers to the standby lines.
    failure_after: Annotated[float, Field(ge=0, le=600)] = 10.0

    @field_validator("thresholds")
    @classmethod
    def _ascending(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in itertools.pairwise(value)) or value[0] <= 0:
            raise ValueError("thresholds must be positive and strictly ascending")
        return value


class AgentPolicy(_Frozen):
    """How agents are handled: wrap-up after each call, what a missed call does, and whether the
    configured agents start logged in (the sample's do; a real floor logs in through the API)."""

    wrap_up: Annotated[float, Field(ge=0, le=3600)] = 5.0
    pause_on_missed: bool = True
    auto_login: bool = True


AgentCode = Annotated[str, StringConstraints(pattern=r"^\*[0-9]{1,4}$")]
AgentAction = Literal["login", "logout", "pause", "resume"]
DEFAULT_AGENT_CODES: dict[AgentAction, str] = {
    "login": "*71",
    "logout": "*72",
    "pause": "*73",
    "resume": "*74",
}


class AgentPhones(_Frozen):
    """Agents' phones dialling in: star codes that log in, log out, pause or resume the agent
    whose phone dials them. A phone authenticates as its endpoint with a SIP password derived
    from the generated secret in `secret_file` (`acd agent phone-password ID` prints it); with
    no secret, agents' phones can dial nothing."""

    codes: dict[AgentAction, AgentCode] = Field(default_factory=lambda: dict(DEFAULT_AGENT_CODES))
    secret_file: Path = Path(".state/agent-phones.secret")

    @field_validator("codes")
    @classmethod
    def _distinct(cls, codes: dict[str, str]) -> dict[str, str]:
        _no_duplicates(list(codes.values()), "code")
        return codes


class CallbackSettings(_Frozen):
    """Callbacks: a waiting caller may press 1 (`offer_in_hold`) or take a flow's offer; the
    callback keeps the caller's place and is dialled agent-first over the best trunk."""

    offer_in_hold: bool = True
    attempts: Annotated[int, Field(ge=1, le=10)] = 3
    retry_delay: Annotated[float, Field(ge=1, le=86400)] = 120.0
    expiry: Annotated[float, Field(ge=60, le=7 * 86400)] = 4 * 3600.0
    # While inbound callers wait in a queue, at most this share of its staffed agents on
    # callbacks at once (at least one); while none wait, callbacks may take every agent.
    share: Annotated[float, Field(gt=0, le=1)] = 0.5
    hours: Name | None = None  # a key of `hours`: callbacks are only dialled while it is open
    ring_timeout: Annotated[int, Field(ge=5, le=120)] = 30  # seconds the customer's phone rings
    caller_id: Number | None = None  # shown to the customer; default: the number they called


class BreakerSettings(_Frozen):
    """Each outbound trunk's circuit breaker (acd/domain/breaker.py)."""

    window: Annotated[float, Field(gt=0, le=3600)] = 60.0
    min_calls: Annotated[int, Field(ge=1, le=1000)] = 5
    failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    open_for: Annotated[float, Field(gt=0, le=3600)] = 30.0
    probes: Annotated[int, Field(ge=1, le=100)] = 1
    # The share of a trunk's capacity legs may use: above it, legs are refused (the next trunk
    # takes them); a capacity limit, not a failure: the breaker does not open for it.
    saturation: Annotated[float, Field(gt=0, le=1)] = 1.0
    # Seconds a carrier has to ring or send early media; after that Dial gives up and the leg
    # counts as the carrier's failure (NOPROGRESS). Shorter than callbacks.ring_timeout.
    progress_timeout: Annotated[int, Field(ge=1, le=30)] = 8


class ReportSettings(_Frozen):
    """Journey events and the post-peak report: how long events are kept, the service level
    (answered within `service_seconds`, 80/20 by default), short abandons (not counted against
    the service), the targets from the seeds (answer within 2 minutes, abandon under 5%,
    first-contact resolution over 75%), and the seconds the live service level covers."""

    retention_days: Annotated[float, Field(gt=0, le=400)] = 35.0
    service_seconds: Annotated[float, Field(gt=0, le=3600)] = 20.0
    service_target: Annotated[float, Field(gt=0, le=1)] = 0.8
    short_abandon: Annotated[float, Field(ge=0, le=600)] = 5.0
    answer_target: Annotated[float, Field(gt=0, le=3600)] = 120.0
    abandon_target: Annotated[float, Field(gt=0, le=1)] = 0.05
    first_contact_target: Annotated[float, Field(gt=0, le=1)] = 0.75
    service_window: Annotated[float, Field(ge=60, le=86400)] = 3600.0


class AlertRuleSettings(_Frozen):
    """A webhook alert: `figure` of one queue (or any) or of the floor past `above` / `below`
    for `for_seconds`. Queue figures: waiting, longest_wait, ewt, service_level; floor figures:
    overload_level, breakers_open."""

    name: Name
    figure: Literal[
        "waiting", "longest_wait", "ewt", "service_level", "overload_level", "breakers_open"
    ]
    queue: Name | None = None
    above: float | None = None
    below: float | None = None
    for_seconds: Annotated[float, Field(ge=0, le=86400)] = 0.0

    @model_validator(mode="after")
    def _one_threshold(self) -> Self:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of above and below")
        return self


DigitPrefix = Annotated[str, StringConstraints(pattern=r"^[0-9]{0,12}$")]


class DialRule(_Frozen):
    """Numbers starting with `prefix` ('' = any) of `min_length` to `max_length` digits."""

    prefix: DigitPrefix = ""
    min_length: Annotated[int, Field(ge=2, le=20)] = 5
    max_length: Annotated[int, Field(ge=2, le=20)] = 16

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_length > self.max_length:
            raise ValueError("min_length is more than max_length")
        return self


class DialPolicySettings(_Frozen):
    """Which numbers the engine may dial out (callbacks, flow transfers, overflow): one of
    `allowed`, not international (+ or 00) unless `international`, never a `blocked_prefixes`
    one (premium rate). Against toll fraud: callers key callback numbers, flows may transfer to
    what a caller keyed."""

    allowed: Annotated[list[DialRule], Field(min_length=1)] = Field(
        default_factory=lambda: [DialRule()]
    )
    international: bool = False
    blocked_prefixes: list[DigitPrefix] = Field(default_factory=lambda: list(DEFAULT_BLOCKED))

    def to_domain(self) -> DialPolicy:
        return DialPolicy(
            allowed=tuple(Allowed(r.prefix, r.min_length, r.max_length) for r in self.allowed),
            international=self.international,
            blocked=tuple(self.blocked_prefixes),
        )


class AlertSettings(_Frozen):
    """Alerts POSTed as JSON to `webhook` when a rule starts firing and when it resolves."""

    webhook: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")] | None = None
    timeout: Annotated[float, Field(gt=0, le=30)] = 3.0
    rules: list[AlertRuleSettings] = Field(default_factory=list)


class Settings(_Frozen):
    """The whole deployment. `source` is the file it came from (for messages and relative paths)."""

    source: Path = Path("acd.yaml")
    state_dir: Path = Path(".state")
    flows_dir: Path = Path("ivr_flows")
    asterisk: AsteriskSettings = AsteriskSettings()
    agi: AgiSettings = AgiSettings()
    redis: RedisSettings = RedisSettings()
    admin: AdminSettings = AdminSettings()
    agent_contact: Address = Address(port=5070)
    entries: Annotated[list[Entry], Field(min_length=1)]
    skills: Annotated[list[Skill], Field(min_length=1)]
    agents: list[Agent] = Field(default_factory=list)
    trunks: list[Trunk] = Field(default_factory=list)
    # Multi-node: the SIP address of every other Asterisk node sharing this Redis. Each pair of
    # nodes is joined by an inter-node PJSIP trunk (endpoint acd-NODE, recognised by address).
    nodes: dict[Name, Address] = Field(default_factory=dict)
    lookups: dict[Name, LookupService] = Field(default_factory=dict)
    hours: dict[Name, Hours] = Field(default_factory=dict)
    overload: OverloadSettings = OverloadSettings()
    agent_policy: AgentPolicy = AgentPolicy()
    agent_phones: AgentPhones = AgentPhones()
    callbacks: CallbackSettings = CallbackSettings()
    breaker: BreakerSettings = BreakerSettings()
    reports: ReportSettings = ReportSettings()
    alerts: AlertSettings = AlertSettings()
    dial_policy: DialPolicySettings = DialPolicySettings()
    # Seconds of head start in the queue per customer tier (unlisted tiers: none). A head start,
    # not absolute precedence: a regular caller who has waited longer than that is served first.
    tiers: dict[Name, Annotated[float, Field(ge=0, le=3600)]] = Field(default_factory=dict)

    @field_validator("entries")
    @classmethod
    def _unique_numbers(cls, entries: list[Entry]) -> list[Entry]:
        _no_duplicates([e.number for e in entries], "number")
        return entries

    @field_validator("skills")
    @classmethod
    def _unique_skills(cls, skills: list[Skill]) -> list[Skill]:
        _no_duplicates([s.name for s in skills], "name")
        return skills

    @field_validator("trunks")
    @classmethod
    def _unique_trunks(cls, trunks: list[Trunk]) -> list[Trunk]:
        _no_duplicates([t.name for t in trunks], "name")
        return trunks

    @model_validator(mode="after")
    def _references(self) -> Self:
        known = {s.name for s in self.skills}
        for i, skill in enumerate(self.skills):
            for j, step in enumerate(skill.escalation):
                for other in step.overflow:
                    if other not in known or other == skill.name:
                        raise ValueError(
                            f"skills[{i}].escalation[{j}].overflow: {other!r} is not another skill"
                        )
        _no_duplicates([a.id for a in self.agents], "id", where="agents")
        for i, agent in enumerate(self.agents):
            if agent.endpoint.isdigit():
                raise ValueError(
                    f"agents[{i}].endpoint: {agent.endpoint!r} is all digits; agents' phones "
                    "are recognised by their SIP user, which no caller's number may match"
                )
        endpoints = [a.endpoint for a in self.agents] + [t.name for t in self.trunks]
        _no_duplicates(endpoints, "endpoint", where="agents/trunks")
        for i, rule in enumerate(self.alerts.rules):
            if rule.queue is not None and rule.queue not in known:
                raise ValueError(f"alerts.rules[{i}].queue: unknown queue {rule.queue!r}")
        policy = self.dial_policy.to_domain()
        for skill in self.skills:
            over = skill.overflow_to
            if over is not None and (why := refusal(policy, over.number)):
                raise ValueError(
                    f"skills.{skill.name}.overflow_to.number: {over.number!r} is outside "
                    f"the dial policy ({why})"
                )
        if self.callbacks.hours is not None and self.callbacks.hours not in self.hours:
            raise ValueError(f"callbacks.hours: {self.callbacks.hours!r} is not a key of hours")
        if self.asterisk.node in self.nodes:
            raise ValueError(f"nodes.{self.asterisk.node}: list the other nodes only, not this one")
        for i, agent in enumerate(self.agents):
            if agent.node is not None and agent.node != self.asterisk.node:
                if agent.node not in self.nodes:
                    raise ValueError(
                        f"agents[{i}].node: unknown node {agent.node!r} (this node is "
                        f"{self.asterisk.node!r}; others go under 'nodes')"
                    )
            if not agent.skills:
                raise ValueError(f"agents[{i}].skills: agent {agent.id} has no skill")
            for skill_name in agent.skills:
                if skill_name not in known:
                    raise ValueError(
                        f"agents[{i}].skills.{skill_name}: unknown skill "
                        f"(known: {', '.join(sorted(known))})"
                    )
        return self

    @model_validator(mode="after")
    def _progress_before_ring(self) -> Self:
        # Otherwise the ring timeout ends a silent carrier's leg first, as a customer's NOANSWER.
        if self.breaker.progress_timeout >= self.callbacks.ring_timeout:
            raise ValueError(
                f"breaker.progress_timeout ({self.breaker.progress_timeout} s) must be shorter "
                f"than callbacks.ring_timeout ({self.callbacks.ring_timeout} s)"
            )
        return self

    def outbound_trunks(self) -> list[Trunk]:
        """Trunks that can carry outbound legs (they have an address), in configured order."""
        return [t for t in self.trunks if t.address is not None]

    def agent_contact_for(self, agent: Agent) -> Address:
        return agent.contact or self.agent_contact

    def is_local(self, agent: Agent) -> bool:
        """Whether the agent's phone is on this Asterisk node."""
        return agent.node is None or agent.node == self.asterisk.node

    def local_agents(self) -> list[Agent]:
        return [a for a in self.agents if self.is_local(a)]

    def agent_dial(self, agent: Agent) -> str:
        """The Dial() target reaching this agent from this node: its endpoint, or its id over
        the inter-node trunk to the node it is on."""
        if self.is_local(agent):
            return f"PJSIP/{agent.endpoint}"
        return f"PJSIP/{agent.id}@acd-{agent.node}"

    def resolve(self, path: Path) -> Path:
        """A path from the file, made absolute against the file's directory."""
        return path if path.is_absolute() else (self.source.parent / path).resolve()

    def escalation_rules(self) -> dict[str, Any]:
        return {s.name: s.rules() for s in self.skills if s.min_level > 1 or s.escalation}

    def skill_names(self) -> list[str]:
        return [s.name for s in self.skills]

    def flow_names(self) -> set[str]:
        names = {e.flow for e in self.entries}
        return names | {e.fallback_flow for e in self.entries if e.fallback_flow}


def _no_duplicates(values: list[str], what: str, where: str = "") -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            prefix = f"{where}: " if where else ""
            raise ValueError(f"{prefix}duplicate {what} {value!r}")
        seen.add(value)


def load_settings(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read and validate the deployment file; every problem becomes a `ConfigError`."""
    source = Path(path).resolve()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{where}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of settings")
    raw = {**raw, **(overrides or {})}
    raw["source"] = source
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(source, exc)) from exc


def _describe(source: Path, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = _dotted(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "string_pattern_mismatch":
            message = f"{error['input']!r} is not allowed here ({message})"
        lines.append(f"{source}: {key}: {message}" if key else f"{source}: {message}")
    return "\n".join(lines)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_ENV_REF = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")


def read_secret(settings: Settings, path: Path, env: str) -> str:
    """A generated secret: from the environment variable `env` if set, else from its file."""
    if not _ENV_REF.match(env):
        raise ValueError(env)
    value = os.environ.get(env)
    if value:
        return value
    file = settings.resolve(path)
    try:
        secret = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{settings.source}: secret file {file} cannot be read ({exc.strerror}); "
            f"run `make setup` or set {env}"
        ) from exc
    if not secret:
        raise ConfigError(f"{settings.source}: secret file {file} is empty; run `make setup`")
    return secret


def admin_tokens(settings: Settings) -> dict[str, str]:
    """The admin API's tokens, token -> user: the generated one (ACD_ADMIN_TOKEN, else
    `admin.token_file`) for user `admin`, each `admin.tokens` user's file, and the users of
    ACD_ADMIN_TOKENS ("alice:TOKEN,bob:TOKEN"). Every bad entry is a `ConfigError`: an unreadable
    or empty file, a malformed or short token, a user defined twice, a token shared by two users.
    """
    where = f"{settings.source}: admin"
    by_user: dict[str, tuple[str, str]] = {}  # user -> (token, where it came from)
    generated = os.environ.get("ACD_ADMIN_TOKEN")
    if generated:
        by_user[ADMIN_USER] = (generated, "ACD_ADMIN_TOKEN")
    elif settings.resolve(settings.admin.token_file).exists() or not (
        settings.admin.tokens or os.environ.get("ACD_ADMIN_TOKENS")
    ):
        # Required unless named tokens replace it (then it may simply not exist).
        by_user[ADMIN_USER] = (
            read_secret(settings, settings.admin.token_file, "ACD_ADMIN_TOKEN"),
            "admin.token_file",
        )
    for user, path in settings.admin.tokens.items():
        file = settings.resolve(path)
        try:
            token = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{where}.tokens.{user}: token file {file} cannot be read ({exc.strerror})"
            ) from exc
        by_user[user] = (token, f"admin.tokens.{user} ({file})")
    for n, item in enumerate(filter(None, os.environ.get("ACD_ADMIN_TOKENS", "").split(","))):
        user, sep, token = item.strip().partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", user):
            raise ConfigError(
                f"ACD_ADMIN_TOKENS: entry {n + 1} is not USER:TOKEN (user: 1-64 of A-Z a-z "
                "0-9 _ . @ -)"
            )
        if user in by_user:
            raise ConfigError(
                f"ACD_ADMIN_TOKENS: user {user!r} already has a token from {by_user[user][1]}"
            )
        by_user[user] = (token, f"ACD_ADMIN_TOKENS entry {n + 1}")
    return _token_table(where, by_user)


def viewer_tokens(settings: Settings, supervisors: Mapping[str, str]) -> dict[str, str]:
    """The admin API's read-only tokens, token -> user: the generated one (`admin.
    viewer_token_file`, user `viewer`, when the file exists), each `admin.viewers` user's file,
    and the users of ACD_VIEWER_TOKENS ("wall:TOKEN,..."). Checked like `admin_tokens`; a viewer
    may not share a name or a token with a supervisor (`supervisors`: admin_tokens)."""
    where = f"{settings.source}: admin"
    by_user: dict[str, tuple[str, str]] = {}
    generated = settings.resolve(settings.admin.viewer_token_file)
    if generated.exists():
        by_user[VIEWER_USER] = (_read_token(generated, where, VIEWER_USER), "viewer_token_file")
    for user, path in settings.admin.viewers.items():
        file = settings.resolve(path)
        by_user[user] = (_read_token(file, where, user), f"admin.viewers.{user} ({file})")
    for n, item in enumerate(filter(None, os.environ.get("ACD_VIEWER_TOKENS", "").split(","))):
        user, sep, token = item.strip().partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", user):
            raise ConfigError(
                f"ACD_VIEWER_TOKENS: entry {n + 1} is not USER:TOKEN (user: 1-64 of A-Z a-z "
                "0-9 _ . @ -)"
            )
        if user in by_user:
            raise ConfigError(
                f"ACD_VIEWER_TOKENS: user {user!r} already has a token from {by_user[user][1]}"
            )
        by_user[user] = (token, f"ACD_VIEWER_TOKENS entry {n + 1}")
    names = set(supervisors.values())
    for user, (token, origin) in by_user.items():
        if user in names or token in supervisors:
            raise ConfigError(
                f"{where}: viewer {user!r} from {origin} shares a name or a token with a "
                "supervisor; a read-only token must be a token of its own"
            )
    return _token_table(where, by_user)


def _read_token(file: Path, where: str, user: str) -> str:
    try:
        return file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{where}: the token file of {user!r}, {file}, cannot be read ({exc.strerror})"
        ) from exc


def _token_table(where: str, by_user: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """token -> user, each token well-formed and each user's own."""
    out: dict[str, str] = {}
    for user, (token, origin) in by_user.items():
        if len(token) < MIN_TOKEN_LENGTH or not _TOKEN.match(token):
            raise ConfigError(
                f"{where}: the token of {user!r} from {origin} must be at least "
                f"{MIN_TOKEN_LENGTH} characters of A-Z a-z 0-9 _ . ~ + / = -"
            )
        if token in out:
            raise ConfigError(
                f"{where}: users {out[token]!r} and {user!r} have the same token; each needs "
                "its own, or the audit log cannot tell them apart"
            )
        out[token] = user
    return out
