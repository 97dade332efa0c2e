"""Durable store-and-forward mailboxes: sealed messages wait in SQLite for offline recipients.

The broker stores a message with :meth:`Mailbox.put` when its recipient is offline, hands it
over with :meth:`Mailbox.pending` when the recipient connects, and deletes it only on
:meth:`Mailbox.ack`. Blobs are opaque: senders seal them end to end, the broker never opens
them, and they never appear in a repr or an error message.

Durability: the database runs in WAL mode with ``synchronous=FULL`` and every write is its own
committed transaction, so once ``put`` returns, the message survives the broker being killed
(SIGKILL), and a power cut as far as the disk honours fsync. Each commit costs an fsync;
:meth:`Mailbox.put_many` stores a batch with one.

Bounds: per recipient a message count and a byte total, the same per sender (over all the
recipients it wrote to, so one sender cannot take the space everyone shares by mailing many
agent ids), and a byte total over all recipients (blob bytes only, not SQLite overhead).
Hitting one raises :class:`MailboxFullError` (``reason`` ``sender_quota`` for a sender's
bound) and stores nothing. Triggers keep running totals, so a bound check costs three row
reads, not a scan.

Threads: meant for one owning thread (the broker loop) plus readers such as a stats thread;
every call holds an internal lock, so that is safe. Do not use an instance across ``fork``.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from zmqcomm.errors import ClosedError, MailboxFullError, UsageError
from zmqcomm.private_db import check_schema_version, open_private_database

#: Bump when the schema changes; a database with a higher version is refused, not guessed at.
#: Version 2 added the per-sender totals; a version 1 file is upgraded when it is opened.
SCHEMA_VERSION = 2
MAX_ID_LENGTH = 64
_MAX_INTEGER = 2**63 - 1  # SQLite's INTEGER; larger values would raise OverflowError

# Per-sender running totals (version 2). The INSERT counts what a version 1 file holds; it
# adds nothing once the triggers keep the totals.
_SENDERS = """
CREATE TABLE IF NOT EXISTS outbox (
    sender TEXT PRIMARY KEY, messages INTEGER NOT NULL, bytes INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO outbox
    SELECT sender, count(*), sum(length(blob)) FROM message GROUP BY sender;
CREATE TRIGGER IF NOT EXISTS outbox_added AFTER INSERT ON message BEGIN
    INSERT INTO outbox VALUES (NEW.sender, 1, length(NEW.blob))
        ON CONFLICT (sender) DO UPDATE
        SET messages = messages + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS outbox_removed AFTER DELETE ON message BEGIN
    UPDATE outbox SET messages = messages - 1, bytes = bytes - length(OLD.blob)
        WHERE sender = OLD.sender;
    DELETE FROM outbox WHERE sender = OLD.sender AND messages = 0;
END;
"""
# Idempotent (IF NOT EXISTS, OR IGNORE), so two processes creating the file at once both succeed.
_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an acked id is never reused
    recipient TEXT NOT NULL, sender TEXT NOT NULL, blob BLOB NOT NULL, stored_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS message_by_recipient ON message (recipient, id);
CREATE INDEX IF NOT EXISTS message_by_age ON message (stored_at);
CREATE TABLE IF NOT EXISTS mailbox (
    recipient TEXT PRIMARY KEY, messages INTEGER NOT NULL, bytes INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (
    one INTEGER PRIMARY KEY CHECK (one = 1), messages INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS message_added AFTER INSERT ON message BEGIN
    INSERT INTO mailbox VALUES (NEW.recipient, 1, length(NEW.blob))
        ON CONFLICT (recipient) DO UPDATE
        SET messages = messages + 1, bytes = bytes + excluded.bytes;
    UPDATE totals SET messages = messages + 1, bytes = bytes + length(NEW.blob);
END;
CREATE TRIGGER IF NOT EXISTS message_removed AFTER DELETE ON message BEGIN
    UPDATE mailbox SET messages = messages - 1, bytes = bytes - length(OLD.blob)
        WHERE recipient = OLD.recipient;
    DELETE FROM mailbox WHERE recipient = OLD.recipient AND messages = 0;
    UPDATE totals SET messages = messages - 1, bytes = bytes - length(OLD.blob);
END;
{_SENDERS}
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""
_UPGRADE_FROM_1 = f"BEGIN IMMEDIATE;{_SENDERS}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;"
_INSERT = "INSERT INTO message (recipient, sender, blob, stored_at) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stored message. ``id`` is unique and increasing within a mailbox database."""

    id: int
    recipient: str
    sender: str
    blob: bytes = field(repr=False)  # sealed payload: never in logs or tracebacks
    stored_at: float


def _check_agent(what: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        shown = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
        raise UsageError(f"{what} must be an agent id of 1-{MAX_ID_LENGTH} characters, got {shown}")
    return value


def _check_time(what: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{what} must be a finite number of seconds, got {value!r}")
    return float(value)


def _check_count(what: str, value: int, minimum: int) -> int:
    if type(value) is not int or not minimum <= value <= _MAX_INTEGER:  # bool is not a count
        raise UsageError(f"{what} must be an integer from {minimum} to 2**63-1, got {value!r}")
    return value


class Mailbox:
    """Bounded, durable mailboxes for every recipient, in one SQLite file at ``path``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_messages_per_agent: int = 10_000,
        max_bytes_per_agent: int = 64 * 1024 * 1024,
        max_blob_size: int = 1024 * 1024,
        max_total_bytes: int = 1024**3,
        max_messages_per_sender: int = 10_000,
        max_bytes_per_sender: int = 64 * 1024 * 1024,
    ) -> None:
        self.path = Path(path)
        self.max_messages_per_agent = _check_count(
            "max_messages_per_agent", max_messages_per_agent, 1
        )
        self.max_bytes_per_agent = _check_count("max_bytes_per_agent", max_bytes_per_agent, 1)
        self.max_blob_size = _check_count("max_blob_size", max_blob_size, 1)
        self.max_total_bytes = _check_count("max_total_bytes", max_total_bytes, 1)
        self.max_messages_per_sender = _check_count(
            "max_messages_per_sender", max_messages_per_sender, 1
        )
        self.max_bytes_per_sender = _check_count("max_bytes_per_sender", max_bytes_per_sender, 1)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = open_private_database(self.path, "mailbox database")
        try:
            self._setup(self._db)
        except BaseException:
            self.close()
            raise

    def _setup(self, db: sqlite3.Connection) -> None:
        try:
            # The first read of the file: a non-SQLite file fails here, before anything is written.
            version = check_schema_version(db, self.path, "zmqcomm mailbox", SCHEMA_VERSION)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")  # fsync the WAL on every commit
            if version == 0:
                db.executescript(_SCHEMA)  # one transaction; __init__'s close() undoes a failure
            elif version == 1:
                db.executescript(_UPGRADE_FROM_1)
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"{self.path} is not a usable mailbox database: {exc}") from exc

    @contextmanager
    def _connection(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise ClosedError("the mailbox is closed")
            db = self._db
            if not write:
                yield db
                return
            # IMMEDIATE takes the write lock up front, so the bound check and insert are atomic.
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if "disk is full" in str(exc):  # SQLITE_FULL: not a bound, but the same answer
                    raise MailboxFullError(f"mailbox database is out of space: {exc}") from exc
                raise
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")

    def put(self, recipient: str, sender: str, blob: bytes, *, now: float) -> int:
        """Store one message; durable when this returns. Returns its id."""
        return self.put_many([(recipient, sender, blob)], now=now)[0]

    def put_many(self, items: Iterable[tuple[str, str, bytes]], *, now: float) -> list[int]:
        """Store a batch in one transaction: all of it, or nothing if any bound would be hit."""
        stored_at = _check_time("now", now)
        batch = [self._check_item(*item) for item in items]
        if not batch:
            return []
        ids: list[int] = []
        with self._connection(write=True) as db:
            total = db.execute("SELECT bytes FROM totals").fetchone()[0]
            seen: dict[str, tuple[int, int]] = {}
            sent: dict[str, tuple[int, int]] = {}
            for recipient, sender, blob in batch:
                if sender not in sent:
                    query = "SELECT messages, bytes FROM outbox WHERE sender = ?"
                    sent[sender] = db.execute(query, (sender,)).fetchone() or (0, 0)
                messages, size = sent[sender]
                self._check_sender(sender, messages, size, len(blob))
                sent[sender] = (messages + 1, size + len(blob))
                if recipient not in seen:
                    query = "SELECT messages, bytes FROM mailbox WHERE recipient = ?"
                    seen[recipient] = db.execute(query, (recipient,)).fetchone() or (0, 0)
                messages, size = seen[recipient]
                total = self._check_bounds(recipient, messages, size, total, len(blob))
                seen[recipient] = (messages + 1, size + len(blob))
            for recipient, sender, blob in batch:
                cursor = db.execute(_INSERT, (recipient, sender, blob, stored_at))
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
        return ids

    def _check_item(self, recipient: str, sender: str, blob: bytes) -> tuple[str, str, bytes]:
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise UsageError(f"a message blob must be bytes, got {type(blob).__name__}")
        blob = bytes(blob)
        if len(blob) > self.max_blob_size:
            raise UsageError(
                f"message of {len(blob)} bytes exceeds the mailbox limit of "
                f"{self.max_blob_size} bytes per message"
            )
        return _check_agent("recipient", recipient), _check_agent("sender", sender), blob

    def _check_sender(self, sender: str, messages: int, size: int, add: int) -> None:
        if messages >= self.max_messages_per_sender:
            bound = f"per-sender message count limit of {self.max_messages_per_sender}"
        elif size + add > self.max_bytes_per_sender:
            bound = f"per-sender byte limit of {self.max_bytes_per_sender} ({size} stored)"
        else:
            return
        raise MailboxFullError(
            f"mail from {sender} waiting to be collected is at its quota: a {add}-byte "
            f"message would exceed the {bound}",
            reason="sender_quota",
        )

    def _check_bounds(self, recipient: str, messages: int, size: int, total: int, add: int) -> int:
        if messages >= self.max_messages_per_agent:
            bound = f"per-agent message count limit of {self.max_messages_per_agent}"
        elif size + add > self.max_bytes_per_agent:
            bound = f"per-agent byte limit of {self.max_bytes_per_agent} ({size} stored)"
        elif total + add > self.max_total_bytes:
            bound = f"total byte limit of {self.max_total_bytes} for all mailboxes ({total} stored)"
        else:
            return total + add
        raise MailboxFullError(
            f"mailbox for {recipient} is full: a {add}-byte message would exceed the {bound}"
        )

    def pending(self, recipient: str, *, limit: int = 100, after: int = 0) -> list[StoredMessage]:
        """Up to ``limit`` messages for ``recipient`` with ``id > after``, oldest first."""
        _check_agent("recipient", recipient)
        _check_count("limit", limit, 1)
        _check_count("after", after, 0)
        with self._connection() as db:
            rows = db.execute(
                "SELECT id, recipient, sender, blob, stored_at FROM message"
                " WHERE recipient = ? AND id > ? ORDER BY id LIMIT ?",
                (recipient, after, limit),
            ).fetchall()
        return [StoredMessage(*row) for row in rows]

    def stored_ids(self, recipient: str, ids: Iterable[int]) -> set[int]:
        """Those of ``ids`` still stored for ``recipient`` (not acknowledged nor expired)."""
        recipient = _check_agent("recipient", recipient)
        wanted = [_check_count("id", n, 0) for n in ids]
        if not wanted:
            return set()
        marks = ",".join("?" * len(wanted))
        query = f"SELECT id FROM message WHERE recipient = ? AND id IN ({marks})"
        with self._connection() as db:
            return {row[0] for row in db.execute(query, (recipient, *wanted))}

    def ack(self, recipient: str, message_id: int) -> bool:
        """Delete message ``message_id`` if it is ``recipient``'s; whether anything was deleted."""
        _check_agent("recipient", recipient)
        if type(message_id) is not int:
            raise UsageError(f"message_id must be an integer, got {type(message_id).__name__}")
        if not 0 < message_id <= _MAX_INTEGER:  # ids come from peers: a bad one is just unknown
            return False
        with self._connection(write=True) as db:
            query = "DELETE FROM message WHERE id = ? AND recipient = ?"
            return db.execute(query, (message_id, recipient)).rowcount == 1

    def count(self, recipient: str | None = None) -> int:
        """Messages stored for ``recipient``, or for everyone."""
        return self._counter("messages", recipient)

    def size(self, recipient: str | None = None) -> int:
        """Blob bytes stored for ``recipient``, or for everyone."""
        return self._counter("bytes", recipient)

    def _counter(self, column: str, recipient: str | None) -> int:
        where = "totals" if recipient is None else "mailbox WHERE recipient = ?"
        args = () if recipient is None else (_check_agent("recipient", recipient),)
        with self._connection() as db:
            row = db.execute(f"SELECT {column} FROM {where}", args).fetchone()
        return int(row[0]) if row else 0

    def expire(self, *, now: float, max_age: float) -> int:
        """Delete messages stored more than ``max_age`` seconds before ``now``; how many."""
        if _check_time("max_age", max_age) < 0:
            raise UsageError(f"max_age must not be negative, got {max_age!r}")
        cutoff = _check_time("now", now) - max_age
        with self._connection(write=True) as db:
            return db.execute("DELETE FROM message WHERE stored_at < ?", (cutoff,)).rowcount

    def recipients(self) -> list[str]:
        """The recipients that have messages stored."""
        with self._connection() as db:
            return [row[0] for row in db.execute("SELECT recipient FROM mailbox")]

    def discard(self, recipient: str) -> int:
        """Delete every message stored for ``recipient``; how many."""
        recipient = _check_agent("recipient", recipient)
        with self._connection(write=True) as db:
            return db.execute("DELETE FROM message WHERE recipient = ?", (recipient,)).rowcount

    def statistics(self) -> dict[str, int]:
        """``messages``, ``bytes`` and ``recipients`` currently stored."""
        with self._connection() as db:
            messages, size = db.execute("SELECT messages, bytes FROM totals").fetchone()
            recipients = db.execute("SELECT count(*) FROM mailbox").fetchone()[0]
        return {"messages": messages, "bytes": size, "recipients": recipients}

    def close(self) -> None:
        """Close the database; idempotent. Later calls raise :class:`ClosedError`."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
