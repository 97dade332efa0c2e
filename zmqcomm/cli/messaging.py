"""``zmqcomm send``, ``request``, ``pub`` and ``sub``: talk to agents through a broker."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from zmqcomm.access import Policy
from zmqcomm.checks import check_count, check_seconds
from zmqcomm.cli.common import load_node_identity, open_trust_store
from zmqcomm.cli.help_format import HelpFormatter
from zmqcomm.crypto.keys import is_agent_id
from zmqcomm.errors import (
    NotPermittedError,
    ReceiveTimeout,
    RequestTimeout,
    TransportError,
    UsageError,
)
from zmqcomm.node import Incoming, Node
from zmqcomm.wire import MessageType

COMMON_HELP = """\
It connects to the broker as the identity --keys/NAME.key and trusts the broker and the peers
whose .pub files are in --trust. Every message is encrypted end to end: the broker routes it
but cannot read it.
"""

EXAMPLES = {
    "send": """\
examples:
  zmqcomm send bob '{"task": 7}' --broker ipc:///tmp/zc/broker.sock --keys keys --trust trust
  zmqcomm send 7nlzurvdt462sq7jvzotl4rgaq hello --broker tcp://127.0.0.1:5555 --keys keys \\
      --name alice --trust trust

If the peer is offline, a broker started with --data keeps the message as mail until the
peer connects; through a broker without a mailbox, send exits 1 and says so.
""",
    "request": """\
examples:
  zmqcomm request bob '{"op": "status"}' --broker ipc:///tmp/zc/broker.sock --keys keys \\
      --trust trust --timeout 5

Prints the reply as JSON; exits 1 if none comes in time. The peer must answer requests: a
Node with request_handler set, or one running node.run(handler). zmqcomm sub prints a
request it receives but does not answer it.
""",
    "pub": """\
examples:
  zmqcomm pub swarm/news '{"alert": "low battery"}' --broker ipc:///tmp/zc/broker.sock \\
      --keys keys --trust trust
""",
    "sub": """\
examples:
  zmqcomm sub 'swarm/*' --broker ipc:///tmp/zc/broker.sock --keys keys --trust trust
  zmqcomm sub swarm/news --count 10 --timeout 30 ...   stop after 10, or 30 s of silence

