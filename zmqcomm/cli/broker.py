"""``zmqcomm broker``: run a broker; ``zmqcomm broker stats``: look at a running one."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from typing import Any

from zmqcomm.access import Policy
from zmqcomm.broker.server import Broker, read_stats
from zmqcomm.checks import check_seconds
from zmqcomm.cli.common import load_node_identity, load_toml_config, open_trust_store
from zmqcomm.cli.help_format import HelpFormatter
from zmqcomm.crypto.audit import AuditLog
from zmqcomm.errors import UsageError

EXAMPLES = """\
examples:
  zmqcomm broker --bind tcp://127.0.0.1:5555 --keys keys --trust trust --data data
      run a broker: identity keys/broker.key, agents allowed by the .pub files in trust/,
      mailboxes and statistics under data/
  zmqcomm broker --bind ipc:///tmp/zc/broker.sock --keys keys --trust trust \\
      --policy policy.toml --audit audit.jsonl
      the same on ipc, with a role policy and an audit trail
  zmqcomm broker --config broker.toml
      settings from a TOML file (bind, keys, name, trust, policy, data, audit, and the
      limits below as max_subscriptions = 64 and so on); options given on the command
      line win
  zmqcomm broker ... --max-subscriptions 64 --mail-ttl 86400 --max-messages-per-agent 1000
      tighter limits (see docs/node.md for every limit and what it refuses)
  zmqcomm broker stats --data data
      connected agents, messages routed, mail waiting, rejections (--json for scripts)

