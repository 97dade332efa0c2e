"""The audit trail: one JSON object per line, never key material.

Every line has ``time`` (ISO 8601, UTC), ``ts`` (the same instant in epoch seconds), ``event``,
``peer`` (an agent id or null) and ``reason`` (or null), then the caller's fields::

    {"time":"2026-05-09T07:35:25.123456Z","ts":1778312125.123456,"event":"reject",
     "peer":"o2wboarqgjlijufzo7cms2zcnq","reason":"replay","session":7,"counter":1041}

Events used by zmqcomm: ``handshake``, ``rekey`` and ``reject`` (reasons ``replay``,
``bad_tag``, ``unknown_key``, ``denied``, ``rate_limited``, ...); other names are allowed.

Field values must be JSON scalars (str, int, float, bool, None) or lists/dicts of them, a few
levels deep. Anything else is refused with :class:`LocalProtocolError` before a byte is
written: ``bytes`` above all (keys, nonces, payloads), field names that smell of secrets
(``secret``, ``private``, ``passphrase``, ``password``, ``seed``). Refusing loudly, rather than
dropping quietly, turns a leak into a failing test. Strings may come from peers (a topic, say),
so they are never refused: runs of 64 or more hex digits (a hex-encoded key) are replaced by
``[redacted]`` and long strings are cut at :data:`MAX_STRING`. The in-memory and null logs
apply the same rules, so tests catch misuse too.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from zmqcomm.errors import ClosedError, LocalProtocolError, UsageError

HANDSHAKE = "handshake"
REKEY = "rekey"
REJECT = "reject"
# Reasons of REJECT lines.
REPLAY = "replay"
BAD_TAG = "bad_tag"
UNKNOWN_KEY = "unknown_key"
DENIED = "denied"
RATE_LIMITED = "rate_limited"

RESERVED_FIELDS = frozenset({"time", "ts", "event", "peer", "reason"})
_SECRET_WORDS = ("secret", "private", "passphrase", "password", "seed")
_HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64,}")
REDACTED = "[redacted]"
_NAME_RE = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_DEPTH = 4
_MAX_ITEMS = 256
#: Peer-supplied text can be long; an audit line stays a line, not a payload dump.
MAX_STRING = 1024


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _refuse(field: str, why: str) -> LocalProtocolError:
    return LocalProtocolError(f"audit field {field!r} refused: {why}", reason="audit_field")


def _clean(field: str, value: object, depth: int = 0) -> Any:
    """A JSON-safe copy of ``value``, or :class:`LocalProtocolError`."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)  # IntEnum members become plain numbers
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _refuse(field, "not a finite number")
        return value
    if isinstance(value, str):
        value = _HEX_KEY_RE.sub(REDACTED, value)
        return value if len(value) <= MAX_STRING else value[:MAX_STRING] + "..."
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise _refuse(field, "bytes are never written to the audit trail (key material?)")
    if depth >= _MAX_DEPTH:
        raise _refuse(field, "nested too deep")
    if isinstance(value, (list, tuple)):
        if len(value) > _MAX_ITEMS:
            raise _refuse(field, f"more than {_MAX_ITEMS} items")
        return [_clean(field, item, depth + 1) for item in value]
    if isinstance(value, Mapping):
        if len(value) > _MAX_ITEMS:
            raise _refuse(field, f"more than {_MAX_ITEMS} items")
        cleaned = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _refuse(field, "mapping keys must be strings")
            _check_field_name(f"{field}.{key}", key)
            cleaned[key] = _clean(f"{field}.{key}", item, depth + 1)
        return cleaned
    raise _refuse(field, f"a {type(value).__name__} is not a JSON value")


def _check_field_name(label: str, name: str) -> None:
    lowered = name.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        raise _refuse(label, "the name suggests secret material")


def build_record(
    event: str, *, now: float, peer: str | None, reason: str | None, fields: Mapping[str, object]
) -> dict[str, Any]:
    """The dictionary one audit line encodes (validated; see the module docstring)."""
    if not isinstance(event, str) or _NAME_RE.fullmatch(event) is None:
        raise UsageError(f"invalid audit event name {event!r}")
    if not isinstance(now, (int, float)) or not math.isfinite(now):
        raise UsageError(f"audit time must be epoch seconds, got {now!r}")
    if peer is not None and not isinstance(peer, str):
        raise _refuse("peer", "must be an agent id string or None")
    if reason is not None and not isinstance(reason, str):
        raise _refuse("reason", "must be a string or None")
    record: dict[str, Any] = {
        "time": iso_time(now),
        "ts": round(float(now), 6),
        "event": event,
        "peer": _clean("peer", peer),
        "reason": _clean("reason", reason),
    }
    for name, value in fields.items():
        if name in RESERVED_FIELDS:
            raise UsageError(f"audit field {name!r} is reserved")
        if _FIELD_RE.fullmatch(name) is None:
            raise UsageError(f"invalid audit field name {name!r}")
        _check_field_name(name, name)
        record[name] = _clean(name, value)
    return record


def encode_record(record: Mapping[str, Any]) -> str:
    """One line of JSON, without the newline (ASCII only, so no control characters escape)."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class BaseAuditLog:
    """Validation and the :meth:`record` API; subclasses decide where lines go."""

    def record(
        self,
        event: str,
        *,
        now: float,
        peer: str | None = None,
        reason: str | None = None,
        **fields: object,
    ) -> dict[str, Any]:
        """Write one audit line and return what was written."""
        entry = build_record(event, now=now, peer=peer, reason=reason, fields=fields)
        self._emit(entry, encode_record(entry))
        return entry

    def _emit(self, entry: dict[str, Any], line: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the log holds (nothing, for the in-memory and null logs)."""

    def __enter__(self) -> BaseAuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NullAuditLog(BaseAuditLog):
    """Checks every record, keeps none."""

    def _emit(self, entry: dict[str, Any], line: str) -> None:
        pass