Prints one JSON object per publication (from, kind, topic, payload, via); also direct messages,
requests included (printed, not answered: answer them from a Node).
""",
}


TIMEOUT_HELP = {
    "send": "seconds to connect and hand the message over (default 5)",
    "request": "seconds to wait for the reply (default 5)",
    "pub": "seconds to connect (default 5)",
    "sub": "stop after this many seconds without a message (default 5; 0: never)",
}


def register(commands: Any) -> None:
    helps = {
        "send": "send an encrypted message to an agent",
        "request": "send a request to an agent and print its reply",
        "pub": "publish a message on a topic",
        "sub": "subscribe to a topic and print what arrives",
    }
    for name, summary in helps.items():
        parser = commands.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}.\n\n{COMMON_HELP}",
            epilog=EXAMPLES[name],
            formatter_class=HelpFormatter,
        )
        if name in ("send", "request"):
            parser.add_argument(
                "peer",
                metavar="PEER",
                help="an agent id, or the name recorded in a .pub file in --trust (its 'name')",
            )
        elif name == "pub":
            parser.add_argument("topic", metavar="TOPIC", help="the topic, e.g. swarm/news")
        else:
            parser.add_argument(
                "topic",
                metavar="TOPIC",
                help="a topic, or a prefix ending in * (swarm/* matches swarm/news)",
            )
        if name != "sub":
            parser.add_argument(
                "message", metavar="MESSAGE", help="JSON if it parses as JSON, else a string"
            )
        parser.add_argument(
            "--broker",
            required=True,
            metavar="ENDPOINT",
            help="the broker's endpoint, as given to 'zmqcomm broker --bind'",
        )
        parser.add_argument(
            "--keys", required=True, metavar="DIR", help="directory holding this agent's NAME.key"
        )
        parser.add_argument(
            "--name", default="agent", help="which key in --keys to use (default agent)"
        )
        parser.add_argument(
            "--trust",
            required=True,
            metavar="DIR",
            help="trusted .pub files: the broker's and every peer's (must exist)",
        )
        parser.add_argument("--policy", metavar="FILE", help="role policy for incoming messages")
        parser.add_argument("--timeout", type=float, default=5.0, help=TIMEOUT_HELP[name])
        if name == "sub":
            parser.add_argument(
                "--count", type=int, help="stop after this many messages (default: never)"
            )
        parser.set_defaults(run=_RUNNERS[name])


@contextlib.contextmanager
def _running(args: argparse.Namespace) -> Iterator[Node]:
    """The command's node, closed when done. After a failure it is closed at once: a close
    flushes what is queued for up to 2 s, and a message the command is about to report as
    not sent must not go out after all (nor make the command wait for nothing)."""
    node = _node(args)
    try:
        yield node
    except BaseException:
        node.close(timeout=0)
        raise
    node.close()


#: How long sub, told to wait for ever (--timeout 0), gives the broker to answer at start.
_SUB_CONNECT_TIMEOUT = 5.0


def _node(args: argparse.Namespace) -> Node:
    forever = args.command == "sub"  # its --timeout 0 means: never stop for quiet
    check_seconds(args.timeout, "--timeout", allow_zero=forever)
    if getattr(args, "count", None) is not None:
        check_count(args.count, "--count", minimum=1)
    trust = open_trust_store(args.trust)
    return Node(
        load_node_identity(args.keys, args.name),
        trust,
        broker=args.broker,
        policy=Policy.load(args.policy) if args.policy else None,
        connect_timeout=args.timeout or _SUB_CONNECT_TIMEOUT,
    )


def _peer(trust_dir: str, peer: str) -> str:
    entries = open_trust_store(trust_dir).entries()
    if is_agent_id(peer):
        if not any(entry.agent_id == peer for entry in entries):
            # Its handshake would be refused and no mail could be sealed for it: the
            # message could only fail later, with a wrong guess at why.
            raise UsageError(
                f"{peer} is not in the trust store {trust_dir}: copy its .pub file there "
                "(a peer must be trusted both ways to get a message)"
            )
        return peer
    for entry in entries:
        if entry.name == peer:
            return entry.agent_id
    raise UsageError(f"{peer!r} is neither an agent id nor a name in the trust store {trust_dir}")


def _named(typed: str, agent_id: str) -> str:
    """The peer as the user named it, with its agent id when that was a name."""
    return agent_id if typed == agent_id else f"{typed} ({agent_id})"


def _message(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip()[:1] in ("{", "["):  # meant as JSON, most likely: say so
            print(
                f"zmqcomm: warning: MESSAGE is not valid JSON ({exc.msg} at character "
                f"{exc.pos}); it goes as a string",
                file=sys.stderr,
            )
        return text


def _printable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(key): _printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(item) for item in value]
    return value


def _flush(node: Node, peer: str, timeout: float) -> None:
    """Pump until every message went out on a session or the broker answered for its mail
    (stored or refused), or refused what we sent; then give the broker a moment to take the
    last frames."""
    deadline = time.monotonic() + timeout

    def settled() -> bool:
        stats = node.statistics()
        if stats["refused_by_broker"]:
            return True  # the caller says why; waiting would not change the answer
        answered = stats["mail_stored"] + stats["dropped"].get("mail_refused", 0)
        return not stats["queued"] and answered >= stats["mailed"]

    while not settled():
        if time.monotonic() >= deadline:
            raise TransportError(
                f"no end-to-end session with {peer} within {timeout} s: its handshake got "
                "no answer. Is the peer connected and reading, and does its trust store "
                "hold this identity's .pub file (a peer must be trusted both ways)? If it "
                "is only busy, try a longer --timeout"
            )
        node.pump(0.01)
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        node.pump(0.01)


def _check_delivered(node: Node, peer: str) -> None:
    """An offline peer's message the broker would not keep is lost: say so, exit 1."""
    stats = node.statistics()
    lost = sum(stats["dropped"].get(reason, 0) for reason in ("mail_refused", "unreachable"))
    if lost:
        why = stats["last_error"] or "the broker has no route to it"
        # Only a broker without a mailbox is helped by --data; a full mailbox or a
        # recipient the broker does not trust is not.
        data_hint = ", or use a broker started with --data" if "no mailbox" in why else ""
        raise TransportError(
            f"{peer} is offline and the message was not kept ({why}); "
            f"send it again when the peer is online{data_hint}"
        )


