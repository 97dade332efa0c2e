"""``zmqcomm trust``: put peers' public key files in a trust store, with their roles."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from zmqcomm.cli.help_format import HelpFormatter
from zmqcomm.crypto.key_files import load_public_document
from zmqcomm.crypto.keys import is_agent_id
from zmqcomm.crypto.trust import (
    TrustEntry,
    TrustStore,
    check_roles,
    format_time,
    parse_time,
)
from zmqcomm.errors import UsageError, ZmqCommError

EXAMPLES = """\
examples:
  zmqcomm trust add keys/alice.pub keys/bob.pub --to trust/broker --roles worker
  zmqcomm trust add keys/carol.pub --to trust/broker --roles worker,sensor \\
      --expires 2027-01-31T00:00:00Z
  zmqcomm trust list trust/broker          agent id, name, roles and expiry of each entry
  zmqcomm trust list trust/broker --json   one JSON object per entry, for scripts
  zmqcomm trust revoke AGENT_ID --in trust/broker
                                           refused from its next message on (see below)

Roles are what a policy file grants (docs/node.md). Adding a key that is already there
replaces its roles and expiry (give them all again) and lifts a revocation of it, with a
warning. A new key under a name the store already trusts (a key made again with keygen
--force) does not replace the old one: both are trusted until the old one is revoked, as
the warning says. revoke takes an agent id (from 'trust list'), or a name when only one
entry has it. Format: docs/keys.md.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "trust",
        help="add peers' .pub files to a trust store with roles, list one, revoke a key",
        description=(
            "Manage a trust store: the directory of .pub files whose holders a broker or "
            "node accepts, each with the roles a policy file grants permissions to."
        ),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(dest="trust_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="trust public key files, with roles",
        description="Copy each FILE into the trust store DIR as <agent id>.pub, with roles.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add.add_argument("files", nargs="+", metavar="FILE", help="NAME.pub files (from keygen)")
    add.add_argument("--to", required=True, metavar="DIR", help="the trust store (made if new)")
    add.add_argument(
        "--roles", default="", metavar="R1,R2", help="comma-separated role names (default none)"
    )
    add.add_argument(
        "--expires", metavar="WHEN", help="ISO 8601 time after which the key is refused"
    )
    add.set_defaults(run=run_add)
    listing = actions.add_parser(
        "list",
        help="show who a trust store holds",
        description=(
            "Show each entry of the trust store DIR: agent id, name, roles, expiry (revoked "
            "entries are not shown: they are not trusted)."
        ),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    listing.add_argument("directory", metavar="DIR", help="the trust store")
    listing.add_argument("--json", action="store_true", help="one JSON object per entry")
    listing.set_defaults(run=run_list)
    revoke = actions.add_parser(
        "revoke",
        help="stop trusting a key, from its holder's next message on",
        description=(
            "Revoke WHO (an agent id, or a name only one entry has) in the trust store DIR: "
            "its file moves to DIR/revoked/, and running brokers and nodes refuse its next "
            "message (they watch the directory)."
        ),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    revoke.add_argument("who", metavar="WHO", help="agent id or name")
    revoke.add_argument("--in", dest="directory", required=True, metavar="DIR", help="the store")
    revoke.set_defaults(run=run_revoke)


def _roles(text: str) -> list[str]:
    roles = [role.strip() for role in text.split(",")]
    if any(not role for role in roles) and text.strip():
        raise UsageError(f"--roles {text!r} has an empty name: give names separated by commas")
    return [role for role in roles if role]


def run_add(args: argparse.Namespace) -> int:
    roles = _roles(args.roles)
    missing = [name for name in args.files if not Path(name).is_file()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    target = Path(args.to)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} exists and is not a directory")
    check_roles(roles)  # each checked before the store is made or changed
    parse_time(args.expires)
    publics = [load_public_document(name)[0] for name in args.files]
    store = TrustStore(target, watch=False)
    revoked = store.revoked()
    for public in publics:
        entry = store.add(public, roles, expires=args.expires)
        print(f"{_describe(entry)}  -> {entry.path}")
        if entry.agent_id in revoked:
            _warn(f"{entry.name} ({entry.agent_id}) was revoked; it is trusted again")
        for other in store.entries():
            if other.name == entry.name and other.agent_id != entry.agent_id:
                _warn(
                    f"{target} also trusts another key named {entry.name} "
                    f"({other.agent_id}); if the new key replaces it, run: zmqcomm trust "
                    f"revoke {other.agent_id} --in {shlex.quote(str(target))}"
                )
        if entry.expired(now=time.time()):
            _warn(f"{entry.name}: --expires is in the past, so its key is refused from now")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    store = _existing_store(directory)
    who = _whom(store, args.who, directory)
    if who in store.revoked():
        print(f"{who} is already revoked")
        return 0
    if store.revoke(who):
        print(f"revoked {who}: refused from its next message on")
    else:
        _warn(
            f"{who} is not in {directory}; it is revoked anyway, so it stays refused even "
            "if it is added later (check the id if you meant someone in the store)"
        )
    return 0


def _whom(store: TrustStore, text: str, directory: Path) -> str:
    """The agent id ``text`` means: an entry's id or revoked id, else the one entry with
    that name (a name may look like an agent id), else a well-formed id to revoke ahead."""
    entries = store.entries()
    if any(entry.agent_id == text for entry in entries) or text in store.revoked():
        return text
    named = [entry for entry in entries if entry.name == text]
    if not named:
        revoked = _revoked_named(store, text)
        if revoked is not None:
            return revoked  # revoked before, by this name: the caller says so
    if len(named) > 1:
        ids = ", ".join(sorted(entry.agent_id for entry in named))
        raise UsageError(f"{len(named)} entries are named {text!r} ({ids}): give the agent id")
    if named:
        return named[0].agent_id
    if is_agent_id(text):
        return text
    raise UsageError(f"{text!r} is neither an agent id nor a name in {directory}")


def _revoked_named(store: TrustStore, name: str) -> str | None:
    """The agent id of a revoked key file named ``name`` (revoked entries leave the store's
    entries, so a second 'revoke NAME' could not find the name otherwise)."""
    for path in sorted(store.revoked_directory.glob("*.pub")):
        try:
            public = load_public_document(path)[0]
        except ZmqCommError:
            continue  # not ours to judge here; 'trust list' names bad files
        if public.name == name:
            return public.agent_id
    return None


def _existing_store(directory: Path) -> TrustStore:
    """The store at ``directory``, which must exist, read past damaged files (each named
    in a warning): one bad file must not stop a listing or an emergency revocation."""
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory: no trust store there")
    store = TrustStore(directory, watch=False, strict=False)
    for path, problem in sorted(store.problems.items()):
        _warn(f"skipped {path}: {problem}")
    return store


def _warn(text: str) -> None:
    print(f"zmqcomm trust: warning: {text}", file=sys.stderr)


def run_list(args: argparse.Namespace) -> int:
    store = _existing_store(Path(args.directory))
    for entry in sorted(store.entries(), key=lambda e: (e.name, e.agent_id)):
        if not args.json:
            print(_describe(entry))
            continue
        record = {
            "agent_id": entry.agent_id,
            "name": entry.name,
            "roles": sorted(entry.roles),
            "expires": None if entry.expires is None else format_time(entry.expires),
            "expired": entry.expired(now=time.time()),
            "file": str(entry.path),
        }
        print(json.dumps(record))
    return 0


def _describe(entry: TrustEntry) -> str:
    text = f"{entry.agent_id}  {entry.name}  roles: {_shown_roles(entry)}"
    if entry.expires is not None:
        text += f"  expires {format_time(entry.expires)}"
        text += " (EXPIRED)" if entry.expired(now=time.time()) else ""
    return text


def _shown_roles(entry: TrustEntry) -> str:
    return ",".join(sorted(entry.roles)) or "(none)"
