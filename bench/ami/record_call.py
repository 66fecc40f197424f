"""Record the AMI transcript of one call on a private test stack (bench/ami/*.ami).

One caller (SIPp) dials the sample entry, presses 1 during the welcome (promo-rules starts) and 0
(queued for presale), and waits in acd-hold until the controller redirects it to an agent. Then,
by `--agent`:
- `answers` (bench/ami/call.ami): the agent's phone (SIPp,
  tests/integration/scenarios/agent_hangs_up.xml) answers, talks 6 s and hangs up, which ends
  the caller's Dial and the call;
- `rings` (bench/ami/missed.ami): the phone rings unanswered
  (tests/integration/scenarios/phone_rings_unanswered.xml) for the ring timeout (5 s here), so
  acd-connect sends UserEvent AcdDialEnd (NOANSWER) and puts the caller back on hold, where it
  hangs up a few seconds later. An AMI observer logged in as the
controller's user, with no event filter, writes every event of that call (its Linkedid) and the
channel-less events around it (DeviceStateChange...) as Asterisk printed them, one blank line
between events, in the order received.

    .venv/bin/python bench/ami/record_call.py --agent answers   # writes bench/ami/call.ami
    .venv/bin/python bench/ami/record_call.py --agent rings     # writes bench/ami/missed.ami

The stack is the one bench/ivr_turn.py runs (`acd up --detach` with a private state directory),
moved to ports of its own so the two never collide; `acd down` always follows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import ivr_turn  # noqa: E402 - bench/ is not a package: importable once it is on sys.path

from acd import logs  # noqa: E402
from acd.adapters.ami import AmiClient  # noqa: E402
from acd.protocol.ami import AmiMessage  # noqa: E402
from tests.integration import sipp  # noqa: E402 - ivr_turn put the checkout on sys.path

# Clear of the developer stack's ports (50xx), the integration tests' (51xx), bench/ivr_turn.py's
# (52xx) and bench/peak.py's (54xx-55xx, 4873, 6679, 8388).
ivr_turn.PORTS.update(
    sip=5660, ami=5638, agi=4973, redis=6779, admin=8488, agents=5670, orders=8490, callers=5661
)
CALLER_ID = "5550177"
CALL_SECONDS = 60.0  # the whole call must be over by then (IVR, hold, ring, 6 s of talk)
RING_TIMEOUT = 5  # seconds the unanswered phone rings (the least acd.yaml allows)
HOLD_AFTER_MISS = 5.0  # seconds the caller waits on hold again after the missed ring
OUT = {"answers": "call.ami", "rings": "missed.ami"}
# Channel-less events kept when they happen during the call (the rest of the node's life is not
# this call's).
UNBOUND = ("DeviceStateChange", "ExtensionStatus", "PresenceStateChange")


def caller_script(agent: str) -> sipp.Script:
    first = sipp.ANSWER_SECONDS + sipp.prompt_seconds("promo-welcome") / 2
    script = sipp.Script().at(first, "1").at(first + 2.2, "0")
    if agent == "rings":
        # Queued at once, redirected within a second, then the ring timeout, then on hold.
        script.wait(1.0 + RING_TIMEOUT + HOLD_AFTER_MISS)
    return script


class Tape:
    """Every event, raw, in order; `call()` keeps those of the caller's call."""

    def __init__(self) -> None:
        self.events: list[AmiMessage] = []
        self.done = asyncio.Event()
        self._linkedid = ""
        self._live: set[str] = set()

    def __call__(self, event: AmiMessage) -> None:
        self.events.append(event)
        name, uid = event.event, event.get("Uniqueid") or ""
        if name == "Newchannel" and event.get("CallerIDNum") == CALLER_ID and not self._linkedid:
            self._linkedid = event.get("Linkedid") or uid
        if self._linkedid and event.get("Linkedid") == self._linkedid:
            if name == "Newchannel":
                self._live.add(uid)
            elif name == "Hangup":
                self._live.discard(uid)
                if not self._live:
                    self.done.set()

    def call(self) -> list[AmiMessage]:
        ours = [i for i, e in enumerate(self.events) if e.get("Linkedid") == self._linkedid]
        if not ours:
            return []
        first, last = ours[0], ours[-1]
        return [
            e
            for e in self.events[first : last + 1]
            if e.get("Linkedid") == self._linkedid or e.event in UNBOUND
        ]


