"""A node's mail bookkeeping: held mail, the ids of mail already seen, and a record of each
change to them for a mail store (pure).

Every method that changes the hold or the seen ids appends the record of that change in the
same call, with nothing in between that can call out (no audit, no policy, no decoding): an
exception raised by someone else's code (an audit sink, a handler) can then never leave the
memory changed and the record missing, or a record pending for a change that did not happen.
Auditing is the caller's, after the change and its record are both done.

Seen ids are forgotten by count only, oldest first (:data:`SEEN_MAIL`), never by the wall
clock: a clock that was wrong for a while must not make a node forget mail that opens again
once the clock is right. A mail store forgets them the same way.

Pure: no clocks, I/O or randomness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from zmqcomm.node.held_mail import (
    DropLetter,
    HeldLetter,
    HeldMail,
    KeepLetter,
    MailChange,
    MarkSeen,
    Rewait,
    letter_key,
)

#: Mail ids remembered to drop redeliveries (a broker may deliver again after a crash).
SEEN_MAIL = 100_000


class MailBook:
    """Held mail and seen mail ids; with ``record=True`` every change is also kept as a
    :data:`~zmqcomm.node.held_mail.MailChange` until :meth:`take_changes`."""

    def __init__(self, *, max_held: int, max_held_bytes: int, record: bool) -> None:
        self.held = HeldMail(max_count=max_held, max_bytes=max_held_bytes)
        #: Oldest first, in the order the store keeps too (an id is marked once).
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        # Recorded only for a mail store: without one nothing would take the records.
        self._record = record
        self._changes: list[MailChange] = []

    def take_changes(self) -> list[MailChange]:
        """What changed since the last call, in order."""
        changes, self._changes = self._changes, []
        return changes

    def _add(self, *changes: MailChange) -> None:
        if self._record:
            self._changes.extend(changes)

    # -- seen ids ----------------------------------------------------------------------------

    def seen(self, mail_id: bytes) -> bool:
        return mail_id in self._seen

    def mark_seen(self, mail_id: bytes, sealed_at: float) -> bool:
        """Remember ``mail_id`` (the mail is dated ``sealed_at``); False if it was seen
        already (then nothing changes)."""
        if mail_id in self._seen:
            return False
        self._remember(mail_id)
        self._add(MarkSeen(mail_id, sealed_at))
        return True

    def _remember(self, mail_id: bytes) -> None:
        self._seen[mail_id] = None
        self._seen.move_to_end(mail_id)
        while len(self._seen) > SEEN_MAIL:
            self._seen.popitem(last=False)

    # -- the hold ----------------------------------------------------------------------------

    def hold(
        self, blob: bytes, sender: str, reason: str, *, now: float, generation: int
    ) -> tuple[Literal["held", "again", "refused"], list[HeldLetter]]:
        """:meth:`HeldMail.hold`, recorded: the letters pushed out leave the store in the
        same write that keeps the new one."""
        held, evicted = self.held.hold(blob, sender, reason, now=now, generation=generation)
        records: list[MailChange] = [DropLetter(letter_key(gone.blob)) for gone in evicted]
        if held == "held":
            records.append(KeepLetter(letter_key(blob), HeldLetter(blob, sender, reason, now)))
        self._add(*records)
        return held, evicted

    def restore(
        self, letters: Sequence[HeldLetter], seen: Sequence[bytes], *, now: float, generation: int
    ) -> list[HeldLetter]:
        """Put back what a mail store kept (both oldest first); returns the letters the hold
        has no room for now, which leave the store too."""
        for mail_id in seen:
            self._remember(mail_id)
        given_up: list[HeldLetter] = []
        for letter in letters:
            for gone in self.held.restore(letter, now=now, generation=generation):
                self._add(DropLetter(letter_key(gone.blob)))
                given_up.append(gone)
        return given_up

    def update(self, key: bytes, reason: str) -> None:
        """A retried letter failed again for a passing reason, maybe another one."""
        if self.held.update(key, reason):
            self._add(Rewait(key, reason))

    def drop(self, key: bytes) -> None:
        """A held letter failed for good."""
        self.held.release(key, delivered=False)
        self._add(DropLetter(key))

    def release_opened(self, key: bytes, mail_id: bytes, sealed_at: float) -> bool:
        """A held letter opened: out of the hold and its id marked seen, in one write so a
        crash cannot keep one and lose the other. False if its id was seen already (a copy
        was delivered meanwhile)."""
        fresh = mail_id not in self._seen
        self.held.release(key, delivered=fresh)
        if fresh:
            self._remember(mail_id)
            self._add(DropLetter(key), MarkSeen(mail_id, sealed_at))
        else:
            self._add(DropLetter(key))
        return fresh
