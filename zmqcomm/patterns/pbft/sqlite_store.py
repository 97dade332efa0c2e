"""A durable PBFT :class:`~zmqcomm.patterns.pbft.store.Store` in one SQLite file.

WAL journal with ``synchronous=FULL`` (the default): a commit returns only once the WAL is
on disk, so a replica killed with SIGKILL (or a power cut) keeps every save that returned.
One table per record kind (view, votes, entries, checkpoint); records are the pbft message
dataclasses encoded with :func:`zmqcomm.patterns.pbft.messages.encode`.

Two commit modes:

- default: every ``save_*`` is its own transaction, durable when it returns;
- ``fsync=False`` (``synchronous=NORMAL``): a commit has reached the OS, not the disk,
  when it returns: a killed process loses nothing, a power cut may lose the last commits.
  Each commit then costs ~60 us instead of a ~3 ms fsync; use it only where a power cut
  takes out fewer than f replicas at once (separate hosts or power domains).
- ``group_commit=True``: saves join one open transaction and :meth:`SQLiteStore.commit`
  makes them durable together. The driver commits after feeding the replica a burst of
  messages and *before* it sends any of the actions they produced, so "persist before send"
  still holds while one fsync (~3 ms on this machine's disk) is paid per burst instead of per
  vote.

A row that does not decode is a :class:`CorruptStoreError` naming the table and key: the
replica refuses to start on a store it cannot trust (forgetting a vote could make it vote
twice), and the operator moves the data directory aside so the replica rejoins by state
transfer. So is a damaged database page, or a stable checkpoint whose snapshot does not hash
to its stored digest.

A failed write (disk full, I/O error) is a :class:`StoreError`. In group-commit mode SQLite
may then have rolled back the whole open transaction, saves the replica already acted on
included: the store is then *lost* and every later :meth:`SQLiteStore.commit` raises, so
the driver stops instead of sending messages whose votes are not on disk.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from zmqcomm.errors import ClosedError, CorruptStoreError, StoreError, UsageError, ZmqCommError
from zmqcomm.patterns.pbft.checkpoint import parse_state, state_digest
from zmqcomm.patterns.pbft.messages import Checkpoint, PreparedProof, PrePrepare, decode, encode
from zmqcomm.patterns.pbft.store import EntryRecord, StableCheckpoint, VoteKey
from zmqcomm.private_db import check_schema_version, open_private_database

__all__ = ["SCHEMA_VERSION", "CorruptStoreError", "SQLiteStore", "StoreError"]

_T = TypeVar("_T")
_MOVE_ASIDE = "move the data directory aside and restart the replica: it rejoins by state transfer"

#: 2: batch digests, PRE-PREPARE signing bytes and key-value snapshots changed (2026-11-26);
#: the digests and votes a version-1 store holds mean nothing to this code.
SCHEMA_VERSION = 2
_PHASES = ("pre-prepare", "prepare", "commit")
_KINDS = ("prepared", "committed")

_SCHEMA = f"""
BEGIN;
CREATE TABLE view (id INTEGER PRIMARY KEY CHECK (id = 0), view INTEGER NOT NULL,
                   changing INTEGER NOT NULL);
CREATE TABLE votes (view INTEGER NOT NULL, sequence INTEGER NOT NULL, phase TEXT NOT NULL,
                    digest BLOB NOT NULL, PRIMARY KEY (view, sequence, phase));
CREATE TABLE entries (sequence INTEGER NOT NULL, kind TEXT NOT NULL, record BLOB NOT NULL,
                      PRIMARY KEY (sequence, kind));
CREATE TABLE checkpoint (id INTEGER PRIMARY KEY CHECK (id = 0), sequence INTEGER NOT NULL,
                         digest BLOB NOT NULL, proof BLOB NOT NULL, snapshot BLOB NOT NULL);
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""


