"""The broker's store-and-forward mailboxes: round trips, bounds, persistence, crash safety."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmqcomm.broker.mailbox import MAX_ID_LENGTH, SCHEMA_VERSION, Mailbox, StoredMessage
from zmqcomm.errors import ClosedError, MailboxFullError, QueueFullError, UsageError

ROOT = Path(__file__).resolve().parents[2]
ALICE = "a" * 26
BOB = "b" * 26
CAROL = "c" * 26


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Mailbox]:
    mailbox = Mailbox(tmp_path / "mail.db")
    yield mailbox
    mailbox.close()


def _ids(messages: list[StoredMessage]) -> list[int]:
    return [m.id for m in messages]


# -- round trip -------------------------------------------------------------------------------


def test_put_pending_ack_round_trip(box: Mailbox) -> None:
    first = box.put(ALICE, BOB, b"one", now=10.0)
    second = box.put(ALICE, CAROL, b"two", now=11.0)
    other = box.put(BOB, ALICE, b"for bob", now=12.0)
    assert first < second < other

    pending = box.pending(ALICE)
    assert [(m.sender, m.blob, m.stored_at) for m in pending] == [
        (BOB, b"one", 10.0),
        (CAROL, b"two", 11.0),
    ]
    assert all(m.recipient == ALICE for m in pending)
    assert _ids(box.pending(BOB)) == [other]

    assert box.ack(ALICE, first) is True
    assert _ids(box.pending(ALICE)) == [second]
    assert box.ack(ALICE, first) is False  # already gone
    assert box.ack(ALICE, 10_000) is False  # never existed
    for hostile in (0, -1, 2**63, 2**64 - 1):  # a peer's MAIL_ACK may carry any integer
        assert box.ack(ALICE, hostile) is False
    assert box.count() == 2


def test_ack_never_deletes_another_agents_mail(box: Mailbox) -> None:
    for_bob = box.put(BOB, ALICE, b"private", now=1.0)
    assert box.ack(ALICE, for_bob) is False
    assert box.count(BOB) == 1
    assert box.pending(BOB)[0].blob == b"private"
    assert box.ack(BOB, for_bob) is True


def test_pending_is_oldest_first_and_pages_with_after(box: Mailbox) -> None:
    ids = box.put_many([(ALICE, BOB, bytes([i])) for i in range(7)], now=1.0)
    box.put(BOB, ALICE, b"interleaved", now=1.0)
    ids += [box.put(ALICE, BOB, b"late", now=2.0)]
    assert ids == sorted(ids)

    seen: list[int] = []
    after = 0
    while page := box.pending(ALICE, limit=3, after=after):
        assert len(page) <= 3
        seen += _ids(page)
        after = page[-1].id
    assert seen == ids
    assert box.pending(ALICE, after=ids[-1]) == []


def test_ids_are_never_reused_after_ack(box: Mailbox) -> None:
    newest = box.put(ALICE, BOB, b"x", now=1.0)
    assert box.ack(ALICE, newest)
    assert box.put(ALICE, BOB, b"y", now=1.0) > newest


def test_count_size_and_statistics(box: Mailbox) -> None:
    assert box.statistics() == {"messages": 0, "bytes": 0, "recipients": 0}
    box.put_many([(ALICE, BOB, b"12345"), (ALICE, BOB, b"678"), (BOB, ALICE, b"9")], now=1.0)
    assert (box.count(ALICE), box.size(ALICE), box.count(BOB), box.size(BOB)) == (2, 8, 1, 1)
    assert (box.count(CAROL), box.size(CAROL)) == (0, 0)
    assert (box.count(), box.size()) == (3, 9)
    assert box.statistics() == {"messages": 3, "bytes": 9, "recipients": 2}
    for message in box.pending(BOB):
        box.ack(BOB, message.id)
    assert box.statistics() == {"messages": 2, "bytes": 8, "recipients": 1}


def test_empty_blobs_and_empty_batches(box: Mailbox) -> None:
    assert box.put_many([], now=1.0) == []
    message_id = box.put(ALICE, BOB, b"", now=1.0)
    assert box.pending(ALICE)[0].blob == b""
    assert box.ack(ALICE, message_id)
    assert box.statistics() == {"messages": 0, "bytes": 0, "recipients": 0}


def test_repr_never_shows_the_blob(box: Mailbox) -> None:
    box.put(ALICE, BOB, b"TOP-SECRET-SEALED-BYTES", now=1.0)
    (message,) = box.pending(ALICE)
    assert "TOP-SECRET" not in repr(message)
    assert "blob" not in repr(message)
    assert ALICE in repr(message)


# -- bounds -----------------------------------------------------------------------------------


def _full(box: Mailbox, recipient: str, blob: bytes, match: str) -> None:
    before = box.statistics()
    with pytest.raises(MailboxFullError, match=match) as caught:
        box.put(recipient, BOB, blob, now=5.0)
    assert recipient in str(caught.value)
    assert caught.value.reason == "mailbox_full"
    assert isinstance(caught.value, QueueFullError)
    assert box.statistics() == before  # nothing stored


def test_message_count_bound(tmp_path: Path) -> None:
    with Mailbox(tmp_path / "m.db", max_messages_per_agent=3) as box:
        box.put_many([(ALICE, BOB, b"x")] * 3, now=1.0)
        _full(box, ALICE, b"x", "message count limit of 3")
        box.put(BOB, ALICE, b"other agents still get mail", now=1.0)
        box.ack(ALICE, box.pending(ALICE)[0].id)
        box.put(ALICE, BOB, b"room again", now=1.0)


def test_bytes_per_agent_bound(tmp_path: Path) -> None:
    with Mailbox(tmp_path / "m.db", max_bytes_per_agent=100) as box:
        box.put(ALICE, BOB, b"x" * 60, now=1.0)
        _full(box, ALICE, b"x" * 41, r"per-agent byte limit of 100 \(60 stored\)")
        box.put(ALICE, BOB, b"x" * 40, now=1.0)  # exactly at the bound is fine
        box.put(BOB, ALICE, b"x" * 100, now=1.0)


def test_total_bytes_bound(tmp_path: Path) -> None:
    with Mailbox(tmp_path / "m.db", max_total_bytes=150) as box:
        box.put(ALICE, BOB, b"x" * 100, now=1.0)
        _full(box, BOB, b"x" * 51, "total byte limit of 150")
        box.put(BOB, ALICE, b"x" * 50, now=1.0)


def test_per_sender_bounds_count_mail_to_every_recipient(tmp_path: Path) -> None:
    dave = "d" * 26
    with Mailbox(tmp_path / "m.db", max_messages_per_sender=2) as box:
        box.put_many([(ALICE, BOB, b"x"), (CAROL, BOB, b"x")], now=1.0)
        with pytest.raises(MailboxFullError, match="per-sender message count limit") as caught:
            box.put(dave, BOB, b"x", now=1.0)  # a new recipient, but the same sender
        assert caught.value.reason == "sender_quota"
        assert BOB in str(caught.value) and box.count() == 2
        box.put(dave, ALICE, b"other senders have their own quota", now=1.0)
        box.ack(ALICE, box.pending(ALICE)[0].id)
        box.put(dave, BOB, b"room again once collected", now=1.0)
    with Mailbox(tmp_path / "b.db", max_bytes_per_sender=100) as box:
        box.put(ALICE, BOB, b"x" * 60, now=1.0)
        with pytest.raises(MailboxFullError, match=r"per-sender byte limit of 100 \(60 stored\)"):
            box.put(CAROL, BOB, b"x" * 41, now=1.0)
        box.put(CAROL, BOB, b"x" * 40, now=1.0)


def test_a_version_1_file_is_upgraded_with_its_senders_counted(tmp_path: Path) -> None:
    path = tmp_path / "mail.db"
    with Mailbox(path) as box:
        box.put_many([(ALICE, BOB, b"x"), (CAROL, BOB, b"x"), (BOB, ALICE, b"x")], now=1.0)
    with sqlite3.connect(path) as db:  # what version 1 wrote: no per-sender totals
        db.executescript(
            "DROP TRIGGER outbox_added; DROP TRIGGER outbox_removed; DROP TABLE outbox;"
            "PRAGMA user_version = 1;"
        )
    db.close()
    with Mailbox(path, max_messages_per_sender=2) as box:
        with pytest.raises(MailboxFullError, match="per-sender"):
            box.put("d" * 26, BOB, b"x", now=2.0)
        box.put("d" * 26, ALICE, b"x", now=2.0)
        assert box._db is not None
        assert box._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


def test_blob_size_bound_is_a_usage_error(tmp_path: Path) -> None:
    with Mailbox(tmp_path / "m.db", max_blob_size=10) as box:
        with pytest.raises(UsageError, match=r"11 bytes exceeds .* 10 bytes per message"):
            box.put(ALICE, BOB, b"x" * 11, now=1.0)
        assert box.count() == 0
        box.put(ALICE, BOB, b"x" * 10, now=1.0)


def test_a_full_disk_is_a_full_mailbox(box: Mailbox) -> None:
    box.put(ALICE, BOB, b"x", now=1.0)
    assert box._db is not None
    box._db.execute("PRAGMA max_page_count = 20")  # SQLITE_FULL without filling a real disk
    with pytest.raises(MailboxFullError, match="out of space"):
        box.put(ALICE, BOB, b"y" * 200_000, now=1.0)
    assert box.statistics() == {"messages": 1, "bytes": 1, "recipients": 1}
    box.put(ALICE, BOB, b"small still fits", now=1.0)


def test_put_many_is_all_or_nothing(tmp_path: Path) -> None:
    with Mailbox(tmp_path / "m.db", max_messages_per_agent=2) as box:
        box.put(ALICE, BOB, b"already here", now=1.0)
        # Each item fits alone; the batch puts three in Alice's mailbox.
        with pytest.raises(MailboxFullError, match=ALICE):
            box.put_many([(BOB, ALICE, b"1"), (ALICE, BOB, b"2"), (ALICE, BOB, b"3")], now=2.0)
        assert box.statistics() == {"messages": 1, "bytes": 12, "recipients": 1}
        # An invalid item is refused before anything is written.
        with pytest.raises(UsageError):
            box.put_many([(BOB, ALICE, b"1"), ("", BOB, b"2")], now=2.0)
        assert box.count() == 1
        ids = box.put_many([(BOB, ALICE, b"1"), (ALICE, BOB, b"2"), (BOB, ALICE, b"3")], now=2.0)
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert [m.blob for m in box.pending(BOB)] == [b"1", b"3"]


@pytest.mark.parametrize("recipient", ["", "x" * (MAX_ID_LENGTH + 1), None, b"bytes-id"])
def test_bad_agent_ids_are_refused(box: Mailbox, recipient: object) -> None:
    for call in (
        lambda: box.put(recipient, BOB, b"x", now=1.0),  # type: ignore[arg-type]
        lambda: box.put(BOB, recipient, b"x", now=1.0),  # type: ignore[arg-type]
        lambda: box.pending(recipient),  # type: ignore[arg-type]
        lambda: box.ack(recipient, 1),  # type: ignore[arg-type]
        lambda: box.size(recipient or ""),  # type: ignore[arg-type]  (None means "all")
    ):
        with pytest.raises(UsageError, match="agent id"):
            call()
    assert box.count() == 0
    box.put("x" * MAX_ID_LENGTH, BOB, b"x", now=1.0)


def test_bad_arguments_are_refused(tmp_path: Path, box: Mailbox) -> None:
    with pytest.raises(UsageError, match="max_messages_per_agent"):
        Mailbox(tmp_path / "other.db", max_messages_per_agent=0)
    with pytest.raises(UsageError, match="bytes"):
        box.put(ALICE, BOB, "text", now=1.0)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="now"):
        box.put(ALICE, BOB, b"x", now=float("nan"))
    with pytest.raises(UsageError, match="limit"):
        box.pending(ALICE, limit=0)
    with pytest.raises(UsageError, match="after"):
        box.pending(ALICE, after=2**63)
    with pytest.raises(UsageError, match="message_id"):
        box.ack(ALICE, "1")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="max_age"):
        box.expire(now=1.0, max_age=-1.0)
    assert box.count() == 0


# -- expiry -----------------------------------------------------------------------------------


def test_expire_removes_only_old_messages(box: Mailbox) -> None:
    box.put_many([(ALICE, BOB, b"old"), (BOB, ALICE, b"old")], now=100.0)
    kept = box.put(ALICE, BOB, b"new", now=150.0)
    assert box.expire(now=200.0, max_age=100.0) == 0  # exactly max_age old: kept
    assert box.expire(now=200.0, max_age=60.0) == 2
    assert _ids(box.pending(ALICE)) == [kept]
    assert box.pending(BOB) == []
    assert box.statistics() == {"messages": 1, "bytes": 3, "recipients": 1}


# -- persistence ------------------------------------------------------------------------------


def test_close_and_reopen_keeps_messages(tmp_path: Path) -> None:
    path = tmp_path / "data" / "sub" / "mail.db"
    with Mailbox(path) as box:
        ids = box.put_many([(ALICE, BOB, b"one"), (BOB, ALICE, b"two")], now=3.0)
        box.put(ALICE, CAROL, b"three", now=4.0)
        box.ack(ALICE, ids[0])
    with Mailbox(path) as box:
        assert [(m.sender, m.blob) for m in box.pending(ALICE)] == [(CAROL, b"three")]
        assert [m.blob for m in box.pending(BOB)] == [b"two"]
        assert box.statistics() == {"messages": 2, "bytes": 8, "recipients": 2}
        assert box.put(ALICE, BOB, b"four", now=5.0) > max(ids)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_new_directory_and_file_are_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "mail.db"
    with Mailbox(path) as box:
        box.put(ALICE, BOB, b"x", now=1.0)
        assert path.parent.stat().st_mode & 0o077 == 0
        for name in ("mail.db", "mail.db-wal"):
            assert (path.parent / name).stat().st_mode & 0o077 == 0, name


def test_database_is_in_wal_mode_with_full_sync(box: Mailbox) -> None:
    # The durability promise rests on these two settings: pin them.
    db = box._db
    assert db is not None
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_closed_mailbox_refuses_calls(tmp_path: Path) -> None:
    box = Mailbox(tmp_path / "m.db")
    box.close()
    box.close()  # idempotent
    with pytest.raises(ClosedError):
        box.put(ALICE, BOB, b"x", now=1.0)
    with pytest.raises(ClosedError):
        box.statistics()


@pytest.mark.parametrize("content", [b"not a database at all, " * 100, b"garbage"])
def test_garbage_file_is_refused_and_left_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "mail.db"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="not a usable mailbox database"):
        Mailbox(path)
    assert path.read_bytes() == content


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mail.db"
    Mailbox(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(UsageError, match=f"schema version {SCHEMA_VERSION + 1}.*newer"):
        Mailbox(path)


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE message (whatever TEXT)")
    db.close()
    with pytest.raises(UsageError, match="not a zmqcomm mailbox"):
        Mailbox(path)


def test_stats_thread_reads_while_the_owner_writes(box: Mailbox) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                stats = box.statistics()
                assert stats["bytes"] == stats["messages"]
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20):
            box.put_many([(ALICE, BOB, b"x"), (BOB, ALICE, b"y")], now=1.0)
    finally:
        done.set()
        reader.join(timeout=10)
    assert not errors
    assert box.count() == 40


# -- crash safety -----------------------------------------------------------------------------

_WRITER = """
import sys
from zmqcomm.broker.mailbox import Mailbox