Stops cleanly on SIGTERM or SIGINT (Ctrl-C). SIGHUP reads --policy again: the new policy
decides every message from then on and ends subscriptions it no longer allows; a file that
does not load is logged and the old policy stays. Trust store edits need no signal: they
count from each agent's next message. Logs are JSON lines on stderr.
"""

_PATHS = ("bind", "keys", "name", "trust", "policy", "data", "audit")
#: The mailbox's bounds: keyword arguments of Mailbox, passed on as the broker's mailbox_limits.
_MAILBOX_LIMITS = (
    "max_messages_per_agent",
    "max_bytes_per_agent",
    "max_messages_per_sender",
    "max_bytes_per_sender",
    "max_total_bytes",
    "max_blob_size",
)
_MAILBOX_HELP = (
    "mail waiting for one agent (10000)",
    "bytes of mail waiting for one agent (64 MiB)",
    "mail waiting from one sender (10000)",
    "bytes of mail waiting from one sender (64 MiB)",
    "bytes of mail waiting in all (1 GiB)",
    "bytes per piece of mail (1 MiB)",
)
_COUNTS = ("max_subscriptions", *_MAILBOX_LIMITS)
_SECONDS = ("mail_ttl",)
_SETTINGS = (*_PATHS, *_COUNTS, *_SECONDS)
_MAX_COUNT = 2**63 - 1  # what the mailbox's SQLite integers hold


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "broker",
        help="run a broker that routes, fans out and stores messages for agents",
        description=(
            "Run a broker: agents authenticate to it, it routes their end-to-end encrypted "
            "messages by agent id, fans out topics, and keeps mail for offline agents in "
            "SQLite under --data. It never holds a key that opens agent payloads."
        ),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "action", nargs="?", choices=("run", "stats"), default="run", help="default: run"
    )
    parser.add_argument(
        "--bind", action="append", metavar="ENDPOINT", help="required (or in --config); repeatable"
    )
    parser.add_argument(
        "--keys", metavar="DIR", help="directory holding NAME.key; required (or in --config)"
    )
    parser.add_argument("--name", metavar="NAME", help="key name (default broker)")
    parser.add_argument(
        "--trust",
        metavar="DIR",
        help="trust store: the agents' .pub files; required (or in --config)",
    )
    parser.add_argument("--policy", metavar="FILE", help="role policy (TOML); default: allow")
    parser.add_argument("--data", metavar="DIR", help="mailboxes and stats.json")
    parser.add_argument("--audit", metavar="FILE", help="audit trail (JSON lines)")
    parser.add_argument("--max-subscriptions", metavar="N", help="topics per agent (256)")
    parser.add_argument(
        "--mail-ttl", metavar="SECONDS", help="uncollected mail is deleted after (7 days)"
    )
    for name, meaning in zip(_MAILBOX_LIMITS, _MAILBOX_HELP, strict=True):
        parser.add_argument(f"--{name.replace('_', '-')}", metavar="N", help=meaning)
    parser.add_argument("--config", metavar="FILE", help="TOML file with the settings above")
    parser.add_argument("--json", action="store_true", help="stats: print one JSON object")
    parser.set_defaults(run=run)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if args.config:
        settings = load_toml_config(args.config, allowed=_SETTINGS)
        _check_types(settings, args.config)
        for key in (*_COUNTS, *_SECONDS):
            if key in settings:
                settings[key] = _check_limit(key, settings[key], f"{args.config}: {key}")
    for key in _SETTINGS:
        value = getattr(args, key)
        if value is not None and key in _PATHS:
            settings[key] = value
        elif value is not None:
            settings[key] = _check_limit(key, _parse(key, value), f"--{key.replace('_', '-')}")
    if isinstance(settings.get("bind"), str):
        settings["bind"] = [settings["bind"]]
    return settings


def _check_types(settings: dict[str, Any], source: str) -> None:
    """Every setting but the limits is a path or a name (``bind`` may also be a list of
    endpoints): a number or a table in the file is refused here, by name, not deep inside as
    a traceback."""
    for key, value in settings.items():
        if isinstance(value, str) or key not in _PATHS:  # limits: see _check_limit
            continue
        if key == "bind" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            continue
        wanted = "a string or a list of strings" if key == "bind" else "a string"
        raise UsageError(f"{source}: {key} must be {wanted}, got {type(value).__name__}")


def _parse(key: str, text: str) -> object:
    """A number from the command line; text that is not one is left for _check_limit to
    refuse by name."""
    try:
        return float(text) if key in _SECONDS else int(text)
    except ValueError:
        return text


def _check_limit(key: str, value: object, where: str) -> int | float:
    if key in _SECONDS:
        return check_seconds(value, where, allow_zero=False)
    if type(value) is not int or not 1 <= value <= _MAX_COUNT:  # bool is not a count
        raise UsageError(f"{where} must be a whole number from 1 to 2**63-1, got {value!r}")
    return value


def _limits(settings: dict[str, Any]) -> dict[str, Any]:
    """The Broker keywords for the limits that were set (the rest keep its defaults)."""
    limits: dict[str, Any] = {
        key: settings[key] for key in ("max_subscriptions", "mail_ttl") if key in settings
    }
    mailbox = {key: settings[key] for key in _MAILBOX_LIMITS if key in settings}
    if mailbox:
        limits["mailbox_limits"] = mailbox
    return limits


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "stats":
        return _stats(settings, as_json=args.json)
    for required in ("bind", "keys", "trust"):
        if not settings.get(required):
            raise UsageError(f"--{required} is required (or set it in --config)")
    log = _logger()
    identity = load_node_identity(settings["keys"], settings.get("name", "broker"))
    trust = open_trust_store(settings["trust"])
    policy = Policy.load(settings["policy"]) if settings.get("policy") else None
    audit = AuditLog(settings["audit"]) if settings.get("audit") else None
    broker = Broker(
        settings["bind"],
        identity=identity,
        trust=trust,
        policy=policy,
        data=settings.get("data"),
        audit=audit,
        **_limits(settings),
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: broker.stop())
    reloader = _PolicyReloader(broker, settings.get("policy"), log)
    signal.signal(signal.SIGHUP, lambda *_: reloader.request())
    log.info(
        json.dumps(
            {"event": "started", "agent_id": identity.agent_id, "endpoints": broker.endpoints}
        )
    )
    try:
        periodic = _PeriodicLog(broker, log, every=10.0)
        broker.serve(until=lambda: reloader() or periodic())
    finally:
        stats = broker.statistics()
        broker.close()
        if audit is not None:
            audit.close()
        log.info(json.dumps({"event": "stopped", **_summary(stats)}))
    return 0


class _PolicyReloader:
    """Reads the policy file again when asked (SIGHUP), in the serve loop, not in the signal
    handler: the broker's state is only touched between steps."""

    def __init__(self, broker: Broker, path: str | None, log: logging.Logger) -> None:
        self.broker, self.path, self.log = broker, path, log
        self.requested = False

    def request(self) -> None:
        self.requested = True

    def __call__(self) -> bool:
        if not self.requested:
            return False
        self.requested = False
        if self.path is None:
            self.log.info(json.dumps({"event": "policy_not_reloaded", "why": "no --policy given"}))
            return False
        try:
            policy = Policy.load(self.path)
        except Exception as exc:  # whatever the file holds, a reload never stops the broker
            self.log.error(
                json.dumps({"event": "policy_reload_failed", "error": str(exc), "kept": "old"})
            )
            return False
        self.broker.set_policy(policy)
        self.log.info(json.dumps({"event": "policy_reloaded", "path": str(self.path)}))
        return False  # never stops the loop


