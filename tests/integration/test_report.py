"""`acd report`, /metrics and /status over a recorded SIPp run, against counts taken
independently: SIPp's own statistics (-trace_stat), Asterisk's CDRs (cdr-csv Master.csv) and
Asterisk's timestamped AMI events, and what the test itself did.

Where the times come from: the CDRs say which calls reached an agent (the agent leg), where the
others ended, and each call's start, end and billsec; but the caller's channel is answered by the
IVR (Answer() in acd-entry), so a CDR's `answer` is the IVR's, `answer - start` is 0 for every
call and `billsec` runs from the IVR's answer, and Asterisk writes no CDR with the agent as party
A. So the moment an agent answered comes from Asterisk's own BridgeEnter event (timestampevents),
and the queue join from Asterisk setting ACD_QUEUE on the channel (VarSet): waits are
BridgeEnter - VarSet, talk is the CDR billsec less the time from the IVR's answer (Newstate Up) to
the bridge.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from acd.adapters.store import RedisStore
from acd.config import redis_url
from acd.domain.report import LIVE_FIELDS, live_minutes, live_service_level
from tests.integration import sipp
from tests.integration.conftest import PORTS, REPO, EventLog, Stack, until
from tests.integration.sipp import Script, SippRun

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CDR_FIELDS = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp",
    "lastdata", "start", "answer", "end", "duration", "billsec", "disposition", "amaflags",
    "uniqueid", "userfield",
)  # fmt: skip
SKILLS = ("aftersales", "presale", "payment")
SHORT_ABANDON = 5.0  # reports.short_abandon (the default) in the test stack
SERVICE_SECONDS = 20.0  # reports.service_seconds (the default)
OTHER_SERVICE_SECONDS = 5.0  # a second report, from a configuration that says 80/5


@dataclass(frozen=True)
class Caller:
    name: str  # also names the SIPp files
    caller_id: str
    script: Script
    queue: str | None
    fate: str  # answered | abandoned | ivr


# The only after-sales agent of level 6+ (1002) is paused: after-sales callers wait. One hangs up
# at once on hold (a short abandon, ~2 s), one after ~8 s; when that one has gone, 1002 resumes
# and answers the third, who waited ~8 s (within 20 s, not within 5 s). A presale and a payment
# caller are answered at once; the payment caller calls again when the first call is over (a
# repeat caller), and one caller hangs up in the menu.
CALLERS = [
    Caller("short", "5557001", Script().at(1.0, "4").wait(1), "aftersales", "abandoned"),
    Caller("long", "5557002", Script().at(1.0, "4").wait(7), "aftersales", "abandoned"),
    Caller("waits", "5557006", Script().at(1.0, "4").wait(17), "aftersales", "answered"),
    Caller("presale", "5557003", Script().at(1.0, "10").wait(8), "presale", "answered"),
    Caller("payment", "5557004", Script().at(1.0, "3").wait(5), "payment", "answered"),
    Caller("menu", "5557005", Script().wait(3), None, "ivr"),
]
AGAIN = Caller("again", "5557004", Script().at(1.0, "3").wait(4), "payment", "answered")


def _start(stack: Stack, caller: Caller) -> tuple[SippRun, Path]:
    """Stack.call, with SIPp's statistics (-trace_stat) written to a CSV of this caller's."""
    port = next(stack._ports)
    steps = caller.script.render(stack.workdir, f"report-{caller.name}")
    scenario = sipp.caller_scenario(
        stack.workdir / f"report-{caller.name}.xml", steps, caller.caller_id
    )
    stats = stack.workdir / f"report-{caller.name}-stats.csv"
    cmd = [
        "sipp", f"127.0.0.1:{PORTS['sip']}", "-sf", str(scenario), "-s", "1000",
        "-i", "127.0.0.1", "-p", str(port), "-mp", str(40000 + (port - 5300) * 8),
        "-m", "1", "-timeout", "60s", "-timeout_error", "-nostdin",
        "-trace_stat", "-fd", "1", "-stf", str(stats),
    ]  # fmt: skip
    log = stack.workdir / f"report-{caller.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=stack.workdir)
    return SippRun(proc, log), stats


def _sipp_stats(path: Path) -> dict[str, str]:
    """The last (final) row of a SIPp -trace_stat CSV, by column name."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    return dict(zip(rows[0], rows[-1], strict=False))


