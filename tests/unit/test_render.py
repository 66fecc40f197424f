"""Rendering the per-node Asterisk configuration from the deployment file."""

from __future__ import annotations

from pathlib import Path

import pytest

from acd.config import load_settings
from acd.dispatch.service import EVENTS
from acd.errors import ConfigError
from acd.runtime import asterisk
from acd.runtime.controller import endpoint_of
from acd.runtime.ivr import clean_caller_id

REPO = Path(__file__).resolve().parents[2]


def test_every_sample_agent_becomes_an_endpoint_with_a_contact() -> None:
    """Each agent of acd.yaml is a PJSIP endpoint whose contact points at the agents' address."""
    settings = load_settings(REPO / "acd.yaml")
    text = asterisk._pjsip_conf(settings)
    for agent in settings.agents:
        assert f"[{agent.endpoint}](agent-endpoint)" in text
        assert f"contact = sip:{agent.endpoint}@127.0.0.1:5070" in text
    assert "bind = 127.0.0.1:5060" in text


def test_fallback_queue_members_are_the_sample_agents() -> None:
    """The app_queue fallback queue lists every configured agent."""
    settings = load_settings(REPO / "acd.yaml")
    members = [
        line for line in asterisk._queues_conf(settings).splitlines() if line.startswith("member")
    ]
    assert members == [f"member => PJSIP/{a.endpoint}" for a in settings.agents]


def test_ami_is_bound_to_loopback_and_refuses_a_secret_that_breaks_the_file() -> None:
    """AMI listens on the configured loopback address; a secret with a newline is refused."""
    settings = load_settings(REPO / "acd.yaml")
    assert "bindaddr = 127.0.0.1" in asterisk._manager_conf(settings, "s3cret")
    with pytest.raises(ConfigError):
        asterisk._manager_conf(settings, "x\n[admin]")


def _users(text: str) -> dict[str, dict[str, list[str]]]:
    """manager.conf's users: for each, its option lines (name -> values, in order)."""
    users: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("["):
            current = users.setdefault(line.strip("[]"), {})
        elif current is not None and "=" in line:
            name, _, value = line.partition("=")
            current.setdefault(name.strip(), []).append(value.strip())
    return users


