"""Security defaults on the real stack: the redis-server `acd up` started refuses clients
without the generated password, which is not on its command line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import redis
from tests.integration.conftest import PORTS, Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


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
