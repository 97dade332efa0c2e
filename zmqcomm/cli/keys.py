"""``zmqcomm keygen`` and ``zmqcomm keyinfo``: make an identity, and look inside key files."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from zmqcomm.cli.help_format import HelpFormatter
from zmqcomm.crypto.key_files import (
    inspect_secret_file,
    key_file_kind,
    load_identity,
    load_public_document,
    save_identity,
)
from zmqcomm.crypto.keys import Certificate, Identity, PublicIdentity
from zmqcomm.errors import AuthenticationError, UsageError

#: Scripts and services set this instead of typing the passphrase (it is read only with
#: keygen's --passphrase, or when a key file turns out to be protected). Every command that
#: loads a protected key reads it, or else asks (see existing_passphrase).
PASSPHRASE_ENV = "ZMQCOMM_PASSPHRASE"

KEYGEN_EXAMPLES = f"""\
examples:
  zmqcomm keygen alice                    alice.key (mode 0600) and alice.pub here
  zmqcomm keygen alice --dir ~/.zmqcomm   the same in another directory (made 0700 if new)
  zmqcomm keygen alice --passphrase       protect alice.key (the passphrase is asked twice)
  {PASSPHRASE_ENV}=... zmqcomm keygen alice --passphrase
                                          the same, for scripts
  zmqcomm keygen alice --force            replace an existing alice.key and alice.pub

Share NAME.pub with your peers; NAME.key never leaves this machine.
"""

KEYINFO_EXAMPLES = """\
examples:
  zmqcomm keyinfo alice.pub                name, agent id, public keys, certificate
  zmqcomm keyinfo alice.key                also checks the file mode and that the secrets
                                           match (asks the passphrase if there is one)
  zmqcomm keyinfo alice.key --public-only  skip the passphrase and the secret check
  zmqcomm keyinfo alice.key --json         one JSON object, for scripts

Exits 1 when a check fails (unsafe mode, expired or invalid certificate).
"""


def register(commands: Any) -> None:
    keygen = commands.add_parser(
        "keygen",
        help="create an identity: NAME.key (secret, 0600) and NAME.pub (public)",
        description=(
            "Generate an Ed25519 identity and the X25519 static key it vouches for, and write "
            "them to NAME.key (created with mode 0600, never overwritten without --force) and "
            "NAME.pub. Prints the agent id. File formats: docs/keys.md."
        ),
        epilog=KEYGEN_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    keygen.add_argument("name", metavar="NAME", help="key name, used for the file names")
    keygen.add_argument(
        "--dir", default=".", metavar="DIR", help="where to write the files (default .)"
    )
    keygen.add_argument(
        "--passphrase",
        action="store_true",
        help=f"protect the secret file with a passphrase (asked twice, or ${PASSPHRASE_ENV})",
    )
    keygen.add_argument("--force", action="store_true", help="replace existing key files")
    keygen.add_argument("--json", action="store_true", help="print one JSON object")
    keygen.set_defaults(run=run_keygen)

    keyinfo = commands.add_parser(
        "keyinfo",
        help="show and check a key file (.key or .pub)",
        description=(
            "Print the name, agent id, public keys and certificate of a key file. For a secret "
            "file, also check its mode and that its secrets match its public keys."
        ),
        epilog=KEYINFO_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    keyinfo.add_argument("file", metavar="FILE", help="a NAME.key or NAME.pub file")
    keyinfo.add_argument(
        "--public-only",
        action="store_true",
        help="for a secret file: do not decrypt or check the secrets",
    )
    keyinfo.add_argument("--json", action="store_true", help="print one JSON object")
    keyinfo.set_defaults(run=run_keyinfo)


def _new_passphrase() -> str:
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        if not from_env:
            raise UsageError(f"${PASSPHRASE_ENV} is set but empty")
        return from_env
    first = _ask("passphrase for the new key: ")
    if not first:
        raise UsageError("empty passphrase; leave out --passphrase for an unprotected key")
    again = _ask(
        "same passphrase again: ",
        missing="the passphrase is asked twice: without a terminal, give it on two lines of "
        f"stdin, or set {PASSPHRASE_ENV}",
    )
    if again != first:
        raise UsageError("the two passphrases differ; nothing was written")
    return first


def existing_passphrase(path: Path, *, stdin: bool = True) -> str:
    """The passphrase of the protected key file ``path``: ``$ZMQCOMM_PASSPHRASE`` if set, else
    asked on the terminal, else (``stdin``) one line of stdin. Set but empty is refused, as
    keygen does: no key is protected by an empty passphrase, and asking instead would hide
    the mistake. The commands that run a node pass ``stdin=False``: a service's stdin may be
    a pipe that stays open and silent (a supervisor, ``ssh host cmd``), and reading it would
    wait for ever without a word."""
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        if not from_env:
            raise UsageError(
                f"${PASSPHRASE_ENV} is set but empty: set it to the passphrase of {path}, "
                "or unset it to be asked"
            )
        return from_env
    if not stdin and not (_terminal_available() or _stdin_is_terminal()):
        raise UsageError(
            f"{path} is passphrase-protected and there is no terminal to ask on: "
            f"set {PASSPHRASE_ENV}"
        )
    return _ask(
        f"passphrase for {path}: ",
        missing=f"{path} is passphrase-protected and there is no terminal to ask on and "
        f"nothing on stdin: set {PASSPHRASE_ENV}, or pipe the passphrase in as one line",
    )


def _ask(prompt: str, *, missing: str = "") -> str:
    """The passphrase from the terminal (prompted, not echoed), or else one line of stdin
    (getpass would read that too, but after warning that input may be echoed). ``missing``:
    what to say when there is none."""
    missing = missing or (
        f"no passphrase could be read (no terminal, nothing on stdin); set {PASSPHRASE_ENV} "
        "to give one"
    )
    if _terminal_available() or _stdin_is_terminal():
        try:
            return getpass.getpass(prompt)  # it turns echo off on whichever it reads
        except EOFError:
            raise UsageError(missing) from None
    return _stdin_line(missing)


def _terminal_available() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def _stdin_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, ValueError, OSError):
        return False


#: The longest passphrase line read from stdin: a file with no line end must not be read
#: to its end (or for ever: /dev/zero).
_MAX_LINE = 4096


def _stdin_line(missing: str) -> str:
    """One line of stdin without its line end, read a byte at a time: what follows it stays
    in the pipe for whoever reads next (a buffered read would take it)."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # closed, or not a file (None)
        raise UsageError(missing) from None
    line = bytearray()
    try:
        while (byte := os.read(fd, 1)) not in (b"", b"\n"):
            line += byte
            if len(line) > _MAX_LINE:
                raise UsageError(f"the passphrase line on stdin is longer than {_MAX_LINE} bytes")
    except OSError:
        raise UsageError(missing) from None
    if not line and byte == b"":
        raise UsageError(missing)
    try:
        return line.removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the passphrase read from stdin is not UTF-8 text") from None