def test_the_controller_ami_user_has_only_the_classes_it_needs_and_never_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller's AMI user reads `call` and `user` events and sends `call`, `user`,
    `originate` and `reporting` actions, nothing more: a class added without need fails here.
    Its session gets only the events the dispatcher acts on. The monitor user, rendered when
    its secret exists, may read but only ask."""
    monkeypatch.delenv("ACD_AMI_MONITOR_SECRET", raising=False)
    (tmp_path / "monitor.secret").write_text("m0nitor-secret")
    settings = load_settings(
        REPO / "acd.yaml",
        {"asterisk": {"ami": {"monitor_secret_file": str(tmp_path / "monitor.secret"),
                              "monitor_events": ["Hangup", "VarSet:Variable=ACD_RESULT"]}}},
    )  # fmt: skip
    users = _users(asterisk._manager_conf(settings, "s3cret"))
    assert set(users) == {"acd", "acd-monitor"}
    controller, monitor = users["acd"], users["acd-monitor"]
    assert controller["read"] == ["call,user"]
    assert controller["write"] == ["call,user,originate,reporting"]
    filters = [k for k in controller if k.startswith("eventfilter")]
    assert filters == [f"eventfilter(action(include),name({n}))" for n in sorted(EVENTS)]
    assert monitor["write"] == ["reporting"]
    assert "system" not in monitor["read"][0].split(",")
    assert monitor["secret"] == ["m0nitor-secret"]
    assert [k for k in monitor if k.startswith("eventfilter")] == [
        "eventfilter(action(include),name(Hangup))",
        "eventfilter(action(include),name(VarSet),header(Variable),method(exact))",
    ]
    for user in users.values():
        assert user["permit"] == ["127.0.0.0/255.0.0.0"]


def test_without_its_secret_there_is_no_monitor_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACD_AMI_MONITOR_SECRET", raising=False)
    settings = load_settings(
        REPO / "acd.yaml", {"asterisk": {"ami": {"monitor_secret_file": "/dev/null/none"}}}
    )
    assert set(_users(asterisk._manager_conf(settings, "s3cret"))) == {"acd"}


def test_the_monitor_user_must_be_another_user() -> None:
    with pytest.raises(ConfigError, match="monitor_username"):
        load_settings(REPO / "acd.yaml", {"asterisk": {"ami": {"monitor_username": "acd"}}})


def test_launch_command_runs_asterisk_as_its_own_user_in_a_private_namespace() -> None:
    """Asterisk runs chrooted, unprivileged, with the config bind-mounted in a private namespace."""
    settings = load_settings(REPO / "acd.yaml")
    cmd = asterisk.launch_command(asterisk.node_paths(settings))
    assert cmd[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert "-U asterisk -G asterisk" in cmd[-1]
    assert "/etc/asterisk/instance" in cmd[-1]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("5551234", "5551234"),
        ("+86 138-0013-8000", "+8613800138000"),
        ("(010) 555-0100", "0105550100"),
        ("anonymous", ""),
        ("123\nHANGUP", ""),
        ('1"; DROP', ""),
        ("9" * 40, "9" * 32),
        ("9" * 80, ""),
        ("+", ""),
    ],
)
def test_caller_id_is_reduced_to_digits(raw: str, clean: str) -> None:
    """Caller ID is data: only digits (and a leading +) survive, bounded in length."""
    assert clean_caller_id(raw) == clean


def _two_node_settings(tmp_path: Path) -> asterisk.Settings:
    text = (REPO / "acd.yaml").read_text()
    text = text.replace(
        '  - {id: "1003", endpoint: agent-1003,',
        '  - {id: "1003", node: node-b, endpoint: agent-1003,',
    )
    text += "\nnodes:\n  node-b: {host: 10.0.0.2, port: 5060}\n"
    (tmp_path / "acd.yaml").write_text(text)
    return load_settings(tmp_path / "acd.yaml")


def test_another_node_is_an_internode_trunk_and_its_agents_are_dialled_over_it(
    tmp_path: Path,
) -> None:
    """With node-b listed under `nodes`, node-a gets an inter-node endpoint recognised by node-b's
    address; agent 1003, whose phone is on node-b, has no endpoint here and is dialled by id over
    that trunk; node-a's own agents are reachable from node-b by id only."""
    settings = _two_node_settings(tmp_path)
    pjsip = asterisk._pjsip_conf(settings)
    assert "[acd-node-b](internode-endpoint)" in pjsip
    assert "contact = sip:10.0.0.2:5060" in pjsip
    assert "match = 10.0.0.2" in pjsip
    assert "[agent-1003]" not in pjsip
    assert "[agent-1001](agent-endpoint)" in pjsip
    by_id = {a.id: a for a in settings.agents}
    assert settings.agent_dial(by_id["1003"]) == "PJSIP/1003@acd-node-b"
    assert settings.agent_dial(by_id["1001"]) == "PJSIP/agent-1001"
    internode = asterisk._entries_conf(settings).split("[acd-internode-agents]")[1]
    assert "exten => 1001,1,Set(ACD_AGENT_DIAL=PJSIP/agent-1001)" in internode
    assert "1003" not in internode
    assert "agent-1003" not in asterisk._queues_conf(settings)


