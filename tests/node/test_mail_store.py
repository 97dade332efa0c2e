"""The node's mail store: what the file keeps across a reopen, and what it refuses.

The tunnel core is driven with fake time as in test_held_mail.py; the store is a real SQLite
file in ``tmp_path``. Node-level tests (a broker, restarts) are in test_node_mail_store.py.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from zmqcomm.errors import CorruptStoreError, StoreError, UsageError
from zmqcomm.node.held_mail import RETRY_FIRST
from zmqcomm.node.mail_store import SCHEMA_VERSION, MailStore
from zmqcomm.node.tunnel import MAIL_MAX_AGE, Tunnels

from .test_held_mail import NOW, Pair, acked, make_pair, payloads


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_pair(tmp_path, record_mail=True)


def test_the_store_keeps_held_letters_and_seen_ids_across_a_reopen(
    pair: Pair, tmp_path: Path
) -> None:
    path = tmp_path / "state" / "mail.sqlite3"
    store = MailStore(path, mail_max_age=MAIL_MAX_AGE)
    first, second = pair.mail("first"), pair.mail("second")
    pair.deliver(first)
    pair.deliver(second)
    pair.trust_alice()
    opened = pair.reader.retry_held_mail(now=NOW + RETRY_FIRST)
    assert sorted(payloads(opened)) == ["first", "second"]
    pair.dave_trust.remove(pair.alice.agent_id)
    third = pair.mail("third")
    pair.deliver(third)
    store.apply(pair.reader.take_mail_changes(), now=NOW)
    store.close()
    # Private: the file and the directory made for it.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    store = MailStore(path, mail_max_age=MAIL_MAX_AGE)
    letters, seen = store.load(now=NOW)
    assert [letter.blob for letter in letters] == [third]
    assert len(seen) == 2
    # Seen ids are forgotten once their mail is too old to be accepted anyway ...
    assert store.load(now=NOW + MAIL_MAX_AGE + 1) == (letters, [])
    store.close()
    # ... by the node's mail_max_age of the day: raised, it remembers them longer.
    store = MailStore(path, mail_max_age=2 * MAIL_MAX_AGE)
    assert len(store.load(now=NOW + MAIL_MAX_AGE + 1)[1]) == 2
    store.close()


def test_a_restarted_reader_holds_again_and_refuses_what_it_delivered(
    pair: Pair, tmp_path: Path
) -> None:
    path = tmp_path / "mail.sqlite3"
    store = MailStore(path, mail_max_age=MAIL_MAX_AGE)
    pair.trust_alice()
    delivered = pair.mail("delivered before the restart")
    assert payloads(pair.deliver(delivered)[1]) == ["delivered before the restart"]
    pair.dave_trust.remove(pair.alice.agent_id)
    held = pair.mail("held across the restart")
    pair.deliver(held)
    store.apply(pair.reader.take_mail_changes(), now=NOW)
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
    store = MailStore(path, mail_max_age=MAIL_MAX_AGE)
    letters, seen = store.load(now=NOW)
    reader.restore_mail(letters, seen, now=NOW)
    assert len(reader.held_mail) == 1 and reader.held_mail.restored == 1
    assert reader.take_mail_changes() == []  # nothing to write back
    reborn.trust_alice()
    # The replay is refused by its id, as before the restart; the held mail opens once.
    out, incoming = reborn.deliver(delivered)
    assert acked(out) and incoming == [] and reader.mail_repeats == 1
    assert payloads(reader.retry_held_mail(now=NOW + RETRY_FIRST)) == ["held across the restart"]
    store.close()


def test_one_node_per_file(tmp_path: Path) -> None:
    path = tmp_path / "mail.sqlite3"
    store = MailStore(path, mail_max_age=MAIL_MAX_AGE)
    with pytest.raises(UsageError, match=r"in use by another node.*its own mail_store"):
        MailStore(path, mail_max_age=MAIL_MAX_AGE)
    store.close()
    MailStore(path, mail_max_age=MAIL_MAX_AGE).close()  # released with the first


def test_a_file_that_is_not_a_mail_store_is_refused_with_what_to_do(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not an SQLite database, not even close" * 40)
    with pytest.raises(UsageError, match=r"not a usable zmqcomm node mail store.*move the file"):
        MailStore(garbage, mail_max_age=MAIL_MAX_AGE)
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(UsageError, match="written by a newer zmqcomm"):
        MailStore(newer, mail_max_age=MAIL_MAX_AGE)
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE something (x)")
    with pytest.raises(UsageError, match="not a zmqcomm node mail store"):
        MailStore(other, mail_max_age=MAIL_MAX_AGE)
    with pytest.raises(UsageError, match="is a directory"):
        MailStore(tmp_path, mail_max_age=MAIL_MAX_AGE)
    with pytest.raises(UsageError, match="cannot lock the mail store"):
        MailStore(garbage / "mail.sqlite3", mail_max_age=MAIL_MAX_AGE)  # under a file
    # Refused files leave their lock free.
    MailStore(tmp_path / "fresh.sqlite3", mail_max_age=MAIL_MAX_AGE).close()


def test_a_damaged_row_is_a_corrupt_store(pair: Pair, tmp_path: Path) -> None:
    path = tmp_path / "mail.sqlite3"
    store = MailStore(path, mail_max_age=MAIL_MAX_AGE)
    pair.deliver(pair.mail("held"))
    store.apply(pair.reader.take_mail_changes(), now=NOW)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE held SET blob = x'00'")  # no longer the blob its key names
    store = MailStore(path, mail_max_age=MAIL_MAX_AGE)
    with pytest.raises(CorruptStoreError, match="move the file aside"):
        store.load(now=NOW)
    store.close()


def test_a_failed_write_raises_and_every_later_write_does_too(pair: Pair, tmp_path: Path) -> None:
    store = MailStore(tmp_path / "mail.sqlite3", mail_max_age=MAIL_MAX_AGE)
    assert store._db is not None
    store._db.execute("PRAGMA query_only = ON")  # any write now fails, as on a full disk
    pair.deliver(pair.mail("held"))
    with pytest.raises(StoreError, match="restart the node"):
        store.apply(pair.reader.take_mail_changes(), now=NOW)
    store._db.execute("PRAGMA query_only = OFF")
    with pytest.raises(StoreError, match="restart the node"):
        store.check()
    store.close()
