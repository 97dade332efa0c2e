"""The trust store: which identities we talk to, with which roles, until when.

A trust store is a directory of ``.pub`` files (the format of :mod:`zmqcomm.crypto.key_files`), each
optionally carrying three more fields::

    "roles": ["worker", "sensor"],        # role names for the access policy (default none)
    "expires": "2026-12-31T00:00:00Z",    # ISO 8601; naive times are UTC (default never)
    "pinned": true                        # written by trust-on-first-use (default false)

Entries are keyed by the agent id computed from the key, whatever the file is called; the
store writes ``<agent_id>.pub``. Revoked ids live in ``revoked/`` (the moved ``.pub`` file or an
``<agent_id>.revoked`` marker), and revocation beats everything: a revoked id is refused even
if its file is copied back, and trust-on-first-use never pins it again. Only :meth:`add`
lifts a revocation.

Revocation takes effect on the next message. Changes made by this object apply at once. With
``watch=True`` (the default), :meth:`lookup` also notices changes made by other processes
(``zmqcomm`` commands, an administrator's ``mv`` or ``rm``): it stats the directory, the
``revoked/`` directory and the peer's own file and reloads when one changed. Stat-ing the
peer's file catches removal even when the directory's timestamp is too coarse to show it.
The ``revoked/`` directory is looked at again after ``revocation_interval`` (1 ms by default):
lookups run on every message sent and received, and a ``stat`` costs 1-4 us, as much as the
cipher on a small message. With ``watch=False`` only this object's own changes and
:meth:`reload` count. :attr:`TrustStore.generation` goes up whenever the entries or the
revocations changed, so a caller can tell cheaply that something may now be trusted.

Time comes in as ``now`` (epoch seconds): no hidden clock, so tests and the simulator use fake
time.
"""

from __future__ import annotations

import functools
import hmac
import json
import math
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from zmqcomm.crypto.key_files import (
    PUBLIC_SUFFIX,
    atomic_write,
    load_public_document,
    public_file_bytes,
)
from zmqcomm.crypto.keys import (
    Certificate,
    PublicIdentity,
    agent_id_from_sender,
    is_agent_id,
    signature_valid,
)
from zmqcomm.errors import (
    AuthenticationError,
    KeyFileError,
    SecurityError,
    UnknownPeerError,
    UsageError,
)

REVOKED_DIR = "revoked"
REVOKED_SUFFIX = ".revoked"
_ROLE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_StatKey = tuple[int, int, int] | None
#: Tries to pin over an empty leftover file before giving up.
_PIN_ATTEMPTS = 3


