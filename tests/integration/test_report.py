"""`acd report` and /metrics over a recorded SIPp run, against counts taken independently from
SIPp (its calls' exit statuses) and from Asterisk's own CDRs (cdr-csv Master.csv)."""

from __future__ import annotations

import asyncio
import csv
import json
import time
import urllib.request

import pytest

from tests.integration.conftest import PORTS, EventLog, Stack, caller_uid
from tests.integration.sipp import Script

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CDR_FIELDS = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp",
    "lastdata", "start", "answer", "end", "duration", "billsec", "disposition", "amaflags",
    "uniqueid", "userfield",
)  # fmt: skip

# caller ID -> what it does: two wait for after-sales (no agent of level 6+ free) and hang up,
# one talks to a presale agent, one to a payment agent, one hangs up in the menu.
PLAN = {
    "5557001": (Script().at(1.0, "4").wait(5), "aftersales"),
    "5557002": (Script().at(1.0, "4").wait(6), "aftersales"),
    "5557003": (Script().at(1.0, "10").wait(9), "presale"),
    "5557004": (Script().at(1.0, "3").wait(9), "payment"),
    "5557005": (Script().wait(3), None),
}


def _cdrs(stack: Stack) -> list[dict[str, str]]:
    path = stack.state / "asterisk" / "test-a" / "var" / "log" / "cdr-csv" / "Master.csv"
    with path.open(newline="") as f:
        return [dict(zip(CDR_FIELDS, row, strict=False)) for row in csv.reader(f)]


async def test_the_report_agrees_with_sipp_and_the_cdrs(stack: Stack, ami_events: EventLog) -> None:
    assert stack.acd("agent", "pause", "1002").returncode == 0  # the only after-sales 6+
    start = time.time() - 1
    try:
        runs = {cid: stack.call(script, cid) for cid, (script, _) in PLAN.items()}
        for cid in PLAN:
            await caller_uid(ami_events, cid)
        codes = {cid: await asyncio.to_thread(run.wait, 60) for cid, run in runs.items()}
    finally:
        for run in runs.values():
            run.stop()
        assert stack.acd("agent", "resume", "1002").returncode == 0
    await asyncio.sleep(2)  # the last hangups reach the controller, the CDRs the file
    end = time.time() + 1

    # Independent counts: SIPp's calls, and Asterisk's CDRs of these callers.
    sipp_calls = sum(1 for code in codes.values() if code == 0)
    rows = [r for r in _cdrs(stack) if r["src"] in PLAN]
    by_uid = {r["uniqueid"]: r for r in rows}
    answered = {
        r["src"]
        for r in rows
        if r["dstchannel"].startswith("PJSIP/agent-") and r["disposition"] == "ANSWERED"
    }
    # Hung up on hold: in WaitExten, or in the hold's periodic announcement.
    on_hold = {
        r["src"]
        for r in rows
        if r["lastapp"] == "WaitExten" or (r["lastapp"] == "AGI" and "/announce" in r["lastdata"])
    }
    in_menu = {r["src"] for r in rows if r["lastapp"] == "AGI" and "/inbound" in r["lastdata"]}
    assert sipp_calls == len(PLAN) == len(by_uid)
    assert answered == {"5557003", "5557004"}
    assert on_hold == {"5557001", "5557002"}
    assert in_menu == {"5557005"}

    result = stack.acd("report", "--from", str(start), "--to", str(end), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    overall = report["overall"]
    assert overall["arrivals"] == len(by_uid)
    assert overall["offered"] == len(answered) + len(on_hold)
    assert overall["answered"] == len(answered)
    assert overall["abandoned"] == len(on_hold)
    assert overall["calls_ended"] == {"answered": 2, "abandoned": 2, "ivr": 1}
    queues = report["queues"]
    assert queues["aftersales"]["abandoned"] == 2
    assert queues["aftersales"]["answered"] == 0
    assert queues["presale"]["answered"] == queues["payment"]["answered"] == 1
    # Their waits, at least the short IVR walk, and the talk until the caller hung up.
    assert 0 <= queues["presale"]["asa"] < 5
    assert queues["presale"]["aht"] > 2

    text = stack.acd("report", "--from", str(start), "--to", str(end)).stdout
    assert "aftersales" in text
    print(text)
    csv_out = stack.acd("report", "--from", str(start), "--to", str(end), "--csv").stdout
    overall_row = next(csv.DictReader(csv_out.splitlines()))
    assert overall_row["scope"] == "overall"
    assert int(overall_row["answered"]) == 2

    request = urllib.request.Request(
        f"http://127.0.0.1:{PORTS['admin']}/metrics",
        headers={"Authorization": f"Bearer {stack.admin_token}"},
    )

    def scrape() -> str:
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.read().decode())

    metrics = await asyncio.to_thread(scrape)
    assert 'acd_abandons_total{queue="aftersales"}' in metrics
    assert 'acd_wait_seconds_count{queue="presale"}' in metrics
    assert "acd_ami_connected 1.0" in metrics
    assert "acd_redis_ok 1.0" in metrics
    assert 'acd_trunk_breaker_state{state="closed",trunk="carrier-out"} 1.0' in metrics
    assert 'acd_queue_waiting{queue="presale"}' in metrics
    assert "acd_event_loop_lag_seconds" in metrics
