"""One secure channel to one peer: handshake, session, rekey and retries (pure, sans-I/O).

A driver feeds it the frames a socket received and the time; it returns events (frames to
transmit, a session established, a message delivered) and raises a typed error for anything
it refuses, having changed nothing. Either side may start a rekey: a fresh XX handshake under
the same session id with the next epoch, while traffic keeps flowing under the current keys.
If both sides start one at once, the side with the smaller sender id keeps its attempt
(:func:`~zmqcomm.crypto.session.keeps_initiator_role`) and the other answers it.

In XX the initiator learns nothing about the responder's verdict from the handshake itself
(FINISH is the last message), so the responder's first message on a new session is an
encrypted CONFIRM, and only that makes the initiator's session established: a client that is
not trusted fails to connect instead of sending into the void.

A new session on an existing channel (a client that reconnected) is accepted only from the
same agent, and the current session stays in force until the new handshake completes: a
replayed or forged handshake message can cost the responder one DH, never the session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from zmqcomm.crypto.envelope import Sealed, SecureCodec
from zmqcomm.crypto.handshake import (
    CertificateChecker,
    Handshake,
    HandshakeResult,
    PeerInfo,
    RandomBytes,
    check_init,
)
from zmqcomm.crypto.keys import Identity, sender_from_agent_id
from zmqcomm.crypto.session import RekeyPolicy, Session, keeps_initiator_role
from zmqcomm.errors import (
    AuthenticationError,
    LocalProtocolError,
    RemoteProtocolError,
    SecurityError,
)
from zmqcomm.wire import ANONYMOUS, Body, Flags, Message, MessageType, WireCodec
from zmqcomm.wire.codec import ParsedFrame
from zmqcomm.wire.header import Header
from zmqcomm.wire.message_types import FIRST_SECURITY_TYPE, LAST_SECURITY_TYPE
from zmqcomm.wire.payload import Buffer

_ENCRYPTED = int(Flags.ENCRYPTED)
_MAX_RETRY_DELAY = 30.0
#: How long a responder waits for a new session's FINISH, in handshake timeouts. The
#: initiator doubles its wait on each retry; were the responder's fixed at one timeout, a
#: round trip slower than that (an overloaded host) could never complete a handshake.
_ANSWER_WAIT = 4


class TrustChecker(CertificateChecker, Protocol):
    """The trust store as the channel uses it: certificates at handshake, ids per message."""

    def lookup(self, agent_id: str, *, now: float) -> PeerInfo: ...


@dataclass(frozen=True)
class Transmit:
    """Frames the driver must send to the peer now, before anything sent after this call."""

    frames: Sequence[Buffer]


@dataclass(frozen=True)
class Established:
    """A handshake completed: a new session (``epoch == 0``) or a rekey."""

    agent_id: str
    roles: frozenset[str]
    session_id: int
    epoch: int


@dataclass(frozen=True)
class Delivered:
    """An authenticated message; ``agent_id`` is the peer the session authenticated."""

    agent_id: str
    message: Message


Event = Transmit | Established | Delivered


@dataclass
class _Pending:
    handshake: Handshake
    deadline: float
    delay: float


class SecureChannel:
    """Both directions of the secure link to one peer over one connection."""

    def __init__(
        self,
        *,
        identity: Identity,
        trust: TrustChecker,
        random_bytes: RandomBytes,
        codec: WireCodec | None = None,
        policy: RekeyPolicy | None = None,
        handshake_timeout: float = 2.0,
        max_failures: int = 16,
        expect_peer: str | None = None,
    ) -> None:
        if handshake_timeout <= 0 or max_failures < 1:
            raise LocalProtocolError("handshake_timeout and max_failures must be positive")
        self.identity = identity
        self.trust = trust
        self.codec = codec if codec is not None else WireCodec()
        self.policy = policy if policy is not None else RekeyPolicy()
        self.handshake_timeout = handshake_timeout
        #: How long a responder keeps a first session's handshake waiting for its FINISH.
        self.answer_timeout = handshake_timeout * _ANSWER_WAIT
        self.max_failures = max_failures
        self.expect_peer = expect_peer
        self._random = random_bytes
        self.session: Session | None = None
        self.secure: SecureCodec | None = None
        self.peer: PeerInfo | None = None
        self._peer_sender = ANONYMOUS
        self._pending: _Pending | None = None
        #: A rekey we answered, set aside when our own rekey fell due before its FINISH
        #: came: its initiator may already seal under it, so a late FINISH still completes it.
        self._answered: Handshake | None = None
        #: A new session's previous attempt, kept one more round: on a host slower than the
        #: handshake timeout, the answer to it comes after the retry (an initiator's REPLY, a
        #: responder's FINISH), and refusing that answer cost a whole retry each time.
        self._earlier: _Pending | None = None
        #: The initiator's Established, held back until the responder's CONFIRM opens.
        self._unconfirmed: Established | None = None
        #: Consecutive refused frames; the channel closes itself at ``max_failures``.
        self.failures = 0
        self.closed = False
        self.rekey_collisions = 0

    def __repr__(self) -> str:
        peer = self.peer.agent_id if self.peer else None
        return f"SecureChannel(peer={peer!r}, session={self.session!r}, closed={self.closed})"

    @property
    def established(self) -> bool:
        return self.secure is not None and self._unconfirmed is None and not self.closed

    @property
    def handshaking(self) -> bool:
        return self._pending is not None

    # -- starting ----------------------------------------------------------------------------

    def connect(self, *, now: float) -> list[Buffer]:
        """Start a new session as initiator; returns the INIT frames to send."""
        self._earlier = None
        return self._initiate(self._new_session_id(), 0, now=now, delay=self.handshake_timeout)

    def _handshake(
        self, initiator: bool, session_id: int, epoch: int, expect: str | None
    ) -> Handshake:
        return Handshake(
            initiator=initiator,
            identity=self.identity,
            trust=self.trust,
            session_id=session_id,
            epoch=epoch,
            random_bytes=self._random,
            expect_peer=expect,
        )

    def _new_session_id(self) -> int:
        session_id = 0
        while session_id == 0:
            session_id = int.from_bytes(self._random(4), "big")
        return session_id

    def _initiate(self, session_id: int, epoch: int, *, now: float, delay: float) -> list[Buffer]:
        expect = self.peer.agent_id if self.peer is not None and epoch else self.expect_peer
        handshake = self._handshake(True, session_id, epoch, expect)
        self._pending = _Pending(handshake, now + delay, delay)
        return self._frame(MessageType.HANDSHAKE_INIT, handshake.start(), session_id, epoch)

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, frames: Sequence[Buffer], *, now: float) -> list[Event]:
        """Handle frames from the peer. Refused input raises and changes nothing (but the
        failure count, which closes the channel at ``max_failures``)."""
        if self.closed:
            raise SecurityError("the channel is closed", reason="channel_closed")
        try:
            events = self._receive(frames, now=now)
        except (RemoteProtocolError, SecurityError):
            self._count_failure()
            raise
        self.failures = 0
        return events

    def _count_failure(self) -> None:
        if self.established:
            self.failures += 1
            if self.failures >= self.max_failures:
                self.closed = True

    def open_data(self, frame: Buffer, *, now: float) -> Delivered | None:
        """Data in one sealed frame under the current keys, from the peer of this session,
        that peer still trusted: the message almost every call gets, opened in few steps
        (the driver tries this before :meth:`receive`; fewer Python calls matter most when
        a process wakes up cold for each message).

        None, with nothing changed, for anything else (a handshake frame, an older epoch, a
        replay, a bad tag, a peer no longer trusted, a closed channel): :meth:`receive` then
        takes the frame the general way, which says what is wrong with it and counts it.
        Such a frame is looked at twice, which costs an attacker one more AEAD per frame,
        and at most ``max_failures`` in a row before the channel closes. Only a body that
        authenticated but does not unpack raises here (its counter is spent), counted as
        :meth:`receive` counts a refusal.
        """
        secure, peer = self.secure, self.peer
        if secure is None or peer is None or self._unconfirmed is not None or self.closed:
            return None
        # Revocation, trust expiry and edited roles bite on the next message (as in
        # _check_sealed_header); a peer no longer trusted has nothing decrypted.
        try:
            entry = self.trust.lookup(peer.agent_id, now=now)
        except SecurityError:
            return None
        try:
            message = secure.open_frame(frame, self._peer_sender)
        except RemoteProtocolError:
            self._count_failure()
            raise
        if message is None:
            return None
        self.peer = entry
        self.failures = 0
        return Delivered(entry.agent_id, message)

    def _receive(self, frames: Sequence[Buffer], *, now: float) -> list[Event]:
        parsed = self.codec.parse(frames)
        header = parsed.header
        msg_type = header.type
        # The types this layer owns (docs/protocol.md section 10); any other type is data.
        if FIRST_SECURITY_TYPE <= msg_type <= LAST_SECURITY_TYPE:
            return self._receive_security(parsed, now=now)
        # Everything else is data under the session: the common case, checked with plain
        # ints (an IntEnum comparison costs several times more, on every message).
        secure, peer = self.secure, self.peer
        if secure is None or peer is None:
            raise AuthenticationError("no session with this peer yet", reason="no_session")
        if self._unconfirmed is not None:
            raise AuthenticationError("data before the session was confirmed", reason="no_session")
        self._check_sealed_header(header, peer, now=now)
        return [Delivered(peer.agent_id, secure.decode_parsed(parsed, now=now))]

    def _check_sealed_header(self, header: Header, peer: PeerInfo, *, now: float) -> None:
        """A frame under the session (data or CONFIRM): encrypted, from the peer this session
        authenticated, and that peer still trusted."""
        if not header.flags & _ENCRYPTED:
            raise AuthenticationError(
                "plaintext frame on an encrypted session", reason="plaintext_refused"
            )
        if header.sender != self._peer_sender:
            raise AuthenticationError("frame names another sender", reason="wrong_sender")
        # Revocation and trust expiry bite on the next message, not the next handshake; so do
        # edited roles (the agent id is the key's fingerprint: the entry is the same key's).
        self.peer = self.trust.lookup(peer.agent_id, now=now)

    def _receive_security(self, parsed: ParsedFrame, *, now: float) -> list[Event]:
        header = parsed.header
        if header.type == MessageType.HANDSHAKE_INIT:
            return self._on_init(header.session, header.epoch, bytes(parsed.body), now=now)
        if header.type == MessageType.HANDSHAKE_REPLY:
            return self._on_reply(header.session, header.epoch, bytes(parsed.body), now=now)
        if header.type == MessageType.HANDSHAKE_FINISH:
            return self._on_finish(header.session, header.epoch, bytes(parsed.body), now=now)
        if header.type != MessageType.HANDSHAKE_CONFIRM:
            raise RemoteProtocolError(
                f"unknown security message type {header.type:#04x}", reason="unknown_type"
            )
        if self.secure is None or self.peer is None:
            raise AuthenticationError("no session with this peer yet", reason="no_session")
        self._check_sealed_header(header, self.peer, now=now)
        self.secure.decode_parsed(parsed, now=now)
        confirmed = self._unconfirmed
        if confirmed is None:
            raise AuthenticationError("unexpected CONFIRM", reason="unexpected_handshake")
        self._unconfirmed = None
        self._pending = None
        self._earlier = None  # a retry made while the CONFIRM was late is moot now
        return [confirmed]

    def _on_init(self, session_id: int, epoch: int, body: bytes, *, now: float) -> list[Event]:
        check_init(body)
        session = self.session
        if session is not None and session_id == session.session_id:
            if epoch <= session.epoch:
                raise AuthenticationError(
                    f"handshake for epoch {epoch}, already at {session.epoch}",
                    reason="handshake_replay",
                )
            if epoch != session.epoch + 1:
                raise RemoteProtocolError(f"rekey to epoch {epoch} skips ahead", reason="bad_epoch")
            pending = self._pending
            if (
                pending is not None
                and pending.handshake.initiator
                and pending.handshake.session_id == session_id
                and pending.handshake.epoch == epoch
                and keeps_initiator_role(self.identity.sender_id, self._peer_sender)
            ):
                self.rekey_collisions += 1  # both rekeyed at once; ours wins, theirs is moot
                return []
        elif session_id == 0 or epoch != 0:
            raise RemoteProtocolError("a new session must start at epoch 0", reason="bad_epoch")
        elif self._opening_to_expected_peer():
            # Both sides opened a session to each other at once (agents that message each
            # other first through a broker): the same tie-break as for rekeys keeps one.
            assert self.expect_peer is not None
            if keeps_initiator_role(
                self.identity.sender_id, sender_from_agent_id(self.expect_peer)
            ):
                self.rekey_collisions += 1
                return []
        expect = self.peer.agent_id if self.peer is not None else self.expect_peer
        handshake = self._handshake(False, session_id, epoch, expect)
        reply = handshake.respond(body, now=now)
        self._keep_earlier_answer(now)
        # The long wait only for a first session: beside one we hold, an answered INIT
        # holds off our rekeys while it waits, and anyone on the route could resend one
        # every few seconds, within the rekey budget.
        wait = self.answer_timeout if self.session is None else self.handshake_timeout
        self._pending = _Pending(handshake, now + wait, wait)
        return [Transmit(self._frame(MessageType.HANDSHAKE_REPLY, reply, session_id, epoch))]

    def _keep_earlier_answer(self, now: float) -> None:
        """We answer a new session's INIT: the new-session INIT we answered before it, if
        still waiting, is kept until its own deadline, since its initiator may have had our
        REPLY to it after all. Nothing else is: an attempt of our own that lost a
        simultaneous open is moot, as the peer has gone on to its own."""
        pending = self._pending
        keep = (
            pending is not None
            and not pending.handshake.initiator
            and not pending.handshake.complete
            and pending.handshake.epoch == 0
            and now < pending.deadline
        )
        self._earlier = pending if keep else None

    def _opening_to_expected_peer(self) -> bool:
        pending = self._pending
        return (
            pending is not None
            and pending.handshake.initiator
            and pending.handshake.epoch == 0
            and self.session is None
            and self.expect_peer is not None
        )

    def _on_reply(self, session_id: int, epoch: int, body: bytes, *, now: float) -> list[Event]:
        attempt = self._expect_attempt(session_id, epoch, initiator=True, now=now)
        handshake = attempt.handshake
        finish = handshake.finish(body, now=now)
        assert handshake.result is not None
        frames = self._frame(MessageType.HANDSHAKE_FINISH, finish, session_id, epoch)
        delay = attempt.delay
        established = self._install(handshake.result, session_id, epoch, now=now)
        if epoch == 0:
            # Keep the handshake pending (for its timer) until the responder confirms.
            self._unconfirmed = established
            self._pending = _Pending(handshake, now + delay, delay)
            return [Transmit(frames)]
        return [Transmit(frames), established]

    def _on_finish(self, session_id: int, epoch: int, body: bytes, *, now: float) -> list[Event]:
        answered = self._answered
        if (
            answered is not None
            and epoch
            and answered.session_id == session_id
            and answered.epoch == epoch
            and not answered.complete
        ):
            handshake = answered
        else:
            handshake = self._expect_attempt(session_id, epoch, initiator=False, now=now).handshake
        result = handshake.accept(body, now=now)
        established = self._install(result, session_id, epoch, now=now)
        if epoch:
            return [established]
        assert self.secure is not None
        confirm = self.secure.encode(MessageType.HANDSHAKE_CONFIRM, None, now=now)
        return [established, Transmit(confirm)]

    def _expect_attempt(
        self, session_id: int, epoch: int, *, initiator: bool, now: float
    ) -> _Pending:
        """The handshake in progress this message answers: the current one, or a new
        session's earlier attempt that has not timed out."""
        for attempt in (self._pending, self._earlier):
            if (
                attempt is not None
                and attempt.handshake.initiator == initiator
                and attempt.handshake.session_id == session_id
                and attempt.handshake.epoch == epoch
                and not attempt.handshake.complete
                and (attempt is self._pending or now < attempt.deadline)
            ):
                return attempt
        raise AuthenticationError(
            "handshake message matches no handshake in progress", reason="unexpected_handshake"
        )

    def _install(
        self, result: HandshakeResult, session_id: int, epoch: int, *, now: float
    ) -> Established:
        self._pending = None
        self._earlier = None
        self._unconfirmed = None
        self._answered = None
        jitter = int.from_bytes(self._random(2), "big") / 65536
        if epoch and self.session is not None:
            self.session.install(result.send_key, result.receive_key, now=now, jitter=jitter)
        else:
            self.session = Session(
                session_id=session_id,
                send_key=result.send_key,
                receive_key=result.receive_key,
                now=now,
                policy=self.policy,
                jitter=jitter,
            )
            self.secure = SecureCodec(self.session, self.codec, sender=self.identity.sender_id)
        self.peer = result.peer
        self._peer_sender = result.certificate.sender_id
        return Established(result.agent_id, result.peer.roles, session_id, epoch)

    # -- sending -----------------------------------------------------------------------------

    def seal(self, msg_type: int, payload: object, *, topic: str = "", now: float) -> list[Sealed]:
        """Encrypt one message for the peer."""
        return self._codec_for_send(now).encode(msg_type, payload, topic=topic, now=now)

    def seal_body(self, msg_type: int, body: Body, *, topic: str = "", now: float) -> list[Sealed]:
        """Encrypt a body built by the codec (a batch from a BatchingSender, say)."""
        return self._codec_for_send(now).seal(msg_type, body, topic=topic, now=now)

    def seal_many(
        self, msg_type: int, payloads: Sequence[object], *, topic: str = "", now: float
    ) -> list[Sealed]:
        """Encrypt several payloads as one batch frame (one AEAD call)."""
        secure = self._codec_for_send(now)
        return secure.seal(msg_type, self.codec.build_batch_of(payloads), topic=topic, now=now)

    def _codec_for_send(self, now: float) -> SecureCodec:
        if self.closed:
            raise SecurityError("the channel is closed", reason="channel_closed")
        if self.secure is None or self.peer is None or self._unconfirmed is not None:
            raise SecurityError("no session with this peer yet", reason="no_session")
        self.peer = self.trust.lookup(self.peer.agent_id, now=now)  # current roles too
        return self.secure

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = []
        if self._pending is not None:
            deadlines.append(self._pending.deadline)
        if self.session is not None:
            if self._pending is None:  # a rekey under way has its own (retry) deadline
                deadlines.append(self.session.rekey_deadline())
            expiry = self.session.next_deadline()
            if expiry is not None:
                deadlines.append(expiry)
        return min(deadlines) if deadlines else None

    @property
    def holds_superseded_keys(self) -> bool:
        """Whether the session keeps a receive key of an earlier epoch (its grace period)."""
        return self.session is not None and self.session.next_deadline() is not None

    def rekey_due(self, *, now: float) -> bool:
        """Whether the session is due a rekey (by count or age): after a send, whether
        :meth:`on_timer` has anything to do that a timer would not do as well."""
        session = self.session
        return session is not None and session.needs_rekey(now=now)

    def on_timer(self, *, now: float) -> list[Event]:
        """Retry a handshake that timed out, start a rekey that is due, erase old keys.

        Cheap enough to call after every burst of sends (the message-count trigger)."""
        if self.closed:
            return []
        if self.session is not None:
            self.session.on_timer(now=now)  # old keys go on time, handshake or not
        if self._earlier is not None and now >= self._earlier.deadline:
            self._earlier = None  # its ephemeral secret goes with it
        pending = self._pending
        if pending is not None:
            if now < pending.deadline:
                return []
            handshake = pending.handshake
            if not handshake.initiator:
                self._pending = None
                session = self.session
                if session is None:
                    return []  # a new session: the initiator retries; we just forget
                if handshake.epoch:
                    if not session.needs_rekey(now=now):
                        # A rekey we answered. Its initiator switched keys as it sent the
                        # FINISH, which may wait behind a full queue (or a long backlog):
                        # were it forgotten, that FINISH and all sealed after it would be
                        # refused for good. Kept (one per channel) until the FINISH or a
                        # newer INIT comes, or until our own rekey falls due: an INIT
                        # someone injected must not hold off our rekeys for ever.
                        self._pending = _Pending(handshake, now + pending.delay, pending.delay)
                        return []
                    # Our own rekey is due: it goes ahead (below); the answered one is set
                    # aside, so that its FINISH, if it was only late, still completes it.
                    self._answered = handshake
                # A new session answered beside the one we hold is forgotten as above; the
                # held session's own timers still run now (below), not a tick later.
            else:
                delay = min(pending.delay * 2, _MAX_RETRY_DELAY)
                # A new session retries under a fresh id: the responder may already hold the
                # old one (only our CONFIRM went missing), and would take a repeat for a
                # replay.
                session_id = handshake.session_id if handshake.epoch else self._new_session_id()
                frames = self._initiate(session_id, handshake.epoch, now=now, delay=delay)
                # A new session's answer names the attempt it is for (each has its own
                # id), so the one replaced is kept as long as the new one waits. A rekey's
                # retry reuses its ids, and a completed attempt only lacks its CONFIRM:
                # neither is kept.
                moot = handshake.epoch or handshake.complete
                self._earlier = None if moot else _Pending(handshake, now + delay, delay)
                return [Transmit(frames)]
        session = self.session
        if session is None:
            return []
        if session.needs_rekey(now=now):
            epoch = session.epoch + 1
            frames = self._initiate(
                session.session_id, epoch, now=now, delay=self.handshake_timeout
            )
            return [Transmit(frames)]
        return []

    def _frame(self, msg_type: int, body: bytes, session_id: int, epoch: int) -> list[Buffer]:
        return self.codec.assemble(msg_type, body, session=session_id, epoch=epoch)