async def record(secret: str, workdir: Path, entry: str, agent: str) -> Tape:
    tape = Tape()
    scenario = sipp.caller_scenario(
        workdir / "record-caller.xml",
        caller_script(agent).render(workdir, "record"),
        CALLER_ID,
        remote_hangup=agent == "answers",
        remote_hangup_within_s=CALL_SECONDS,
    )
    client = AmiClient(
        host="127.0.0.1", port=ivr_turn.PORTS["ami"], username="acd-monitor", secret=secret
    )
    client.add_listener(tape)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(client.run())
        try:
            await client.wait_connected(timeout=15)
            caller = sipp.start_caller(
                scenario,
                f"127.0.0.1:{ivr_turn.PORTS['sip']}",
                entry,
                ivr_turn.PORTS["callers"],
                ivr_turn.CALLERS_MEDIA_PORT + 200,
                workdir,
                timeout_s=int(CALL_SECONDS + 30),
            )
            try:
                await asyncio.to_thread(caller.wait, CALL_SECONDS + 40)
            finally:
                caller.stop()
            async with asyncio.timeout(10):
                await tape.done.wait()
            await asyncio.sleep(1.0)  # the device states settle after the last hangup
        finally:
            await client.close()
    return tape


def render(events: list[AmiMessage]) -> str:
    return "".join("".join(f"{k}: {v}\n" for k, v in e.fields) + "\n" for e in events)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agent", choices=sorted(OUT), default="answers")
    parser.add_argument("--out", type=Path, help="default: bench/ami/call.ami or missed.ami")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    logs.configure("error")
    out: Path = args.out or Path(__file__).with_name(OUT[args.agent])
    tmp = Path(tempfile.mkdtemp(prefix="acd-ami-record-"))
    try:
        state, workdir = tmp / "state", tmp / "sipp"
        state.mkdir()
        workdir.mkdir()
        for name in ("ami.secret", "ami-monitor.secret", "admin.token"):
            (state / name).write_text(secrets.token_urlsafe(24))
            os.chmod(state / name, 0o600)
        config = ivr_turn.bench_config(state)
        config["asterisk"]["node"] = "bench-rec"
        if args.agent == "rings":
            config["asterisk"]["ring_timeout"] = RING_TIMEOUT
        config_path = state / "acd-record.yaml"
        config_path.write_text(yaml.safe_dump(config))
        try:
            up = ivr_turn._acd(config_path, "up", "--detach")
            if up.returncode != 0:
                print(f"record_call: the stack did not start: {up.stderr.strip()}", file=sys.stderr)
                return 2
            uas = sipp.start_uas(
                "agent_hangs_up" if args.agent == "answers" else "phone_rings_unanswered",
                ivr_turn.PORTS["agents"],
                ivr_turn.AGENTS_MEDIA_PORT + 200,
                workdir,
            )
            try:
                tape = asyncio.run(
                    record(
                        (state / "ami-monitor.secret").read_text(),
                        workdir,
                        str(config["entries"][0]["number"]),
                        args.agent,
                    )
                )
            finally:
                uas.stop()
        finally:
            down = ivr_turn._acd(config_path, "down")
            if down.returncode != 0:
                print(f"record_call: acd down failed: {down.stderr.strip()}", file=sys.stderr)
        events = tape.call()
        if not events:
            print("record_call: no event of the call was seen", file=sys.stderr)
            return 1
        out.write_text(render(events))
        names: dict[str, int] = {}
        for e in events:
            names[e.event or ""] = names.get(e.event or "", 0) + 1
        print(f"record_call: {len(events)} events to {out}")
        for name, n in sorted(names.items(), key=lambda kv: -kv[1]):
            print(f"  {n:4d} {name}")
    except subprocess.SubprocessError as exc:
        print(f"record_call: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"record_call: files kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