def parse_time(value: float | str | datetime | None) -> float | None:
    """Epoch seconds from a number, an ISO 8601 string or a datetime (naive means UTC).

    :class:`UsageError` for anything else, and for a time :func:`format_time` cannot write
    back (NaN, infinities, outside the years 1-9999 once moved to UTC): such a time would
    otherwise fail later, in a lookup on the message path or when the store rewrites it.
    """
    if value is None:
        return None
    original = value
    if isinstance(value, bool) or not isinstance(value, (int, float, str, datetime)):
        raise UsageError(f"not a time: {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):  # fromisoformat accepts "Z" only from Python 3.11
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError as exc:
            raise UsageError(f"not an ISO 8601 time: {original!r}") from exc
    try:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            # "0001-01-01T00:00:00+14:00" parses, yet lies before year 1 in UTC.
            epoch = value.timestamp()
        else:
            epoch = float(value)
        format_time(epoch)  # in range for the store to write it back
    except (ValueError, OverflowError, OSError) as exc:
        raise UsageError(f"time out of range (years 1-9999 UTC): {original!r}") from exc
    return epoch


def format_time(epoch: float) -> str:
    """ISO 8601 in UTC with a ``Z``, as the store writes it."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def check_roles(roles: Iterable[str]) -> frozenset[str]:
    """Role names as a set; :class:`UsageError` for anything but an iterable of valid names."""
    if isinstance(roles, (str, bytes)):  # a lone string would become a set of letters
        raise UsageError(f"roles must be a list of names, got the string {roles!r}")
    try:
        items = list(roles)
    except TypeError:
        raise UsageError(f"roles must be a list of names, got {type(roles).__name__}") from None
    # Each item checked before hashing: a nested list must be a UsageError, not a TypeError.
    for role in items:
        if not isinstance(role, str) or _ROLE_RE.fullmatch(role) is None:
            raise UsageError(f"invalid role name {role!r:.80}: 1-64 of A-Z a-z 0-9 _ . : -")
    return frozenset(items)


@dataclass(frozen=True)
class TrustEntry:
    """One trusted identity."""

    public: PublicIdentity
    roles: frozenset[str]
    expires: float | None
    pinned: bool
    path: Path

    @property
    def agent_id(self) -> str:
        return self.public.agent_id

    @property
    def name(self) -> str:
        return self.public.name

    @property
    def verify_key(self) -> bytes:
        return self.public.verify_key

    @property
    def static_public(self) -> bytes:
        return self.public.static_public

    @property
    def sender_id(self) -> bytes:
        return self.public.sender_id

    def expired(self, *, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    @functools.cached_property
    def path_text(self) -> str:
        return str(self.path)


def _stat_key(path: Path | str) -> _StatKey:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


class TrustStore:
    """An allowlist of public keys with roles; see the module docstring for the rules."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        tofu: bool = False,
        tofu_roles: Iterable[str] = (),
        watch: bool = True,
        watch_interval: float = 1.0,
        revocation_interval: float = 0.001,
        strict: bool = True,
    ) -> None:
        """``watch_interval``: how often, in seconds of the ``now`` given to lookups, key
        files added, removed or edited by other processes are looked for (0: on every
        lookup, three ``stat`` calls). ``revocation_interval``: the same for revocations
        (one ``stat``; 0: on every lookup); keep it short, since revoking, not deleting a key
        file, is how to cut a peer off at once. Changes made through this object count at
        once either way. ``strict=False`` skips key files that do not load (each named in
        :attr:`problems`) instead of raising: a tool that must work on a damaged store
        (revoking someone in a hurry) uses it."""
        for name, value in (
            ("watch_interval", watch_interval),
            ("revocation_interval", revocation_interval),
        ):
            if not value >= 0:
                raise UsageError(f"{name} must be >= 0 seconds, got {value}")
        self.watch_interval = watch_interval
        self.revocation_interval = revocation_interval
        self._checked_at = -math.inf
        self._revocations_checked_at = -math.inf
        self.directory = Path(directory)
        self._watched = (str(self.directory), str(self.directory / REVOKED_DIR))
        self.tofu = tofu
        self.tofu_roles = check_roles(tofu_roles)
        self.watch = watch
        #: Files skipped by an automatic reload or a ``strict=False`` construction (path ->
        #: why); explicit loads raise instead.
        self.problems: dict[Path, str] = {}
        self._lock = threading.RLock()
        self._entries: dict[str, TrustEntry] = {}
        self._stamps: dict[str, _StatKey] = {}
        self._revoked: frozenset[str] = frozenset()
        self._snapshot: tuple[_StatKey, _StatKey] = (None, None)
        #: Files skipped as bad, and their stat then: a file caught half written (a copy, an
        #: editor's save) is read again once it changes, though the directory did not.
        self._problem_stamps: dict[str, _StatKey] = {}
        #: Goes up each time the entries or revocations changed (a reload that found a
        #: difference, an add, a revocation, a pin): whoever holds something a change could
        #: settle (mail from a sender not yet trusted, say) compares it with the value it
        #: last saw instead of polling the files.
        self.generation = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyFileError(f"cannot create trust store {self.directory}: {exc}") from exc
        with self._lock:
            self._load(strict=strict)

    @property
    def revoked_directory(self) -> Path:
        return self.directory / REVOKED_DIR

    # -- loading ------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the directory; :class:`KeyFileError` names the first bad file."""
        with self._lock:
            self._load(strict=True)

    def _load(self, *, strict: bool) -> None:
        # Snapshot first: a change made while we scan shows up as a difference next time.
        snapshot = (_stat_key(self.directory), _stat_key(self.revoked_directory))
        entries: dict[str, TrustEntry] = {}
        stamps: dict[str, _StatKey] = {}
        problems: dict[Path, str] = {}
        problem_stamps: dict[str, _StatKey] = {}
        for path in sorted(self.directory.glob("*" + PUBLIC_SUFFIX)):
            if path.name.startswith("."):  # temporary files of atomic writes
                continue
            stamp = _stat_key(path)
            try:
                entry = self._read_entry(path)
                if entry.agent_id in entries:
                    raise KeyFileError(
                        f"{path} repeats agent id {entry.agent_id} "
                        f"(already in {entries[entry.agent_id].path})"
                    )
            except KeyFileError as exc:
                if strict:
                    raise
                problems[path] = str(exc)
                problem_stamps[str(path)] = stamp
                continue
            entries[entry.agent_id] = entry
            stamps[entry.agent_id] = stamp
        revoked = frozenset(
            path.name.split(".", 1)[0]
            for path in self._list(self.revoked_directory)
            if is_agent_id(path.name.split(".", 1)[0])
        )
        entries = {aid: e for aid, e in entries.items() if aid not in revoked}
        # Only a real change counts: a reload that finds what we had (a bad pin file read
        # again, say) must not make every holder of waiting mail retry it at once.
        if entries != self._entries or revoked != self._revoked:
            self.generation += 1
        self._entries = entries
        self._stamps = stamps
        self._revoked = revoked
        self._snapshot = snapshot
        self.problems = problems
        self._problem_stamps = problem_stamps

    @staticmethod
    def _list(directory: Path) -> list[Path]:
        try:
            return [path for path in directory.iterdir() if not path.name.startswith(".")]
        except FileNotFoundError:
            return []

    @staticmethod
    def _read_entry(path: Path) -> TrustEntry:
        public, document = load_public_document(path)
        try:
            raw_roles = document.get("roles")
            if raw_roles is not None and not isinstance(raw_roles, list):
                raise UsageError(f"'roles' must be a list of names, not {type(raw_roles).__name__}")
            roles = check_roles(raw_roles or ())
            raw_expires = document.get("expires")
            if raw_expires is not None and not isinstance(raw_expires, str):
                raise UsageError("'expires' must be an ISO 8601 string")
            expires = parse_time(raw_expires)
        except UsageError as exc:
            raise KeyFileError(f"{path}: {exc}") from exc
        pinned = document.get("pinned", False)
        if not isinstance(pinned, bool):
            raise KeyFileError(f"{path}: 'pinned' must be true or false")
        return TrustEntry(public, roles, expires, pinned, path)

    def _refresh(self, now: float | None = None) -> bool:
        """Pick up changes made by other processes; returns whether the whole directory was
        checked (else only the revocations were).

        Revocations are checked every ``revocation_interval`` seconds of ``now`` (one
        ``stat``), added, removed or edited key files every ``watch_interval``; both on every
        call when their interval is 0 or ``now`` is None.
        """
        if not self.watch:
            return False
        directory, revoked = self._watched  # plain strings: this runs on every message
        # An interval of 0 makes both windows empty: look on every call.
        if now is not None and 0 <= now - self._checked_at < self.watch_interval:
            if 0 <= now - self._revocations_checked_at < self.revocation_interval:
                return False
            self._revocations_checked_at = now
            full = False
            snapshot = (self._snapshot[0], _stat_key(revoked))
        else:
            full = True
            if now is not None:
                self._checked_at = self._revocations_checked_at = now
            snapshot = (_stat_key(directory), _stat_key(revoked))
        if snapshot != self._snapshot or (
            full and any(_stat_key(p) != stamp for p, stamp in self._problem_stamps.items())
        ):
            self._load(strict=False)
        return full

    # -- queries ------------------------------------------------------------------------------

    def lookup(self, agent_id: str, *, now: float, verify_key: bytes | None = None) -> TrustEntry:
        """The entry for ``agent_id`` if it is trusted at ``now``.

        :class:`UnknownPeerError` (``reason`` ``unknown_peer``, ``revoked`` or
        ``trust_expired``) when it is not; :class:`AuthenticationError` (``key_changed``) when
        ``verify_key`` is given and differs from the trusted one.
        """
        with self._lock:
            full = self._refresh(now)
            entry = self._entries.get(agent_id)
            if (
                entry is not None
                and full
                and _stat_key(entry.path_text) != self._stamps.get(agent_id)
            ):
                self._load(strict=False)  # its file was removed, moved or rewritten
                entry = self._entries.get(agent_id)
            if agent_id in self._revoked:
                raise UnknownPeerError(f"peer {agent_id} was revoked", reason="revoked")
            if entry is None:
                raise UnknownPeerError(
                    f"peer {agent_id} is not in the trust store", reason="unknown_peer"
                )
        if verify_key is not None and not hmac.compare_digest(verify_key, entry.verify_key):
            raise AuthenticationError(
                f"key changed for trusted peer {agent_id}", reason="key_changed"
            )
        if entry.expires is not None and now >= entry.expires:
            raise UnknownPeerError(
                f"trust in peer {agent_id} expired at {format_time(entry.expires)}",
                reason="trust_expired",
            )
        return entry

    def lookup_sender(self, sender: bytes, *, now: float) -> TrustEntry:
        """:meth:`lookup` by the 16-byte ``sender`` field of a wire header."""
        try:
            agent_id = agent_id_from_sender(sender)
        except UsageError as exc:
            raise UnknownPeerError("malformed sender id", reason="unknown_peer") from exc
        return self.lookup(agent_id, now=now)

    def signed_by(self, agent_id: str, material: bytes, signature: bytes, *, now: float) -> bool:
        """Whether ``agent_id``, trusted at ``now`` (not unknown, revoked or expired), made
        ``signature`` over ``material``; asked on every message, so a revocation counts at
        the next one."""
        try:
            key = self.lookup(agent_id, now=now).verify_key
        except SecurityError:
            return False
        return signature_valid(key, material, signature)

    def check_certificate(self, certificate: Certificate, *, now: float) -> TrustEntry:
        """Accept a peer's certificate from a handshake, or raise.

        Checks the signature and the certificate's expiry (:class:`AuthenticationError`), then
        that the signer is trusted (:meth:`lookup`). With ``tofu`` an unknown (never revoked)
        signer is pinned here; a pinned peer must then keep the same X25519 static key.
        """
        certificate.verify(now=now)
        agent_id = certificate.agent_id
        with self._lock:
            try:
                entry = self.lookup(agent_id, now=now, verify_key=certificate.verify_key)
            except UnknownPeerError as exc:
                if not self.tofu or exc.reason != "unknown_peer":
                    raise
                entry = self._pin(certificate, now=now)
        if entry.pinned and not hmac.compare_digest(entry.static_public, certificate.static_public):
            raise AuthenticationError(
                f"key changed for pinned peer {agent_id}: its X25519 static key differs from "
                f"the one pinned in {entry.path}; if the change is expected, remove that file",
                reason="key_changed",
            )
        return entry

    def _pin(self, certificate: Certificate, *, now: float) -> TrustEntry:
        path = self.directory / f"{certificate.agent_id}{PUBLIC_SUFFIX}"
        public = PublicIdentity(certificate.agent_id, certificate)
        data = public_file_bytes(
            public,
            roles=sorted(self.tofu_roles),
            expires=None,
            pinned=True,
            pinned_at=format_time(now),
        )
        for attempt in range(_PIN_ATTEMPTS):
            try:
                atomic_write(path, data, mode=0o644, replace=False)
                break
            except KeyFileError:
                stamp = _stat_key(path)
                if stamp is None:  # not there: the write itself failed
                    raise
                if stamp[2] or attempt == _PIN_ATTEMPTS - 1:
                    # Another process pinned it first: its pin is the one that counts (pins
                    # appear whole); a damaged file is judged, and named, by the load below.
                    break
            # An empty file pins nothing: left by a writer that crashed between creating and
            # filling it (releases before pins were linked in whole did that). Remove it and
            # pin afresh, unless it was replaced meanwhile (then the next attempt sees that).
            if _stat_key(path) == stamp:
                path.unlink(missing_ok=True)
        self._load(strict=False)
        try:
            return self.lookup(certificate.agent_id, now=now, verify_key=certificate.verify_key)
        except UnknownPeerError as exc:
            problem = self.problems.get(path)
            if exc.reason != "unknown_peer" or problem is None:
                raise
            raise UnknownPeerError(
                f"peer {certificate.agent_id} is not pinned: {problem}", reason="unknown_peer"
            ) from None

    def entries(self) -> list[TrustEntry]:
        """Every entry not revoked (expired ones included), sorted by agent id."""
        with self._lock:
            self._refresh()
            return [self._entries[aid] for aid in sorted(self._entries)]

    def revoked(self) -> frozenset[str]:
        with self._lock:
            self._refresh()
            return self._revoked

    def __contains__(self, agent_id: object) -> bool:
        with self._lock:
            self._refresh()
            return agent_id in self._entries

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"TrustStore({str(self.directory)!r}, entries={len(self._entries)}, tofu={self.tofu})"
        )

    # -- changes ------------------------------------------------------------------------------

    def add(
        self,
        source: PublicIdentity | Certificate | str | os.PathLike[str],
        roles: Iterable[str] = (),
        *,
        expires: float | str | datetime | None = None,
    ) -> TrustEntry:
        """Trust a public key file, a :class:`PublicIdentity` or a certificate.

        Writes ``<agent_id>.pub`` (or rewrites the file already holding this id) atomically,
        and lifts any revocation of the id: adding is the operator's explicit decision.
        """
        if isinstance(source, Certificate):
            source.verify()
            public = PublicIdentity(source.agent_id, source)
        elif isinstance(source, PublicIdentity):
            public = source
        else:
            public = load_public_document(source)[0]
        checked_roles = check_roles(roles)
        expiry = parse_time(expires)
        agent_id = public.agent_id
        with self._lock:
            directory = self._watched[0]
            if (_stat_key(directory), _stat_key(self._watched[1])) != self._snapshot:
                self._load(strict=False)  # someone else changed the store: start from it
            current = self._entries.get(agent_id)
            path = current.path if current else self.directory / f"{agent_id}{PUBLIC_SUFFIX}"
            data = public_file_bytes(
                public,
                roles=sorted(checked_roles),
                expires=None if expiry is None else format_time(expiry),
            )
            atomic_write(path, data, mode=0o644, replace=True)
            lifted = False
            for marker in self._list(self.revoked_directory):
                if marker.name.split(".", 1)[0] == agent_id:
                    marker.unlink(missing_ok=True)
                    lifted = True
            if lifted or agent_id in self._revoked:
                self._load(strict=False)
            else:
                # Only our own write changed the directory: take the one new entry instead
                # of re-reading every file (adding n peers would cost n^2 reads).
                self._entries[agent_id] = self._read_entry(path)
                self._stamps[agent_id] = _stat_key(path)
                self._snapshot = (_stat_key(directory), self._snapshot[1])
                self.generation += 1
            return self._entries[agent_id]

    def revoke(self, agent_id: str) -> bool:
        """Stop trusting ``agent_id`` from the next message on; True if it was trusted.

        Its file moves to ``revoked/`` (kept as a record), or a marker is written when there
        was no file, so a revoked id stays refused even under trust-on-first-use.
        """
        if not is_agent_id(agent_id):
            raise UsageError(f"not an agent id (26 characters a-z, 2-7): {agent_id!r}")
        with self._lock:
            self._load(strict=False)
            entry = self._entries.get(agent_id)
            try:
                self.revoked_directory.mkdir(exist_ok=True)
                if entry is not None:
                    os.replace(entry.path, self.revoked_directory / f"{agent_id}{PUBLIC_SUFFIX}")
                else:
                    marker: dict[str, Any] = {"agent_id": agent_id}
                    atomic_write(
                        self.revoked_directory / f"{agent_id}{REVOKED_SUFFIX}",
                        (json.dumps(marker) + "\n").encode(),
                        mode=0o644,
                        replace=True,
                    )
            except OSError as exc:
                raise KeyFileError(f"cannot revoke {agent_id}: {exc}") from exc
            self._load(strict=False)
            return entry is not None

    def remove(self, agent_id: str) -> bool:
        """Forget ``agent_id`` without revoking it (under TOFU it may be pinned again)."""
        with self._lock:
            self._load(strict=False)
            entry = self._entries.get(agent_id)
            if entry is not None:
                entry.path.unlink(missing_ok=True)
                self._load(strict=False)
            return entry is not None
