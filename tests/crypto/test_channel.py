"""One secure channel: handshake, data, batches, rekeys (count, collisions, grace), retries,
stale and replayed handshake messages, revocation, failure limits (pure, fake time)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from zmqcomm.crypto.channel import Delivered, Established, Event, SecureChannel, Transmit
from zmqcomm.crypto.handshake import RandomBytes
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import (
    AuthenticationError,
    RemoteProtocolError,
    ReplayError,
    SecurityError,
    UnknownPeerError,
    ZmqCommError,
)
from zmqcomm.wire import Body, MessageType, WireCodec
from zmqcomm.wire.payload import Buffer

T0 = 1_800_000_000.0
INIT = MessageType.HANDSHAKE_INIT
REPLY = MessageType.HANDSHAKE_REPLY
FINISH = MessageType.HANDSHAKE_FINISH
CODEC = WireCodec()


def _rng(seed: int) -> RandomBytes:
    return random.Random(seed).randbytes


def _reason(exc_info: pytest.ExceptionInfo[BaseException]) -> str:
    return str(getattr(exc_info.value, "reason", ""))


def _type(frames: Sequence[Buffer]) -> int:
    return CODEC.parse(frames).header.type


def _reframe(frames: Sequence[Buffer], *, session: int, epoch: int) -> list[Buffer]:
    """The same handshake body under other session and epoch header fields."""
    parsed = CODEC.parse(frames)
    return CODEC.assemble(parsed.header.type, bytes(parsed.body), session=session, epoch=epoch)


#: (established, handshaking) of a channel.
ESTABLISHED = (True, False)
NOTHING = (False, False)


def _state(channel: SecureChannel) -> tuple[bool, bool]:
    return channel.established, channel.handshaking


def _tampered(frames: Sequence[Buffer]) -> list[Buffer]:
    first = bytearray(frames[0])
    first[-1] ^= 0x01
    return [bytes(first), *frames[1:]]


@dataclass
class Peers:
    alice: Identity
    bob: Identity
    #: What alice trusts (bob, as a server) and what bob trusts (alice, as a worker).
    alice_trust: TrustStore
    bob_trust: TrustStore

    def channels(
        self,
        *,
        policy: RekeyPolicy | None = None,
        max_failures: int = 16,
        alice_expects: str | None = None,
    ) -> tuple[SecureChannel, SecureChannel]:
        a = SecureChannel(
            identity=self.alice,
            trust=self.alice_trust,
            random_bytes=_rng(1),
            policy=policy,
            max_failures=max_failures,
            expect_peer=alice_expects,
        )
        b = SecureChannel(
            identity=self.bob,
            trust=self.bob_trust,
            random_bytes=_rng(2),
            policy=policy,
            max_failures=max_failures,
        )
        return a, b


@pytest.fixture
def peers(tmp_path: Path) -> Peers:
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    alice_trust = TrustStore(tmp_path / "alice-trust")
    alice_trust.add(bob.public, ["server"])
    bob_trust = TrustStore(tmp_path / "bob-trust")
    bob_trust.add(alice.public, ["worker"])
    return Peers(alice, bob, alice_trust, bob_trust)


@dataclass
class Link:
    """One in-order pipe each way between two channels, as a ZeroMQ connection gives."""

    a: SecureChannel
    b: SecureChannel
    to_a: list[Sequence[Buffer]] = field(default_factory=list)
    to_b: list[Sequence[Buffer]] = field(default_factory=list)
    #: Message types delivered, in order.
    delivered: list[int] = field(default_factory=list)

    def pipe_to(self, receiver: SecureChannel) -> list[Sequence[Buffer]]:
        return self.to_a if receiver is self.a else self.to_b

    def send(self, sender: SecureChannel, frames: Sequence[Buffer]) -> None:
        self.pipe_to(self.b if sender is self.a else self.a).append(frames)

    def queue(self, sender: SecureChannel, events: list[Event]) -> list[Event]:
        """Queue ``sender``'s Transmit events; return the other events."""
        rest: list[Event] = []
        for event in events:
            if isinstance(event, Transmit):
                self.send(sender, event.frames)
            else:
                rest.append(event)
        return rest

    def deliver(self, receiver: SecureChannel, now: float) -> list[Event]:
        frames = self.pipe_to(receiver).pop(0)
        self.delivered.append(_type(frames))
        return self.queue(receiver, receiver.receive(frames, now=now))

    def pump(self, now: float) -> tuple[list[Event], list[Event]]:
        """Deliver until both pipes are empty; the events each side produced."""
        got_a: list[Event] = []
        got_b: list[Event] = []
        while self.to_a or self.to_b:
            while self.to_b:
                got_b += self.deliver(self.b, now)
            while self.to_a:
                got_a += self.deliver(self.a, now)
        return got_a, got_b


def _connect(
    a: SecureChannel, b: SecureChannel, now: float = T0
) -> tuple[Link, list[Event], list[Event]]:
    link = Link(a, b)
    link.send(a, a.connect(now=now))
    got_a, got_b = link.pump(now)
    return link, got_a, got_b


def _epochs(events: list[Event]) -> list[int]:
    """The epochs of the Established events."""
    return [event.epoch for event in events if isinstance(event, Established)]


def _delivered(events: list[Event]) -> list[Event]:
    return [event for event in events if isinstance(event, Delivered)]


def _payloads(events: list[Event]) -> list[object]:
    out: list[object] = []
    for event in events:
        assert isinstance(event, Delivered)
        out.extend(event.message.payloads)
    return out


def _roundtrip(link: Link, now: float, tag: str) -> None:
    """A message each way arrives intact."""
    link.send(link.a, link.a.seal(MessageType.DATA, f"{tag} from a", now=now))
    link.send(link.b, link.b.seal(MessageType.DATA, f"{tag} from b", now=now))
    got_a, got_b = link.pump(now)
    assert _payloads(got_a) == [f"{tag} from b"]
    assert _payloads(got_b) == [f"{tag} from a"]


# -- establishing -----------------------------------------------------------------------------


@pytest.mark.parametrize("alice_starts", [True, False])
def test_handshake_establishes_both_sides_with_roles_from_the_trust_store(
    alice_starts: bool, peers: Peers
) -> None:
    a, b = peers.channels()
    initiator, responder = (a, b) if alice_starts else (b, a)
    assert not a.established and a.next_deadline() is None
    link, got_init, got_resp = _connect(initiator, responder)
    got_a, got_b = (got_init, got_resp) if alice_starts else (got_resp, got_init)

    session_id = a.session.session_id if a.session else None
    assert session_id is not None and b.session is not None
    assert got_a == [Established(peers.bob.agent_id, frozenset({"server"}), session_id, 0)]
    assert got_b == [Established(peers.alice.agent_id, frozenset({"worker"}), session_id, 0)]
    assert link.delivered[:3] == [INIT, REPLY, FINISH]
    for channel in (a, b):
        assert channel.established and not channel.handshaking and not channel.closed
        assert channel.session is not None and channel.session.epoch == 0
    assert a.peer is not None and a.peer.agent_id == peers.bob.agent_id
    assert b.peer is not None and b.peer.agent_id == peers.alice.agent_id
    # The keys match: what one side seals, the other opens.
    _roundtrip(link, T0, "hello")


