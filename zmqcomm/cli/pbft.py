"""``zmqcomm pbft``: a local PBFT cluster with a load generator, or one replica of a real one."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from zmqcomm.cli.common import load_node_identity, sigterm_interrupts
from zmqcomm.cli.help_format import HelpFormatter
from zmqcomm.cli.pbft_client import add_client_parser
from zmqcomm.errors import UsageError
from zmqcomm.patterns.pbft.cluster import LocalOptions, run_local
from zmqcomm.patterns.pbft.config import MAX_VIEW_CHANGE_TIMEOUT, load_config
from zmqcomm.patterns.pbft.driver import run_replica
from zmqcomm.patterns.pbft.quorum import MAX_REPLICAS, MIN_REPLICAS
from zmqcomm.wording import counted

EXAMPLES = """\
examples:
  zmqcomm pbft local                              4 replicas on ipc, 10000 operations
  zmqcomm pbft local --replicas 7 --ops 20000 --batch 512
  zmqcomm pbft local --ops 50000 --kill-primary-at 1.5
                                                  SIGKILL the primary mid-load: a view change
                                                  (enough operations to outlast 1.5 s)
  zmqcomm pbft local --clients 1 --ops 500        latency at light load (one op at a time)
  zmqcomm pbft local --json                       the summary as JSON (progress on stderr)
  zmqcomm pbft replica --config replica-0.toml    one replica of a multi-host cluster
  zmqcomm pbft client --cluster replica-0.toml --keys keys --name client-0 \\
      --trust trust put colour blue               one operation against such a cluster

The configuration file is described in docs/patterns.md; 'pbft local --keep DIR' writes a
complete example (keys, trust store, one replica-N.toml per replica) into DIR.
"""

LOCAL_EXAMPLES = """\
examples:
  zmqcomm pbft local --replicas 4 --ops 10000
  zmqcomm pbft local --transport tcp --batch 64 --clients 64
  zmqcomm pbft local --ops 50000 --kill-primary-at 2 --json

Every replica is its own process with a throw-away identity, an SQLite store and an
encrypted, authenticated session with every other replica and with the load generator.
Prints throughput, latency p50/p99, view changes, and messages and bytes per operation.
Exits 1 if not every operation got a result.
"""

REPLICA_EXAMPLES = """\
examples:
  zmqcomm pbft replica --config /etc/zmqcomm/replica-0.toml

Runs until SIGTERM or Ctrl-C. Its SQLite store, status.json (refreshed four times a second;
"updated" more than a few seconds old means the replica is probably gone) and, after a clean stop,
state.json live in the configured data directory. Killed and restarted on the same data
directory, it recovers its view, votes and checkpoint and catches up with the others.

