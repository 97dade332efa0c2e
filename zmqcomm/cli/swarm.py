"""``zmqcomm swarm``: the demo that shows the whole stack working, with its numbers."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from zmqcomm.cli.common import sigterm_interrupts
from zmqcomm.cli.help_format import HelpFormatter
from zmqcomm.swarm.demo import SwarmOptions, run_swarm
from zmqcomm.swarm.report import format_table

EXAMPLES = """\
examples:
  zmqcomm swarm                       8 agents and a broker on ipc for 5 seconds
  zmqcomm swarm --agents 20 --duration 10 --rate 100
  zmqcomm swarm --transport tcp --size 1024
  zmqcomm swarm --mode p2p            agents connect to each other, no broker
  zmqcomm swarm --json                the summary as one JSON object (progress on stderr)
  zmqcomm swarm --keep /tmp/myswarm   keep keys, logs, audit trail and results

Every agent is its own process with its own throw-away identity; all traffic is encrypted end
to end, through the broker (which cannot read it) or, with --mode p2p, straight from agent to
agent. Exits 1 if any message was lost.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "swarm",
        help="run agents (and a broker) as processes and report what they measured",
        description=(
            "Start N agents (and a broker, unless --mode p2p) as separate processes with "
            "throw-away identities. The agents exchange encrypted direct messages and requests, "
            "through the broker or (--mode p2p) directly, rekeying as they go, then report "
            "messages, msg/s, request latency, rekeys, rejections and lost messages."
        ),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    defaults = SwarmOptions()
    parser.add_argument("--agents", type=int, default=defaults.agents, help="default 8")
    parser.add_argument(
        "--duration", type=float, default=defaults.duration, help="seconds of traffic (5)"
    )
    parser.add_argument(
        "--transport", choices=("ipc", "tcp"), default=defaults.transport,
        help=f"{defaults.transport} by default; tcp uses 127.0.0.1 only",
    )  # fmt: skip
    parser.add_argument(
        "--mode",
        choices=("broker", "p2p"),
        default=defaults.mode,
        help="through a broker (default), or agents connected to each other directly",
    )
    parser.add_argument("--size", type=int, default=defaults.size, help="message bytes (64)")
    parser.add_argument(
        "--rate", type=float, default=defaults.rate, help="messages/s per agent (200)"
    )
    parser.add_argument(
        "--request-every", type=int, default=defaults.request_every, metavar="N",
        help="one request per N messages (20)",
    )  # fmt: skip
    parser.add_argument(
        "--rekey-every", type=int, default=defaults.rekey_every, metavar="N",
        help="rekey each session after N frames (500), to show rotation under load; in p2p "
        "mode each session carries only its pair's share, so the defaults rotate none: "
        "lower N (e.g. 50)",
    )  # fmt: skip
    parser.add_argument(
        "--keep", metavar="DIR", help="keep the run's files in DIR (a new or empty directory)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = SwarmOptions(
        agents=args.agents,
        duration=args.duration,
        transport=args.transport,
        size=args.size,
        rate=args.rate,
        request_every=args.request_every,
        rekey_every=args.rekey_every,
        mode=args.mode,
        keep=args.keep,
    )
    with sigterm_interrupts():  # the run's directory holds secret keys: always remove it
        summary = run_swarm(options, out=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(summary))
    return 0 if summary["lost"] == 0 and summary["request_failures"] == 0 else 1
