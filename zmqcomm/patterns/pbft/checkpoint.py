"""Checkpoints: the replicated state as bytes, and collecting CHECKPOINT votes into proofs.

The checkpoint state is the state machine's snapshot plus the reply cache (last timestamp
and result per client), so a replica that fetches a checkpoint also keeps exactly-once
execution. Its digest is the hash of those canonical bytes; a fetched snapshot is accepted
only if it hashes to a digest certified by a quorum of signed CHECKPOINTs.
"""

from __future__ import annotations

from typing import Any

from zmqcomm.patterns.pbft.messages import Checkpoint, decode, encode, hash_bytes
from zmqcomm.patterns.pbft.quorum import Quorum

Replies = dict[Any, tuple[int, bytes]]


def state_bytes(snapshot: bytes, replies: Replies) -> bytes:
    table = sorted(((encode(c), c, t, r) for c, (t, r) in replies.items()), key=lambda x: x[0])
    return encode((snapshot, tuple((c, t, r) for _, c, t, r in table)))


def parse_state(blob: bytes) -> tuple[bytes, Replies] | None:
    """Inverse of :func:`state_bytes`; None for bytes that are not a checkpoint state."""
    try:
        value = decode(blob)
    except Exception:
        return None
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], bytes)):
        return None
    replies: Replies = {}
    for row in value[1] if isinstance(value[1], tuple) else ():
        if not (
            isinstance(row, tuple)
            and len(row) == 3
            and isinstance(row[0], (str, int))
            and isinstance(row[1], int)
            and isinstance(row[2], bytes)
        ):
            return None
        replies[row[0]] = (row[1], row[2])
    return value[0], replies


def state_digest(blob: bytes) -> bytes:
    return hash_bytes(b"pbft state" + blob)


class CheckpointVotes:
    """CHECKPOINT messages above the stable checkpoint, at most ``per_replica`` per sender.

    The cap keeps a faulty replica from filling memory with checkpoints for far-away
    sequence numbers; when over it, the lowest sequence from that sender is forgotten (the
    highest ones are what tells a lagging replica how far behind it is).
    """

    def __init__(self, quorum: Quorum, per_replica: int) -> None:
        self.quorum = quorum
        self.per_replica = per_replica
        self.votes: dict[int, dict[int, Checkpoint]] = {}
        self._by_replica: dict[int, set[int]] = {}

    def add(self, checkpoint: Checkpoint) -> tuple[Checkpoint, ...] | None:
        """Record one (validated) vote; the proof if its (sequence, digest) now has a quorum."""
        if not self.quorum.is_replica(checkpoint.replica):
            return None  # the caller checked it; an int-like non-int would poison proofs
        at = self.votes.setdefault(checkpoint.sequence, {})
        if checkpoint.replica in at:
            return None
        at[checkpoint.replica] = checkpoint
        mine = self._by_replica.setdefault(checkpoint.replica, set())
        mine.add(checkpoint.sequence)
        if len(mine) > self.per_replica:
            lowest = min(mine)
            mine.discard(lowest)
            self.votes.get(lowest, {}).pop(checkpoint.replica, None)
        matching = [c for c in at.values() if c.digest == checkpoint.digest]
        if len(matching) >= self.quorum.quorum:
            return tuple(sorted(matching, key=lambda c: c.replica)[: self.quorum.quorum])
        return None

    def collect_garbage(self, stable: int) -> None:
        for sequence in [s for s in self.votes if s <= stable]:
            del self.votes[sequence]
        for seqs in self._by_replica.values():
            seqs.difference_update([s for s in seqs if s <= stable])

    def size(self) -> int:
        return sum(len(v) for v in self.votes.values())
