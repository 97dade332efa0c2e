"""What several commands share: loading an identity and a TOML settings file."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zmqcomm.cli.keys import existing_passphrase
from zmqcomm.crypto.key_files import inspect_secret_file, load_identity
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def load_node_identity(keys: str | os.PathLike[str], name: str) -> Identity:
    """``keys/NAME.key``; a protected one's passphrase from ``$ZMQCOMM_PASSPHRASE`` or the
    terminal (:func:`existing_passphrase`; never stdin)."""
    if Path(keys).is_file():
        given = Path(keys)
        raise UsageError(
            f"--keys takes the directory that holds NAME.key, not a key file: for {given} "
            f"give --keys {given.parent} --name {given.stem}"
        )
    path = Path(keys) / f"{name}.key"
    if not path.exists():
        others = sorted(p.stem for p in Path(keys).glob("*.key")) if Path(keys).is_dir() else []
        if others:
            # Most often a forgotten --name (its default is a placeholder): say what is there.
            shown = ", ".join(others[:10]) + (", ..." if len(others) > 10 else "")
            raise UsageError(
                f"no identity at {path}; {keys} holds: {shown}. Pick one with --name NAME, "
                f"or create {name} with 'zmqcomm keygen {name} --dir {keys}'"
            )
        raise UsageError(
            f"no identity at {path}: create one with 'zmqcomm keygen {name} --dir {keys}'"
        )
    protected = inspect_secret_file(path).encrypted
    passphrase = existing_passphrase(path, stdin=False) if protected else None
    return load_identity(path, passphrase=passphrase)


def open_trust_store(directory: str | os.PathLike[str]) -> TrustStore:
    """The trust store a command was pointed at, which must exist: TrustStore itself would
    create a misspelt directory empty, and every peer would then be refused as unknown."""
    if not Path(directory).is_dir():
        raise UsageError(
            f"trust directory {directory} does not exist: check the path, or make it with "
            f"'zmqcomm trust add PEER.pub ... --to {directory}'"
        )
    return TrustStore(directory)


def load_toml_config(path: str | os.PathLike[str], *, allowed: tuple[str, ...]) -> dict[str, Any]:
    """A flat TOML settings file; unknown keys are refused by name."""
    try:
        data: dict[str, Any] = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise UsageError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(allowed)}"
        )
    return data


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a timeout, a CI cancel, kill) acts like Ctrl-C while inside: the default
    action would end the process at once, leaving worker processes and throw-away directories
    (ipc sockets, secret keys) behind, where a KeyboardInterrupt runs the cleanup (exit
    status 130). Later SIGTERMs are ignored so they cannot cut that cleanup short. Only the
    main thread may set signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