def test_data_round_trip_carries_payload_topic_type_and_authenticated_sender(
    peers: Peers,
) -> None:
    a, b = peers.channels()
    _connect(a, b)
    payload = {"reading": [1.5, 2.5], "unit": "volt"}
    frames = a.seal(MessageType.PUBLISH, payload, topic="sensors/v", now=T0 + 1)
    assert b"volt" not in bytes(frames[0])
    (event,) = b.receive(frames, now=T0 + 1)
    assert isinstance(event, Delivered)
    assert event.agent_id == peers.alice.agent_id
    assert event.message.payload == payload
    header = event.message.header
    assert header.type == MessageType.PUBLISH and header.topic == "sensors/v"
    assert header.is_encrypted and header.sender == peers.alice.sender_id
    (back,) = a.receive(b.seal(MessageType.REPLY, "ack", now=T0 + 1), now=T0 + 1)
    assert isinstance(back, Delivered) and back.agent_id == peers.bob.agent_id
    assert back.message.payload == "ack"


def test_roles_edited_in_the_trust_store_count_from_the_next_message(peers: Peers) -> None:
    """A peer demoted by its trust entry loses its old roles on its next message, as a
    revoked one loses its session: not only at the next handshake, a day later."""
    a, b = peers.channels()
    link, _, _ = _connect(a, b)
    assert b.peer is not None and b.peer.roles == frozenset({"worker"})
    TrustStore(peers.bob_trust.directory).add(peers.alice.public, ["observer"])
    later = T0 + 5  # past the store's watch interval
    link.send(a, a.seal(MessageType.DATA, "after", now=later))
    _, got_b = link.pump(later)
    assert _payloads(got_b) == ["after"]
    assert b.peer.roles == frozenset({"observer"})


def test_seal_many_round_trip_is_one_batch_frame(peers: Peers) -> None:
    a, b = peers.channels()
    _connect(a, b)
    payloads: list[object] = [{"i": i, "text": "x" * i} for i in range(20)]
    frames = a.seal_many(MessageType.DATA, payloads, topic="batch", now=T0)
    assert len(frames) == 1
    (event,) = b.receive(frames, now=T0)
    assert isinstance(event, Delivered)
    assert event.message.header.is_batch and event.message.header.topic == "batch"
    assert event.message.payloads == payloads
    # Batches and single messages share the counter: the next one still opens, once.
    single = a.seal(MessageType.DATA, "after", now=T0)
    assert _payloads(b.receive(single, now=T0)) == ["after"]
    with pytest.raises(ReplayError):
        b.receive(frames, now=T0)


def test_nothing_is_sealed_or_opened_before_a_session(peers: Peers) -> None:
    a, b = peers.channels()
    with pytest.raises(SecurityError) as caught:
        a.seal(MessageType.DATA, 1, now=T0)
    assert _reason(caught) == "no_session"
    with pytest.raises(SecurityError) as caught:
        a.seal_many(MessageType.DATA, [1, 2], now=T0)
    assert _reason(caught) == "no_session"
    # Frames of another established pair mean nothing here.
    c, d = peers.channels()
    _connect(c, d)
    with pytest.raises(SecurityError) as caught:
        b.receive(c.seal(MessageType.DATA, 1, now=T0), now=T0)
    assert _reason(caught) == "no_session"
    assert b.session is None and not b.handshaking


def test_responder_refuses_an_untrusted_initiator_at_finish(tmp_path: Path, peers: Peers) -> None:
    peers.bob_trust = TrustStore(tmp_path / "empty")
    a, b = peers.channels()
    link = Link(a, b)
    link.send(a, a.connect(now=T0))
    assert _epochs(link.deliver(b, T0)) == []  # INIT: REPLY goes out
    assert link.deliver(a, T0) == []  # REPLY: FINISH goes out
    with pytest.raises(UnknownPeerError) as caught:
        link.deliver(b, T0)
    assert _reason(caught) == "unknown_peer"
    assert b.session is None and not b.established
    # No confirmation ever comes back: the initiator is not established and cannot send.
    assert link.to_a == [] and not a.established
    with pytest.raises(SecurityError):
        a.seal(MessageType.DATA, "into the void", now=T0)


def test_initiator_refuses_an_untrusted_responder_at_reply(tmp_path: Path, peers: Peers) -> None:
    peers.alice_trust = TrustStore(tmp_path / "empty")
    a, b = peers.channels()
    link = Link(a, b)
    link.send(a, a.connect(now=T0))
    link.deliver(b, T0)
    with pytest.raises(UnknownPeerError) as caught:
        link.deliver(a, T0)
    assert _reason(caught) == "unknown_peer"
    assert link.to_b == []  # no FINISH
    assert a.session is None and not a.established and not b.established


def test_expect_peer_refuses_another_trusted_agent(peers: Peers) -> None:
    carol = Identity.generate("carol")
    peers.alice_trust.add(carol.public)
    a, b = peers.channels(alice_expects=carol.agent_id)
    link = Link(a, b)
    link.send(a, a.connect(now=T0))
    link.deliver(b, T0)
    with pytest.raises(AuthenticationError) as caught:
        link.deliver(a, T0)
    assert _reason(caught) == "unexpected_peer"
    assert not a.established and a.session is None


def test_a_peer_with_our_own_identity_is_refused(tmp_path: Path, peers: Peers) -> None:
    store = TrustStore(tmp_path / "self")
    store.add(peers.alice.public)
    a = SecureChannel(identity=peers.alice, trust=store, random_bytes=_rng(1))
    mirror = SecureChannel(identity=peers.alice, trust=store, random_bytes=_rng(2))
    link = Link(a, mirror)
    link.send(a, a.connect(now=T0))
    link.deliver(mirror, T0)
    with pytest.raises(AuthenticationError) as caught:
        link.deliver(a, T0)
    assert _reason(caught) == "reflected_id"
    assert not a.established


# -- bad and moved handshake messages ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (bytes(32), "bad_handshake"),
        (b"\x01" + bytes(33), "bad_handshake"),
        (b"", "bad_handshake"),
        (b"\x02" + bytes(32), "unknown_suite"),
        (b"\x00" + bytes(32), "unknown_suite"),
    ],
)
def test_a_bad_init_is_refused_without_a_state_change(
    body: bytes, reason: str, peers: Peers
) -> None:
    a, b = peers.channels()
    fresh = peers.channels()[1]
    with pytest.raises(RemoteProtocolError) as caught:
        fresh.receive(CODEC.assemble(INIT, body, session=99, epoch=0), now=T0)
    assert _reason(caught) == reason
    assert fresh.session is None and not fresh.handshaking and fresh.next_deadline() is None

    link, _, _ = _connect(a, b)
    session = b.session
    assert session is not None
    frames = CODEC.assemble(INIT, body, session=session.session_id, epoch=1)
    with pytest.raises(RemoteProtocolError) as caught:
        b.receive(frames, now=T0)
    assert _reason(caught) == reason
    assert b.session is session and session.epoch == 0
    assert b.established and not b.handshaking
    _roundtrip(link, T0, "still fine")


