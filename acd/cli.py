"""The `acd` command: start and stop the stack, check flows, and steer a running controller
through its admin API (menu modes, overload level, queues, callbacks, trunks, agents, status)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from acd import logs
from acd.config import Settings, load_settings, read_secret, redis_url
from acd.errors import AcdError, ConfigError

DEFAULT_CONFIG = os.environ.get("ACD_CONFIG", "acd.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acd", description=__doc__)
    parser.add_argument(
        "--config",
        "-c",
        default=DEFAULT_CONFIG,
        help="deployment file (default: $ACD_CONFIG or ./acd.yaml)",
    )
    parser.add_argument("--log-level", default=os.environ.get("ACD_LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Redis (if needed), Asterisk and the controller")
    up.add_argument("--detach", "-d", action="store_true", help="run in the background")
    up.add_argument(
        "--no-asterisk",
        action="store_true",
        help="only the controller (and Redis): Asterisk runs elsewhere",
    )
    sub.add_parser("down", help="stop a detached `acd up`")
    sub.add_parser("run", help="the controller alone, in the foreground (as `acd up` runs it)")
    sub.add_parser("render", help="render the Asterisk instance configuration and exit")

    flows = sub.add_parser("flows", help="IVR flows")
    flows_sub = flows.add_subparsers(dest="flows_command", required=True)
    check = flows_sub.add_parser("check", help="validate flows; every problem with file and line")
    check.add_argument("paths", nargs="*", type=Path, help="files or directories (default: all)")
    flows_sub.add_parser("reload", help="make the running controller reload its flows")

    menu = sub.add_parser("menu", help="menu mode of an entry number (all entries by default)")
    menu.add_argument("mode", choices=["normal", "fallback", "auto"])
    menu.add_argument("number", nargs="?")

    level = sub.add_parser("level", help="pin the overload level, or give it back to the governor")
    level.add_argument("level", choices=["auto", "0", "1", "2", "3", "4"])

    agent = sub.add_parser(
        "agent", help="log an agent in or out, pause or resume it, or set its skills"
    )
    agent.add_argument("action", choices=["login", "logout", "pause", "resume", "skills"])
    agent.add_argument("agent_id")
    agent.add_argument("skills", nargs="*", help="with `skills`: SKILL=LEVEL ... (levels 1-10)")
    agent.add_argument("--reason", default="", help="pause reason (a-z 0-9 _ -), e.g. lunch")

    queue = sub.add_parser("queue", help="open, close, pause or resume a queue")
    queue.add_argument("action", choices=["open", "close", "pause", "resume"])
    queue.add_argument("name")

    callback = sub.add_parser("callback", help="callback offers on or off (all queues by default)")
    callback.add_argument("mode", choices=["on", "off"])
    callback.add_argument("queue", nargs="?")

    trunk = sub.add_parser("trunk", help="outbound trunks and their breakers")
    trunk.add_argument("action", choices=["list", "trip", "reset"])
    trunk.add_argument("name", nargs="?")
    sub.add_parser("agents", help="agents and their states")
    phone = sub.add_parser(
        "phone-password",
        help="the SIP password an agent's phone authenticates with (user: its endpoint)",
    )
    phone.add_argument("agent_id")

    tiers = sub.add_parser("tiers", help="customer tiers by caller ID")
    tiers_sub = tiers.add_subparsers(dest="tiers_command", required=True)
    load = tiers_sub.add_parser("load", help="merge a CSV of caller_id,tier (tier regular removes)")
    load.add_argument("csv", type=Path)

    report = sub.add_parser("report", help="post-peak report from the journey events in Redis")
    report.add_argument(
        "--from",
        dest="start",
        help="ISO time (UTC if no zone) or epoch seconds; default: 24 h before --to",
    )
    report.add_argument("--to", dest="end", help="ISO time or epoch seconds; default: now")
    fmt = report.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")

    status = sub.add_parser("status", help="the controller's status")
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--watch", type=float, nargs="?", const=2.0, help="refresh every N seconds (default 2)"
    )
    status.add_argument(
        "--count", type=int, help="with --watch: stop after this many refreshes (default: never)"
    )
    return parser


def _phone_password(settings: Settings, agent_id: str) -> int:
    """For provisioning a phone: its SIP user and password, derived from the local secret."""
    from acd.runtime import asterisk

    agent = next((a for a in settings.agents if a.id == agent_id), None)
    if agent is None:
        print(f"acd: no agent {agent_id!r} in {settings.source}", file=sys.stderr)
        return 1
    secret = asterisk.agent_phones_secret(settings)
    if secret is None:
        print(
            f"acd: no secret in {settings.resolve(settings.agent_phones.secret_file)}: run "
            "`make setup` (agents' phones can dial nothing without it)",
            file=sys.stderr,
        )
        return 1
    print(f"user {agent.endpoint}")
    print(f"password {asterisk.agent_phone_password(secret, agent.endpoint)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        settings = load_settings(args.config)
        return _dispatch(args, settings)
    except ConfigError as exc:
        print(f"acd: {exc}", file=sys.stderr)
        return 2
    except AcdError as exc:
        print(f"acd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from acd.runtime import stack
    from acd.runtime.flows import load_checked_flows

    command = args.command
    if command == "up":
        config = Path(args.config).resolve()
        if args.detach:
            pid = stack.up_detached(config, settings)
            print(f"acd is up (pid {pid}); logs in {stack.state_dir(settings) / 'acd.log'}")
            return 0
        stack.up_foreground(settings, config, with_asterisk=not args.no_asterisk)
        return 0
    if command == "down":
        print("acd stopped" if stack.down(settings) else "acd was not running")
        return 0
    if command == "run":
        stack.run_controller(settings)
        return 0
    if command == "phone-password":
        return _phone_password(settings, args.agent_id)
    if command == "render":
        from acd.runtime import asterisk

        paths = asterisk.node_paths(settings)
        secret = read_secret(settings, settings.asterisk.ami.secret_file, "ACD_AMI_SECRET")
        asterisk.render_instance(settings, paths, secret)
        print(paths.etc)
        return 0
    if command == "flows" and args.flows_command == "check":
        flows = load_checked_flows(settings, [p.resolve() for p in args.paths] or None)
        for name in sorted(flows):
            print(f"ok: flow {name} ({len(flows[name].nodes)} nodes) in {flows[name].source}")
        return 0
    if command == "flows":
        body = _api(settings, "POST", "/flows/reload")
        print("reloaded: " + ", ".join(body["flows"]))
        return 0
    if command == "menu":
        path = f"/menu/{args.number}" if args.number else "/menu"
        body = _api(settings, "PUT", path, {"mode": args.mode})
        for number, mode in body["modes"].items():
            print(f"entry {number}: menu {mode}")
        return 0
    if command == "level":
        level: str | int = args.level if args.level == "auto" else int(args.level)
        body = _api(settings, "PUT", "/overload", {"level": level})
        pinned = "auto" if body["pinned"] is None else f"pinned at {body['pinned']}"
        print(f"overload level {body['level']} ({pinned}; governor says {body['computed']})")
        return 0
    if command == "agent" and args.action == "skills":
        body = _api(
            settings, "PUT", f"/agents/{args.agent_id}/skills", {"skills": _skills(args.skills)}
        )
        print(f"agent {body['agent']}: skills {body['before']} -> {body['skills']}")
        return 0
    if command == "agent":
        if args.skills:
            raise AcdError(f"agent {args.action}: unexpected {' '.join(args.skills)}")
        body = _api(
            settings, "PUT", f"/agents/{args.agent_id}",
            {"action": args.action, "reason": args.reason},
        )  # fmt: skip
        print(f"agent {body['agent']}: {body['before']} -> {body['state']}")
        return 0
    if command == "agents":
        for agent_id, agent in _api(settings, "GET", "/agents")["agents"].items():
            reason = f" ({agent['reason']})" if agent["reason"] else ""
            print(f"agent {agent_id:<8} {agent['state']}{reason}  skills {agent['skills']}")
        return 0
    if command == "tiers":
        table = _read_tiers(args.csv)
        body = _api(settings, "PUT", "/tiers", {"tiers": table})
        print(f"{body['updated']} caller IDs updated from {args.csv}")
        return 0
    if command == "queue":
        state = {"open": "open", "resume": "open", "close": "closed", "pause": "paused"}
        body = _api(settings, "PUT", f"/queues/{args.name}", {"state": state[args.action]})
        print(f"queue {args.name}: {body['state']} ({body['waiting']} waiting)")
        return 0
    if command == "callback":
        payload: dict[str, Any] = {"mode": args.mode}
        if args.queue:
            payload["queue"] = args.queue
        for name, mode in _api(settings, "PUT", "/callbacks/mode", payload)["modes"].items():
            print(f"queue {name}: callbacks {mode}")
        return 0
    if command == "trunk":
        if args.action == "list":
            if args.name:
                raise AcdError("trunk list takes no name")
            trunks = _api(settings, "GET", "/trunks")["trunks"]
        else:
            if not args.name:
                raise AcdError(f"trunk {args.action} NAME")
            trunks = {args.name: _api(settings, "POST", f"/trunks/{args.name}/{args.action}")}
        for name, t in trunks.items():
            print(_trunk_line(name, t))
        return 0
    if command == "report":
        return _report(settings, args)
    if command == "status":
        if args.watch is None:
            if args.count is not None:
                raise AcdError("--count goes with --watch")
            return _status(settings, as_json=args.json)
        return _watch(settings, args.watch, args.count, as_json=args.json)
    raise AssertionError(command)


def _api(
    settings: Settings, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One call to the running controller's admin API; errors become AcdError with its message."""
    token = read_secret(settings, settings.admin.token_file, "ACD_ADMIN_TOKEN")
    url = f"http://{settings.admin.host}:{settings.admin.port}{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            # Detail for the audit log; who made the change is the token's user.
            "X-Acd-User": f"cli:{_user()}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
            return result
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise AcdError(f"{method} {path}: {exc.code}: {message}") from exc
    except urllib.error.URLError as exc:
        raise AcdError(
            f"the controller's admin API at {url} does not answer: {exc.reason}"
        ) from exc


