"""``zmqcomm pbft client``: one key-value operation against a running PBFT cluster."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from zmqcomm.checks import check_seconds
from zmqcomm.cli.common import load_node_identity, open_trust_store
from zmqcomm.cli.help_format import HelpFormatter
from zmqcomm.errors import UsageError
from zmqcomm.patterns.pbft.config import load_config
from zmqcomm.patterns.pbft.loadgen import LoadGenerator
from zmqcomm.patterns.pbft.normal import ERROR_RESULT
from zmqcomm.patterns.pbft.quorum import Quorum
from zmqcomm.patterns.pbft.statemachine import decode_result, encode_op

CLIENT_EXAMPLES = """\
examples:
  zmqcomm pbft client --cluster replica-0.toml --keys keys --name client-0 \\
      --trust trust put colour blue        prints: ok (new key)
  zmqcomm pbft client ... get colour       prints: blue (no such key: says so, exit 1)
  zmqcomm pbft client ... delete colour    prints: ok (was: blue)
  zmqcomm pbft client ... get colour --json

--cluster is any replica's configuration file: the client takes the replicas' endpoints and
public keys from its [[replicas]] list. Its own key (--keys/--name) must be in every
replica's trust store, and --trust must hold the replicas' .pub files. It needs a quorum of
replicas (3 of 4) to answer; the result counts once f + 1 of them (2 of 4) agree.
"""

#: Operations and how many operands each takes.
OPERATIONS = {"put": 2, "get": 1, "delete": 1}


def add_client_parser(sub: Any) -> None:
    client = sub.add_parser(
        "client",
        help="run one key-value operation (put, get, delete) against a running cluster",
        description=(
            "Send one operation to a cluster of 'pbft replica' processes over encrypted, "
            "authenticated sessions, and print its result once f + 1 replicas agree on it."
        ),
        epilog=CLIENT_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    client.add_argument("operation", choices=sorted(OPERATIONS), help="what to do")
    client.add_argument("key", metavar="KEY", help="the key (text)")
    client.add_argument("value", metavar="VALUE", nargs="?", help="the value, for put (text)")
    client.add_argument(
        "--cluster",
        required=True,
        metavar="FILE",
        help="a replica's configuration file, for the list of replicas",
    )
    client.add_argument(
        "--keys", required=True, metavar="DIR", help="directory holding this client's NAME.key"
    )
    client.add_argument(
        "--name", default="client", help="which key in --keys to use (default client)"
    )
    client.add_argument(
        "--trust", required=True, metavar="DIR", help="the replicas' .pub files (must exist)"
    )
    client.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for a quorum of sessions, then for the result (default 10)",
    )
    client.add_argument("--json", action="store_true", help="print one JSON object")
    client.set_defaults(run=run_client)


def run_client(args: argparse.Namespace) -> int:
    op = _operation(args)
    check_seconds(args.timeout, "--timeout", allow_zero=False)
    config = load_config(args.cluster)
    trust = open_trust_store(args.trust)
    identity = load_node_identity(args.keys, args.name)
    endpoints = [entry.endpoint for entry in config.replicas]
    with LoadGenerator(
        identity,
        trust,
        endpoints=endpoints,
        replica_agents=[entry.agent_id for entry in config.replicas],
        clients=1,
        connect_timeout=args.timeout,
        sign_requests=config.client_signatures,
        min_sessions=Quorum(len(config.replicas)).quorum,  # what the cluster needs to work
    ) as client:
        try:
            result = client.call(op, timeout=args.timeout)
        finally:
            _warn_of_missing_sessions(client, endpoints)
    return _report(args, result)


def _warn_of_missing_sessions(client: LoadGenerator, endpoints: list[str]) -> None:
    """A quorum answered, but a replica this client cannot reach is worth a word: if it is
    the primary (it may not trust this key), every call costs a view change."""
    for dealer, endpoint in zip(client.dealers, endpoints, strict=True):
        if not dealer.established:
            print(
                f"zmqcomm pbft client: warning: no session with the replica at {endpoint}: "
                f"{dealer.why_no_session()}",
                file=sys.stderr,
            )


def _operation(args: argparse.Namespace) -> bytes:
    operands = [args.key] if args.value is None else [args.key, args.value]
    wanted = OPERATIONS[args.operation]
    if len(operands) != wanted:
        usage = "put KEY VALUE" if args.operation == "put" else f"{args.operation} KEY"
        raise UsageError(f"{args.operation} takes {wanted} operand(s): {usage}")
    return encode_op(args.operation, *(operand.encode() for operand in operands))


def _report(args: argparse.Namespace, result: bytes) -> int:
    try:
        status, value = decode_result(result)
    except (ValueError, TypeError):
        # Not the store's own answer but the replicas' (ERROR_RESULT: apply() raised).
        failed = "the replicas' state machine raised an exception on it"
        status, value = "error", failed if result == ERROR_RESULT else result
    shown = _text(value)
    missing = args.operation == "get" and status == "ok" and value is None
    if args.json:
        found = {"found": not missing} if args.operation == "get" and status == "ok" else {}
        print(json.dumps({"operation": args.operation, "key": args.key, "status": status,
                          "value": shown, **found}))  # fmt: skip
    elif status != "ok":
        print(f"error: {shown}")
    elif args.operation == "get":
        if missing:  # the exit status alone left a user wondering what happened
            print(f"zmqcomm pbft client: no such key: {args.key}", file=sys.stderr)
        else:
            print(shown)
    else:
        print("ok (new key)" if value is None and args.operation == "put" else
              "ok (no such key)" if value is None else f"ok (was: {shown})")  # fmt: skip
    return 0 if status == "ok" and not missing else 1


def _text(value: Any) -> Any:
    """A value as text when it is UTF-8, else ``base64:...``."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode()