def _sipp_seconds(text: str) -> float:
    """SIPp's HH:MM:SS:microseconds."""
    h, m, s, us = (int(part) for part in text.split(":"))
    return h * 3600 + m * 60 + s + us / 1e6


def _cdrs(stack: Stack) -> list[dict[str, str]]:
    path = stack.state / "asterisk" / "test-a" / "var" / "log" / "cdr-csv" / "Master.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [dict(zip(CDR_FIELDS, row, strict=False)) for row in csv.reader(f)]


def _stamp(events: EventLog, uid: str, name: str, **match: str) -> float:
    """Asterisk's timestamp of the first event `name` of channel `uid` matching `match`."""
    for e in events.events:
        if e.event == name and e.get("Uniqueid") == uid:
            if all(e.get(k) == v for k, v in match.items()):
                return float(e.get("Timestamp") or "nan")
    raise AssertionError(f"no {name} {match} for {uid}")


def _acd(stack: Stack, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "acd", "--config", str(config or stack.config_path), *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip


@pytest.fixture
async def store(stack: Stack) -> AsyncIterator[RedisStore]:
    """The stack's Redis, as a controller sees it."""
    s = RedisStore(redis_url(stack.settings), stack.settings.redis.prefix)
    yield s
    await s.close()


async def test_the_report_agrees_with_sipp_the_cdrs_and_asterisks_events(
    stack: Stack, ami_events: EventLog, store: RedisStore
) -> None:
    """Offered, answered and abandoned per queue, short abandons, repeat callers, service level,
    ASA and AHT of `acd report` (and of a report configured 80/5) match SIPp's statistics, the
    CDRs and Asterisk's event times; the live service level (/metrics, /status) moved by
    exactly these calls, short abandons excluded."""
    window = stack.settings.reports.service_window
    minutes = live_minutes(time.time(), window)
    before = await store.service_counts(SKILLS, minutes)
    paused = await asyncio.to_thread(stack.acd, "agent", "pause", "1002")
    assert paused.returncode == 0, paused.stderr
    start = time.time() - 1
    runs: dict[str, tuple[SippRun, Path]] = {}
    resumed = None
    try:
        runs = {c.name: _start(stack, c) for c in CALLERS}
        uid_of = {c.name: (await _uids(ami_events, c.caller_id))[0] for c in CALLERS}
        # When the ~8 s abandon has hung up, 1002 comes back and takes the caller who waits.
        await ami_events.wait_for(
            lambda e: e.event == "Hangup" and e.get("Uniqueid") == uid_of["long"], timeout=30
        )
        resumed = await asyncio.to_thread(stack.acd, "agent", "resume", "1002")
        assert resumed.returncode == 0, resumed.stderr
        # The repeat caller's second call, once the first is over.
        assert await asyncio.to_thread(runs["payment"][0].wait, 30) == 0
        runs["again"] = _start(stack, AGAIN)
        uid_of["again"] = (await _uids(ami_events, AGAIN.caller_id, count=2))[1]
        codes = {name: await asyncio.to_thread(run.wait, 40) for name, (run, _) in runs.items()}
    finally:
        for run, _ in runs.values():
            run.stop()
        if resumed is None:
            assert stack.acd("agent", "resume", "1002").returncode == 0
    callers = {c.name: c for c in [*CALLERS, AGAIN]}
    uids = set(uid_of.values())
    assert len(uids) == len(callers)
    assert codes == dict.fromkeys(callers, 0)

    # What Asterisk wrote, once it has: a CDR per call; the controller's hangup of every call.
    def cdrs_of_these_calls() -> list[dict[str, str]] | None:
        rows = [r for r in _cdrs(stack) if r["uniqueid"] in uids]
        return rows if {r["uniqueid"] for r in rows} == uids else None

    rows = await until(cdrs_of_these_calls, "a CDR for every call", timeout=15)
    await until(
        lambda: (
            {
                fields["uid"]
                for _, fields in stack.redis.xrange(stack.key("journey"), int(start * 1000))
                if fields.get("event") == "hangup"
            }
            >= uids
        ),
        "the controller's hangup of every call",
        timeout=15,
    )
    end = time.time() + 1

    # -- SIPp's own statistics: every call made and completed, none failed.
    stats = {name: _sipp_stats(path) for name, (_, path) in runs.items()}
    for name, s in stats.items():
        assert (s["TotalCallCreated"], s["SuccessfulCall(C)"], s["FailedCall(C)"]) == (
            "1", "1", "0",
        ), name  # fmt: skip
    by_sipp = {
        q: {
            fate: sum(
                int(stats[c.name]["SuccessfulCall(C)"])
                for c in callers.values()
                if c.queue == q and (fate == "offered" or c.fate == fate)
            )
            for fate in ("offered", "answered", "abandoned")
        }
        for q in SKILLS
    }
    arrivals_sipp = sum(int(s["TotalCallCreated"]) for s in stats.values())

    # -- The CDRs: one per call (no agent missed); the agent legs; where the others ended.
    cdr = {r["uniqueid"]: r for r in rows}
    assert len(rows) == len(cdr)
    name_of = {uid: name for name, uid in uid_of.items()}
    for uid, r in cdr.items():
        assert r["src"] == callers[name_of[uid]].caller_id
        # SIPp's call length and the CDR's duration (whole seconds, rounded down) agree.
        length = _sipp_seconds(stats[name_of[uid]]["CallLength(C)"])
        assert length - 1.5 < int(r["duration"]) <= length + 0.5, (name_of[uid], length, r)
    agent_legs = {
        uid
        for uid, r in cdr.items()
        if r["dstchannel"].startswith("PJSIP/agent-") and r["disposition"] == "ANSWERED"
    }
    on_hold = {
        uid
        for uid, r in cdr.items()
        if r["lastapp"] == "WaitExten" or (r["lastapp"] == "AGI" and "/announce" in r["lastdata"])
    }
    in_menu = {u for u, r in cdr.items() if r["lastapp"] == "AGI" and "/inbound" in r["lastdata"]}
    fate_cdr = {u: "answered" for u in agent_legs} | {u: "abandoned" for u in on_hold}
    fate_cdr |= {u: "ivr" for u in in_menu}
    assert fate_cdr == {uid_of[n]: c.fate for n, c in callers.items()}
    # The queue each caller joined, as Asterisk saw the controller set it.
    queue_of = {
        uid: next(
            (e.get("Value") for e in ami_events.events
             if e.event == "VarSet" and e.get("Uniqueid") == uid
             and e.get("Variable") == "ACD_QUEUE"),
            None,
        )
        for uid in uids
    }  # fmt: skip
    assert queue_of == {uid_of[n]: c.queue for n, c in callers.items()}
    by_cdr = {
        q: {
            "offered": sum(1 for u in agent_legs | on_hold if queue_of[u] == q),
            "answered": sum(1 for u in agent_legs if queue_of[u] == q),
            "abandoned": sum(1 for u in on_hold if queue_of[u] == q),
        }
        for q in SKILLS
    }
    assert by_cdr == by_sipp

    # -- Times, from Asterisk's events and the CDRs.
    joined = {
        u: _stamp(ami_events, u, "VarSet", Variable="ACD_QUEUE") for u in agent_legs | on_hold
    }
    bridged = {u: _stamp(ami_events, u, "BridgeEnter") for u in agent_legs}
    waits = {u: bridged[u] - joined[u] for u in agent_legs}
    held = {u: _stamp(ami_events, u, "Hangup") - joined[u] for u in on_hold}
    ivr_up = {u: _stamp(ami_events, u, "Newstate", ChannelStateDesc="Up") for u in agent_legs}
    talks = {u: int(cdr[u]["billsec"]) - (bridged[u] - ivr_up[u]) for u in agent_legs}
    hung_up = {u: _stamp(ami_events, u, "Hangup") for u in agent_legs}
    short = {u for u in on_hold if held[u] < SHORT_ABANDON}
    assert short == {uid_of["short"]}  # what the test did: one hung up within 5 s on hold
    assert waits[uid_of["waits"]] > OTHER_SERVICE_SECONDS  # ... and one waited more than 5 s

    def independent(q: str | None, service_seconds: float) -> dict[str, Any]:
        answered = [u for u in agent_legs if q is None or queue_of[u] == q]
        abandoned = [u for u in on_hold if q is None or queue_of[u] == q]
        shorts = [u for u in abandoned if u in short]
        counted = len(answered) + len(abandoned) - len(shorts)
        in_time = sum(1 for u in answered if waits[u] <= service_seconds)
        return {
            "short_abandoned": len(shorts),
            "service_level": round(in_time / counted, 4) if counted else None,
            "asa": sum(waits[u] for u in answered) / len(answered) if answered else None,
            "aht": sum(talks[u] for u in answered) / len(answered) if answered else None,
            "talk": (
                sum(hung_up[u] - bridged[u] for u in answered) / len(answered) if answered else None
            ),
        }

    # -- The report, and the same run reported with a service level of 80/5.
    span = ("--from", str(start), "--to", str(end))
    other_config = stack.state / "acd-report-80-5.yaml"
    config = yaml.safe_load(stack.config_path.read_text())
    config["reports"] = {"service_seconds": OTHER_SERVICE_SECONDS}
    other_config.write_text(yaml.safe_dump(config))
    as_json, as_text, as_csv, other = await asyncio.gather(
        asyncio.to_thread(_acd, stack, "report", *span, "--json"),
        asyncio.to_thread(_acd, stack, "report", *span),
        asyncio.to_thread(_acd, stack, "report", *span, "--csv"),
        asyncio.to_thread(_acd, stack, "report", *span, "--json", config=other_config),
    )
    for result in (as_json, as_text, as_csv, other):
        assert result.returncode == 0, result.stderr
    report, report_5s = json.loads(as_json.stdout), json.loads(other.stdout)
    overall = report["overall"]
    assert overall["arrivals"] == arrivals_sipp == len(cdr)
    assert sum(by_sipp[q]["offered"] for q in SKILLS) == overall["offered"]
    for q in SKILLS:
        figures = report["queues"][q]
        got = {k: figures[k] for k in ("offered", "answered", "abandoned")}
        assert got == by_cdr[q] == by_sipp[q], q
    assert overall["calls_ended"] == {"abandoned": 2, "answered": 4, "ivr": 1}
    # Repeat callers: what the test did (5557004 twice), and what the CDRs show.
    assert overall["repeat_callers"] == 1 == len(cdr) - len({r["src"] for r in rows})

    for scope, figures, figures_5s in [
        (None, overall, report_5s["overall"]),
        *((q, report["queues"][q], report_5s["queues"][q]) for q in SKILLS),
    ]:
        expected = independent(scope, SERVICE_SECONDS)
        assert figures["short_abandoned"] == expected["short_abandoned"], scope
        assert figures["service_level"] == expected["service_level"], scope
        assert (
            figures_5s["service_level"]
            == independent(scope, OTHER_SERVICE_SECONDS)["service_level"]
        ), scope
        if expected["asa"] is not None:
            # The controller times the same two moments as Asterisk stamps them, a few ms
            # later each (its event loop, the AGI round trips): 0.3 s is plenty.
            assert figures["asa"] == pytest.approx(expected["asa"], abs=0.3), scope
            # billsec is whole seconds rounded down, so the CDR's talk is up to 1 s short of
            # the true one; plus the same 0.3 s of the controller's timing.
            assert expected["aht"] - 0.3 <= figures["aht"] <= expected["aht"] + 1.3, scope
            # And the talk from the bridge to the hangup, as Asterisk stamped both.
            assert figures["aht"] == pytest.approx(expected["talk"], abs=0.3), scope
    assert report["queues"]["aftersales"]["service_level"] == 0.5  # 1 in time of 1 + 2 - 1
    assert report_5s["queues"]["aftersales"]["service_level"] == 0.0
    assert overall["meets"]["service_level"] is True  # 4 of 5, 80% in 20 s
    assert report_5s["overall"]["meets"]["service_level"] is False  # 3 of 5 in 5 s

    # The text shows every queue, and the hour the calls queued in with its queues.
    text = as_text.stdout
    print(text)
    hour = time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(start + 1))
    assert "by hour" in text
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(hour))
    assert lines[at].split()[2] == "all"
    assert [line.split()[0] for line in lines[at + 1 : at + 4]] == sorted(SKILLS)
    # The CSV carries the JSON's figures, the per-hour rows and the meets-target flags.
    table = list(csv.DictReader(as_csv.stdout.splitlines()))
    row = {(r["scope"], r["queue"]): r for r in table if r["scope"] in ("overall", "queue")}
    assert row["overall", ""]["arrivals"] == str(overall["arrivals"])
    assert row["overall", ""]["repeat_callers"] == "1"
    assert row["overall", ""]["meets_service_level"] == "yes"
    assert row["queue", "aftersales"]["short_abandoned"] == "1"
    assert row["queue", "aftersales"]["meets_abandon_rate"] == "no"  # 1 of 2: 50%
    assert [r["hour"] for r in table if r["scope"] == "hour"] == [
        h["hour"] for h in report["by_hour"]
    ]

    # -- The live service level: these calls moved the shared counters by exactly what they
    # were, short abandons apart; /metrics and /status show the figure of the counters.
    after = await store.service_counts(
        SKILLS, range(minutes.start, live_minutes(time.time(), window).stop)
    )
    for q in SKILLS:
        moved = {f: after[q][f] - before[q][f] for f in LIVE_FIELDS}
        answered = [u for u in agent_legs if queue_of[u] == q]
        assert moved == {
            "offered": by_cdr[q]["offered"],
            "answered": by_cdr[q]["answered"],
            "in_target": sum(1 for u in answered if waits[u] <= SERVICE_SECONDS),
            "abandoned": by_cdr[q]["abandoned"],
            "short_abandoned": sum(1 for u in short if queue_of[u] == q),
            "fallback": 0,
        }, q
    metrics = await asyncio.to_thread(_get, stack, "/metrics")
    status = json.loads(await asyncio.to_thread(_get, stack, "/status"))
    for q in SKILLS:
        live = round(live_service_level(after[q]) or math.nan, 3)
        assert f'acd_service_level{{queue="{q}"}} {live}' in metrics, q
        assert status["queues"][q]["service_level"] == live, q
    assert 'acd_abandons_total{queue="aftersales"}' in metrics
    assert 'acd_wait_seconds_count{queue="presale"}' in metrics
    assert "acd_ami_connected 1.0" in metrics
    assert "acd_redis_ok 1.0" in metrics
    assert 'acd_trunk_breaker_state{state="closed",trunk="carrier-out"} 1.0' in metrics
    assert 'acd_queue_waiting{queue="presale"}' in metrics
    assert "acd_event_loop_lag_seconds" in metrics


async def _uids(events: EventLog, caller_id: str, count: int = 1) -> list[str]:
    """The Uniqueids of the first `count` calls from this caller ID (their inbound channels)."""
    found = await events.wait_for(
        lambda e: (
            e.event == "Newchannel"
            and e.get("CallerIDNum") == caller_id
            and (e.get("Channel") or "").startswith("PJSIP/carrier-in-")
        ),
        count=count,
    )
    return [e.get("Uniqueid") or "" for e in found]


def _get(stack: Stack, path: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORTS['admin']}{path}",
        headers={"Authorization": f"Bearer {stack.admin_token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())
