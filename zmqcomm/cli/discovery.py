"""``zmqcomm peers``: find agents by beacons (loopback by default) or through seed peers.

With ``--seed`` or ``--listen`` it runs SWIM membership over UDP unicast instead of beacons,
for networks where broadcast does not reach; the events and the output are the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from zmqcomm.checks import check_seconds
from zmqcomm.cli.common import load_node_identity, open_trust_store
from zmqcomm.cli.help_format import HelpFormatter
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import UsageError
from zmqcomm.patterns.discovery.membership_config import MembershipConfig
from zmqcomm.patterns.discovery.membership_udp import MembershipService, parse_address
from zmqcomm.patterns.discovery.peers import PeerEvent
from zmqcomm.patterns.discovery.udp import DEFAULT_INTERVAL, DEFAULT_PORT, BeaconService
from zmqcomm.wording import counted

EXAMPLES = """\
examples:
  zmqcomm peers                          beacon and listen on loopback (port 5670), live
  zmqcomm peers --duration 5 --json      JSON lines: UP, one per event, then SUMMARY
  zmqcomm peers --keys keys --name alice --trust trust --announce 5555
      beacon as alice, announcing port 5555, and accept only peers in trust/
  zmqcomm peers --interface eth0         also beacon on eth0 (only interfaces you name)
  zmqcomm peers --listen 127.0.0.1:7946  a membership seed (no broadcast: unicast UDP)
  zmqcomm peers --seed 127.0.0.1:7946    join through that seed (repeat --seed for more)