def test_an_agent_on_an_unknown_node_is_refused(tmp_path: Path) -> None:
    text = (
        (REPO / "acd.yaml")
        .read_text()
        .replace(
            '  - {id: "1003", endpoint: agent-1003,',
            '  - {id: "1003", node: node-z, endpoint: agent-1003,',
        )
    )
    (tmp_path / "acd.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"agents\[2\]\.node: unknown node 'node-z'"):
        load_settings(tmp_path / "acd.yaml")


def test_the_multinode_samples_describe_one_floor() -> None:
    """examples/multinode: each node lists the other, and both agree on agents and skills."""
    a = load_settings(REPO / "examples/multinode/node-a.yaml")
    b = load_settings(REPO / "examples/multinode/node-b.yaml")
    assert set(a.nodes) == {"node-b"}
    assert set(b.nodes) == {"node-a"}
    assert a.agents == b.agents
    assert a.skills == b.skills
    assert a.redis == b.redis
    assert a.nodes["node-b"] == b.asterisk.sip
    assert b.nodes["node-a"] == a.asterisk.sip
    assert {x.asterisk.ami.port for x in (a, b)} == {5038, 5039}


def test_uniqueids_carry_the_node_name() -> None:
    """Calls are keyed by uniqueid in the shared Redis: each node prefixes them with its name."""
    assert "systemname = node-b\n" in asterisk._asterisk_conf("node-b")


def test_agents_phones_authenticate_with_passwords_of_their_own() -> None:
    """With the phones' secret, each agent's endpoint requires authentication as itself, with a
    password derived from the secret that differs between agents and between deployments; the
    star codes are rendered into the context the phones dial from."""
    settings = load_settings(REPO / "acd.yaml")
    text = asterisk._pjsip_conf(settings, "deployment-secret")
    passwords = set()
    for agent in settings.agents:
        assert f"auth = {agent.endpoint}-auth" in text
        assert f"[{agent.endpoint}-auth]\ntype = auth\nauth_type = userpass" in text
        password = asterisk.agent_phone_password("deployment-secret", agent.endpoint)
        assert f"username = {agent.endpoint}\npassword = {password}\n" in text
        passwords.add(password)
    assert len(passwords) == len(settings.agents)
    assert asterisk.agent_phone_password("other", "agent-1001") not in passwords
    codes = asterisk._entries_conf(settings, agent_codes=True)
    section = codes.split("[acd-agent-codes]")[1].split("[acd-internode-agents]")[0]
    assert "exten => *73,1,Set(ACD_AGENT_ACTION=pause)" in section
    assert section.count("Goto(acd-agent-code,s,1)") == 4


def test_without_the_phones_secret_agents_phones_can_dial_nothing() -> None:
    """No secret: no auth on the agents' endpoints and no star code in their context (the
    static dialplan refuses everything else)."""
    settings = load_settings(REPO / "acd.yaml")
    assert "type = auth" not in asterisk._pjsip_conf(settings, None)
    codes = asterisk._entries_conf(settings, agent_codes=False)
    section = codes.split("[acd-agent-codes]")[1].split("[acd-internode-agents]")[0]
    assert "exten" not in section


def test_an_all_digit_agent_endpoint_is_refused(tmp_path: Path) -> None:
    """An agent endpoint named like a number could be taken for a caller: a config error."""
    config = (REPO / "acd.yaml").read_text().replace("endpoint: agent-1001", "endpoint: '1001'")
    path = tmp_path / "acd.yaml"
    path.write_text(config)
    with pytest.raises(ConfigError, match=r"agents\[0\]\.endpoint: '1001' is all digits"):
        load_settings(path)


@pytest.mark.parametrize(
    ("channel", "endpoint"),
    [
        ("PJSIP/agent-1001-0000002a", "agent-1001"),
        ("PJSIP/acd-node-b-00000003", "acd-node-b"),
        ("Local/1000@from-trunk-00000001;1", ""),
        ("", ""),
    ],
)
def test_the_endpoint_of_a_channel(channel: str, endpoint: str) -> None:
    """A PJSIP channel's name is its endpoint plus a counter; other channels have none."""
    assert endpoint_of(channel) == endpoint


def test_the_cli_prints_an_agents_phone_password_for_provisioning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`acd phone-password ID`: the phone's SIP user and the password Asterisk will expect; an
    unknown agent is an error."""
    from acd import cli

    # (cli.main itself would point the logs at this test's captured stdout for good.)
    monkeypatch.setenv("ACD_AGENT_PHONES_SECRET", "deployment-secret")
    settings = load_settings(REPO / "acd.yaml")
    assert cli._phone_password(settings, "1002") == 0
    password = asterisk.agent_phone_password("deployment-secret", "agent-1002")
    assert capsys.readouterr().out.splitlines() == ["user agent-1002", f"password {password}"]
    assert cli._phone_password(settings, "nobody") == 1


def test_the_agi_secret_goes_first_in_every_agi_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the generated AGI secret, the dialplan's ACD_AGI carries it as the first path
    element (the controller refuses a route without it); without one, the bare address. A
    secret that would break the URL or the file is refused."""
    monkeypatch.delenv("ACD_AGI_SECRET", raising=False)
    secret = tmp_path / "agi.secret"
    settings = load_settings(REPO / "acd.yaml", {"agi": {"secret_file": str(secret)}})
    assert "ACD_AGI = agi://127.0.0.1:4573\n" in asterisk._globals_conf(settings)
    secret.write_text("agi-secret-0123456789abcdef\n")
    assert "ACD_AGI = agi://127.0.0.1:4573/agi-secret-0123456789abcdef\n" in asterisk._globals_conf(
        settings
    )
    for bad in ("short", "has/a-slash-0123456789", "has;semicolon-0123456789"):
        secret.write_text(bad)
        with pytest.raises(ConfigError, match=r"agi\.secret_file"):
            asterisk._globals_conf(settings)


def test_the_dialplan_gets_the_alive_window_and_one_under_two_beats_is_refused() -> None:
    settings = load_settings(REPO / "acd.yaml", {"agi": {"heartbeat": 0.5, "alive_window": 2}})
    assert "ACD_ALIVE_WINDOW = 2\n" in asterisk._globals_conf(settings)
    with pytest.raises(ConfigError, match="alive_window"):
        load_settings(REPO / "acd.yaml", {"agi": {"heartbeat": 1, "alive_window": 1.5}})