def test_init_moved_to_another_session_fails_at_the_initiator(peers: Peers) -> None:
    a, b = peers.channels()
    init = a.connect(now=T0)
    session_id = CODEC.parse(init).header.session
    # An attacker delivers the INIT under another session id and moves the REPLY back.
    (reply,) = b.receive(_reframe(init, session=session_id ^ 0x8000_0000, epoch=0), now=T0)
    assert isinstance(reply, Transmit)
    with pytest.raises(AuthenticationError) as caught:
        a.receive(_reframe(reply.frames, session=session_id, epoch=0), now=T0)
    assert _reason(caught) == "bad_handshake_tag"
    assert a.session is None and a.handshaking
    # The genuine exchange still completes.
    link = Link(a, b)
    link.send(a, init)
    got_a, got_b = link.pump(T0)
    assert _epochs(got_a) == _epochs(got_b) == [0]


def test_rekey_init_moved_to_another_epoch_fails_and_keeps_the_session(peers: Peers) -> None:
    a, b = peers.channels(policy=RekeyPolicy(max_messages=1, jitter=0.0))
    link, _, _ = _connect(a, b)
    assert a.session is not None and b.session is not None
    session_id = a.session.session_id
    b.receive(a.seal(MessageType.DATA, 0, now=T0), now=T0)
    (start,) = a.on_timer(now=T0)
    assert isinstance(start, Transmit) and CODEC.parse(start.frames).header.epoch == 1
    # Moved to a new session at epoch 0 (a reconnect, for bob): bob answers it there ...
    (reply,) = b.receive(_reframe(start.frames, session=session_id ^ 0x8000_0000, epoch=0), now=T0)
    assert isinstance(reply, Transmit)
    # ... and the answer moved back to the rekey fails the transcript check.
    with pytest.raises(AuthenticationError) as caught:
        a.receive(_reframe(reply.frames, session=session_id, epoch=1), now=T0)
    assert _reason(caught) == "bad_handshake_tag"
    assert a.session.epoch == 0 and b.session.epoch == 0 and a.established and b.established
    # Skipping an epoch is refused before any cryptography.
    with pytest.raises(RemoteProtocolError) as skipped:
        b.receive(_reframe(start.frames, session=session_id, epoch=2), now=T0)
    assert _reason(skipped) == "bad_epoch"
    # The genuine rekey INIT still completes.
    link.send(a, start.frames)
    got_a, got_b = link.pump(T0)
    assert _epochs(got_a) == _epochs(got_b) == [1]
    assert a.session.epoch == b.session.epoch == 1
    _roundtrip(link, T0, "after the rekey")


def test_a_replayed_init_on_an_established_channel_is_refused(peers: Peers) -> None:
    a, b = peers.channels(policy=RekeyPolicy(max_messages=1, jitter=0.0))
    link = Link(a, b)
    init = a.connect(now=T0)
    link.send(a, init)
    link.pump(T0)
    session = b.session
    assert session is not None and b.established
    with pytest.raises(AuthenticationError) as caught:
        b.receive(init, now=T0 + 1)
    assert _reason(caught) == "handshake_replay"
    assert b.session is session and session.epoch == 0 and not b.handshaking
    _roundtrip(link, T0 + 1, "after the replay")

    # The same after a rekey: the rekey's own INIT cannot be replayed either.
    (start,) = a.on_timer(now=T0 + 2)
    assert isinstance(start, Transmit)
    link.send(a, start.frames)
    link.pump(T0 + 2)
    assert session.epoch == 1
    for old in (init, start.frames):
        with pytest.raises(AuthenticationError) as caught:
            b.receive(old, now=T0 + 3)
        assert _reason(caught) == "handshake_replay"
    assert b.session is session and session.epoch == 1 and not b.handshaking
    _roundtrip(link, T0 + 3, "after the second replay")


@pytest.mark.parametrize("stale", [REPLY, FINISH])
def test_a_stale_reply_or_finish_is_refused_without_changing_the_session(
    stale: int, peers: Peers
) -> None:
    a, b = peers.channels(policy=RekeyPolicy(max_messages=1, jitter=0.0))
    link = Link(a, b)
    recorded: dict[int, Sequence[Buffer]] = {}
    link.send(a, a.connect(now=T0))
    while link.to_a or link.to_b:
        for receiver in (b, a):
            pipe = link.pipe_to(receiver)
            if pipe:
                recorded.setdefault(_type(pipe[0]), pipe[0])
                link.deliver(receiver, T0)
    assert a.established and b.established
    receiver = a if stale == REPLY else b
    session = receiver.session
    assert session is not None
    with pytest.raises(AuthenticationError) as caught:
        receiver.receive(recorded[stale], now=T0 + 1)
    assert _reason(caught) == "unexpected_handshake"
    assert receiver.session is session and session.epoch == 0
    assert receiver.established and not receiver.handshaking
    _roundtrip(link, T0 + 1, "after the stale message")

    # Nor does it match a rekey in progress on the same session (epoch 1, not 0).
    (start,) = a.on_timer(now=T0 + 2)
    assert isinstance(start, Transmit)
    link.send(a, start.frames)
    link.deliver(b, T0 + 2)  # bob answers: both sides now hold a pending epoch-1 handshake
    assert a.handshaking and b.handshaking
    with pytest.raises(AuthenticationError) as caught:
        receiver.receive(recorded[stale], now=T0 + 2)
    assert _reason(caught) == "unexpected_handshake"
    got_a, got_b = link.pump(T0 + 2)
    assert _epochs(got_a) == _epochs(got_b) == [1]
    assert session.epoch == 1


@pytest.mark.parametrize("msg_type", [0x44, 0x50, 0x7F])
def test_unknown_security_message_types_are_refused(msg_type: int, peers: Peers) -> None:
    a, b = peers.channels()
    link, _, _ = _connect(a, b)
    with pytest.raises(RemoteProtocolError) as caught:
        b.receive(CODEC.assemble(msg_type, b"x" * 33), now=T0)
    assert _reason(caught) == "unknown_type"
    _roundtrip(link, T0, "still fine")


def test_a_frame_naming_another_sender_is_refused(peers: Peers) -> None:
    a, b = peers.channels()
    _connect(a, b)
    first = bytearray(a.seal(MessageType.DATA, "x", now=T0)[0])
    first[24:40] = peers.bob.sender_id  # the sender field of the clear header
    with pytest.raises(AuthenticationError) as caught:
        b.receive([bytes(first)], now=T0)
    assert _reason(caught) == "wrong_sender"