class SQLiteStore:
    """The :class:`Store` protocol on SQLite at ``path`` (created 0600 if missing)."""

    def __init__(
        self, path: str | os.PathLike[str], *, group_commit: bool = False, fsync: bool = True
    ) -> None:
        self.path = Path(path)
        self.group_commit = group_commit
        self.fsync = fsync
        #: Transactions made durable (fsyncs paid), for benchmarks.
        self.commits = 0
        self._dirty = False
        #: Why saves that returned were rolled back (None while the store is sound).
        self._lost: str | None = None
        if self.path.is_dir():
            raise UsageError(f"{self.path} is a directory: give the path of a database file")
        self._db: sqlite3.Connection | None = open_private_database(self.path, "the pbft store")
        try:
            self._setup(self._db)
        except BaseException:
            self.close()
            raise

    def _setup(self, db: sqlite3.Connection) -> None:
        try:
            version = check_schema_version(
                db,
                self.path,
                "pbft store",
                SCHEMA_VERSION,
                older=f"its digests and signatures mean nothing to this one: {_MOVE_ASIDE}",
            )
            db.execute("PRAGMA journal_mode = WAL")
            # FULL: fsync on every commit (survives power loss). NORMAL in WAL mode: the
            # commit is in the OS before it returns (survives SIGKILL, not a power cut).
            db.execute(f"PRAGMA synchronous = {'FULL' if self.fsync else 'NORMAL'}")
            if version == 0:
                db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"{self.path} is not a usable pbft store: {exc}") from exc

    # -- transactions ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ClosedError("the pbft store is closed")
        return self._db

    def _sound(self) -> sqlite3.Connection:
        db = self._conn()
        if self._lost is not None:
            raise StoreError(f"{self.path}: {self._lost}; restart the replica")
        return db

    def _failed(self, db: sqlite3.Connection, exc: sqlite3.Error, what: str) -> StoreError:
        """The typed error for a failed statement; marks the store lost when SQLite rolled
        back a transaction that held saves (SQLITE_FULL and IOERR may do that)."""
        if self._dirty and not db.in_transaction:
            self._lost = f"a failed {what} ({exc}) rolled back saves that were not committed"
        elif not self.group_commit and db.in_transaction:
            # One save per transaction, and it raised: drop it whole (a half discard, say).
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._dirty = False
        return StoreError(f"{self.path}: {what} failed: {exc}")

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        self._statements([(sql, args)], "save")

    def _statements(self, statements: list[tuple[str, tuple[Any, ...]]], what: str) -> None:
        db = self._sound()
        try:
            if not db.in_transaction:
                db.execute("BEGIN IMMEDIATE")
            for sql, args in statements:
                db.execute(sql, args)
        except sqlite3.Error as exc:
            raise self._failed(db, exc, what) from exc
        self._dirty = True
        if not self.group_commit:
            self.commit()

    def commit(self) -> None:
        """Make every save so far durable (a no-op when nothing is pending).

        Raises :class:`StoreError` when that cannot be promised: the commit failed, the
        store was lost earlier, or saves are pending but their transaction is gone."""
        db = self._sound()
        if self._dirty and not db.in_transaction:
            self._lost = "pending saves lost their transaction"
            raise StoreError(f"{self.path}: {self._lost}; restart the replica")
        if db.in_transaction:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._failed(db, exc, "commit") from exc
            if self._dirty:
                self.commits += 1
        self._dirty = False

    @property
    def lost(self) -> bool:
        """True once saves that returned were rolled back: the store refuses all writes."""
        return self._lost is not None

    @property
    def pending(self) -> bool:
        """True when saves wait for :meth:`commit` (group-commit mode)."""
        return self._dirty

    # -- the Store protocol -----------------------------------------------------------------------

    def _read(self, what: str, query: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run a read; a damaged database is a CorruptStoreError, any other SQLite failure
        (locked, I/O error) a StoreError."""
        db = self._conn()
        try:
            return query(db)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: cannot read {what}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise CorruptStoreError(
                f"{self.path}: {what} is damaged ({exc}); {_MOVE_ASIDE}"
            ) from exc

    def load_view(self) -> tuple[int, bool]:
        row = self._read(
            "the view",
            lambda db: db.execute("SELECT view, changing FROM view WHERE id = 0").fetchone(),
        )
        if row is None:
            return 0, False
        if not isinstance(row[0], int) or row[0] < 0 or row[1] not in (0, 1):
            raise CorruptStoreError(
                f"{self.path}: the stored view ({row[0]!r}, {row[1]!r}) is not a view; "
                f"{_MOVE_ASIDE}"
            )
        return row[0], bool(row[1])

    def save_view(self, view: int, changing: bool) -> None:
        self._write("INSERT OR REPLACE INTO view VALUES (0, ?, ?)", (view, int(changing)))

    def load_votes(self) -> dict[VoteKey, bytes]:
        votes: dict[VoteKey, bytes] = {}
        rows = self._read("the votes", lambda db: db.execute("SELECT * FROM votes").fetchall())
        for view, sequence, phase, digest in rows:
            if not (
                _is_index(view)
                and _is_index(sequence)
                and phase in _PHASES
                and isinstance(digest, bytes)
                and len(digest) == 32
            ):
                raise CorruptStoreError(
                    f"{self.path}: bad vote row (view {view!r}, sequence {sequence!r}, "
                    f"{phase!r}); {_MOVE_ASIDE}"
                )
            votes[(view, sequence, phase)] = digest
        return votes

    def save_vote(self, view: int, sequence: int, phase: str, digest: bytes) -> None:
        self._write(
            "INSERT OR REPLACE INTO votes VALUES (?, ?, ?, ?)", (view, sequence, phase, digest)
        )

    def load_entries(self) -> dict[tuple[int, str], EntryRecord]:
        entries: dict[tuple[int, str], EntryRecord] = {}
        rows = self._read(
            "the log entries", lambda db: db.execute("SELECT * FROM entries").fetchall()
        )
        for sequence, kind, blob in rows:
            record = self._decode(blob, f"entry ({sequence!r}, {kind!r})")
            expected = PreparedProof if kind == "prepared" else PrePrepare
            if not _is_index(sequence) or kind not in _KINDS or not isinstance(record, expected):
                raise CorruptStoreError(
                    f"{self.path}: entry ({sequence!r}, {kind!r}) is not a record; {_MOVE_ASIDE}"
                )
            entries[(sequence, kind)] = record
        return entries

    def save_entry(self, sequence: int, kind: str, record: EntryRecord) -> None:
        self._write(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", (sequence, kind, encode(record))
        )

    def load_checkpoint(self) -> StableCheckpoint | None:
        row = self._read(
            "the stable checkpoint",
            lambda db: db.execute(
                "SELECT sequence, digest, proof, snapshot FROM checkpoint WHERE id = 0"
            ).fetchone(),
        )
        if row is None:
            return None
        sequence, digest, blob, snapshot = row
        proof = self._decode(blob, "checkpoint proof")
        if not (
            _is_index(sequence)
            and isinstance(proof, tuple)
            and all(isinstance(c, Checkpoint) for c in proof)
            and isinstance(digest, bytes)
            and isinstance(snapshot, bytes)
        ):
            raise CorruptStoreError(
                f"{self.path}: the stable checkpoint row is not readable; {_MOVE_ASIDE}"
            )
        # The digest is what a quorum certified; a snapshot that does not hash to it (a flipped
        # bit, a bad sector) would make this replica serve and build on a wrong state.
        if state_digest(snapshot) != digest or parse_state(snapshot) is None:
            raise CorruptStoreError(
                f"{self.path}: the stable checkpoint {sequence}'s snapshot does not match its "
                f"certified digest; {_MOVE_ASIDE}"
            )
        return StableCheckpoint(sequence, digest, proof, snapshot)

    def save_checkpoint(self, checkpoint: StableCheckpoint) -> None:
        self._write(
            "INSERT OR REPLACE INTO checkpoint VALUES (0, ?, ?, ?, ?)",
            (checkpoint.sequence, checkpoint.digest, encode(checkpoint.proof), checkpoint.snapshot),
        )

    def discard_through(self, sequence: int) -> None:
        self._statements(
            [
                ("DELETE FROM votes WHERE sequence <= ?", (sequence,)),
                ("DELETE FROM entries WHERE sequence <= ?", (sequence,)),
            ],
            "discard",
        )

    # -- helpers --------------------------------------------------------------------------------

    def _decode(self, blob: object, what: str) -> Any:
        if not isinstance(blob, bytes):
            raise CorruptStoreError(f"{self.path}: {what} is not a blob")
        try:
            return decode(blob)
        except ZmqCommError as exc:
            raise CorruptStoreError(
                f"{self.path}: {what} does not decode ({exc.reason}); {_MOVE_ASIDE}"
            ) from exc

    def close(self) -> None:
        """Commit what is pending and close (safe to call twice).

        A lost store is closed without committing: what is left of its transaction is a
        fragment of a burst, not a state the replica was ever in."""
        db, self._db = self._db, None
        if db is not None:
            try:
                if db.in_transaction and self._lost is None:
                    db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: the final commit failed: {exc}") from exc
            finally:
                db.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, group_commit={self.group_commit})"


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
