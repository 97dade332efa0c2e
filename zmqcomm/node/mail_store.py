"""A node's durable mail state: held mail and the ids of mail already seen, in one SQLite file.

Without it (the default) both live in memory: a node that stops loses the mail it held (the
broker deleted it when the node acknowledged it), and after a restart a broker could hand it
mail it already delivered, as long as that mail is younger than ``mail_max_age``. With
``Node(..., mail_store=path)`` the broker path writes every change the tunnels record
(:data:`~zmqcomm.node.held_mail.MailChange`) here, in one committed transaction, *before* it
delivers what opened or acknowledges anything; at start it loads the file back.

The file: WAL mode, ``synchronous=FULL`` (a commit is on disk when it returns, so it survives
SIGKILL and, as far as the disk honours fsync, a power cut), created 0600 in a directory
created 0700 (the blobs are sealed, but who mails whom is metadata), schema version in
``PRAGMA user_version``. One node per file: a ``flock`` on ``<file>.lock`` next to it, which
goes with the process even on SIGKILL.

Tables: ``held`` (a letter's key, its sealed blob as the broker handed it over, the sender the
broker named, why it waits, when it was first held; rowid order is the hold's order) and
``seen`` (mail id and the mail's date; rowid order is the order seen). Seen ids are forgotten
as the node's memory forgets them: by count only, the oldest first once there are more than
:data:`~zmqcomm.node.mail_book.SEEN_MAIL`. Never by the wall clock: a clock running ahead for
a while (or wrong at a start) would forget ids of mail that opens again once it is right.
The retry schedule is not stored: restored letters are first tried one second after the
start (a restart is when the trust store or the clock most likely changed), the back-off
starting again from there.

A failed write (disk full, I/O error: :class:`StoreError`), or one that anything else
interrupts, loses the store: it refuses every later write, since the node's memory is then
ahead of its file. The node must stop and be restarted, which recovers from the file (what
was not acknowledged comes again from the broker).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from zmqcomm.data_lock import lock_data_directory
from zmqcomm.errors import ClosedError, CorruptStoreError, StoreError, UsageError
from zmqcomm.node.held_mail import (
    DropLetter,
    HeldLetter,
    KeepLetter,
    MailChange,
    MarkSeen,
    Rewait,
    letter_key,
)
from zmqcomm.node.mail_book import SEEN_MAIL
from zmqcomm.private_db import check_schema_version, open_private_database

#: Bump when the schema changes; a file with a higher version is refused, not guessed at.
SCHEMA_VERSION = 1
_KIND = "zmqcomm node mail store"
_MOVE_ASIDE = (
    "move the file aside to start with an empty store (the mail it held is then lost; the "
    "ids it had seen are forgotten), or restore it from a backup"
)
_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE held (
    key BLOB PRIMARY KEY, blob BLOB NOT NULL, sender TEXT NOT NULL, reason TEXT NOT NULL,
    held_at REAL NOT NULL);
CREATE TABLE seen (mail_id BLOB PRIMARY KEY, sealed_at REAL NOT NULL);
CREATE INDEX seen_by_age ON seen (sealed_at);
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""


class MailStore:
    """The mail state of one node in the SQLite file at ``path``; see the module doc."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UsageError(f"mail_store {self.path} is a directory: give the path of a file")
        self._lock: IO[bytes] | None = _lock(self.path)
        self._lost: str | None = None
        #: Rows in ``seen`` (kept here: SQLite counts rows only by reading them all).
        self._seen_count = 0
        #: Transactions committed (each one fsync), for statistics and tests.
        self.commits = 0
        try:
            self._db: sqlite3.Connection | None = open_private_database(
                self.path, "the node mail store"
            )
            self._setup(self._db)
        except BaseException:
            self.close()
            raise

    def _setup(self, db: sqlite3.Connection) -> None:
        try:
            # The first read: a file that is not SQLite fails here, before anything is written.
            version = check_schema_version(db, self.path, _KIND, SCHEMA_VERSION)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            if version == 0:
                db.executescript(_SCHEMA)
            self._seen_count = db.execute("SELECT count(*) FROM seen").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"{self.path} is not a usable {_KIND} ({exc}); {_MOVE_ASIDE}") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ClosedError("the mail store is closed")
        if self._lost is not None:
            raise StoreError(f"{self.path}: {self._lost}; restart the node")
        return self._db

    @property
    def lost(self) -> bool:
        """Whether a write failed or was interrupted: the node must restart."""
        return self._lost is not None

    def lose(self, why: str) -> None:
        """Refuse every later write: the node's memory and this file may disagree (``why``)."""
        if self._lost is None:
            self._lost = why

    def load(self) -> tuple[list[HeldLetter], list[bytes]]:
        """The held letters and the newest :data:`SEEN_MAIL` seen ids, oldest first."""
        db = self._conn()
        try:
            held = db.execute(
                "SELECT key, blob, sender, reason, held_at FROM held ORDER BY rowid"
            ).fetchall()
            seen = db.execute(
                "SELECT mail_id FROM seen ORDER BY rowid DESC LIMIT ?", (SEEN_MAIL,)
            ).fetchall()
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: cannot read the mail store: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise CorruptStoreError(f"{self.path} is damaged ({exc}); {_MOVE_ASIDE}") from exc
        letters = []
        for key, blob, sender, reason, held_at in held:
            if not (
                isinstance(blob, bytes)
                and isinstance(key, bytes)
                and key == letter_key(blob)
                and isinstance(sender, str)
                and isinstance(reason, str)
                and isinstance(held_at, float)
            ):
                raise CorruptStoreError(
                    f"{self.path}: a held letter does not read back as one; {_MOVE_ASIDE}"
                )
            letters.append(HeldLetter(blob, sender, reason, held_at))
        ids = [row[0] for row in reversed(seen)]
        if not all(isinstance(mail_id, bytes) for mail_id in ids):
            raise CorruptStoreError(f"{self.path}: a seen mail id is not bytes; {_MOVE_ASIDE}")
        return letters, ids

    def apply(self, changes: Iterable[MailChange]) -> None:
        """Write ``changes`` in one transaction, durable when this returns (nothing to write:
        no transaction). Raises :class:`StoreError` if it cannot; on that or any other
        exception (KeyboardInterrupt, MemoryError) the transaction is rolled back and the
        store is lost, since the tunnels' memory already holds the changes."""
        pending = list(changes)
        if not pending:
            return
        db = self._conn()
        added = 0
        try:
            # Inside the try: the changes were already taken from the tunnels' book, so
            # failing to build their statements must lose the store as a failed write does.
            statements = [_statement(change) for change in pending]
            db.execute("BEGIN IMMEDIATE")
            for sql, args in statements:
                if sql == _MARK_SEEN:
                    # Never two rows for one id (memory records an id once; a repeat would
                    # be a bug): delete, then insert at the newest end.
                    added -= db.execute("DELETE FROM seen WHERE mail_id = ?", args[:1]).rowcount
                    added += 1
                db.execute(sql, args)
            excess = self._seen_count + added - SEEN_MAIL
            if excess > 0:  # forget the oldest, as memory does
                db.execute(
                    "DELETE FROM seen WHERE rowid IN "
                    "(SELECT rowid FROM seen ORDER BY rowid LIMIT ?)",
                    (excess,),
                )
                added -= excess
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            # The tunnels already changed their memory: it is ahead of the file from now on.
            self.lose(f"a write failed ({exc!r}): the node's mail state is no longer on disk")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: {self._lost}; restart the node") from exc
            raise
        self._seen_count += added
        self.commits += 1

    def check(self) -> None:
        """Raise :class:`StoreError` if an earlier write failed (the node must restart)."""
        self._conn()

    def close(self) -> None:
        """Close the file and release its lock; idempotent."""
        db, self._db = getattr(self, "_db", None), None
        if db is not None:
            db.close()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()