# -- retries and timeouts ---------------------------------------------------------------------


@pytest.mark.parametrize("lost", ["init", "reply"])
def test_the_initiator_retries_after_the_handshake_timeout(lost: str, peers: Peers) -> None:
    a, b = peers.channels()
    first = a.connect(now=T0)
    assert a.handshaking and a.next_deadline() == T0 + a.handshake_timeout
    late_reply: list[Event] = []
    if lost == "reply":
        late_reply = b.receive(first, now=T0)  # bob answers; the answer is held up
        assert len(late_reply) == 1
    assert a.on_timer(now=T0 + a.handshake_timeout - 0.01) == []
    (retry,) = a.on_timer(now=T0 + a.handshake_timeout)
    assert isinstance(retry, Transmit) and _type(retry.frames) == INIT
    assert bytes(retry.frames[0]) != bytes(first[0])  # a fresh ephemeral key
    # The next attempt waits twice as long.
    assert a.next_deadline() == T0 + 3 * a.handshake_timeout
    now = T0 + a.handshake_timeout
    link = Link(a, b)
    link.send(a, retry.frames)
    got_a, got_b = link.pump(now)
    assert _epochs(got_a) == _epochs(got_b) == [0]
    assert _state(a) == _state(b) == ESTABLISHED
    if late_reply:
        (held,) = late_reply
        assert isinstance(held, Transmit)
        with pytest.raises(SecurityError):
            a.receive(held.frames, now=now)
        assert a.established
    _roundtrip(link, now, "after the retry")


def test_the_responder_forgets_a_handshake_that_timed_out(peers: Peers) -> None:
    a, b = peers.channels()
    link = Link(a, b)
    link.send(a, a.connect(now=T0))
    link.deliver(b, T0)
    link.deliver(a, T0)  # alice answers with FINISH; it is held up
    assert b.handshaking and b.next_deadline() == T0 + b.answer_timeout
    assert b.on_timer(now=T0 + b.answer_timeout - 0.01) == [] and b.handshaking
    assert b.on_timer(now=T0 + b.answer_timeout) == []
    assert _state(b) == NOTHING and b.next_deadline() is None
    with pytest.raises(AuthenticationError) as caught:
        link.deliver(b, T0 + b.answer_timeout + 1)
    assert _reason(caught) == "unexpected_handshake"
    assert b.session is None and not b.established and not a.established


def _slow_handshake(
    a: SecureChannel, b: SecureChannel, round_trip: float
) -> tuple[float, Counter[str]]:
    """Run a's handshake with b where every frame takes ``round_trip / 2`` to arrive, on a
    0.1 s tick; the time both are established, and the refused frames by reason."""
    in_flight: list[tuple[float, SecureChannel, Sequence[Buffer]]] = []  # (arrival, to, frames)
    refused: Counter[str] = Counter()

    def send(sender: SecureChannel, events: list[Event], now: float) -> None:
        to = b if sender is a else a
        for event in events:
            if isinstance(event, Transmit):
                in_flight.append((now + round_trip / 2, to, event.frames))

    now = T0
    send(a, [Transmit(a.connect(now=now))], now)
    while not (a.established and b.established) and now < T0 + 60:
        now = round(now + 0.1, 6)
        for item in [item for item in in_flight if item[0] <= now]:
            in_flight.remove(item)
            _, to, frames = item
            try:
                send(to, to.receive(frames, now=now), now)
            except SecurityError as exc:
                refused[str(exc.reason)] += 1
        send(a, a.on_timer(now=now), now)
        send(b, b.on_timer(now=now), now)
    assert a.established and b.established, f"no handshake in 60 s (refused: {refused})"
    return now, refused


def test_a_handshake_slower_than_the_timeout_completes_on_a_later_attempt(
    peers: Peers,
) -> None:
    """On an overloaded host a round trip can take longer than the handshake timeout. The
    initiator doubles its wait on each retry; the responder must wait long enough too, or
    every FINISH comes after it forgot its half, and no attempt ever completes."""
    a, b = peers.channels()
    now, _ = _slow_handshake(a, b, round_trip=3.5 * a.handshake_timeout)
    _roundtrip(Link(a, b), now, "after a slow handshake")


def test_the_answer_to_an_attempt_already_retried_still_completes_it(peers: Peers) -> None:
    """With a round trip of 1.5 timeouts, the REPLY to the first INIT comes after the retry
    went out. It used to be refused (unexpected_handshake) and the handshake waited for the
    retry's own round trips; now the first attempt completes in two round trips, and only
    the retry's REPLY, moot by then, is refused."""
    a, b = peers.channels()
    round_trip = 1.5 * a.handshake_timeout
    now, refused = _slow_handshake(a, b, round_trip)
    assert now <= T0 + 2 * round_trip + 0.1  # INIT, REPLY, FINISH, CONFIRM: no retry waited for
    assert refused == Counter(unexpected_handshake=1)
    _roundtrip(Link(a, b), now, "after the first attempt")


def test_the_responder_completes_the_earlier_of_two_inits_it_answered(peers: Peers) -> None:
    """Bob had both of alice's INITs (the first late) before her FINISH to his first REPLY
    came: the second INIT must not make him refuse it."""
    a, b = peers.channels()
    first = a.connect(now=T0)
    (retry,) = a.on_timer(now=T0 + a.handshake_timeout)
    assert isinstance(retry, Transmit)
    now = T0 + a.handshake_timeout + 0.5
    (reply_to_first,) = b.receive(first, now=now)
    (reply_to_retry,) = b.receive(retry.frames, now=now)
    assert isinstance(reply_to_first, Transmit) and isinstance(reply_to_retry, Transmit)
    (finish,) = a.receive(reply_to_first.frames, now=now)
    assert isinstance(finish, Transmit)
    events = b.receive(finish.frames, now=now)
    assert _epochs(events) == [0] and b.established
    (confirm,) = [event for event in events if isinstance(event, Transmit)]
    assert _epochs(a.receive(confirm.frames, now=now)) == [0] and a.established
    with pytest.raises(AuthenticationError) as caught:
        a.receive(reply_to_retry.frames, now=now)  # moot now: refused, the session stays
    assert _reason(caught) == "unexpected_handshake"
    _roundtrip(Link(a, b), now, "after the earlier INIT")


def test_the_initiator_keeps_one_earlier_attempt_and_only_while_the_next_waits(
    peers: Peers,
) -> None:
    a, b = peers.channels()
    first = a.connect(now=T0)
    (reply_to_first,) = b.receive(first, now=T0)
    (second,) = a.on_timer(now=T0 + 2)  # waits 4 s
    (third,) = a.on_timer(now=T0 + 6)  # waits 8 s; the first attempt is dropped
    assert isinstance(reply_to_first, Transmit) and isinstance(second, Transmit)
    assert isinstance(third, Transmit)
    with pytest.raises(AuthenticationError) as caught:
        a.receive(reply_to_first.frames, now=T0 + 6)
    assert _reason(caught) == "unexpected_handshake" and a.handshaking
    (reply_to_second,) = b.receive(second.frames, now=T0 + 6)
    assert isinstance(reply_to_second, Transmit)
    with pytest.raises(AuthenticationError) as caught:
        a.receive(reply_to_second.frames, now=T0 + 14)  # the third has timed out too
    assert _reason(caught) == "unexpected_handshake" and a.handshaking
    (finish,) = a.receive(reply_to_second.frames, now=T0 + 13.9)
    assert isinstance(finish, Transmit) and _type(finish.frames) == FINISH


