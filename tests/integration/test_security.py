"""Security defaults on the real stack: the redis-server `acd up` started refuses clients
without the generated password, which is not on its command line; the AMI users have only the
classes they need."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import redis
from acd.errors import AmiActionFailed
from tests.integration.conftest import PORTS, EventLog, Stack, send_as_controller

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_redis_refuses_a_client_without_the_password(stack: Stack) -> None:
    password = (stack.state / "redis.secret").read_text().strip()
    assert stack.redis.ping() is True  # the stack's own client logs in
    anonymous = redis.Redis(port=PORTS["redis"], socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        anonymous.set("acdtest:intruder", "1")
    wrong = redis.Redis(port=PORTS["redis"], password="not-" + password, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    assert stack.redis.exists("acdtest:intruder") == 0
    # The password is in a file only its owner reads, not on the server's command line.
    pid = int(stack.redis.info("server")["process_id"])
    argv = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    assert password.encode() not in argv
    conf = stack.state / "redis" / "redis-acd.conf"
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
    assert f"requirepass {password}" in conf.read_text()


async def test_the_controller_ami_user_cannot_run_system_actions_and_the_monitor_only_asks(
    stack: Stack, ami_events: EventLog
) -> None:
    """On the real Asterisk: the controller's user is refused what the `system` class allows
    (console commands, AstDB writes, session filters that would widen what it sees), yet runs
    what it needs (a `reporting` list); the monitor user reads every call event but may neither
    originate nor hang up."""
    for action, fields in (
        ("Command", {"Command": "core show version"}),
        ("DBPut", {"Family": "acd_intruder", "Key": "k", "Val": "1"}),
        ("DBDel", {"Family": "acd_callback", "Key": "k"}),
        ("Filter", {"Operation": "Add", "MatchCriteria": "action(include),name(VarSet)"}),
    ):
        with pytest.raises(AmiActionFailed, match=r"[Pp]ermission denied"):
            await send_as_controller(stack, action, fields)
    assert "acd_intruder" not in stack.asterisk_cli("database show acd_intruder")
    # DBGet (`reporting`) is let through: Asterisk looks the key up and does not find it.
    with pytest.raises(AmiActionFailed, match="not found"):
        await send_as_controller(stack, "DBGet", {"Family": "acd_none", "Key": "k"})
    assert ami_events.client is not None
    for action, fields in (
        ("Originate", {"Channel": "PJSIP/agent-1001", "Application": "Wait", "Data": "1"}),
        ("Hangup", {"Channel": "/^PJSIP\\/.*/"}),
        ("Command", {"Command": "core show version"}),
    ):
        with pytest.raises(AmiActionFailed, match=r"[Pp]ermission denied"):
            await ami_events.client.send_action(action, fields)
    channels = await ami_events.client.send_list_action("CoreShowChannels")
    assert isinstance(channels, list)
