"""Running an Asterisk node from the cached Debian root, with the project's configuration.

asterisk-config/ is the static configuration. What depends on the deployment (addresses, ports, the
AMI secret, the agents' endpoints, the entry numbers) is rendered from acd.yaml into a per-node
instance directory. Asterisk runs chrooted in the root, in a private mount namespace where:

    asterisk-config/           -> /etc/asterisk
    STATE/asterisk/NODE/etc    -> /etc/asterisk/instance
    STATE/asterisk/NODE/var    -> /srv/acd          (run, log, db, spool of this node)
    sounds directory           -> /usr/share/asterisk/sounds/en_US_f_Allison/acd

so several nodes (and a test run beside a developer's stack) share one root without sharing state.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from acd.config import Settings, agi_secret, ami_monitor_secret, read_secret
from acd.dispatch.service import EVENTS
from acd.errors import ConfigError

ROOT_MARKER = ".acd-root"
SOUNDS_MOUNT = "usr/share/asterisk/sounds/en_US_f_Allison/acd"
VAR_MOUNT = "srv/acd"


@dataclass(frozen=True)
class NodePaths:
    root: Path
    config: Path
    etc: Path
    var: Path
    sounds: Path

    @property
    def control_socket(self) -> Path:
        return self.var / "run" / "asterisk.ctl"

    @property
    def console_log(self) -> Path:
        return self.var / "log" / "console.out"


def node_paths(settings: Settings) -> NodePaths:
    node_dir = settings.resolve(settings.state_dir) / "asterisk" / settings.asterisk.node
    return NodePaths(
        root=settings.asterisk.root,
        config=settings.resolve(settings.asterisk.config_dir),
        etc=node_dir / "etc",
        var=node_dir / "var",
        sounds=settings.resolve(settings.asterisk.sounds_dir),
    )


def asterisk_ids(root: Path) -> tuple[int, int]:
    """uid and gid of the `asterisk` user inside the root (they differ from the host's)."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "asterisk":
            return int(fields[2]), int(fields[3])
    raise ConfigError(f"{root}: no asterisk user in the Asterisk root; run `make setup`")


def check_root(root: Path) -> None:
    if not (root / ROOT_MARKER).exists() or not (root / "usr" / "sbin" / "asterisk").exists():
        raise ConfigError(
            f"Asterisk root {root} is missing or incomplete; run `make setup` "
            "(or set ACD_ASTERISK_ROOT)"
        )


def agent_phones_secret(settings: Settings) -> str | None:
    """The generated secret agents' SIP passwords derive from, or None when there is none (then
    agents' phones can dial nothing)."""
    try:
        return read_secret(settings, settings.agent_phones.secret_file, "ACD_AGENT_PHONES_SECRET")
    except ConfigError:
        return None


def agent_phone_password(secret: str, endpoint: str) -> str:
    """The SIP password of an agent's phone (user: its endpoint): derived from the deployment's
    generated secret, so that none is stored or committed, and each phone has its own.

    >>> agent_phone_password("s3cret", "agent-1001") == agent_phone_password("s3cret", "agent-1001")
    True
    >>> len(agent_phone_password("s3cret", "agent-1001"))
    24
    """
    digest = hmac.new(secret.encode(), f"agent-phone:{endpoint}".encode(), hashlib.sha256)
    return digest.hexdigest()[:24]


def render_instance(settings: Settings, paths: NodePaths, ami_secret: str) -> None:
    """Write the per-node configuration files and create the node's state directories.

    Files are readable by the root's `asterisk` group only. Without a local root (Asterisk runs in
    a container, see docker/), ownership is left to the container and files are world-readable.
    """
    phones = agent_phones_secret(settings)
    has_root = (paths.root / "etc" / "passwd").exists()
    uid, gid = asterisk_ids(paths.root) if has_root else (os.getuid(), os.getgid())
    paths.etc.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "log", "db", "spool", "log/cdr-csv"):
        d = paths.var / sub
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, uid, gid)
    os.chown(paths.var, uid, gid)
    files = {
        "asterisk.conf": _asterisk_conf(settings.asterisk.node),
        "pjsip.conf": _pjsip_conf(settings, phones),
        "manager.conf": _manager_conf(settings, ami_secret),
        "globals.conf": _globals_conf(settings),
        "extensions.conf": _entries_conf(settings, phones is not None),
        "queues.conf": _queues_conf(settings),
    }
    for name, text in files.items():
        target = paths.etc / name
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.chown(tmp, os.getuid(), gid)
        tmp.chmod(0o640 if has_root else 0o644)
        tmp.replace(target)