def test_the_responder_keeps_its_earlier_answer_only_as_long_as_it_would_have_waited(
    peers: Peers,
) -> None:
    a, b = peers.channels()
    first = a.connect(now=T0)
    (second,) = a.on_timer(now=T0 + a.handshake_timeout)
    assert isinstance(second, Transmit)
    (reply_to_first,) = b.receive(first, now=T0 + 3)  # b waits for its FINISH until T0 + 11
    b.receive(second.frames, now=T0 + 4)
    assert isinstance(reply_to_first, Transmit)
    (finish,) = a.receive(reply_to_first.frames, now=T0 + 5)
    assert isinstance(finish, Transmit)
    with pytest.raises(AuthenticationError) as caught:
        b.receive(finish.frames, now=T0 + 3 + b.answer_timeout)
    assert _reason(caught) == "unexpected_handshake" and not b.established
    assert _epochs(b.receive(finish.frames, now=T0 + 2.99 + b.answer_timeout)) == [0]


def test_an_attempt_that_lost_a_simultaneous_open_is_not_taken_up_again(peers: Peers) -> None:
    """Found in review. The loser of a simultaneous open answers the winner's INIT; a late
    REPLY to the loser's own earlier attempt (possible where the two do not share one
    in-order pipe) used to complete that attempt and drop the handshake it was answering,
    which the winner was finishing: both refused each other until a retry."""
    alice_loses = peers.alice.sender_id > peers.bob.sender_id
    first, second = peers.channels()
    loser, winner = (first, second) if alice_loses else (second, first)
    loser_id, winner_id = (peers.alice, peers.bob) if alice_loses else (peers.bob, peers.alice)
    loser.expect_peer, winner.expect_peer = winner_id.agent_id, loser_id.agent_id
    first_init = loser.connect(now=T0)
    (retry,) = loser.on_timer(now=T0 + 2)  # the first attempt is kept
    assert isinstance(retry, Transmit)
    (late_reply,) = winner.receive(first_init, now=T0 + 2.5)  # not opening yet: answers
    winners_init = winner.connect(now=T0 + 2.6)
    assert winner.receive(retry.frames, now=T0 + 2.7) == []  # the tie-break keeps its own
    (loser_reply,) = loser.receive(winners_init, now=T0 + 3)  # the tie-break: answer it
    assert isinstance(late_reply, Transmit) and isinstance(loser_reply, Transmit)
    with pytest.raises(AuthenticationError) as caught:
        loser.receive(late_reply.frames, now=T0 + 3.1)
    assert _reason(caught) == "unexpected_handshake"
    (finish,) = winner.receive(loser_reply.frames, now=T0 + 3.2)
    assert isinstance(finish, Transmit)
    events = loser.receive(finish.frames, now=T0 + 3.3)
    (confirm,) = [event for event in events if isinstance(event, Transmit)]
    winner.receive(confirm.frames, now=T0 + 3.4)
    assert loser.established and winner.established


def test_no_earlier_attempt_outlives_the_handshake(peers: Peers) -> None:
    """An attempt kept for a late answer holds an ephemeral secret; none may stay once a
    session is up. Found in review: with the CONFIRM slower than the retry wait, the retry
    kept the completed attempt, and nothing dropped it until the next rekey."""
    a, b = peers.channels()
    _slow_handshake(a, b, round_trip=5.0)
    assert a._earlier is None and b._earlier is None  # the secret's holder


def test_a_reconnect_forgets_the_attempts_before_it(peers: Peers) -> None:
    a, b = peers.channels()
    first = a.connect(now=T0)
    (reply_to_first,) = b.receive(first, now=T0)
    assert a.on_timer(now=T0 + 2) != []  # retried: the first attempt is kept
    a.connect(now=T0 + 2.5)  # connect() again (a new connection): a fresh start
    assert isinstance(reply_to_first, Transmit)
    with pytest.raises(AuthenticationError) as caught:
        a.receive(reply_to_first.frames, now=T0 + 2.6)
    assert _reason(caught) == "unexpected_handshake" and a.handshaking


def test_a_peer_that_restarted_beside_a_held_session_completes_its_first_attempt(
    peers: Peers,
) -> None:
    """The responder keeps an earlier answer beside an established session too: the
    restarted initiator takes up its first attempt once the REPLY comes, so the responder
    must still know it."""
    a, b = peers.channels()
    _connect(a, b)
    restarted = SecureChannel(identity=peers.alice, trust=peers.alice_trust, random_bytes=_rng(9))
    first = restarted.connect(now=T0 + 10)
    (retry,) = restarted.on_timer(now=T0 + 12)
    assert isinstance(retry, Transmit)
    (reply_to_first,) = b.receive(first, now=T0 + 11.5)
    b.receive(retry.frames, now=T0 + 12.5)
    assert isinstance(reply_to_first, Transmit)
    (finish,) = restarted.receive(reply_to_first.frames, now=T0 + 12.6)
    assert isinstance(finish, Transmit)
    events = b.receive(finish.frames, now=T0 + 12.7)
    (confirm,) = [event for event in events if isinstance(event, Transmit)]
    assert _epochs(restarted.receive(confirm.frames, now=T0 + 12.8)) == [0]
    _roundtrip(Link(restarted, b), T0 + 13, "after the restart")


def test_a_kept_answer_is_erased_once_its_time_is_up(peers: Peers) -> None:
    a, b = peers.channels()
    first = a.connect(now=T0)
    (second,) = a.on_timer(now=T0 + 2)
    assert isinstance(second, Transmit)
    b.receive(first, now=T0 + 1)  # kept until T0 + 9
    b.receive(second.frames, now=T0 + 3)  # waits until T0 + 11
    assert b._earlier is not None  # the secret's holder
    deadline = b.next_deadline()
    assert deadline is not None and deadline <= T0 + 11
    b.on_timer(now=T0 + 11)
    assert b._earlier is None and b._pending is None