The file (docs/patterns.md has a full example; 'zmqcomm pbft local --keep DIR' writes one
per replica): replica (this one's index), name, keys, trust, data, audit, batch_size,
batch_delay, checkpoint_interval, view_change_timeout, fsync, reply_all,
client_signatures, max_request_bytes, max_batch_bytes, and one [[replicas]] table
(endpoint, public) per replica. A passphrase-protected key's passphrase is asked on the
terminal, or read from ZMQCOMM_PASSPHRASE.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "pbft",
        help="run a PBFT cluster locally with a load generator, one replica, or a client",
        description="PBFT (Castro & Liskov) consensus over encrypted, authenticated sessions.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="pbft_command", metavar="SUBCOMMAND", required=True)
    local = sub.add_parser(
        "local",
        help="a local cluster (one process per replica) and a load generator",
        description="Start N replicas as processes, drive them with K operations, report.",
        epilog=LOCAL_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    local.add_argument(
        "--replicas",
        type=int,
        default=4,
        metavar="N",
        help="committee size, 4..31; it tolerates f = (N-1)//3 faulty replicas (4)",
    )
    local.add_argument("--ops", type=int, default=10_000, metavar="K", help="operations (10000)")
    local.add_argument(
        "--batch", type=int, default=256, metavar="B", help="requests per batch (256)"
    )
    local.add_argument(
        "--clients", type=int, default=256, metavar="C",
        help="logical clients, each with one request in flight (256)",
    )  # fmt: skip
    local.add_argument(
        "--transport", choices=("ipc", "tcp"), default="ipc",
        help="ipc by default; tcp uses 127.0.0.1 only",
    )  # fmt: skip
    local.add_argument(
        "--kill-primary-at", type=float, metavar="SECONDS",
        help="SIGKILL the primary this long after the load starts",
    )  # fmt: skip
    local.add_argument(
        "--view-change-timeout", type=float, default=1.0, metavar="SECONDS",
        help="how long backups wait for a request to execute before a view change (1.0)",
    )  # fmt: skip
    local.add_argument(
        "--no-fsync", action="store_true",
        help="stores survive SIGKILL but not a power cut (no fsync per commit): faster",
    )  # fmt: skip
    local.add_argument(
        "--reply-all", action="store_true",
        help="every replica replies to every request, as in the paper "
             "(default: f+1 designated replicas)",
    )  # fmt: skip
    local.add_argument(
        "--client-signatures", action="store_true",
        help="clients sign their requests and replicas check them: needed when clients are "
             "not trusted (an unsigned client can force view changes), costs a signature "
             "check per request on every replica",
    )  # fmt: skip
    local.add_argument("--keep", metavar="DIR", help="keep keys, configs, stores and logs in DIR")
    local.add_argument("--json", action="store_true", help="print the summary as JSON")
    local.set_defaults(run=run)
    replica = sub.add_parser(
        "replica",
        help="run one replica from a configuration file",
        description="Run one PBFT replica of a multi-host cluster.",
        epilog=REPLICA_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    replica.add_argument("--config", required=True, metavar="FILE", help="the replica's TOML file")
    replica.set_defaults(run=run)
    add_client_parser(sub)


def run(args: argparse.Namespace) -> int:
    if args.pbft_command == "replica":
        return _run_replica(args)

    return _run_local(args)


def _run_local(args: argparse.Namespace) -> int:
    if not MIN_REPLICAS <= args.replicas <= MAX_REPLICAS:
        raise UsageError(
            f"--replicas must be {MIN_REPLICAS} to {MAX_REPLICAS} (n = 3f + 1 tolerates f "
            f"faulty replicas), got {args.replicas}"
        )
    for name in ("ops", "batch", "clients"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    if not 0 < args.view_change_timeout <= MAX_VIEW_CHANGE_TIMEOUT:
        raise UsageError(
            f"--view-change-timeout must be more than 0 and at most "
            f"{MAX_VIEW_CHANGE_TIMEOUT:g} seconds, got {args.view_change_timeout}"
        )
    options = LocalOptions(
        replicas=args.replicas,
        ops=args.ops,
        batch=args.batch,
        clients=args.clients,
        transport=args.transport,
        kill_primary_at=args.kill_primary_at,
        view_change_timeout=args.view_change_timeout,
        fsync=not args.no_fsync,
        reply_all=args.reply_all,
        client_signatures=args.client_signatures,
        keep=args.keep,
    )
    with sigterm_interrupts():
        summary = run_local(options, progress=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0 if summary["complete"] else 1


def format_summary(summary: dict[str, Any]) -> str:
    rows = [
        ("replicas", f"{summary['replicas']} ({summary['transport']}, "
                     f"{'fsync' if summary['fsync'] else 'no fsync'})"),
        ("operations", f"{summary['ops']} in {summary['seconds']} s (after "
                       f"{summary['start_seconds']} s to start and connect the replicas)"),
        ("throughput", f"{summary['throughput']} ops/s (batch {summary['batch']}, "
                       f"{counted(summary['clients'], 'client')})"),
        ("latency", f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms"),
        ("view changes", str(summary["replica_view"])),
        ("per operation", f"{summary.get('messages_per_op')} messages, "
                          f"{summary.get('bytes_per_op')} bytes between replicas and clients"),
    ]  # fmt: skip
    if summary.get("killed") is not None:
        rows.append(("killed", f"replica {summary['killed']} (the primary)"))
    if not summary["complete"]:
        rows.append(("INCOMPLETE", "not every operation got a result"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _run_replica(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    identity = load_node_identity(config.keys, config.name)

    def started() -> None:
        print(
            f"replica {config.replica} of {len(config.replicas)} ({identity.agent_id}) "
            f"running: bound to {config.replicas[config.replica].endpoint}, data in "
            f"{config.data} (status.json there shows how it goes); SIGTERM or Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )

    final = run_replica(config, identity=identity, on_started=started)
    print(
        f"replica {final['replica']} stopped: view {final['view']}, "
        f"executed up to {final['last_executed']}",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zmqcomm.cli.pbft ...`` (how LocalCluster starts replicas): the same as
    ``zmqcomm pbft ...``, errors and exit codes included."""
    from zmqcomm.cli.main import main as zmqcomm_main  # noqa: PLC0415 - it imports this module

    return zmqcomm_main(["pbft", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