def _asterisk_conf(node: str) -> str:
    # systemname prefixes every uniqueid with the node's name: calls are keyed by uniqueid in the
    # shared Redis, and two nodes' counters would otherwise collide.
    return f"""[directories]
astetcdir => /etc/asterisk
astmoddir => /usr/lib/x86_64-linux-gnu/asterisk/modules
astvarlibdir => /var/lib/asterisk
astdbdir => /srv/acd/db
astkeydir => /var/lib/asterisk
astdatadir => /usr/share/asterisk
astagidir => /usr/share/asterisk/agi-bin
astspooldir => /srv/acd/spool
astrundir => /srv/acd/run
astlogdir => /srv/acd/log
astsbindir => /usr/sbin

[options]
systemname = {node}
verbose = 0
debug = 0
documentation_language = en_US
transmit_silence = yes
hideconnect = yes
defaultlanguage = en
"""


def _pjsip_conf(settings: Settings, phones_secret: str | None = None) -> str:
    sip = settings.asterisk.sip
    out = [
        "[transport-udp]",
        "type = transport",
        "protocol = udp",
        f"bind = {sip.host}:{sip.port}",
        "",
    ]
    for agent in settings.local_agents():
        contact = settings.agent_contact_for(agent)
        out += [
            f"[{agent.endpoint}](agent-endpoint)",
            f"aors = {agent.endpoint}",
            f"callerid = Agent {agent.id} <{agent.id}>",
        ]
        if phones_secret is not None:
            # The phone dials in (star codes) as its endpoint, with its own password.
            out += [f"auth = {agent.endpoint}-auth"]
        out += [
            "",
            f"[{agent.endpoint}]",
            "type = aor",
            f"contact = sip:{agent.endpoint}@{contact.host}:{contact.port}",
            "max_contacts = 1",
            "",
        ]
        if phones_secret is not None:
            out += [
                f"[{agent.endpoint}-auth]",
                "type = auth",
                "auth_type = userpass",
                f"username = {agent.endpoint}",
                f"password = {agent_phone_password(phones_secret, agent.endpoint)}",
                "",
            ]
    for trunk in settings.trunks:
        out += [f"[{trunk.name}](trunk-endpoint)"]
        if trunk.address is not None:
            out += [f"aors = {trunk.name}"]
        out += [""]
        if trunk.address is not None:
            out += [
                f"[{trunk.name}]",
                "type = aor",
                f"contact = sip:{trunk.address.host}:{trunk.address.port}",
                "",
            ]
        if trunk.match:
            out += [
                f"[{trunk.name}-identify]",
                "type = identify",
                f"endpoint = {trunk.name}",
                *(f"match = {m}" for m in trunk.match),
                "",
            ]
    for peer, address in sorted(settings.nodes.items()):
        out += [
            f"[acd-{peer}](internode-endpoint)",
            f"aors = acd-{peer}",
            "",
            f"[acd-{peer}]",
            "type = aor",
            f"contact = sip:{address.host}:{address.port}",
            "",
            f"[acd-{peer}-identify]",
            "type = identify",
            f"endpoint = acd-{peer}",
            f"match = {address.host}",
            "",
        ]
    return "\n".join(out)


# What each AMI user may do (manager.conf classes). The controller's: the events it acts on
# (`call`: Hangup, BridgeEnter, DialBegin, OriginateResponse, DeviceStateChange; `user`: the
# dialplan's UserEvents) and the actions it sends (`call`: Setvar, Redirect, Getvar; `user`:
# UserEvent; `originate`; `reporting`: CoreShowChannels, DeviceStateList, DBGet). Never `system`
# (restart, shell commands, AstDB writes, event filters that bypass these). The monitor user
# sees every event but `system`'s and may only ask (`reporting`).
CONTROLLER_READ = ("call", "user")
CONTROLLER_WRITE = ("call", "user", "originate", "reporting")
MONITOR_READ = ("call", "user", "agent", "dialplan", "reporting", "agi", "dtmf", "cdr")
MONITOR_WRITE = ("reporting",)


def _manager_conf(settings: Settings, secret: str) -> str:
    ami = settings.asterisk.ami
    monitor = ami_monitor_secret(settings)
    for value in (secret, monitor or ""):
        if any(c in value for c in "\r\n;"):
            raise ConfigError("an AMI secret must not contain newlines or ';'")
    # Only the events the controller acts on reach its session (hash-based name filters).
    filters = event_filters(sorted(EVENTS))
    text = f"bindaddr = {ami.host}\nport = {ami.port}\n"
    text += _manager_user(ami.username, secret, CONTROLLER_READ, CONTROLLER_WRITE, filters)
    if monitor is not None:
        monitor_filters = event_filters(ami.monitor_events)
        text += _manager_user(
            ami.monitor_username, monitor, MONITOR_READ, MONITOR_WRITE, monitor_filters
        )
    return text