def test_new_session_inits_resent_beside_a_session_do_not_hold_its_rekeys_off(
    peers: Peers,
) -> None:
    """While a responder waits for the FINISH of an INIT it answered, its own rekeys wait.
    Beside an established session that wait stays one handshake timeout: with the longer
    wait of a first session, an INIT resent every 7 s (anyone on the route can make one,
    and it is well within the rekey budget) kept bob from ever rekeying."""
    a = peers.channels()[0]  # alice rekeys once a day: every rekey here is bob's
    b = SecureChannel(
        identity=peers.bob,
        trust=peers.bob_trust,
        random_bytes=_rng(2),
        policy=RekeyPolicy(max_age=10.0, hard_max_age=20.0, jitter=0.0),
    )
    link, _, _ = _connect(a, b)
    # Anyone can make a new-session INIT (it carries no identity yet).
    stranger = SecureChannel(identity=peers.alice, trust=peers.alice_trust, random_bytes=_rng(3))
    now = T0
    while now < T0 + 60:
        now += 1.0
        if (now - T0) % 7 == 0:
            b.receive(stranger.connect(now=now), now=now)  # bob's REPLY goes nowhere
        link.queue(a, a.on_timer(now=now))
        link.queue(b, b.on_timer(now=now))
        link.pump(now)
    assert b.session is not None and b.session.epoch >= 4, "bob's rekeys were held off"
    _roundtrip(link, now, "after the resent INITs")


# -- rekeys -----------------------------------------------------------------------------------


def test_rekey_by_message_count_loses_and_duplicates_nothing(peers: Peers) -> None:
    policy = RekeyPolicy(max_messages=4, jitter=0.0, grace_period=30.0)
    a, b = peers.channels(policy=policy)
    link, _, _ = _connect(a, b)
    assert a.session is not None and b.session is not None
    sent: dict[str, list[str]] = {"a": [], "b": []}
    got: dict[str, list[str]] = {"a": [], "b": []}
    established: dict[str, list[int]] = {"a": [], "b": []}
    opened_epochs: list[tuple[str, int, int]] = []  # (payload, its epoch, receiver's epoch)
    name = {id(a): "a", id(b): "b"}

    def send(channel: SecureChannel, now: float) -> list[bytes]:
        payload = f"{name[id(channel)]}{len(sent[name[id(channel)]])}"
        frames = channel.seal(MessageType.DATA, payload, now=now)
        sent[name[id(channel)]].append(payload)
        link.send(channel, frames)
        # The driver checks the count trigger after every send.
        for event in link.queue(channel, channel.on_timer(now=now)):
            raise AssertionError(f"unexpected {event}")
        return frames

    def deliver(receiver: SecureChannel, now: float) -> None:
        for event in link.deliver(receiver, now):
            if isinstance(event, Established):
                established[name[id(receiver)]].append(event.epoch)
            else:
                assert isinstance(event, Delivered)
                session = receiver.session
                assert session is not None
                got[name[id(receiver)]].append(event.message.payload)
                opened_epochs.append(
                    (event.message.payload, event.message.header.epoch, session.epoch)
                )

    now = T0 + 10
    for _ in range(4):
        send(a, now)  # the fourth send makes alice start the rekey
    assert a.handshaking and [_type(f) for f in link.to_b][-1] == INIT
    send(a, now)  # a4: old epoch, after the INIT
    send(b, now)  # b0, b1: bob's old epoch
    send(b, now)
    for _ in range(5):
        deliver(b, now)  # a0..a3 and the INIT: bob's REPLY queues after b0, b1
    send(b, now)  # b2: bob still sends under epoch 0 (no FINISH yet)
    deliver(b, now)  # a4
    send(a, now)  # a5: alice's old epoch too (no REPLY yet) ...
    held = link.to_b.pop()  # ... and it is held up on the way
    assert CODEC.parse(held).header.epoch == 0
    now += 1
    for _ in range(3):
        deliver(a, now)  # b0, b1, REPLY: alice installs epoch 1, FINISH queues
    assert a.session.epoch == 1 and established["a"] == [1]
    a6 = send(a, now)  # under the new epoch, queued behind the FINISH
    deliver(a, now)  # b2: sealed under epoch 0, opened after alice switched (grace period)
    assert opened_epochs[-1] == ("b2", 0, 1)
    assert [_type(f) for f in link.to_b] == [FINISH, MessageType.DATA]
    deliver(b, now)  # FINISH
    assert b.session.epoch == 1 and established["b"] == [1]
    deliver(b, now)  # a6
    assert opened_epochs[-1] == ("a6", 1, 1)
    link.to_b.append(held)
    deliver(b, now)  # a5 arrives after bob switched: the grace period opens it
    assert opened_epochs[-1] == ("a5", 0, 1)
    send(b, now)  # b3 under epoch 1
    deliver(a, now)
    assert opened_epochs[-1] == ("b3", 1, 1)

    assert _state(a) == _state(b) == ESTABLISHED
    assert got["a"] == sent["b"] == ["b0", "b1", "b2", "b3"]
    assert sorted(got["b"]) == sorted(sent["a"]) == [f"a{i}" for i in range(7)]
    # Replays are refused under either epoch: nothing is delivered twice.
    for again in (held, a6):
        with pytest.raises(ReplayError) as caught:
            b.receive(again, now=now)
        assert _reason(caught) == "replay"
    assert a.rekey_collisions == b.rekey_collisions == 0


def test_old_epoch_frames_in_flight_open_until_the_grace_period_ends(peers: Peers) -> None:
    policy = RekeyPolicy(max_messages=2, jitter=0.0, grace_period=30.0)
    a, b = peers.channels(policy=policy)
    link, _, _ = _connect(a, b)
    now = T0 + 5
    held = [a.seal(MessageType.DATA, f"held{i}", now=now) for i in range(3)]
    (start,) = a.on_timer(now=now)
    assert isinstance(start, Transmit)
    link.send(a, start.frames)
    link.pump(now)  # the rekey completes before the held frames arrive
    assert a.session is not None and b.session is not None
    assert a.session.epoch == b.session.epoch == 1 and b.session.open_epochs == [0, 1]
    assert b.next_deadline() == now + policy.grace_period
    (first,) = b.receive(held[0], now=now + 29)
    assert isinstance(first, Delivered) and first.message.payload == "held0"
    assert first.message.header.epoch == 0
    (second,) = b.receive(held[1], now=now + 29.9)
    assert isinstance(second, Delivered) and second.message.payload == "held1"
    # At the end of the grace period the old key is gone.
    with pytest.raises(ReplayError) as caught:
        b.receive(held[2], now=now + 30)
    assert _reason(caught) == "stale_epoch"
    assert b.on_timer(now=now + 30) == []
    assert b.session.open_epochs == [1]
    _roundtrip(link, now + 30, "after the grace period")


