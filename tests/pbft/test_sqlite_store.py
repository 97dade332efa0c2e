"""SQLiteStore: round trips, recovery after reopen, corrupt rows, and SIGKILL durability."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from zmqcomm.errors import CorruptStoreError, StoreError, UsageError
from zmqcomm.patterns.pbft import (
    Checkpoint,
    KeyValueStore,
    MemoryStore,
    Prepare,
    PreparedProof,
    PrePrepare,
    Replica,
    Request,
    StableCheckpoint,
    batch_digest,
)
from zmqcomm.patterns.pbft.checkpoint import state_bytes, state_digest
from zmqcomm.patterns.pbft.sqlite_store import SQLiteStore

DIGEST = bytes(range(32))


def _pre_prepare(sequence: int) -> PrePrepare:
    batch = (Request("client-a", sequence, b"op%d" % sequence, b""),)
    return PrePrepare(0, sequence, batch_digest(batch), batch, 0, b"sig")


def _fill(store: SQLiteStore | MemoryStore) -> None:
    store.save_view(3, True)
    store.save_vote(3, 5, "prepare", DIGEST)
    store.save_vote(3, 6, "commit", DIGEST[::-1])
    pp = _pre_prepare(5)
    store.save_entry(5, "committed", pp)
    proof = PreparedProof(
        pp, (Prepare(0, 5, pp.digest, 1, b"s1"), Prepare(0, 5, pp.digest, 2, b"s2"))
    )
    store.save_entry(5, "prepared", proof)
    # The store checks that a snapshot hashes to its digest, as a real checkpoint does.
    state = state_bytes(b"state", {})
    digest = state_digest(state)
    checkpoint = StableCheckpoint(4, digest, (Checkpoint(4, digest, 1, b"c"),), state)
    store.save_checkpoint(checkpoint)


def _dump(store: SQLiteStore | MemoryStore) -> tuple[object, ...]:
    return (store.load_view(), store.load_votes(), store.load_entries(), store.load_checkpoint())


def test_round_trip_matches_memory_store(tmp_path: Path) -> None:
    memory = MemoryStore()
    _fill(memory)
    with SQLiteStore(tmp_path / "r.db") as store:
        assert store.load_view() == (0, False)
        assert store.load_checkpoint() is None
        _fill(store)
        assert _dump(store) == _dump(memory)


@pytest.mark.parametrize("group_commit", [False, True])
def test_reopen_recovers_every_record(tmp_path: Path, group_commit: bool) -> None:
    memory = MemoryStore()
    _fill(memory)
    store = SQLiteStore(tmp_path / "r.db", group_commit=group_commit)
    _fill(store)
    store.commit()
    store.discard_through(5)
    memory.discard_through(5)
    store.commit()
    store.close()
    with SQLiteStore(tmp_path / "r.db") as again:
        assert _dump(again) == _dump(memory)
        assert (3, 6, "commit") in again.load_votes()
        assert again.load_entries() == {}


def test_replica_recovers_from_reopened_store(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    with SQLiteStore(path) as store:
        store.save_view(2, False)
        store.save_vote(2, 1, "prepare", DIGEST)
    with SQLiteStore(path) as store:
        replica = Replica(
            1,
            4,
            state_machine=KeyValueStore(),
            store=store,
            sign=lambda m: b"",
            verify=lambda r, m, s: True,
            now=0.0,
        )
        assert replica.view == 2
        assert replica.votes[(2, 1, "prepare")] == DIGEST


def test_bad_paths_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="directory"):
        SQLiteStore(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="cannot open"):
        SQLiteStore(tmp_path / "file" / "store.db")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(UsageError, match="not a usable pbft store"):
        SQLiteStore(tmp_path / "junk.db")
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    with pytest.raises(UsageError, match="not a pbft store"):
        SQLiteStore(tmp_path / "other.db")


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (1, "schema version 1, written by an earlier zmqcomm.*move the data directory aside"),
        (99, "schema version 99, written by a newer zmqcomm"),
    ],
)
def test_a_store_of_another_version_is_refused_with_what_to_do(
    tmp_path: Path, version: int, message: str
) -> None:
    path = tmp_path / "v.db"
    with SQLiteStore(path) as store:
        store.save_view(3, False)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()
    with pytest.raises(UsageError, match=message):
        SQLiteStore(path)


def test_corrupt_row_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with SQLiteStore(path) as store:
        store.save_entry(7, "committed", _pre_prepare(7))
    db = sqlite3.connect(path)
    db.execute("UPDATE entries SET record = ? WHERE sequence = 7", (b"\xc1garbage",))
    db.commit()
    db.close()
    with SQLiteStore(path) as store:
        with pytest.raises(CorruptStoreError, match=r"entry \(7, 'committed'\)"):
            store.load_entries()
        assert store.load_view() == (0, False)  # the rest is still readable


@pytest.mark.parametrize(
    ("column", "value"),
    [("digest", b"short"), ("sequence", "seven"), ("sequence", -1), ("view", 1.5)],
)
def test_malformed_vote_row_is_a_typed_error(tmp_path: Path, column: str, value: object) -> None:
    path = tmp_path / "v.db"
    with SQLiteStore(path) as store:
        store.save_vote(0, 7, "prepare", DIGEST)
    db = sqlite3.connect(path)
    db.execute(f"UPDATE votes SET {column} = ?", (value,))
    db.commit()
    db.close()
    with SQLiteStore(path) as store, pytest.raises(CorruptStoreError, match="move the data"):
        store.load_votes()


def test_checkpoint_with_negative_sequence_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    with SQLiteStore(path) as store:
        _fill(store)
        assert store.load_checkpoint() is not None
    db = sqlite3.connect(path)
    db.execute("UPDATE checkpoint SET sequence = -4")
    db.commit()
    db.close()
    with SQLiteStore(path) as store, pytest.raises(CorruptStoreError):
        store.load_checkpoint()


def _fill_disk(store: SQLiteStore) -> None:
    """From now on, a save that needs a new page fails as on a full disk (SQLITE_FULL)."""
    assert store._db is not None
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def test_lost_group_commit_store_refuses_every_later_write(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db", group_commit=True)
    store.save_vote(0, 1, "prepare", DIGEST)
    _fill_disk(store)
    with pytest.raises(StoreError):
        store.save_checkpoint(StableCheckpoint(2, DIGEST, (), b"x" * 200_000))
    assert store.lost
    writes: list[Callable[[], None]] = [
        lambda: store.save_vote(0, 3, "commit", DIGEST),
        lambda: store.discard_through(1),
        store.commit,
    ]
    for write in writes:
        with pytest.raises(StoreError, match="restart the replica"):
            write()
    store.close()
    with SQLiteStore(tmp_path / "g.db") as again:
        assert again.load_votes() == {}  # nothing of the failed burst reached the disk


def test_failed_save_without_group_commit_keeps_earlier_saves(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    store.save_vote(0, 1, "prepare", DIGEST)
    _fill_disk(store)
    with pytest.raises(StoreError, match="full"):
        store.save_checkpoint(StableCheckpoint(2, DIGEST, (), b"x" * 200_000))
    assert not store.lost  # each save is its own transaction: only the failed one is gone
    store.commit()
    store.close()
    with SQLiteStore(path) as again:
        assert again.load_votes() == {(0, 1, "prepare"): DIGEST}
        assert again.load_checkpoint() is None


_WRITER = textwrap.dedent(
    """
    import sys
    from zmqcomm.patterns.pbft.sqlite_store import SQLiteStore
    store = SQLiteStore(sys.argv[1])
    for i in range(1, 1_000_000):
        store.save_vote(0, i, "prepare", i.to_bytes(32, "big"))
        # Printed only after the save returned: the parent's evidence of durability.
        print(i, flush=True)
    """
)


def test_sigkill_in_write_loop_keeps_every_returned_save(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acknowledged = 0
    try:
        for line in proc.stdout:
            acknowledged = int(line)
            if acknowledged >= 40:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert acknowledged >= 40
    with SQLiteStore(path) as store:
        votes = store.load_votes()
    for i in range(1, acknowledged + 1):
        assert votes[(0, i, "prepare")] == i.to_bytes(32, "big")
