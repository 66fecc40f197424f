"""A short burst on the full path: 10 calls/s for 10 s onto 50 agents, through the peak bench's
own stack (bench/peak.py: a private acd deployment on the real Asterisk root and Redis, SIPp
callers pressing 1 in the menu, SIPp agents answering at once and talking 2 s).

The assertions are on outcomes as Asterisk reported them over AMI to the bench's observer, not
on times: every caller reached an agent, exactly once; no agent had two answered calls at once;
no digit was lost; nobody went to the static fallback; SIPp saw no failure; one controller ran
throughout. (The bench's figures of time and CPU are printed, never asserted.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def test_a_burst_reaches_every_caller_once_without_double_booking_or_lost_digits(
    tmp_path: Path,
) -> None:
    out = tmp_path / "burst.json"
    run = subprocess.run(
        [
            sys.executable, str(REPO / "bench" / "peak.py"),
            "--systems", "acd", "--rates", "10", "--duration", "10", "--agents", "50",
            "--talk", "2", "--patience", "30", "--json", str(out),
            # The session's own SIPp phones may be up: they share nothing with this run.
            "--force",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )  # fmt: skip
    print(run.stdout)
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = json.loads(out.read_text())["runs"]
    assert result["error"] in (None, ""), result["error"]
    assert result["offered"] == 100
    assert result["seen"] == 100  # Asterisk reported every caller's channel
    assert result["sipp_failed"] == 0, result["sipp_failures"]
    assert result["reached"] == 100  # every caller's agent leg answered, within its patience
    assert result["bridged_twice"] == 0
    assert result["double_booked"] == 0
    assert result["lost_digit"] == 0
    assert result["no_digit"] == 0
    assert result["static_fallback"] == 0
    assert result["abandons"] == 0
    assert result["controllers"] == 1  # no controller restart
    assert result["leftover_channels"] == 0