box = Mailbox(sys.argv[1])
i = 0
while True:
    message_id = box.put("a" * 26, "b" * 26, b"blob-%d-" % i + bytes(range(256)) * (i % 5), now=i)
    print(message_id, i, flush=True)
    i += 1
"""


def _blob(i: int) -> bytes:
    return b"blob-%d-" % i + bytes(range(256)) * (i % 5)


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_sigkill_loses_no_accepted_message(tmp_path: Path) -> None:
    path = tmp_path / "mail.db"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    # If the child hangs or dies early, this kill ends readline() with EOF: never blocks forever.
    watchdog = threading.Timer(30.0, child.kill)
    watchdog.start()
    accepted: dict[int, int] = {}
    try:
        assert child.stdout is not None
        while len(accepted) < 50 and (line := child.stdout.readline()):
            message_id, i = map(int, line.split())
            accepted[message_id] = i
        child.kill()  # SIGKILL, in the middle of some later put()
    finally:
        watchdog.cancel()
        child.kill()
        _, stderr = child.communicate(timeout=10)
    assert len(accepted) == 50, stderr.decode(errors="replace")
    assert child.returncode == -9

    with Mailbox(path) as box:
        stored = {m.id: m for m in box.pending(ALICE, limit=10_000)}
        assert box.count(ALICE) == len(stored)  # the running totals survived the crash too
    for message_id, i in accepted.items():
        assert message_id in stored, f"accepted message {message_id} was lost"
        assert stored[message_id].blob == _blob(i)
        assert stored[message_id].stored_at == float(i)