class _PeriodicLog:
    """Called by the serve loop on every step: logs a summary every ``every`` seconds."""

    def __init__(self, broker: Broker, log: logging.Logger, *, every: float) -> None:
        self.broker, self.log, self.every = broker, log, every
        self.due = time.monotonic() + every

    def __call__(self) -> bool:
        if time.monotonic() >= self.due:
            self.due = time.monotonic() + self.every
            self.log.info(json.dumps({"event": "stats", **_summary(self.broker.statistics())}))
        return False  # never stops the loop; signals do


def _summary(stats: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "agents",
        "routed",
        "stored",
        "mail_waiting",
        "handshakes",
        "rejected",
        "error_answers_dropped",
    )
    return {key: stats.get(key) for key in keys}


def _logger() -> logging.Logger:
    log = logging.getLogger("zmqcomm.broker")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return log


def _stats(settings: dict[str, Any], *, as_json: bool) -> int:
    if not settings.get("data"):
        raise UsageError("broker stats needs --data DIR (the running broker's --data)")
    stats = read_stats(settings["data"])
    if as_json:
        print(json.dumps(stats, indent=2))
        return 0
    age = time.time() - float(stats.get("updated", 0))
    if stats.get("running") is False:
        state = f"stopped {age:.0f} s ago (these are its last figures)"
    else:
        state = f"stats {age:.1f} s old{' (is it still running?)' if age > 5 else ''}"
    print(f"broker pid {stats.get('pid')}, up {stats.get('uptime', 0):.0f} s, {state}")
    print(f"  endpoints        {', '.join(stats.get('endpoints', []))}")
    print(f"  agents connected {stats.get('agents')}")
    print(f"  messages in/out  {stats.get('messages_in')} / {stats.get('messages_out')}")
    print(f"  routed           {stats.get('routed')}")
    rates = stats.get("rates_per_s") or {}
    print(
        f"  rates            in {rates.get('in', 0):,.1f}/s, out {rates.get('out', 0):,.1f}/s, "
        f"routed {rates.get('routed', 0):,.1f}/s"
    )
    print(f"  mail stored      {stats.get('stored')} (waiting {stats.get('mail_waiting')})")
    print(f"  handshakes       {stats.get('handshakes')}, rekeys {stats.get('rekeys')}")
    rejected = {**stats.get("rejected", {}), **stats.get("rejected_sessions", {})}
    print(f"  rejected         {json.dumps(rejected) if rejected else 'none'}")
    # Refusal answers dropped for an agent whose queue was full (it does not read).
    print(f"  ERRORs dropped   {stats.get('error_answers_dropped', 0)}")
    if stats.get("audit_write_errors"):
        print(f"  audit lines lost {stats['audit_write_errors']} (is the disk full?)")
    return 0