def test_simultaneous_rekeys_resolve_to_exactly_one_handshake(peers: Peers) -> None:
    policy = RekeyPolicy(max_messages=2, jitter=0.0)
    a, b = peers.channels(policy=policy)
    link, _, _ = _connect(a, b)
    a_wins = peers.alice.sender_id < peers.bob.sender_id
    winner, loser = (a, b) if a_wins else (b, a)
    now = T0 + 1
    for channel in (a, b):
        for i in range(2):
            link.send(channel, channel.seal(MessageType.DATA, i, now=now))
    # Both hit the count at once: two INITs cross on the wire.
    for channel in (a, b):
        (start,) = channel.on_timer(now=now)
        assert isinstance(start, Transmit) and _type(start.frames) == INIT
        link.send(channel, start.frames)
    link.delivered.clear()
    got_a, got_b = link.pump(now)

    assert Counter(link.delivered) == Counter({MessageType.DATA: 4, INIT: 2, REPLY: 1, FINISH: 1})
    assert winner.rekey_collisions == 1 and loser.rekey_collisions == 0
    assert _epochs(got_a) == _epochs(got_b) == [1]
    assert _payloads(_delivered(got_a)) == [0, 1]
    assert _payloads(_delivered(got_b)) == [0, 1]
    assert a.session is not None and b.session is not None
    assert a.session.epoch == b.session.epoch == 1
    assert not a.handshaking and not b.handshaking
    assert a.on_timer(now=now) == [] and b.on_timer(now=now) == []
    _roundtrip(link, now, "after the collision")
    assert a.session.epoch == b.session.epoch == 1


def test_the_hard_rekey_limit_stops_sending_until_a_rekey_completes(peers: Peers) -> None:
    policy = RekeyPolicy(max_messages=2, hard_max_messages=3, jitter=0.0)
    a, b = peers.channels(policy=policy)
    link, _, _ = _connect(a, b)
    for i in range(3):
        link.send(a, a.seal(MessageType.DATA, i, now=T0))
    with pytest.raises(SecurityError) as caught:
        a.seal(MessageType.DATA, "one too many", now=T0)
    assert _reason(caught) == "rekey_overdue"
    with pytest.raises(SecurityError) as caught:
        a.seal_many(MessageType.DATA, [1, 2], now=T0)
    assert _reason(caught) == "rekey_overdue"
    (start,) = a.on_timer(now=T0)
    assert isinstance(start, Transmit)
    link.send(a, start.frames)
    _, got_b = link.pump(T0)
    assert _payloads(_delivered(got_b)) == [0, 1, 2]
    assert a.session is not None and a.session.epoch == 1
    _roundtrip(link, T0, "after the rekey")


def test_next_deadline_follows_handshake_rekey_age_and_grace(peers: Peers) -> None:
    policy = RekeyPolicy(max_age=100.0, jitter=0.0, grace_period=30.0)
    a, b = peers.channels(policy=policy)
    a.connect(now=T0)
    assert a.next_deadline() == T0 + a.handshake_timeout
    a, b = peers.channels(policy=policy)
    link, _, _ = _connect(a, b, now=T0)
    assert a.next_deadline() == b.next_deadline() == T0 + 100.0
    assert a.on_timer(now=T0 + 99.9) == []
    (start,) = a.on_timer(now=T0 + 100.0)  # the age trigger
    assert isinstance(start, Transmit) and _type(start.frames) == INIT
    link.send(a, start.frames)
    link.pump(T0 + 100.0)
    # Now: the next rekey by age, or the old key's erasure, whichever is first.
    assert a.next_deadline() == T0 + 100.0 + 30.0
    a.on_timer(now=T0 + 130.0)
    assert a.next_deadline() == T0 + 200.0


def test_old_keys_are_erased_on_time_while_a_later_rekey_is_pending(peers: Peers) -> None:
    policy = RekeyPolicy(max_messages=2, jitter=0.0, grace_period=30.0)
    a, b = peers.channels(policy=policy)
    link, _, _ = _connect(a, b)
    for _ in range(2):
        a.seal(MessageType.DATA, "x", now=T0 + 1)
    (start,) = a.on_timer(now=T0 + 1)
    assert isinstance(start, Transmit)
    link.send(a, start.frames)
    link.pump(T0 + 1)
    assert a.session is not None and a.session.open_epochs == [0, 1]
    # A second rekey starts at T0 + 20 and bob never answers it.
    for _ in range(2):
        a.seal(MessageType.DATA, "x", now=T0 + 20)
    (again,) = a.on_timer(now=T0 + 20)
    assert isinstance(again, Transmit) and a.handshaking
    expiry = T0 + 1 + policy.grace_period
    a.on_timer(now=expiry)
    assert a.session.open_epochs == [1]
    deadline = a.next_deadline()
    assert deadline is not None and deadline > expiry


def test_next_deadline_is_not_in_the_past_while_an_age_rekey_is_pending(peers: Peers) -> None:
    policy = RekeyPolicy(max_age=100.0, jitter=0.0)
    a, b = peers.channels(policy=policy)
    _connect(a, b)
    now = T0 + 100.0
    (start,) = a.on_timer(now=now)
    assert isinstance(start, Transmit) and a.handshaking
    assert a.on_timer(now=now) == []  # nothing more to do until the retry
    deadline = a.next_deadline()
    assert deadline is not None and deadline > now


# -- trust and failures -----------------------------------------------------------------------


def test_revocation_refuses_the_next_message(peers: Peers) -> None:
    a, b = peers.channels()
    link, _, _ = _connect(a, b)
    _roundtrip(link, T0, "before")
    frames = a.seal(MessageType.DATA, "after revocation", now=T0 + 1)
    assert peers.bob_trust.revoke(peers.alice.agent_id)
    with pytest.raises(UnknownPeerError) as caught:
        b.receive(frames, now=T0 + 1)
    assert _reason(caught) == "revoked"
    # Bob will not send to a revoked peer either; alice, who still trusts bob, can.
    with pytest.raises(UnknownPeerError) as caught:
        b.seal(MessageType.DATA, "to a revoked peer", now=T0 + 1)
    assert _reason(caught) == "revoked"
    assert a.established
    peers.alice_trust.revoke(peers.bob.agent_id)
    with pytest.raises(UnknownPeerError) as caught:
        a.seal_many(MessageType.DATA, [1], now=T0 + 1)
    assert _reason(caught) == "revoked"


def test_consecutive_bad_frames_close_the_channel_and_a_good_one_resets_the_count(
    peers: Peers,
) -> None:
    a, b = peers.channels(max_failures=3)
    _connect(a, b)

    def bad(now: float) -> None:
        with pytest.raises(ZmqCommError):
            b.receive(_tampered(a.seal(MessageType.DATA, "x", now=now)), now=now)

    bad(T0)
    bad(T0)
    assert b.failures == 2 and b.established
    assert _payloads(b.receive(a.seal(MessageType.DATA, "good", now=T0), now=T0)) == ["good"]
    assert b.failures == 0
    bad(T0)
    with pytest.raises(RemoteProtocolError):
        b.receive([b"garbage that is no frame"], now=T0)
    assert b.failures == 2 and b.established and not b.closed
    with pytest.raises(AuthenticationError) as caught:
        b.receive(_tampered(a.seal(MessageType.DATA, "x", now=T0)), now=T0)
    assert _reason(caught) == "bad_tag"
    assert (b.closed, b.established) == (True, False)
    # Closed for good: even a genuine frame, and sending, are refused.
    for attempt in (
        lambda: b.receive(a.seal(MessageType.DATA, "good", now=T0), now=T0),
        lambda: b.seal(MessageType.DATA, "x", now=T0),
    ):
        with pytest.raises(SecurityError) as closed:
            attempt()
        assert _reason(closed) == "channel_closed"
    assert b.on_timer(now=T0 + 1e6) == []


