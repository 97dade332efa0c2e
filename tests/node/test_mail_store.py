"""The node's mail store: what the file keeps across a reopen, and what it refuses.

The tunnel core is driven with fake time as in test_held_mail.py; the store is a real SQLite
file in ``tmp_path``. Node-level tests (a broker, restarts) are in test_node_mail_store.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from zmqcomm.crypto.sealed import seal
from zmqcomm.errors import CorruptStoreError, StoreError, UsageError
from zmqcomm.node import mail_book, mail_store
from zmqcomm.node.held_mail import RETRY_FIRST, MarkSeen
from zmqcomm.node.mail_room import MAIL_MAX_AGE
from zmqcomm.node.mail_store import SCHEMA_VERSION, MailStore
from zmqcomm.node.tunnel import Tunnels
from zmqcomm.wire import MessageType, WireCodec

from .test_held_mail import NOW, Pair, acked, make_pair, payloads


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_pair(tmp_path, record_mail=True)


def test_the_store_keeps_held_letters_and_seen_ids_across_a_reopen(
    pair: Pair, tmp_path: Path
) -> None:
    path = tmp_path / "state" / "mail.sqlite3"
    store = MailStore(path)
    first, second = pair.mail("first"), pair.mail("second")
    pair.deliver(first)
    pair.deliver(second)
    pair.trust_alice()
    opened = pair.reader.mailroom.retry_held(now=NOW + RETRY_FIRST)
    assert sorted(payloads(opened)) == ["first", "second"]
    pair.dave_trust.remove(pair.alice.agent_id)
    third = pair.mail("third")
    pair.deliver(third)
    store.apply(pair.reader.mailroom.take_changes())
    store.close()
    # Private: the file, its lock and the directory made for it.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((path.parent / "mail.sqlite3.lock").stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    store = MailStore(path)
    letters, seen = store.load()
    assert [letter.blob for letter in letters] == [third]
    assert len(seen) == 2
    store.close()


def test_a_restarted_reader_holds_again_and_refuses_what_it_delivered(
    pair: Pair, tmp_path: Path
) -> None:
    path = tmp_path / "mail.sqlite3"
    store = MailStore(path)
    pair.trust_alice()
    delivered = pair.mail("delivered before the restart")
    assert payloads(pair.deliver(delivered)[1]) == ["delivered before the restart"]
    pair.dave_trust.remove(pair.alice.agent_id)
    held = pair.mail("held across the restart")
    pair.deliver(held)
    store.apply(pair.reader.mailroom.take_changes())
    store.close()

    # The same dave, restarted: new tunnels, nothing in memory.
    reader = Tunnels(
        identity=pair.dave,
        trust=pair.dave_trust,
        random_bytes=os.urandom,
        now=NOW,
        audit=pair.audit,
        record_mail=True,
    )
    reborn = dataclasses.replace(pair, reader=reader)
    store = MailStore(path)
    letters, seen = store.load()
    reader.mailroom.restore(letters, seen, now=NOW)
    assert len(reader.mailroom.held) == 1 and reader.mailroom.held.restored == 1
    assert reader.mailroom.take_changes() == []  # nothing to write back
    reborn.trust_alice()
    # The replay is refused by its id, as before the restart; the held mail opens once.
    out, incoming = reborn.deliver(delivered)
    assert acked(out) and incoming == [] and reader.mailroom.repeats == 1
    assert payloads(reader.mailroom.retry_held(now=NOW + RETRY_FIRST)) == [
        "held across the restart"
    ]
    store.close()


def test_one_node_per_file(tmp_path: Path) -> None:
    path = tmp_path / "mail.sqlite3"
    store = MailStore(path)
    with pytest.raises(UsageError, match=r"in use by another node.*its own mail_store"):
        MailStore(path)
    store.close()
    MailStore(path).close()  # released with the first


def test_a_file_that_is_not_a_mail_store_is_refused_with_what_to_do(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not an SQLite database, not even close" * 40)
    with pytest.raises(UsageError, match=r"not a usable zmqcomm node mail store.*move the file"):
        MailStore(garbage)
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(UsageError, match="written by a newer zmqcomm"):
        MailStore(newer)
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE something (x)")
    with pytest.raises(UsageError, match="not a zmqcomm node mail store"):
        MailStore(other)
    with pytest.raises(UsageError, match="is a directory"):
        MailStore(tmp_path)
    with pytest.raises(UsageError, match="cannot lock the mail store"):
        MailStore(garbage / "mail.sqlite3")  # under a file
    # Refused files leave their lock free.
    MailStore(tmp_path / "fresh.sqlite3").close()


def test_a_damaged_row_is_a_corrupt_store(pair: Pair, tmp_path: Path) -> None:
    path = tmp_path / "mail.sqlite3"
    store = MailStore(path)
    pair.deliver(pair.mail("held"))
    store.apply(pair.reader.mailroom.take_changes())
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE held SET blob = x'00'")  # no longer the blob its key names
    store = MailStore(path)
    with pytest.raises(CorruptStoreError, match="move the file aside"):
        store.load()
    store.close()


def test_a_failed_write_raises_and_every_later_write_does_too(pair: Pair, tmp_path: Path) -> None:
    store = MailStore(tmp_path / "mail.sqlite3")
    assert store._db is not None
    store._db.execute("PRAGMA query_only = ON")  # any write now fails, as on a full disk
    pair.deliver(pair.mail("held"))
    with pytest.raises(StoreError, match="restart the node"):
        store.apply(pair.reader.mailroom.take_changes())
    store._db.execute("PRAGMA query_only = OFF")
    with pytest.raises(StoreError, match="restart the node"):
        store.check()
    store.close()


def restarted(pair: Pair, path: Path, *, now: float) -> tuple[Pair, MailStore]:
    """Dave started again on the store at ``path``: new tunnels, memory from the file."""
    reader = Tunnels(
        identity=pair.dave,
        trust=pair.dave_trust,
        random_bytes=os.urandom,
        now=now,
        audit=pair.audit,
        record_mail=True,
    )
    store = MailStore(path)
    reader.mailroom.restore(*store.load(), now=now)
    return dataclasses.replace(pair, reader=reader), store


def test_a_clock_that_ran_ahead_for_a_while_does_not_let_a_replay_through(
    pair: Pair, tmp_path: Path
) -> None:
    """Seen ids are forgotten by count, as in memory, never by the wall clock: a start with
    the clock 2 h ahead must not forget mail that opens again once the clock is right."""
    path = tmp_path / "mail.sqlite3"
    pair.trust_alice()
    store = MailStore(path)
    old = pair.mail("an hour left to live", now=NOW - MAIL_MAX_AGE + 3600)
    assert payloads(pair.deliver(old, now=NOW)[1]) == ["an hour left to live"]
    store.apply(pair.reader.mailroom.take_changes())
    store.close()
    # Started with the clock 2 h ahead; it writes something (a letter held).
    ahead, store = restarted(pair, path, now=NOW + 7200)
    ahead.dave_trust.remove(pair.alice.agent_id)
    ahead.deliver(pair.mail("other", now=NOW + 7200), now=NOW + 7200)
    store.apply(ahead.reader.mailroom.take_changes())
    store.close()
    # The clock is put right and the node started again: a broker replays the old mail.
    right, store = restarted(pair, path, now=NOW)
    right.trust_alice()
    out, incoming = right.deliver(old, now=NOW)
    store.close()
    assert acked(out) and incoming == [] and right.reader.mailroom.repeats == 1


def test_the_file_forgets_seen_ids_by_count_oldest_first_as_memory_does(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mail_book, "SEEN_MAIL", 3)
    monkeypatch.setattr(mail_store, "SEEN_MAIL", 3)
    path = tmp_path / "mail.sqlite3"
    store = MailStore(path)
    pair.trust_alice()
    for n in range(4):
        assert payloads(pair.deliver(pair.mail(f"m{n}"))[1]) == [f"m{n}"]
        store.apply(pair.reader.mailroom.take_changes())
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM seen").fetchone() == (3,)
    memory = list(pair.reader.mailroom.book._seen)
    assert len(memory) == 3 and store.load()[1] == memory  # the same three, same order
    store.close()
    # Counted again at a reopen; an id marked again moves to the newest end.
    store = MailStore(path)
    store.apply([MarkSeen(memory[0], NOW), MarkSeen(b"new id!!", NOW)])
    assert store.load()[1] == [memory[2], memory[0], b"new id!!"]
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM seen").fetchone() == (3,)


def test_huge_mail_ids_never_reach_the_file(pair: Pair, tmp_path: Path) -> None:
    public = pair.sender.trust.lookup(pair.dave.agent_id, now=NOW).public
    store = MailStore(tmp_path / "mail.sqlite3")
    pair.trust_alice()
    for _ in range(5):  # a trusted sender choosing 500 kB ids
        [frame] = WireCodec().encode(MessageType.DATA, [os.urandom(500_000), "x"], topic="")
        out, incoming = pair.deliver(
            seal(bytes(frame), sender=pair.alice, recipient=public, now=NOW)
        )
        assert acked(out) and incoming == []
        store.apply(pair.reader.mailroom.take_changes())
    store.close()
    size = sum(p.stat().st_size for p in tmp_path.glob("mail.sqlite3*"))
    assert size < 200_000, f"{size} bytes of seen ids on disk"


class Interrupted:
    """A connection that is interrupted (KeyboardInterrupt) at its first write."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql.startswith(("INSERT", "DELETE", "UPDATE")):
            raise KeyboardInterrupt
        return self.db.execute(sql, *args)

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction


def test_a_write_interrupted_by_anything_rolls_back_and_loses_the_store(
    pair: Pair, tmp_path: Path
) -> None:
    store = MailStore(tmp_path / "mail.sqlite3")
    real = store._db
    assert real is not None
    store._db = Interrupted(real)  # type: ignore[assignment]
    pair.deliver(pair.mail("held"))
    with pytest.raises(KeyboardInterrupt):
        store.apply(pair.reader.mailroom.take_changes())
    assert not real.in_transaction  # not left open for the next write to commit
    store._db = real
    with pytest.raises(StoreError, match="restart the node"):
        store.check()
    store.close()


def test_an_interrupt_while_the_changes_become_statements_loses_the_store(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The changes are taken from the tunnels before the write: an interrupt while they
    are turned into statements (before BEGIN) used to drop them and leave the store
    usable, with memory ahead of the file for good."""
    store = MailStore(tmp_path / "mail.sqlite3")

    def interrupted(change: object) -> tuple[str, tuple[object, ...]]:
        raise KeyboardInterrupt

    monkeypatch.setattr(mail_store, "_statement", interrupted)
    pair.deliver(pair.mail("held"))
    with pytest.raises(KeyboardInterrupt):
        store.apply(pair.reader.mailroom.take_changes())
    with pytest.raises(StoreError, match="restart the node"):
        store.check()
    store.close()
