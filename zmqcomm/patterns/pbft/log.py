"""The message log of one replica: per-sequence certificates, the paper's predicates,
watermarks and garbage collection. Pure bookkeeping: it trusts its caller to have validated
(signatures, view, sender) every message it is given.

Only messages of the current view live in :attr:`MessageLog.entries`; a view change clears
them. What must survive view changes lives beside them: the best prepared certificate per
sequence (:attr:`MessageLog.certificates`, shown in VIEW-CHANGE) and the batches committed
but not yet covered by a stable checkpoint (:attr:`MessageLog.committed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zmqcomm.patterns.pbft.messages import Commit, Prepare, PreparedProof, PrePrepare
from zmqcomm.patterns.pbft.quorum import Quorum


@dataclass(slots=True)
class Entry:
    """What this replica knows about one sequence number in the current view."""

    pre_prepare: PrePrepare | None = None
    prepares: dict[int, Prepare] = field(default_factory=dict)
    commits: dict[int, Commit] = field(default_factory=dict)
    #: This replica sent its COMMIT (it saw the entry prepared).
    commit_sent: bool = False
    committed: bool = False
    #: When we last echoed our messages to each replica that retransmitted (see replica).
    echoed: dict[int, float] = field(default_factory=dict)
    #: Replicas whose PREPARE came after our certificate (not checked, not kept).
    surplus: set[int] = field(default_factory=set)


class MessageLog:
    def __init__(self, quorum: Quorum, window: int) -> None:
        self.quorum = quorum
        self.window = window
        #: h: the sequence of the last stable checkpoint.
        self.low = 0
        self.entries: dict[int, Entry] = {}
        self.certificates: dict[int, PreparedProof] = {}
        self.committed: dict[int, PrePrepare] = {}

    @property
    def high(self) -> int:
        """H = h + L: nothing above it is accepted until a checkpoint moves h."""
        return self.low + self.window

    def in_window(self, sequence: int) -> bool:
        return self.low < sequence <= self.high

    def entry(self, sequence: int) -> Entry:
        found = self.entries.get(sequence)
        if found is None:
            found = self.entries[sequence] = Entry()
        return found

    def matching_prepares(self, entry: Entry, view: int) -> list[Prepare]:
        pre_prepare = entry.pre_prepare
        if pre_prepare is None:
            return []
        primary = self.quorum.primary(view)
        return [
            p
            for r, p in sorted(entry.prepares.items())
            # p.replica must be exactly r (an int): it goes into certificates shown to others.
            if r != primary
            and p.digest == pre_prepare.digest
            and p.replica == r
            and self.quorum.is_replica(p.replica)
        ]

    def prepared(self, entry: Entry, view: int) -> bool:
        """prepared(m, v, n, i): the pre-prepare plus quorum - 1 matching backup prepares."""
        return len(self.matching_prepares(entry, view)) >= self.quorum.quorum - 1

    def committed_local(self, entry: Entry, view: int) -> bool:
        """committed-local(m, v, n, i): prepared plus a quorum of matching commits."""
        if entry.pre_prepare is None or not self.prepared(entry, view):
            return False
        digest = entry.pre_prepare.digest
        return sum(1 for c in entry.commits.values() if c.digest == digest) >= self.quorum.quorum

    def certificate(self, entry: Entry, view: int) -> PreparedProof:
        assert entry.pre_prepare is not None
        prepares = self.matching_prepares(entry, view)[: self.quorum.quorum - 1]
        return PreparedProof(entry.pre_prepare, tuple(prepares))

    def keep_certificate(self, proof: PreparedProof) -> bool:
        """Remember the prepared certificate of the highest view per sequence."""
        sequence = proof.pre_prepare.sequence
        known = self.certificates.get(sequence)
        if known is not None and known.pre_prepare.view >= proof.pre_prepare.view:
            return False
        self.certificates[sequence] = proof
        return True

    def new_view(self) -> None:
        """Entering a view: messages of older views no longer count."""
        self.entries.clear()

    def collect_garbage(self, stable: int) -> None:
        """A checkpoint at ``stable`` became stable: forget everything at or below it."""
        if stable <= self.low:
            return
        self.low = stable
        for table in (self.entries, self.certificates, self.committed):
            for sequence in [s for s in table if s <= stable]:
                del table[sequence]

    def size(self) -> int:
        """Messages held, for tests that check the log stays bounded."""
        held = sum(
            (e.pre_prepare is not None) + len(e.prepares) + len(e.commits)
            for e in self.entries.values()
        )
        return held + len(self.certificates) + len(self.committed)