def test_a_late_finish_still_completes_the_rekey_it_answers(peers: Peers) -> None:
    """The FINISH can wait behind a full queue for longer than the handshake timeout, and
    its initiator already seals under the new keys: the answering side must still take it
    (it used to forget the rekey after 2 s and refuse all that followed, for good)."""
    a, b = peers.channels(policy=RekeyPolicy(max_messages=2, jitter=0.0))
    link, _, _ = _connect(a, b)
    for _ in range(2):
        link.send(a, a.seal(MessageType.DATA, "x", now=T0 + 1))
    (start,) = a.on_timer(now=T0 + 1)
    assert isinstance(start, Transmit)
    link.send(a, start.frames)
    while link.to_b:  # bob answers the INIT; alice's FINISH and her next data wait
        link.deliver(b, T0 + 1)
    link.deliver(a, T0 + 1)  # alice takes the REPLY: FINISH queued, she is on epoch 1
    link.send(a, a.seal(MessageType.DATA, "under the new keys", now=T0 + 1))
    late = T0 + 1 + 10 * b.handshake_timeout
    assert b.on_timer(now=late) == [] and b.handshaking  # still waiting for that FINISH
    _, got_b = link.pump(late)
    assert _payloads(_delivered(got_b)) == ["under the new keys"]
    assert b.session is not None and b.session.epoch == 1


def test_an_answered_rekey_that_never_finishes_does_not_hold_off_our_own(peers: Peers) -> None:
    """Kept for a late FINISH, but not for ever: an INIT someone injected would otherwise
    stop this side's own rekeys."""
    policy = RekeyPolicy(max_age=100.0, jitter=0.0)
    a, b = peers.channels(policy=policy)
    link, _, _ = _connect(a, b, now=T0)
    # An INIT for the next epoch, answered by bob, whose FINISH never comes.
    intruder, _ = peers.channels(policy=policy)
    assert a.session is not None
    forged = intruder._initiate(a.session.session_id, 1, now=T0 + 1, delay=2.0)
    assert link.queue(b, b.receive(forged, now=T0 + 1)) == []  # its REPLY goes to alice
    assert b.handshaking
    assert b.on_timer(now=T0 + 50) == []  # before bob's own rekey: still kept
    (own,) = b.on_timer(now=T0 + 100)  # bob's own rekey by age is due: it goes ahead
    assert isinstance(own, Transmit) and _type(own.frames) == INIT


def test_a_late_finish_completes_its_rekey_even_once_our_own_rekey_is_due(
    peers: Peers,
) -> None:
    """Bob's own rekey falls due while alice's FINISH is late: his rekey goes ahead, and the
    answered one is set aside rather than dropped, so the FINISH still completes it (the
    final review: dropped, it and all alice sealed after it were refused, and bob's own
    INIT for the same epoch was refused at alice as a replay, for good)."""
    a, b = peers.channels(policy=RekeyPolicy(max_messages=3, jitter=0.0))
    link, _, _ = _connect(a, b)
    now = T0 + 1
    for _ in range(3):
        link.send(a, a.seal(MessageType.DATA, "x", now=now))
    for _ in range(3):
        link.send(b, b.seal(MessageType.DATA, "y", now=now))  # bob's own rekey is due
    link.pump(now)
    (start,) = a.on_timer(now=now)
    assert isinstance(start, Transmit)
    link.send(a, start.frames)
    link.deliver(b, now)  # bob answers
    link.deliver(a, now)  # alice takes the REPLY: FINISH queued, she is on epoch 1
    link.send(a, a.seal(MessageType.DATA, "under the new keys", now=now))
    late = now + 2 * b.handshake_timeout
    (own,) = b.on_timer(now=late)  # bob's own rekey goes ahead
    assert isinstance(own, Transmit) and _type(own.frames) == INIT
    while link.to_b:
        got = link.deliver(b, late)
    assert b.session is not None and b.session.epoch == 1
    assert _payloads(_delivered(got)) == ["under the new keys"]
    assert not b.handshaking  # his own INIT for epoch 1 is moot: alice refuses it as a replay


# -- the one-frame shortcut (SecureChannel.open_data) --------------------------------------


def test_open_data_leaves_what_it_does_not_open_to_receive_with_nothing_changed(
    peers: Peers,
) -> None:
    policy = RekeyPolicy(max_messages=2, jitter=0.0, grace_period=30.0)
    a, b = peers.channels(policy=policy)
    link, _, _ = _connect(a, b)
    (frame,) = a.seal(MessageType.DATA, "once", now=T0)
    (held,) = a.seal(MessageType.DATA, "under the old keys", now=T0)
    delivered = b.open_data(frame, now=T0)
    assert delivered is not None and delivered.message.payload == "once"
    assert b.open_data(frame, now=T0) is None  # a replay: receive() says so
    with pytest.raises(ReplayError):
        b.receive([frame], now=T0)
    tampered = bytearray(held)
    tampered[-1] ^= 1
    assert b.open_data(bytes(tampered), now=T0) is None  # a bad tag: the window stays
    (start,) = a.on_timer(now=T0)
    assert isinstance(start, Transmit)
    link.send(a, start.frames)
    link.pump(T0)  # rekeyed: the held frame is under a key in its grace period
    assert b.open_data(held, now=T0 + 1) is None
    assert _payloads(b.receive([held], now=T0 + 1)) == ["under the old keys"]


def test_open_data_opens_nothing_from_a_peer_no_longer_trusted(peers: Peers) -> None:
    a, b = peers.channels()
    _connect(a, b)
    (frame,) = a.seal(MessageType.DATA, "after the revocation", now=T0)
    assert peers.bob_trust.revoke(peers.alice.agent_id)
    assert b.open_data(frame, now=T0) is None
    with pytest.raises(UnknownPeerError) as caught:
        b.receive([frame], now=T0)
    assert _reason(caught) == "revoked"


def test_open_data_raises_for_an_authenticated_body_that_does_not_unpack(peers: Peers) -> None:
    a, b = peers.channels()
    _connect(a, b)
    assert a.secure is not None
    # 0xc1 is the one byte msgpack never uses: the peer itself sealed garbage.
    (garbage,) = a.secure.seal(MessageType.DATA, Body(b"\xc1", 0, []), now=T0)
    with pytest.raises(RemoteProtocolError) as caught:
        b.open_data(garbage, now=T0)
    assert _reason(caught) == "bad_msgpack"
    assert b.failures == 1  # counted as receive() counts a refusal
    (fine,) = a.seal(MessageType.DATA, "next", now=T0)
    delivered = b.open_data(fine, now=T0)
    assert delivered is not None and delivered.message.payload == "next"
    assert b.failures == 0