_MARK_SEEN = "INSERT INTO seen VALUES (?, ?)"


def _statement(change: MailChange) -> tuple[str, tuple[object, ...]]:
    if isinstance(change, KeepLetter):
        letter = change.letter
        return (
            "INSERT OR REPLACE INTO held VALUES (?, ?, ?, ?, ?)",
            (change.key, letter.blob, letter.sender, letter.reason, float(letter.held_at)),
        )
    if isinstance(change, DropLetter):
        return "DELETE FROM held WHERE key = ?", (change.key,)
    if isinstance(change, Rewait):
        return "UPDATE held SET reason = ? WHERE key = ?", (change.reason, change.key)
    if isinstance(change, MarkSeen):
        return _MARK_SEEN, (change.mail_id, change.sealed_at)
    raise TypeError(f"not a mail change: {change!r}")


def _lock(path: Path) -> IO[bytes]:
    try:
        # Created 0600 before it is opened to be locked: a lock file readable by others
        # would say which node keeps its mail where (the directory may be shared).
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path.parent / f"{path.name}.lock", os.O_WRONLY | os.O_CREAT, 0o600))
        return lock_data_directory(path.parent, lock_file=f"{path.name}.lock", owner="node")
    except UsageError as exc:
        raise UsageError(
            f"mail store {path} is in use by another node (it holds {path.name}.lock): give "
            "each node its own mail_store file"
        ) from exc
    except OSError as exc:  # a directory we may not create or write in
        raise UsageError(f"cannot lock the mail store {path}: {exc}") from exc
