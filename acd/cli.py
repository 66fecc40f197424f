"""The `acd` command: start and stop the stack, check flows, ask the controller for its status."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from acd import logs
from acd.config import Settings, load_settings, read_secret
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
    flows_sub.add_parser("check", help="validate every flow; exit 1 on any problem")
    status = sub.add_parser("status", help="the controller's status (via the admin API)")
    status.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        settings = load_settings(args.config)
        return _dispatch(args, settings)
    except ConfigError as exc:
        print(f"acd: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except AcdError as exc:
        print(f"acd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from acd.runtime import stack

    if args.command == "up":
        if args.detach:
            pid = stack.up_detached(Path(args.config).resolve(), settings)
            print(f"acd is up (pid {pid}); logs in {stack.state_dir(settings) / 'acd.log'}")
            return 0
        stack.up_foreground(
            settings, Path(args.config).resolve(), with_asterisk=not args.no_asterisk
        )
        return 0
    if args.command == "run":
        stack.run_controller(settings)
        return 0
    if args.command == "down":
        print("acd stopped" if stack.down(settings) else "acd was not running")
        return 0
    if args.command == "render":
        from acd.runtime import asterisk

        paths = asterisk.node_paths(settings)
        secret = read_secret(settings, settings.asterisk.ami.secret_file, "ACD_AMI_SECRET")
        asterisk.render_instance(settings, paths, secret)
        print(paths.etc)
        return 0
    if args.command == "flows":
        flows = stack.load_checked_flows(settings)
        for name in sorted(flows):
            print(f"ok: flow {name} ({len(flows[name].nodes)} nodes)")
        return 0
    if args.command == "status":
        return _status(settings, as_json=args.json)
    raise AssertionError(args.command)


def _status(settings: Settings, *, as_json: bool) -> int:
    token = read_secret(settings, settings.admin.token_file, "ACD_ADMIN_TOKEN")
    url = f"http://{settings.admin.host}:{settings.admin.port}/status"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.load(response)
    except urllib.error.URLError as exc:
        raise AcdError(
            f"the controller's admin API at {url} does not answer: {exc.reason}"
        ) from exc
    if as_json:
        print(json.dumps(body, indent=2))
        return 0
    comps = body["components"]
    print(
        f"node {body['node']}: AMI {'up' if comps['ami']['connected'] else 'DOWN'}, "
        f"Redis {'up' if comps['redis']['ok'] else 'DOWN'}"
    )
    for name, queue in body["queues"].items():
        print(f"  queue {name:<12} waiting {queue['waiting']}")
    for agent_id, agent in body["agents"].items():
        print(f"  agent {agent_id:<8} {agent['state']}")
    return 0