def _manager_user(
    name: str, secret: str, read: Iterable[str], write: Iterable[str], filters: str
) -> str:
    """One manager.conf user, loopback only."""
    return f"""
[{name}]
secret = {secret}
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.0/255.0.0.0
read = {",".join(read)}
write = {",".join(write)}
writetimeout = 1000
{filters}
"""


def event_filters(matches: Iterable[str]) -> str:
    """manager.conf `eventfilter` lines letting through only the events matched (`Name`, or
    `Name:Header=Value`, the header's exact value); none: every event.

    >>> print(event_filters(["Hangup", "VarSet:Variable=ACD_RESULT"]))
    eventfilter(action(include),name(Hangup)) =
    eventfilter(action(include),name(VarSet),header(Variable),method(exact)) = ACD_RESULT
    """
    lines = []
    for match in matches:
        name, _, condition = match.partition(":")
        if condition:
            header, _, value = condition.partition("=")
            lines.append(
                f"eventfilter(action(include),name({name}),header({header}),method(exact)) = "
                + value
            )
        else:
            lines.append(f"eventfilter(action(include),name({name})) =")
    return "\n".join(lines)


def _globals_conf(settings: Settings) -> str:
    a = settings.asterisk
    secret = agi_secret(settings)
    path = f"/{secret}" if secret else ""
    return f"""ACD_AGI = agi://{settings.agi.host}:{settings.agi.port}{path}
ACD_NODE = {a.node}
ACD_HOLD_PERIOD = {a.hold_period}
ACD_HOLD_LIMIT = {a.hold_limit}
ACD_RING_TIMEOUT = {a.ring_timeout}
ACD_CARRIER_PROGRESS = {settings.breaker.progress_timeout}
ACD_ALIVE_WINDOW = {settings.agi.alive_window:g}
"""


def _entries_conf(settings: Settings, agent_codes: bool = False) -> str:
    out = ["[acd-entries]"]
    for entry in settings.entries:
        out += [
            f"exten => {entry.number},1,Set(ACD_ENTRY={entry.number})",
            " same => n,Goto(acd-entry,s,1)",
        ]
    # What agents' (authenticated) phones may dial: the star codes, when phones have passwords.
    out += ["", "[acd-agent-codes]"]
    if agent_codes:
        for action, code in sorted(settings.agent_phones.codes.items()):
            out += [
                f"exten => {code},1,Set(ACD_AGENT_ACTION={action})",
                " same => n,Goto(acd-agent-code,s,1)",
            ]
    # Calls from other nodes reach this node's agents by agent id, and nothing else.
    out += ["", "[acd-internode-agents]"]
    for agent in settings.local_agents():
        out += [
            f"exten => {agent.id},1,Set(ACD_AGENT_DIAL=PJSIP/{agent.endpoint})",
            " same => n,Goto(acd-internode,s,1)",
        ]
    return "\n".join(out) + "\n"


def _queues_conf(settings: Settings) -> str:
    out = ["[acd-fallback](acd-fallback-template)"]
    out += [f"member => PJSIP/{agent.endpoint}" for agent in settings.local_agents()]
    return "\n".join(out) + "\n"


def _in_node(paths: NodePaths, asterisk_args: str, *, sounds: bool) -> list[str]:
    """Run /usr/sbin/asterisk ARGS chrooted in the root, in a private mount namespace holding
    this node's configuration, state (and prompts)."""
    q = shlex.quote
    root = paths.root
    mounts = [
        (paths.config, root / "etc/asterisk"),
        (paths.etc, root / "etc/asterisk/instance"),
        (paths.var, root / VAR_MOUNT),
    ]
    if sounds:
        mounts.append((paths.sounds, root / SOUNDS_MOUNT))
    script = " && ".join(
        [f"mount --bind {q(str(src))} {q(str(dst))}" for src, dst in mounts]
        + [f"exec chroot {q(str(root))} /usr/sbin/asterisk {asterisk_args}"]
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script]


def launch_command(paths: NodePaths) -> list[str]:
    """The command that runs Asterisk in the foreground in its own mount namespace."""
    return _in_node(
        paths,
        "-f -C /etc/asterisk/instance/asterisk.conf -U asterisk -G asterisk",
        sounds=True,
    )


def cli_command(paths: NodePaths, command: str) -> list[str]:
    """`asterisk -rx COMMAND` against this node's control socket, run in the root."""
    return _in_node(
        paths, f"-C /etc/asterisk/instance/asterisk.conf -rx {shlex.quote(command)}", sounds=False
    )


def run_cli(paths: NodePaths, command: str, timeout: float = 10.0) -> str:
    result = subprocess.run(
        cli_command(paths, command), capture_output=True, text=True, timeout=timeout, check=False
    )
    return result.stdout + result.stderr
