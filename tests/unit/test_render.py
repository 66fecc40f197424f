"""Rendering the per-node Asterisk configuration from the deployment file."""

from __future__ import annotations

from pathlib import Path

import pytest

from acd.config import load_settings
from acd.errors import ConfigError
from acd.runtime import asterisk
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
