"""Mail: messages for a peer that is offline, sealed to its key (pure, sans-I/O).

When the broker cannot reach a peer, the tunnels (:mod:`zmqcomm.node.tunnel`) turn what
waited for it into mail: each message, with a random mail id, in a SealedBox to the peer's
public key and signed by us. The broker stores it durably and hands it over when the peer
connects; the peer acknowledges every piece, whatever becomes of it, so that the broker
deletes it. Here is what the receiving side does with a piece:

- it opens it, checks the signature, the sender's trust entry and the policy, and delivers
  it once per mail id (a broker may hand a piece over twice);
- mail that cannot be opened yet for a passing reason (its sender is not trusted yet, say)
  is kept in a bounded hold (:mod:`zmqcomm.node.held_mail`) and opened again later;
- anything else is refused: counted and audited by the caller's ``refuse``.

With ``record=True`` every change to the hold and to the seen ids is also recorded
(:meth:`MailRoom.take_changes`), for the driver to write to a mail store before it delivers
or acknowledges anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zmqcomm.checks import check_seconds
from zmqcomm.crypto.audit import BaseAuditLog
from zmqcomm.crypto.handshake import RandomBytes
from zmqcomm.crypto.keys import Identity, PublicIdentity
from zmqcomm.crypto.sealed import open_sealed, seal
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import RemoteProtocolError, SecurityError, UsageError
from zmqcomm.node.held_mail import PASSING, HeldLetter, HeldMail, MailChange
from zmqcomm.node.mail_book import MailBook
from zmqcomm.node.messages import VIA_MAIL, Incoming, unwrap
from zmqcomm.wire import WireCodec

#: Bytes of a mail id (random). Mail whose id has another size is refused as ``bad_mail``:
#: ids are kept (in memory and in a mail store), so their size must not be the sender's.
MAIL_ID_SIZE = 8
#: Mail older than this is refused: the broker's default time to live (7 days) and a day of
#: clock skew. Whoever holds a mailbox (a broker, a copy of its database) cannot hand a
#: restarted node, which forgot the ids it saw, mail from longer ago.
MAIL_MAX_AGE = 8 * 24 * 3600.0

#: Counts and audits a refused piece: (the sender as far as known, the error, now).
Refuse = Callable[[str, Exception, float], None]


@dataclass(frozen=True)
class _Unopened:
    """Why a piece of mail did not open: the error, and who sent it as far as we know."""

    peer: str
    error: RemoteProtocolError | SecurityError

    @property
    def reason(self) -> str:
        return self.error.reason


class MailRoom:
    """Sealing our mail, and opening, holding and delivering once the mail we get."""

    def __init__(
        self,
        *,
        identity: Identity,
        trust: TrustStore,
        codec: WireCodec,
        audit: BaseAuditLog,
        random_bytes: RandomBytes,
        check_policy: Callable[[Incoming], None],
        refuse: Refuse,
        dropped: Counter[str],
        max_age: float = MAIL_MAX_AGE,
        max_held: int,
        max_held_bytes: int,
        record: bool = False,
    ) -> None:
        """``check_policy`` raises for mail the node's policy refuses; ``dropped`` is the
        tunnels' counter of lost messages, which this adds its own losses to. ``audit`` is
        this room's sink for the lines it writes itself (held, released, overflow): one
        that replaces the tunnels' sink later must replace this one too."""
        self.identity = identity
        self.trust = trust
        self.codec = codec
        self.audit = audit
        self.max_age = check_seconds(max_age, "mail_max_age", allow_zero=False)
        self._random = random_bytes
        self._check_policy = check_policy
        self._refuse = refuse
        self.dropped = dropped
        #: Mail acknowledged but not opened yet, for a passing reason (0 turns it off), the
        #: ids of mail seen, and (``record``) the record of each change to them.
        self.book = MailBook(max_held=max_held, max_held_bytes=max_held_bytes, record=record)
        #: Held mail that opened and is not returned yet: kept here, not in a local list,
        #: so that an audit sink raising halfway through a batch does not lose it.
        self._opened: list[Incoming] = []
        #: Pieces we sealed.
        self.sealed = 0
        #: Of those, what the broker confirmed it stored (MAIL_ACCEPTED); the rest is in
        #: flight or was refused (``dropped["mail_refused"]``).
        self.stored = 0
        #: Mail dropped because its id was seen already (a broker's redelivery or replay).
        self.repeats = 0

    # -- sending -----------------------------------------------------------------------------

    def seal(
        self, public: PublicIdentity, kind: int, payload: object, *, topic: str, now: float
    ) -> bytes:
        """One message for the peer whose key is ``public``, as mail (UsageError for what
        mail cannot carry: out-of-band arrays travel in a session only)."""
        mail_id = self._random(MAIL_ID_SIZE)
        frames = self.codec.encode(kind, [mail_id, payload], topic=topic)
        if len(frames) != 1:
            raise UsageError("mail cannot carry out-of-band arrays; send them in a session")
        blob = seal(bytes(frames[0]), sender=self.identity, recipient=public, now=now)
        self.sealed += 1
        return blob

    def accepted(self) -> None:
        """The broker confirmed it stored a piece we sent (MAIL_ACCEPTED)."""
        self.stored += 1

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, sender: str, payload: object, *, now: float) -> tuple[int, list[Incoming]]:
        """A MAIL_DELIVER from the broker (``sender`` is its word on who sent it): the
        broker's id of the piece, to acknowledge, and what to deliver (nothing if the piece
        was seen before, is held or is refused). RemoteProtocolError, with nothing changed,
        for a payload that is not a stored piece."""
        if (
            not isinstance(payload, list)
            or len(payload) != 2
            or type(payload[0]) is not int
            or not isinstance(payload[1], bytes)
        ):
            raise RemoteProtocolError("MAIL_DELIVER without id and blob", reason="bad_mail")
        stored_id, blob = payload
        # The caller acknowledges it whatever happens next, so the broker deletes it: unacked,
        # it would come back on every connect and take one of our mailbox's slots for good.
        # Mail that may open later is kept here instead (the hold), the rest is dropped.
        opened = self._open(blob, sender, now=now)
        if isinstance(opened, _Unopened):
            if opened.reason in PASSING:
                self._hold(blob, opened, now=now)
            else:
                self._refuse(opened.peer, opened.error, now)
            return stored_id, []
        return stored_id, self._once(*opened)

    def _open(
        self, blob: bytes, sender: str, *, now: float
    ) -> tuple[bytes, Incoming, float] | _Unopened:
        """Open, check and unwrap one piece of mail: its mail id, message and date, or why
        not."""
        peer = sender  # the broker's word, until the signature proves who sent it
        try:
            opened = open_sealed(blob, recipient=self.identity, now=now, max_age=self.max_age)
            peer = opened.agent_id
            entry = self.trust.check_certificate(opened.sender_certificate, now=now)
            inner = self.codec.decode([opened.message])
            if inner.header.is_batch:  # .payload would raise a LocalProtocolError
                raise RemoteProtocolError("a batch frame sent as mail", reason="bad_mail")
            body = inner.payload
            if (
                not isinstance(body, list)
                or len(body) != 2
                or not isinstance(body[0], bytes)
                or len(body[0]) != MAIL_ID_SIZE
            ):
                raise RemoteProtocolError("mail without a proper id", reason="bad_mail")
            mail_id, content = body
            incoming = unwrap(
                opened.agent_id,
                inner.header.type,
                content,
                topic=inner.header.topic,
                via=VIA_MAIL,
                roles=entry.roles,
            )
            self._check_policy(incoming)
        except (RemoteProtocolError, SecurityError) as exc:
            return _Unopened(peer, exc)
        return mail_id, incoming, opened.created

    def _once(self, mail_id: bytes, incoming: Incoming, created: float) -> list[Incoming]:
        """``incoming`` unless its mail id was delivered before (a broker may hand the same
        mail over twice, once held and once not)."""
        if self.book.mark_seen(mail_id, created):
            return [incoming]
        self.repeats += 1
        return []  # delivered before; acknowledged again, delivered once

    # -- the hold ----------------------------------------------------------------------------

    @property
    def held(self) -> HeldMail:
        return self.book.held

    def take_changes(self) -> list[MailChange]:
        """What changed in the hold and the seen ids since the last call, in order."""
        return self.book.take_changes()

    def restore(self, letters: Sequence[HeldLetter], seen: Sequence[bytes], *, now: float) -> None:
        """Put back what a mail store kept from before a restart: the seen ids (oldest
        first) and the held letters (oldest first). Letters the hold has no room for now are
        given up as overflow (counted, audited, and dropped from the store)."""
        given_up = self.book.restore(letters, seen, now=now, generation=self._generation())
        for letter in given_up:
            self._give_up(letter, now=now)

    def _generation(self) -> int:
        # A stand-in trust object without one still gets the timed retries.
        return int(getattr(self.trust, "generation", 0))

    def _hold(self, blob: bytes, unopened: _Unopened, *, now: float) -> None:
        # Kept with the best word on its sender: the signature's, if it got that far. The
        # book records the change itself; the audits come after it, so one that raises
        # leaves memory and record agreeing.
        peer, reason = unopened.peer, unopened.reason
        held, evicted = self.book.hold(blob, peer, reason, now=now, generation=self._generation())
        for letter in evicted:
            self._give_up(letter, now=now)
        if held == "again":
            return  # a copy the broker handed over again: held and audited once
        if held == "refused":
            if self.held.enabled:  # larger than the whole hold
                self._give_up(HeldLetter(blob, peer, reason, now), now=now)
            else:
                self._refuse(peer, unopened.error, now)
            return
        self.audit.record("mail_held", now=now, peer=peer, reason=reason)

    def _give_up(self, letter: HeldLetter, *, now: float) -> None:
        """Held mail pushed out by newer mail: lost, so counted and audited."""
        self.dropped["held_mail_overflow"] += 1
        self.audit.record(
            "reject",
            now=now,
            peer=letter.sender,
            reason="held_mail_overflow",
            waited=letter.reason,
            held_for=max(now - letter.held_at, 0.0),
        )

    def retry_held(self, *, now: float) -> list[Incoming]:
        """Open held mail again, if it is due (:meth:`deadline`): what opens now is returned
        for delivery (once per mail id), what fails for good is dropped (counted and audited
        by reason), the rest waits for the next round. Mail that opened in a call that
        raised (an audit sink failing) is returned by the next call."""
        book = self.book
        for key, letter in book.held.due(now=now, generation=self._generation()):
            opened = self._open(letter.blob, letter.sender, now=now)
            if isinstance(opened, _Unopened):
                if opened.reason in PASSING:
                    book.update(key, opened.reason)
                else:
                    book.drop(key)
                    self._refuse(opened.peer, opened.error, now)
                continue
            mail_id, incoming, created = opened
            fresh = book.release_opened(key, mail_id, created)
            if fresh:
                self._opened.append(incoming)
            else:
                self.repeats += 1  # a copy was delivered meanwhile
            self.audit.record(
                "mail_released",
                now=now,
                peer=incoming.sender,
                reason=letter.reason,
                held_for=max(now - letter.held_at, 0.0),
                repeat=not fresh,
            )
        opened_now, self._opened = self._opened, []
        return opened_now

    def deadline(self, now: float | None = None) -> float | None:
        """When :meth:`retry_held` next wants to run (0.0: mail opened and waits to be
        returned); ``now`` lets the hold's schedule see a clock set back."""
        if self._opened:
            return 0.0
        return self.held.deadline(self._generation(), now)