class MemoryAuditLog(BaseAuditLog):
    """Keeps records (dicts) and their JSON lines in memory, the newest ``limit`` of them."""

    def __init__(self, *, limit: int | None = None) -> None:
        self.limit = limit
        self.records: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def _emit(self, entry: dict[str, Any], line: str) -> None:
        with self._lock:
            self.records.append(entry)
            self.lines.append(line)
            if self.limit is not None and len(self.records) > self.limit:
                del self.records[0], self.lines[0]

    def events(
        self, event: str | None = None, *, reason: str | None = None
    ) -> list[dict[str, Any]]:
        """Records with this event and/or reason."""
        with self._lock:
            return [
                r
                for r in self.records
                if (event is None or r["event"] == event)
                and (reason is None or r["reason"] == reason)
            ]


def _check_audit_file(path: Path, status: os.stat_result) -> None:
    if stat.S_ISCHR(status.st_mode):
        return  # a terminal, /dev/null: what the user asked for
    if not stat.S_ISREG(status.st_mode):
        raise UsageError(
            f"audit log {path} is not a regular file (a pipe's reader could stall the node "
            "on every line): give a file path, or pass an open stream to AuditLog"
        )
    if status.st_uid != os.geteuid():
        raise UsageError(
            f"audit log {path} belongs to another user (uid {status.st_uid}), who could forge "
            "or erase its lines: remove it, or give a path in a directory only you can write"
        )
    if status.st_nlink > 1:
        raise UsageError(
            f"audit log {path} has {status.st_nlink} hard links: the trail would also land in "
            "another file; give a path of its own"
        )
    if status.st_mode & 0o022:
        raise UsageError(
            f"audit log {path} is writable by group or others (mode "
            f"{stat.S_IMODE(status.st_mode):o}): they could forge or erase its lines; "
            f"fix it with: chmod 600 {path}"
        )


class AuditLog(BaseAuditLog):
    """JSON lines to a file (created 0600, appended to) or to an open text stream.

    Thread-safe; each line is flushed as it is written. For files, ``max_bytes`` turns on
    rotation: ``audit.log`` becomes ``audit.log.1`` (and so on, keeping ``backups`` old files).
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | TextIO,
        *,
        max_bytes: int | None = None,
        backups: int = 3,
    ) -> None:
        if max_bytes is not None and (max_bytes < 1 or backups < 1):
            raise UsageError("audit rotation needs max_bytes >= 1 and backups >= 1")
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._closed = False
        #: Lines that could not be written (a full disk, say), and the last such error:
        #: a failing sink never raises into the code that records.
        self.write_errors = 0
        self.last_error: str | None = None
        self.path: Path | None
        if isinstance(target, (str, os.PathLike)):
            self.path = Path(target)
            self._stream = self._open(self.path)
            self._owned = True
        else:
            if max_bytes is not None:
                raise UsageError("audit rotation works on a file path, not a stream")
            self.path = None
            self._stream = target
            self._owned = False
        self._size = self._current_size()

    @staticmethod
    def _open(path: Path) -> TextIO:
        # O_NOFOLLOW: a link planted where the log goes (a shared directory) would have the
        # trail appended to whatever file it names. O_NONBLOCK: opening a pipe with no reader
        # must fail, not hang; it is refused below anyway.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if os.path.islink(path):
                raise UsageError(
                    f"audit log {path} is a symbolic link: give the path of the file itself"
                ) from exc
            raise UsageError(f"cannot open audit log {path}: {exc.strerror}") from exc
        try:
            _check_audit_file(path, os.fstat(fd))
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def _current_size(self) -> int:
        if self.path is None:
            return 0
        return os.fstat(self._stream.fileno()).st_size

    def _emit(self, entry: dict[str, Any], line: str) -> None:
        with self._lock:
            if self._closed:
                raise ClosedError("the audit log is closed")
            # Records are made while refusing a peer's frame, inside pump(): a full disk or
            # a lost file must not let any peer's garbage stop the node. Counted instead.
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self._failed(exc)
                return
            self._size += len(line) + 1
            if self.max_bytes is not None and self._size >= self.max_bytes:
                self._rotate()

    def _failed(self, exc: Exception) -> None:
        self.write_errors += 1
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.last_error = f"{type(exc).__name__}: {detail}"

    def _rotate(self) -> None:
        assert self.path is not None  # rotation is refused for streams in __init__
        # Renamed and reopened before the old stream is let go: if any step fails (a full
        # disk, a removed directory, no file descriptors), writing goes on where it was.
        try:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            if self.path.exists():  # gone (removed by hand, say): start a new one
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            stream = self._open(self.path)
        except (OSError, UsageError) as exc:
            self._failed(exc)
            self._size = 0  # try again after another max_bytes, not on every line
            return
        self._stream.close()
        self._stream = stream
        self._size = 0

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                try:
                    if self._owned:
                        self._stream.close()
                    else:
                        self._stream.flush()
                except (OSError, ValueError) as exc:  # what is buffered cannot be written
                    self._failed(exc)

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "stream"
        return f"AuditLog({where!r})"
