"""Sealed mail a node acknowledged but could not open yet, kept to try again (pure).

A node acknowledges every piece of mail the broker hands it, so that the broker frees the
slot: unacknowledged mail would come back on every connect, and a sender the broker trusts
could fill the recipient's mailbox with mail it never takes. Mail that fails for a reason
that never gets better (a bad seal or signature, another recipient, too old) is dropped.
Mail that fails for a *passing* reason (see :data:`PASSING`: the sender is not in our trust
store yet, its trust expired and may be renewed, it is dated ahead of our clock) would be
lost with it; it waits here instead, bounded in count and bytes (the oldest given up first),
and is opened again:

- on its own schedule: one second after it was held, then twice as long after each try
  that left it here, up to :data:`RETRY_MAX` seconds between tries. Newly held mail
  schedules only itself, so a sender cannot make the whole hold be tried again by sending;
- sooner when the trust store's generation changes (something was added, revoked or
  reloaded with a difference), if it waits for the trust store (:data:`TRUST_SETTLED`):
  at most one such round per :data:`RETRY_FIRST` seconds.

A call opens at most :data:`RETRY_BATCH` pieces, so a full hold never stalls a pump. Mail
stays until it opens, fails for good (its age passes ``mail_max_age``, its sender is
revoked) or is pushed out by newer mail. It lives in memory, like the ids of the mail
already seen, so a node that stops loses it (counted as ``held_at_close``), unless the node
keeps a mail store: then every change to the hold and to the seen ids is also described by
a record (:data:`MailChange`) that the driver writes to the store before anything else
happens, and the hold is refilled from the store at start (:meth:`HeldMail.restore`).

Pure: no clocks or I/O; time comes in as ``now`` (the wall clock, as for the tunnels) and
the trust store's state as an int. The schedule runs on the wall clock's forward steps only:
stepped back, it carries on from where it was instead of waiting out the step.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Literal

from zmqcomm.checks import check_count

#: Reasons a piece of mail can fail now and open later. ``revoked``, ``denied`` (the
#: policy) and ``key_changed`` are decisions, not accidents of timing: such mail is dropped.
PASSING = frozenset(
    {
        "unknown_peer",  # the sender is not in our trust store (yet)
        "trust_expired",  # our trust in the sender ran out; the entry may be renewed
        "sealed_from_future",  # dated ahead of our clock by more than the skew allowed
        "key_file",  # trust-on-first-use could not write the sender's pin
    }
)
#: Of those, the reasons a change of the trust store can settle (not a clock running ahead).
TRUST_SETTLED = frozenset({"unknown_peer", "trust_expired", "key_file"})
DEFAULT_MAX_HELD = 1000
DEFAULT_MAX_HELD_BYTES = 16 * 1024 * 1024
#: Seconds from holding mail to its first retry, and the most between two rounds.
RETRY_FIRST = 1.0
RETRY_MAX = 60.0
#: Pieces opened again per call at most (each costs an X25519 and an Ed25519 operation).
RETRY_BATCH = 64


@dataclass(frozen=True)
class HeldLetter:
    """One piece of sealed mail, still sealed."""

    blob: bytes = field(repr=False)  # never in logs or tracebacks
    sender: str  # who the broker says sent it (proved only once it opens)
    reason: str  # why it did not open the last time
    held_at: float


# -- what the driver writes to a mail store (records, no I/O) ----------------------------------


@dataclass(frozen=True)
class KeepLetter:
    """A letter was held: keep it (its key is :func:`letter_key` of its blob)."""

    key: bytes
    letter: HeldLetter


@dataclass(frozen=True)
class DropLetter:
    """A letter left the hold: it opened, failed for good or was pushed out."""

    key: bytes


@dataclass(frozen=True)
class Rewait:
    """A held letter failed again, for another passing reason."""

    key: bytes
    reason: str


@dataclass(frozen=True)
class MarkSeen:
    """Mail with this id opened: refuse it again (``sealed_at`` is its date). Ids are
    forgotten by count only, the oldest first, in memory and in the store alike."""

    mail_id: bytes
    sealed_at: float


MailChange = KeepLetter | DropLetter | Rewait | MarkSeen


class HeldMail:
    """Mail waiting to be opened again; see the module doc."""

    def __init__(
        self, *, max_count: int = DEFAULT_MAX_HELD, max_bytes: int = DEFAULT_MAX_HELD_BYTES
    ) -> None:
        self.max_count = check_count(max_count, "max_held_mail")
        self.max_bytes = check_count(max_bytes, "max_held_mail_bytes")
        #: Digest of the blob -> the letter, oldest first. A redelivered copy (the broker
        #: crashed before our acknowledgement counted) is the same blob: held once.
        self._letters: OrderedDict[bytes, HeldLetter] = OrderedDict()
        self.bytes = 0
        #: Mail held since the start, and of it, what opened later and went on.
        self.kept = 0
        self.released = 0
        #: Letters put back from a mail store at start (not counted in ``kept``).
        self.restored = 0
        #: Digest -> (next try, the wait after that one); the heap orders the next tries.
        #: A heap entry whose time is no longer its letter's next try is stale and skipped.
        self._plan: dict[bytes, tuple[float, float]] = {}
        self._heap: list[tuple[float, bytes]] = []
        #: Letters of a trust-store round still to be handed out (bounded batches).
        self._round: deque[bytes] = deque()
        #: The trust store generation last tried against, and when a change of it may
        #: start the next round.
        self._generation: int | None = None
        self._generation_round_at = -math.inf
        #: The schedule's time is ``now + _offset``; the offset grows by each backward step
        #: of ``now`` seen, so that time never goes back (see :meth:`_time`).
        self._offset = 0.0
        self._last_now = -math.inf

    def _time(self, now: float) -> float:
        """The schedule's time at wall-clock ``now``."""
        if now < self._last_now:  # the clock was set back: go on from where we were
            self._offset += self._last_now - now
        self._last_now = now
        return now + self._offset

    def __len__(self) -> int:
        return len(self._letters)

    @property
    def enabled(self) -> bool:
        return self.max_count > 0 and self.max_bytes > 0

    def hold(
        self, blob: bytes, sender: str, reason: str, *, now: float, generation: int
    ) -> tuple[Literal["held", "again", "refused"], list[HeldLetter]]:
        """Keep ``blob``. Returns ``"held"``, ``"again"`` (this blob is held already: it
        stays as it is) or ``"refused"`` (the hold is off, or the blob alone exceeds its
        bytes), and the letters pushed out to make room, oldest first."""
        key = letter_key(blob)
        if key in self._letters:
            return "again", []
        if not self.enabled or len(blob) > self.max_bytes:
            return "refused", []
        self.kept += 1
        return "held", self._add(key, HeldLetter(blob, sender, reason, now), now, generation)

    def restore(self, letter: HeldLetter, *, now: float, generation: int) -> list[HeldLetter]:
        """Put back a letter held before a restart (from a mail store, oldest first): held
        as it was, and first tried :data:`RETRY_FIRST` after ``now``; a restart is when the
        trust store or the clock most likely changed. Returns the letters pushed out (the
        hold may be smaller than it was), or ``[letter]`` itself if it cannot be held."""
        key = letter_key(letter.blob)
        if key in self._letters:
            return []
        if not self.enabled or len(letter.blob) > self.max_bytes:
            return [letter]
        self.restored += 1
        return self._add(key, letter, now, generation)

    def _add(self, key: bytes, letter: HeldLetter, now: float, generation: int) -> list[HeldLetter]:
        self._letters[key] = letter
        self.bytes += len(letter.blob)
        self._schedule(key, self._time(now) + RETRY_FIRST, RETRY_FIRST)
        evicted = []
        while len(self._letters) > self.max_count or self.bytes > self.max_bytes:
            old, gone = self._letters.popitem(last=False)
            self._plan.pop(old, None)
            self.bytes -= len(gone.blob)
            evicted.append(gone)
        if self._generation is None:  # the trust store as it is now has been tried
            self._generation = generation
        return evicted

    def _schedule(self, key: bytes, at: float, wait: float) -> None:
        self._plan[key] = (at, wait)
        heapq.heappush(self._heap, (at, key))
        if len(self._heap) > 4 * len(self._plan) + 64:  # stale entries: rebuild
            self._heap = [(at, k) for k, (at, _) in self._plan.items()]
            heapq.heapify(self._heap)

    def _next_scheduled(self) -> tuple[float, bytes] | None:
        """The earliest live heap entry (stale ones on top are dropped on the way)."""
        heap = self._heap
        while heap:
            at, key = heap[0]
            plan = self._plan.get(key)
            if plan is not None and plan[0] == at:
                return at, key
            heapq.heappop(heap)
        return None

    def _trust_round_due(self, generation: int, now: float) -> bool:
        return generation != self._generation and now >= self._generation_round_at

    def deadline(self, generation: int, now: float | None = None) -> float | None:
        """When (wall clock) :meth:`due` next has letters (``-inf``: now), None while nothing
        is held. Give ``now`` so that a clock set back since the last call is seen."""
        if not self._letters:
            return None
        if now is not None:
            self._time(now)
        if self._round:
            return -math.inf
        first = self._next_scheduled()
        at = math.inf if first is None else first[0]
        if generation != self._generation:
            at = min(at, self._generation_round_at)
        return at - self._offset

    def due(self, *, now: float, generation: int) -> list[tuple[bytes, HeldLetter]]:
        """The letters to try now, at most :data:`RETRY_BATCH`: each is then :meth:`release`\\ d
        (opened, or failed for good) or left held, to be tried again on its schedule."""
        if not self._letters:
            self._round.clear()
            return []
        now = self._time(now)
        if not self._round and self._trust_round_due(generation, now):
            self._generation = generation
            self._generation_round_at = now + RETRY_FIRST
            self._round.extend(
                key for key, letter in self._letters.items() if letter.reason in TRUST_SETTLED
            )
        batch: dict[bytes, HeldLetter] = {}
        while self._round and len(batch) < RETRY_BATCH:
            key = self._round.popleft()
            letter = self._letters.get(key)
            if letter is not None:
                batch[key] = letter
        while len(batch) < RETRY_BATCH:
            first = self._next_scheduled()
            if first is None or first[0] > now:
                break
            heapq.heappop(self._heap)
            batch[first[1]] = self._letters[first[1]]
        for key in batch:  # tried now: the next try waits longer
            wait = self._plan[key][1]
            self._schedule(key, now + wait, min(wait * 2, RETRY_MAX))
        return list(batch.items())

    def release(self, key: bytes, *, delivered: bool) -> None:
        """Forget a letter: it opened (``delivered``) or failed for good."""
        letter = self._letters.pop(key, None)
        if letter is None:
            return
        self._plan.pop(key, None)
        self.bytes -= len(letter.blob)
        if delivered:
            self.released += 1
        if not self._letters:
            self._heap.clear()
            self._generation = None

    def update(self, key: bytes, reason: str) -> bool:
        """A retried letter failed again for a passing reason, maybe another one; whether
        the reason changed."""
        letter = self._letters.get(key)
        if letter is None or letter.reason == reason:
            return False
        self._letters[key] = HeldLetter(letter.blob, letter.sender, reason, letter.held_at)
        return True

    def clear(self) -> int:
        """Give up everything held (the node is closing); returns how many letters."""
        count = len(self._letters)
        self._letters.clear()
        self._plan.clear()
        self._heap.clear()
        self._round.clear()
        self.bytes = 0
        self._generation = None
        return count


def letter_key(blob: bytes) -> bytes:
    """The key of a letter in the hold and in a mail store."""
    return hashlib.blake2b(blob, digest_size=16).digest()