Without --keys it beacons under a throw-away identity. Events: ENTER (first beacon), EVASIVE
(silent for 5 s), EXPIRED (silent for 30 s, forgotten), LEAVE. With --seed/--listen the
same events come from SWIM membership: EVASIVE = suspected, EXPIRED = declared dead.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "peers",
        help="discover agents by UDP beacons and show them live",
        description=(
            "Send a signed beacon every interval and list the agents whose beacons arrive. "
            "Loopback only unless --interface names others; nothing else leaves the host."
        ),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--port", type=int, help=f"beacon UDP port ({DEFAULT_PORT}); not with --seed/--listen"
    )
    parser.add_argument(
        "--interface", action="append", metavar="NAME", help="repeatable (default: lo)"
    )
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between beacons (1)"
    )
    parser.add_argument("--keys", metavar="DIR", help="directory with NAME.key")
    parser.add_argument("--name", default="agent", help="key name (default agent)")
    parser.add_argument("--trust", metavar="DIR", help="accept only beacons of these agents")
    parser.add_argument(
        "--announce", type=int, action="append", default=[], metavar="PORT",
        help="a port to announce in the beacon (repeatable, up to 8)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", action="append", default=[], metavar="IP:PORT",
        help="join membership through this seed (repeatable); no beacons are sent",
    )  # fmt: skip
    parser.add_argument(
        "--listen", metavar="IP:PORT",
        help="membership UDP address (default 127.0.0.1 and a free port when --seed is given)",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    parser.set_defaults(run=run)


def _event_line(event: PeerEvent, started: float, as_json: bool) -> str:
    elapsed = time.time() - started
    if as_json:
        return json.dumps(
            {
                "event": event.kind,
                "agent_id": event.agent_id,
                "address": event.address,
                "ports": list(event.ports),
                "at": round(elapsed, 3),
            }
        )
    ports = ",".join(str(p) for p in event.ports) or "-"
    return f"{elapsed:8.2f}s  {event.kind:<8} {event.agent_id}  {event.address}  ports {ports}"


def _print_up(identity: Identity, as_json: bool, text: str, **fields: Any) -> None:
    if as_json:
        print(json.dumps({"event": "UP", "agent_id": identity.agent_id, "at": 0.0, **fields}))
    else:
        print(text)
    sys.stdout.flush()


def _run_membership(args: argparse.Namespace, identity: Identity, trust: TrustStore | None) -> int:
    seeds = [parse_address(text) for text in args.seed]
    for host, port in seeds:
        if port == 0:
            raise UsageError(f"--seed {host}:0: a seed needs its real port, not 0")
    listen = parse_address(args.listen) if args.listen else ("127.0.0.1", 0)
    if not 0 < args.interval <= 60:
        raise UsageError(f"--interval (the probe period) must be in (0, 60], got {args.interval}")
    # The join retry back-off is capped at 30 s, but never below one period (the config
    # refuses that, and the CLI has no option to raise it).
    join_backoff_max = max(MembershipConfig.join_backoff_max, args.interval)
    config = MembershipConfig(
        period=args.interval, ping_timeout=args.interval / 2, join_backoff_max=join_backoff_max
    )
    started = time.time()
    with MembershipService(
        identity, listen=listen, seeds=seeds, ports=args.announce, trust=trust, config=config
    ) as service:
        host, port = service.address
        _print_up(
            identity, args.json,
            f"membership as {identity.agent_id} on {host}:{port}; Ctrl-C stops",
            address=f"{host}:{port}",
        )  # fmt: skip
        deadline = None if args.duration is None else time.monotonic() + args.duration
        try:
            while deadline is None or time.monotonic() < deadline:
                for event in service.step(0.1):
                    print(_event_line(event, started, args.json), flush=True)
        finally:
            service.leave()  # tell the others now, rather than have them suspect us
        members = service.machine.members
        summary = {
            "agent_id": identity.agent_id,
            "peers": [
                {"agent_id": m.agent_id, "address": m.host, "ports": list(m.ports),
                 "state": m.state, "membership": f"{m.host}:{m.port}",
                 "incarnation": m.incarnation}
                for m in members
            ],
            "datagrams_sent": service.sent,
            "dropped": dict(service.dropped),
            "errors": dict(service.errors),
        }  # fmt: skip
        if args.json:
            print(json.dumps({"event": "SUMMARY", **summary}))
        else:
            print(f"{counted(len(members), 'member')}; dropped {summary['dropped'] or 'nothing'}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.duration is not None:
        check_seconds(args.duration, "--duration")
    identity = load_node_identity(args.keys, args.name) if args.keys else Identity.generate("peers")
    trust = open_trust_store(args.trust) if args.trust else None
    if args.seed or args.listen:
        if args.interface:
            raise UsageError(
                "--interface is for beacons; with --seed/--listen give --listen IP:PORT"
            )
        if args.port is not None:
            raise UsageError(
                "--port is the beacon port; with --seed/--listen give --listen IP:PORT"
            )
        return _run_membership(args, identity, trust)
    started = time.time()
    with BeaconService(
        identity,
        ports=args.announce,
        port=DEFAULT_PORT if args.port is None else args.port,
        interfaces=args.interface or ["lo"],
        interval=args.interval,
        trust=trust,
    ) as service:
        if args.json:
            print(json.dumps({"event": "UP", "agent_id": identity.agent_id, "at": 0.0}), flush=True)
        else:
            print(
                f"beaconing as {identity.agent_id} on port {service.port}; Ctrl-C stops",
                flush=True,
            )
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while deadline is None or time.monotonic() < deadline:
            for event in service.step(0.1):
                print(_event_line(event, started, args.json), flush=True)
        peers = service.table.peers
        summary = {
            "agent_id": identity.agent_id,
            "peers": [
                {"agent_id": p.agent_id, "address": p.address, "ports": list(p.ports),
                 "state": p.state}
                for p in peers
            ],
            "beacons_sent": service.sent,
            "dropped": dict(service.dropped),
            # Verified beacons the peer table refused, and restarts it took.
            "stale": service.table.stale,
            "not_fresh": service.table.not_fresh,
            "restarts": service.table.restarts,
            "errors": dict(service.errors),
        }  # fmt: skip
        if args.json:
            print(json.dumps({"event": "SUMMARY", **summary}))
        else:
            print(f"{counted(len(peers), 'peer')}; dropped {summary['dropped'] or 'nothing'}")
    return 0
