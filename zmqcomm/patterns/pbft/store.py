"""What a replica persists, as a small set of keyed records, and an in-memory store.

A replica writes here *before* it returns any message that depends on the write: a replica
that restarts and forgets a vote could otherwise vote twice for different things at one
(view, sequence) - equivocation. Each method maps to one table of a durable store:

========================  ===========================================================
``save_view``             one row: current view and whether a view change is under way
``save_vote``             (view, sequence, phase) -> digest, phase "pre-prepare",
                          "prepare", "commit": what this replica already said
``save_entry``            (sequence, kind) -> record, kind "prepared" (a
                          :class:`PreparedProof`) or "committed" (a :class:`PrePrepare`
                          whose batch this replica committed and will execute)
``save_checkpoint``       one row: the stable checkpoint, its proof and state snapshot
``discard_through``       garbage collection: drop votes and entries at or below a sequence
========================  ===========================================================

The last reply to each client is part of the checkpoint snapshot (see
:mod:`.checkpoint`), and recovery re-executes the committed entries above the stable
checkpoint, which rebuilds the reply cache exactly; so no separate reply table is needed.
Records are message dataclasses; a durable store encodes them with
:func:`zmqcomm.patterns.pbft.messages.encode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from zmqcomm.patterns.pbft.messages import Checkpoint, PreparedProof, PrePrepare

VoteKey = tuple[int, int, str]
EntryRecord = PreparedProof | PrePrepare


@dataclass(frozen=True, slots=True)
class StableCheckpoint:
    sequence: int
    digest: bytes
    proof: tuple[Checkpoint, ...]
    snapshot: bytes


class Store(Protocol):
    def load_view(self) -> tuple[int, bool]: ...

    def save_view(self, view: int, changing: bool) -> None: ...

    def load_votes(self) -> dict[VoteKey, bytes]: ...

    def save_vote(self, view: int, sequence: int, phase: str, digest: bytes) -> None: ...

    def load_entries(self) -> dict[tuple[int, str], EntryRecord]: ...

    def save_entry(self, sequence: int, kind: str, record: EntryRecord) -> None: ...

    def load_checkpoint(self) -> StableCheckpoint | None: ...

    def save_checkpoint(self, checkpoint: StableCheckpoint) -> None: ...

    def discard_through(self, sequence: int) -> None: ...


class SimulatedCrash(Exception):
    """Raised by :meth:`MemoryStore.fail_after`: the process "dies" at this write."""


class MemoryStore:
    """A :class:`Store` in dicts. Pass the same object to a restarted replica to recover.

    ``fail_after(k)`` makes the k-th write from now raise :class:`SimulatedCrash` (before
    the write takes effect, or after it with ``after_write=True``), to test a crash at every
    persistence point. ``writes`` counts successful writes.
    """

    def __init__(self) -> None:
        self.view = 0
        self.changing = False
        self.votes: dict[VoteKey, bytes] = {}
        self.entries: dict[tuple[int, str], EntryRecord] = {}
        self.checkpoint: StableCheckpoint | None = None
        self.writes = 0
        self._fail_in: int | None = None
        self._after_write = False

    def fail_after(self, k: int, *, after_write: bool = False) -> None:
        self._fail_in = k
        self._after_write = after_write

    def disarm(self) -> None:
        """Cancel a pending :meth:`fail_after`."""
        self._fail_in = None

    def _write(self) -> bool:
        """Count down to a simulated crash; True when this write should raise."""
        if self._fail_in is None:
            self.writes += 1
            return False
        self._fail_in -= 1
        if self._fail_in > 0:
            self.writes += 1
            return False
        self._fail_in = None
        if not self._after_write:
            raise SimulatedCrash("simulated crash before a write")
        return True

    def _crash_after(self, crash: bool) -> None:
        if crash:
            raise SimulatedCrash("simulated crash after a write")

    def load_view(self) -> tuple[int, bool]:
        return self.view, self.changing

    def save_view(self, view: int, changing: bool) -> None:
        crash = self._write()
        self.view, self.changing = view, changing
        self._crash_after(crash)

    def load_votes(self) -> dict[VoteKey, bytes]:
        return dict(self.votes)

    def save_vote(self, view: int, sequence: int, phase: str, digest: bytes) -> None:
        crash = self._write()
        self.votes[(view, sequence, phase)] = digest
        self._crash_after(crash)

    def load_entries(self) -> dict[tuple[int, str], EntryRecord]:
        return dict(self.entries)

    def save_entry(self, sequence: int, kind: str, record: EntryRecord) -> None:
        crash = self._write()
        self.entries[(sequence, kind)] = record
        self._crash_after(crash)

    def load_checkpoint(self) -> StableCheckpoint | None:
        return self.checkpoint

    def save_checkpoint(self, checkpoint: StableCheckpoint) -> None:
        crash = self._write()
        self.checkpoint = checkpoint
        self._crash_after(crash)

    def discard_through(self, sequence: int) -> None:
        # Not counted as a persistence point: losing a GC only keeps more than needed.
        self.votes = {k: v for k, v in self.votes.items() if k[1] > sequence}
        self.entries = {k: v for k, v in self.entries.items() if k[0] > sequence}
