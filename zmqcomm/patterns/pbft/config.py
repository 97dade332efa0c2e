"""The configuration of one PBFT replica process, read from a TOML file.

::

    # replica-0.toml: relative paths are relative to this file
    replica = 0                      # this process's index in [[replicas]]
    name = "replica-0"               # keys/replica-0.key is its identity (default replica-N)
    keys = "keys"
    trust = "trust"                  # who may connect: the other replicas and the clients
    data = "data/replica-0"          # the SQLite store and status.json live here
    audit = "audit-0.jsonl"          # optional: rejections as JSON lines
    batch_size = 256                 # requests per PRE-PREPARE
    batch_delay = 0.002              # seconds to fill a batch behind a running one
    checkpoint_interval = 16
    view_change_timeout = 1.0        # seconds; doubled after each failed view change
    fsync = true                     # false: survive SIGKILL but not a power cut (faster)
    reply_all = false                # true: every replica replies, not f + 1 designated
    client_signatures = false        # true: clients sign requests (see docs/patterns.md)
    max_request_bytes = 65536        # largest client operation accepted
    max_batch_bytes = 524288         # operations per PRE-PREPARE, in bytes (see _check_sizes)

    [[replicas]]                     # one table per replica, in index order (n = 4..31)
    endpoint = "tcp://10.0.0.1:7000"
    public = "keys/replica-0.pub"    # its public key file: agent id and signing key
    [[replicas]]
    ...

Every replica of a cluster has the same ``[[replicas]]`` list; only ``replica``, ``name``,
``data`` and ``audit`` differ.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zmqcomm.crypto.key_files import load_public
from zmqcomm.crypto.keys import PublicIdentity
from zmqcomm.errors import UsageError, ZmqCommError
from zmqcomm.patterns.pbft.normal import MAX_BATCH_BYTES, MAX_REQUEST_BYTES
from zmqcomm.patterns.pbft.quorum import Quorum
from zmqcomm.wire.limits import DEFAULT_LIMITS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ReplicaConfig", "ReplicaEntry", "load_config"]

#: The watermark window is this many checkpoint intervals.
WINDOW_CHECKPOINTS = 4
#: What the prepared batches of one VIEW-CHANGE may add up to: half the default frame limit,
#: leaving room for proofs, signatures and the NEW-VIEW that carries such messages.
VIEW_CHANGE_BUDGET = DEFAULT_LIMITS.max_body_size // 2
#: The longest first view-change timeout a configuration may ask for, in seconds.
MAX_VIEW_CHANGE_TIMEOUT = 600.0

_ALLOWED = (
    "replica",
    "name",
    "keys",
    "trust",
    "data",
    "audit",
    "batch_size",
    "batch_delay",
    "checkpoint_interval",
    "view_change_timeout",
    "fsync",
    "reply_all",
    "client_signatures",
    "max_request_bytes",
    "max_batch_bytes",
    "replicas",
)


@dataclass(frozen=True)
class ReplicaEntry:
    endpoint: str
    public: PublicIdentity

    @property
    def agent_id(self) -> str:
        return self.public.agent_id


@dataclass(frozen=True)
class ReplicaConfig:
    replica: int
    replicas: tuple[ReplicaEntry, ...]
    keys: Path
    trust: Path
    data: Path
    name: str = ""
    audit: Path | None = None
    batch_size: int = 256
    batch_delay: float = 0.002
    checkpoint_interval: int = 16
    view_change_timeout: float = 1.0
    fsync: bool = True
    reply_all: bool = False
    client_signatures: bool = False
    max_request_bytes: int = MAX_REQUEST_BYTES
    #: None: MAX_BATCH_BYTES, or less if the watermark window needs it (see _check_sizes).
    max_batch_bytes: int | None = None

    def __post_init__(self) -> None:
        n = len(self.replicas)
        try:
            Quorum(n)
        except ZmqCommError as exc:
            raise UsageError(f"[[replicas]] lists {n} replicas: {exc}") from exc
        if not (_is_int(self.replica) and 0 <= self.replica < n):
            raise UsageError(f"replica must be an index 0..{n - 1}, got {self.replica!r}")
        if not (_is_int(self.batch_size) and 1 <= self.batch_size <= 10_000):
            raise UsageError(f"batch_size must be 1..10000, got {self.batch_size!r}")
        if not (_is_int(self.checkpoint_interval) and self.checkpoint_interval >= 1):
            raise UsageError("checkpoint_interval must be a positive integer")
        # Type first: a string from the TOML file must not reach the comparisons.
        if not (_is_number(self.batch_delay) and 0 <= self.batch_delay <= 1):
            raise UsageError(f"batch_delay must be 0..1 seconds, got {self.batch_delay!r}")
        timeout = self.view_change_timeout
        if not (_is_number(timeout) and 0 < timeout <= MAX_VIEW_CHANGE_TIMEOUT):
            raise UsageError(
                f"view_change_timeout must be more than 0 and at most "
                f"{MAX_VIEW_CHANGE_TIMEOUT:g} seconds, got {timeout!r}"
            )
        self._check_sizes()
        if not isinstance(self.name, str):
            raise UsageError(f"name must be a string, got {self.name!r}")
        agents = [r.agent_id for r in self.replicas]
        if len(set(agents)) != n:
            raise UsageError("two [[replicas]] entries have the same public key")
        endpoints = [r.endpoint for r in self.replicas]
        if len(set(endpoints)) != n:
            # The replica would dial itself for the other one, and never reach it.
            twice = next(e for e in endpoints if endpoints.count(e) > 1)
            raise UsageError(f"two [[replicas]] entries have the same endpoint {twice!r}")
        if not isinstance(self.fsync, bool):
            raise UsageError(f"fsync must be true or false, got {self.fsync!r}")
        if not isinstance(self.reply_all, bool):
            raise UsageError(f"reply_all must be true or false, got {self.reply_all!r}")
        if not isinstance(self.client_signatures, bool):
            raise UsageError(
                f"client_signatures must be true or false, got {self.client_signatures!r}"
            )
        if not self.name:
            object.__setattr__(self, "name", f"replica-{self.replica}")

    def _check_sizes(self) -> None:
        request, batch = self.max_request_bytes, self.max_batch_bytes
        if batch is None:
            batch = min(MAX_BATCH_BYTES, VIEW_CHANGE_BUDGET // self.window)
            object.__setattr__(self, "max_batch_bytes", batch)
        if not (_is_int(request) and request >= 1):
            raise UsageError(f"max_request_bytes must be a positive integer, got {request!r}")
        if not (_is_int(batch) and batch >= request):
            raise UsageError(
                f"max_batch_bytes must be an integer of at least max_request_bytes ({request}),"
                f" got {batch!r}"
            )
        # A VIEW-CHANGE carries the prepared batches of a whole window: it must fit a frame.
        carried = self.window * batch
        if carried > VIEW_CHANGE_BUDGET:
            raise UsageError(
                f"max_batch_bytes {batch} times the watermark window ({self.window} sequences) "
                f"is {carried} bytes, more than a view change may carry "
                f"({VIEW_CHANGE_BUDGET}); lower max_batch_bytes or checkpoint_interval"
            )

    @property
    def batch_bytes(self) -> int:
        """max_batch_bytes as resolved when the configuration was checked."""
        assert self.max_batch_bytes is not None
        return self.max_batch_bytes

    @property
    def window(self) -> int:
        """The watermark window the replica runs with (sequences past the stable checkpoint)."""
        return WINDOW_CHECKPOINTS * self.checkpoint_interval

    @property
    def n(self) -> int:
        return len(self.replicas)

    @property
    def endpoints(self) -> list[str]:
        return [r.endpoint for r in self.replicas]

    @property
    def agent_ids(self) -> list[str]:
        return [r.agent_id for r in self.replicas]

    @property
    def verify_keys(self) -> dict[Hashable, bytes]:
        return {i: r.public.verify_key for i, r in enumerate(self.replicas)}

    def to_toml(self, directory: Path | None = None) -> str:
        """The TOML text for this configuration (paths relative to ``directory`` if given)."""

        def show(path: Path) -> str:
            if directory is not None:
                try:
                    return _string(str(path.relative_to(directory)))
                except ValueError:
                    pass
            return _string(str(path))

        lines = [
            f"replica = {self.replica}",
            f"name = {_string(self.name)}",
            f"keys = {show(self.keys)}",
            f"trust = {show(self.trust)}",
            f"data = {show(self.data)}",
        ]
        if self.audit is not None:
            lines.append(f"audit = {show(self.audit)}")
        lines += [
            f"batch_size = {self.batch_size}",
            f"batch_delay = {self.batch_delay}",
            f"checkpoint_interval = {self.checkpoint_interval}",
            f"view_change_timeout = {self.view_change_timeout}",
            f"fsync = {'true' if self.fsync else 'false'}",
            f"reply_all = {'true' if self.reply_all else 'false'}",
            f"client_signatures = {'true' if self.client_signatures else 'false'}",
            f"max_request_bytes = {self.max_request_bytes}",
            f"max_batch_bytes = {self.max_batch_bytes}",
        ]
        for entry in self.replicas:
            public = self.keys / f"{entry.public.name}.pub"
            lines += [
                "",
                "[[replicas]]",
                f"endpoint = {_string(entry.endpoint)}",
                f"public = {show(public)}",
            ]
        return "\n".join(lines) + "\n"


def _string(value: str) -> str:
    """A TOML basic string. JSON's escapes (quote, backslash, control characters) are valid
    TOML; DEL is the one character TOML refuses raw that JSON leaves alone. Not ASCII-only:
    JSON's surrogate-pair escapes are not valid TOML."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _is_int(value: object) -> bool:
    # bool is an int subclass, but "batch_size = true" is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _path(base: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{key} must be a path (a non-empty string)")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def load_config(path: str | os.PathLike[str]) -> ReplicaConfig:
    """Read and check a replica configuration file; :class:`UsageError` says what is wrong."""
    path = Path(path)
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(_ALLOWED))
    if unknown:
        raise UsageError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(_ALLOWED)}"
        )
    base = path.parent
    for required in ("replica", "keys", "trust", "data", "replicas"):
        if required not in data:
            raise UsageError(f"{path}: missing setting {required!r} (see docs/patterns.md)")
    rows = data["replicas"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UsageError(f"{path}: replicas must be [[replicas]] tables with endpoint and public")
    entries = []
    for i, row in enumerate(rows):
        if set(row) != {"endpoint", "public"} or not isinstance(row["endpoint"], str):
            raise UsageError(f"{path}: [[replicas]] #{i} needs exactly endpoint and public")
        entries.append(
            ReplicaEntry(row["endpoint"], load_public(_path(base, row["public"], "public")))
        )
    audit = data.get("audit")
    names = (
        "batch_size",
        "batch_delay",
        "checkpoint_interval",
        "view_change_timeout",
        "name",
        "max_request_bytes",
        "max_batch_bytes",
    )
    flags = ("fsync", "reply_all", "client_signatures")
    settings = {k: data[k] for k in (*names, *flags) if k in data}
    try:
        return ReplicaConfig(
            replica=data["replica"],
            replicas=tuple(entries),
            keys=_path(base, data["keys"], "keys"),
            trust=_path(base, data["trust"], "trust"),
            data=_path(base, data["data"], "data"),
            audit=None if audit is None else _path(base, audit, "audit"),
            **settings,
        )
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None  # which file, as for the checks above