def _check_not_refused(node: Node) -> None:
    """The broker answers a message its policy refuses (or a subscription past its limit):
    say so and exit 1, rather than leave as if it had gone through."""
    stats = node.statistics()
    if stats["refused_by_broker"]:
        raise NotPermittedError(
            f"{stats['last_error']}; ask the broker's operator for a role that allows it "
            "(its --policy file, and your roles in its trust store)"
        )


def run_send(args: argparse.Namespace) -> int:
    peer = _peer(args.trust, args.peer)
    named = _named(args.peer, peer)
    with _running(args) as node:
        node.send(peer, _message(args.message))
        _flush(node, named, args.timeout)
        _check_not_refused(node)
        _check_delivered(node, named)
        stored = node.statistics()["mail_stored"]
    # Both exit 0; say which happened (a peer that turned out offline is worth knowing).
    if stored:
        print(f"{args.peer} is offline: the broker keeps the message as mail until it connects")
    else:
        print(f"sent to {args.peer} over an end-to-end session")
    return 0


def run_request(args: argparse.Namespace) -> int:
    peer = _peer(args.trust, args.peer)
    with _running(args) as node:
        try:
            reply = node.request(peer, _message(args.message), timeout=args.timeout)
        except RequestTimeout as exc:
            _check_not_refused(node)
            if node.statistics()["mail_stored"]:
                raise RequestTimeout(
                    f"no reply within {args.timeout} s: {_named(args.peer, peer)} is offline, "
                    "and the broker "
                    "keeps the request as mail until it connects (its reply will find no "
                    "one waiting here; send it again later, or use a longer --timeout)"
                ) from exc
            raise
    print(json.dumps(_printable(reply)))
    return 0


def run_pub(args: argparse.Namespace) -> int:
    with _running(args) as node:
        node.publish(args.topic, _message(args.message))
        # Subscribers ask us for the topic key: stay a moment to answer them.
        end = time.monotonic() + min(args.timeout, 1.0)
        while time.monotonic() < end:
            node.pump(0.01)
        _check_not_refused(node)
    return 0


def run_sub(args: argparse.Namespace) -> int:
    with _running(args) as node:
        node.subscribe(args.topic)
        seen = 0
        quiet_since = time.monotonic()
        # Short waits, so that a subscription the broker refused is said within 0.5 s.
        while args.count is None or seen < args.count:
            try:
                message = node.receive(timeout=min(args.timeout or 0.5, 0.5))
            except ReceiveTimeout:
                _check_not_refused(node)
                if args.timeout and time.monotonic() - quiet_since >= args.timeout:
                    break
                continue
            quiet_since = time.monotonic()
            seen += 1
            print(json.dumps(_describe(message)), flush=True)
    return 0


def _describe(message: Incoming) -> dict[str, Any]:
    return {
        "from": message.sender,
        "kind": MessageType(message.kind).name,
        "topic": message.topic,
        "payload": _printable(message.payload),
        "via": message.via,
    }


_RUNNERS = {"send": run_send, "request": run_request, "pub": run_pub, "sub": run_sub}