def run_keygen(args: argparse.Namespace) -> int:
    identity = Identity.generate(args.name)  # checks the name before any prompt
    directory = Path(args.dir)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a directory")
    # A missing directory is made, private (0700): it is about to hold a secret key.
    passphrase = _new_passphrase() if args.passphrase else None
    paths = save_identity(identity, directory, passphrase=passphrase, force=args.force)
    if args.json:
        report = {
            "name": identity.name,
            "agent_id": identity.agent_id,
            "secret": str(paths.secret),
            "public": str(paths.public),
            "passphrase": passphrase is not None,
        }
        print(json.dumps(report, indent=2))
    else:
        protection = "passphrase-protected" if passphrase else "not passphrase-protected"
        print(f"agent id  {identity.agent_id}")
        print(f"secret    {paths.secret}  (mode 0600, {protection}; keep it here)")
        print(f"public    {paths.public}  (share it with peers)")
    return 0


def _certificate_report(certificate: Certificate, now: float) -> dict[str, Any]:
    expires = certificate.expires
    report: dict[str, Any] = {
        "valid": True,
        "expires": None if expires is None else _iso(expires),
        "error": None,
    }
    try:
        certificate.verify(now=now)
    except AuthenticationError as exc:
        report.update(valid=False, error=str(exc))
    return report


def _iso(epoch: float) -> str:
    # A certificate may expire anywhere below 2**63 seconds, far past what gmtime can show.
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return f"epoch second {epoch}, too far ahead to show as a date"


def _public_report(public: PublicIdentity, now: float) -> dict[str, Any]:
    return {
        "name": public.name,
        "agent_id": public.agent_id,
        "sender_id": public.sender_id.hex(),
        "ed25519_public": public.verify_key.hex(),
        "x25519_public": public.static_public.hex(),
        "certificate": _certificate_report(public.certificate, now),
    }


def run_keyinfo(args: argparse.Namespace) -> int:
    path = Path(args.file)
    now = time.time()
    kind = key_file_kind(path)
    report: dict[str, Any] = {"file": str(path), "kind": kind}
    problems: list[str] = []
    if kind == "public":
        public, document = load_public_document(path)
        report.update(_public_report(public, now))
        for extra in ("roles", "expires", "pinned"):
            if extra in document:
                report[extra] = document[extra]
    else:
        info = inspect_secret_file(path)
        report.update(_public_report(info.public, now))
        report.update(
            passphrase=info.encrypted,
            mode=f"{info.mode:04o}",
            mode_ok=info.mode_ok,
            secrets_checked=False,
        )
        if not info.mode_ok:
            problems.append(f"mode {info.mode:04o} lets group or others in; run: chmod 600 {path}")
        elif not args.public_only:
            # Decrypts and compares the secrets with the public keys; raises on any mismatch.
            load_identity(path, passphrase=existing_passphrase(path) if info.encrypted else None)
            report["secrets_checked"] = True
    if not report["certificate"]["valid"]:
        problems.append(f"certificate: {report['certificate']['error']}")
    report["ok"] = not problems
    report["problems"] = problems
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_keyinfo(report)
    return 0 if not problems else 1


def _print_keyinfo(report: dict[str, Any]) -> None:
    certificate = report["certificate"]
    if certificate["valid"]:
        until = certificate["expires"] or "no expiry"
        cert_text = f"valid, vouches for the x25519 key ({until})"
    else:
        cert_text = f"INVALID: {certificate['error']}"
        if certificate["expires"]:
            cert_text += f" (expiry {certificate['expires']})"
    rows = [
        ("file", report["file"]),
        ("kind", f"{report['kind']} key"),
        ("name", report["name"]),
        ("agent id", report["agent_id"]),
        ("sender id", report["sender_id"]),
        ("ed25519", report["ed25519_public"]),
        ("x25519", report["x25519_public"]),
        ("certificate", cert_text),
    ]
    if report["kind"] == "secret":
        rows.append(("mode", report["mode"] + (" ok" if report["mode_ok"] else " UNSAFE")))
        rows.append(("passphrase", "yes" if report["passphrase"] else "no"))
        checked = "match the public keys" if report["secrets_checked"] else "not checked"
        rows.append(("secrets", checked))
    for extra in ("roles", "expires", "pinned"):
        if extra in report:
            rows.append((f"trust {extra}", json.dumps(report[extra])))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    for problem in report["problems"]:
        print(f"problem: {problem}")