def _read_tiers(path: Path) -> dict[str, str]:
    """caller_id,tier rows (a header row is allowed); every bad row is reported, none applied."""
    import csv

    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise AcdError(f"{path}: cannot read: {exc}") from exc
    table: dict[str, str] = {}
    problems = []
    for number, row in enumerate(rows, start=1):
        if not row or (number == 1 and row[0].strip().lower() in ("caller_id", "callerid")):
            continue
        if len(row) != 2:
            problems.append(f"{path}:{number}: expected caller_id,tier")
            continue
        caller_id, tier = row[0].strip(), row[1].strip()
        if not re.fullmatch(r"\+?[0-9]{2,32}", caller_id) or not re.fullmatch(
            r"[a-z][a-z0-9_-]{0,39}", tier
        ):
            problems.append(f"{path}:{number}: {caller_id[:40]!r},{tier[:40]!r} is not valid")
            continue
        table[caller_id] = tier
    if problems:
        raise AcdError("\n".join(problems))
    if not table:
        raise AcdError(f"{path}: no caller IDs")
    return table


def _when(text: str | None, default: float) -> float:
    """ISO 8601 (UTC when it has no zone) or epoch seconds."""
    from datetime import UTC, datetime

    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise AcdError(
            f"{text!r}: expected an ISO time (2026-11-11T00:00) or epoch seconds"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _report(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    import csv
    import time

    from acd.adapters.store import RedisStore
    from acd.domain.report import REPEAT_WINDOW, build_report, csv_rows
    from acd.runtime.journey import report_targets

    end = _when(args.end, time.time())
    start = _when(args.start, end - 24 * 3600)
    if start >= end:
        raise AcdError("--from must be before --to")

    async def read() -> list[dict[str, str]]:
        store = RedisStore(redis_url(settings), settings.redis.prefix)
        try:
            # A day before, to recognise repeat callers; calls that end after --to, to know how.
            return await store.journey_range(start - REPEAT_WINDOW, end + 4 * 3600)
        finally:
            await store.close()

    report = build_report(asyncio.run(read()), start, end, report_targets(settings.reports))
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.csv:
        rows = csv_rows(report)
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    else:
        _print_report(report)
    return 0


REPORT_HOURS = 24  # the text report shows the busiest hours, at most this many


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _mark(text: str, met: bool | None) -> str:
    """A figure, with '!' when it misses its target."""
    return f"{text}!" if met is False else f"{text} "


def _figures_line(label: str, q: dict[str, Any]) -> str:
    m = q["meets"]
    return (
        f"{label} {q['offered']:>7} {q['answered']:>8} {q['abandoned']:>7} "
        f"{q['short_abandoned']:>5} {_mark(_pct(q['service_level']), m['service_level']):>8} "
        f"{_mark(_secs(q['asa']), m['answer_time']):>9} {_secs(q['aht']):>8} "
        f"{_mark(_pct(q['abandon_rate']), m['abandon_rate']):>8} "
        f"{_pct(q['callback_success']):>6}"
    )


_FIGURES_HEADER = (
    f"{'offered':>7} {'answered':>8} {'abandon':>7} {'short':>5} {'SL':>7}  {'ASA':>8}  "
    f"{'AHT':>8} {'aband.%':>7}  {'cb ok':>6}"
)


def _print_report(report: dict[str, Any]) -> None:
    import time

    o = report["overall"]
    t = report["targets"]
    fmt = "%Y-%m-%dT%H:%MZ"
    print(
        f"from {time.strftime(fmt, time.gmtime(report['from']))} "
        f"to {time.strftime(fmt, time.gmtime(report['to']))}"
    )
    first = o["first_contact"]
    print(
        f"arrivals {o['arrivals']}, repeat callers within 24 h {o['repeat_callers']} "
        f"({_pct(o['repeat_rate'])}; first contact "
        f"{_mark(_pct(first), o['meets']['first_contact']).strip()})"
    )
    print("ended: " + (", ".join(f"{k} {n}" for k, n in o["calls_ended"].items()) or "none"))
    print(
        f"targets: service level {t['service_level']}, answer within {t['answer_time']:g} s, "
        f"abandon under {t['abandon_rate']:.0%}, first contact over {t['first_contact']:.0%}"
    )
    print(
        f"(short abandons, under {t['short_abandon']:g} s, count against nothing; "
        "! marks a figure that misses its target)"
    )
    print(f"{'queue':<12} {_FIGURES_HEADER}")
    for name, q in [("all", o), *report["queues"].items()]:
        print(_figures_line(f"{name:<12}", q))
    by_hour = [h for h in report["by_hour"] if h["offered"] or h["arrivals"]]
    if not by_hour:
        return
    shown = sorted(
        sorted(by_hour, key=lambda h: (-h["offered"], -h["arrivals"]))[:REPORT_HOURS],
        key=lambda h: h["hour"],
    )
    left = len(by_hour) - len(shown)
    quieter = f"; {left} quieter hours in --csv or --json" if left else ""
    print(f"\nby hour (UTC, of arrival or queueing){quieter}")
    print(f"{'hour':<17} {'arrivals':>8} {'queue':<12} {_FIGURES_HEADER}")
    per_queue: dict[str, list[dict[str, Any]]] = {}
    for row in report["hours"]:
        per_queue.setdefault(row["hour"], []).append(row)
    for h in shown:
        print(_figures_line(f"{h['hour']:<17} {h['arrivals']:>8} {'all':<12}", h))
        for q in per_queue.get(h["hour"], []):
            print(_figures_line(f"{'':<17} {'':>8} {q['queue']:<12}", q))


def _skills(pairs: list[str]) -> dict[str, int]:
    """SKILL=LEVEL arguments; every malformed one is reported."""
    if not pairs:
        raise AcdError("agent skills ID SKILL=LEVEL ...")
    out: dict[str, int] = {}
    for pair in pairs:
        match = re.fullmatch(r"([a-z][a-z0-9_-]{0,39})=([0-9]{1,2})", pair)
        if not match or not 1 <= int(match.group(2)) <= 10:
            raise AcdError(f"{pair!r}: expected SKILL=LEVEL with a level from 1 to 10")
        out[match.group(1)] = int(match.group(2))
    return out


def _trunk_line(name: str, t: dict[str, Any]) -> str:
    reason = t.get("reason")
    why = " (tripped by hand)" if t["tripped"] else f" ({reason})" if reason else ""
    return (
        f"trunk {name:<14} {t['role']:<8} {t['state']}{why}  {t['in_use']}/{t['capacity']} "
        f"channels, window {t['window_failures']}/{t['window_calls']} failed"
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _status(settings: Settings, *, as_json: bool) -> int:
    body = _api(settings, "GET", "/status")
    if as_json:
        print(json.dumps(body, indent=2))
    else:
        print("\n".join(status_lines(body)))
    return 0


def _watch(settings: Settings, every: float, count: int | None, *, as_json: bool) -> int:
    """`status --watch`: refresh every `every` seconds (`count` times, or until interrupted); a
    controller that does not answer for a moment is reported, and the watch goes on."""
    import time

    if count is not None and count < 1:
        raise AcdError("--count must be at least 1")
    refresh = 0
    while count is None or refresh < count:
        if refresh:
            time.sleep(max(0.5, every))
        refresh += 1
        if not as_json and sys.stdout.isatty():
            print("\033[2J\033[H", end="")
        try:
            _status(settings, as_json=as_json)
        except AcdError as exc:
            print(f"acd: {exc} (retrying every {max(0.5, every):g} s)", file=sys.stderr)
        if not as_json:
            print(f"-- refresh {refresh}, every {max(0.5, every):g} s", flush=True)
    return 0


def _wait(seconds: float) -> str:
    return "no agent" if seconds >= 86400 else f"{seconds:.0f} s"


def status_lines(body: dict[str, Any]) -> list[str]:
    """`acd status` for a person: health and the overload level, the menu mode of each entry,
    per queue its state, callers waiting, longest wait, estimated wait, service level and agents
    by state, the trunks with their breakers, and each agent."""
    comps = body["components"]
    overload = body["overload"]
    pinned = (
        f"pinned; governor says {overload['computed']}"
        if overload["pinned"] is not None
        else "governor"
    )
    lines = [
        f"node {body['node']}: AMI {'up' if comps['ami']['connected'] else 'DOWN'}, "
        f"Redis {'up' if comps['redis']['ok'] else 'DOWN'}, "
        f"overload level {overload['level']} ({pinned})"
    ]
    for number, mode in body["menu_modes"].items():
        lines.append(f"  entry {number:<8} menu {mode}")
    lines.append(
        f"  {'queue':<18} {'state':<7} {'waiting':>7} {'longest':>8} {'estimate':>9} "
        f"{'SL':>5}  callbacks  agents"
    )
    for name, q in body["queues"].items():
        agents = ", ".join(f"{n} {state}" for state, n in sorted(q["agents"].items())) or "none"
        sl = q.get("service_level")
        lines.append(
            f"  queue {name:<12} {q['state']:<7} {q['waiting']:>7} "
            f"{_wait(q['longest_wait']):>8} {_wait(q['ewt']):>9} "
            f"{'-' if sl is None else format(sl, '.0%'):>5}  {q['callbacks']:<9}  {agents}"
        )
    for name, t in body.get("trunks", {}).items():
        lines.append("  " + _trunk_line(name, t))
    for agent_id, agent in body["agents"].items():
        reason = f" ({agent['reason']})" if agent.get("reason") else ""
        lines.append(f"  agent {agent_id:<8} {agent['state']}{reason}")
    return lines
