"""Mail that cannot be opened yet: acknowledged, held, opened again later, delivered once.

The tunnel core is driven directly with fake time (``now=``); the broker is played by the
test, as in test_tunnel_core.py.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.sealed import seal
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.node.held_mail import RETRY_BATCH, RETRY_FIRST, RETRY_MAX, HeldMail
from zmqcomm.node.messages import Incoming
from zmqcomm.node.tunnel import HopMessage, Tunnels
from zmqcomm.wire import Message, MessageType, WireCodec

NOW = 1_800_000_000.0
_codec = WireCodec()
_stored_ids = itertools.count(1)


@dataclass
class Pair:
    """Alice writes to dave, who does not trust her yet (she trusts him)."""

    alice: Identity
    dave: Identity
    sender: Tunnels
    reader: Tunnels
    dave_trust: TrustStore
    audit: MemoryAuditLog

    def mail(self, text: str, *, now: float = NOW) -> bytes:
        public = self.sender.trust.lookup(self.dave.agent_id, now=now).public
        hop = self.sender.mail_message(
            self.dave.agent_id, public, MessageType.DATA, text, topic="", now=now
        )
        assert isinstance(hop.payload, bytes)
        return hop.payload

    def deliver(self, blob: bytes, *, now: float = NOW) -> tuple[list[HopMessage], list[Incoming]]:
        """The broker hands ``blob`` to dave as stored mail."""
        payload = [next(_stored_ids), blob]
        frames = _codec.encode(MessageType.MAIL_DELIVER, payload, topic=self.alice.agent_id)
        message: Message = _codec.decode(frames)
        return self.reader.on_hop(message, now=now)

    def trust_alice(self) -> None:
        self.dave_trust.add(self.alice.public, roles=["agent"])


def make_pair(tmp_path: Path, **reader_options: object) -> Pair:
    alice, dave = Identity.generate("alice"), Identity.generate("dave")
    alice_trust = TrustStore(tmp_path / "alice")
    alice_trust.add(dave.public, roles=["agent"])
    dave_trust = TrustStore(tmp_path / "dave")
    audit = MemoryAuditLog()
    sender = Tunnels(identity=alice, trust=alice_trust, random_bytes=os.urandom, now=NOW)
    reader = Tunnels(
        identity=dave,
        trust=dave_trust,
        random_bytes=os.urandom,
        now=NOW,
        audit=audit,
        **reader_options,  # type: ignore[arg-type]
    )
    return Pair(alice, dave, sender, reader, dave_trust, audit)


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_pair(tmp_path)


def acked(out: list[HopMessage]) -> bool:
    return [hop.msg_type for hop in out] == [MessageType.MAIL_ACK]


def payloads(incoming: list[Incoming]) -> list[object]:
    return [m.payload for m in incoming]


def test_mail_from_a_sender_not_yet_trusted_is_held_and_delivered_once_trusted(
    pair: Pair,
) -> None:
    out, incoming = pair.deliver(pair.mail("hello"))
    # Acknowledged, so the broker frees the slot; not delivered, not dropped: held.
    assert acked(out) and incoming == []
    assert len(pair.reader.mailroom.held) == 1 and pair.reader.table.rejected == {}
    [line] = pair.audit.events("mail_held")
    assert (line["peer"], line["reason"]) == (pair.alice.agent_id, "unknown_peer")
    assert pair.reader.mailroom.retry_held(now=NOW) == []  # not due yet
    deadline = pair.reader.next_deadline()
    assert deadline is not None and deadline > NOW

    pair.trust_alice()
    assert pair.reader.next_deadline() == -math.inf  # the trust store changed: due now
    [message] = pair.reader.mailroom.retry_held(now=NOW)
    assert (message.payload, message.via, message.sender) == ("hello", "mail", pair.alice.agent_id)
    assert message.roles == frozenset({"agent"})
    assert len(pair.reader.mailroom.held) == 0 and pair.reader.mailroom.held.released == 1
    assert pair.reader.mailroom.retry_held(now=NOW + RETRY_MAX) == []
    assert [r["reason"] for r in pair.audit.events("mail_released")] == ["unknown_peer"]


def test_held_mail_is_delivered_once_however_often_the_broker_hands_it_over(
    pair: Pair,
) -> None:
    blob = pair.mail("once")
    for _ in range(2):  # a broker that crashed before our acknowledgement counted
        out, incoming = pair.deliver(blob)
        assert acked(out) and incoming == []
    assert len(pair.reader.mailroom.held) == 1 and len(pair.audit.events("mail_held")) == 1
    pair.trust_alice()
    assert payloads(pair.reader.mailroom.retry_held(now=NOW)) == ["once"]
    # And once more after it was delivered: acknowledged, known by its mail id, dropped.
    out, incoming = pair.deliver(blob)
    assert acked(out) and incoming == [] and len(pair.reader.mailroom.held) == 0


def test_held_mail_handed_over_again_after_the_sender_is_trusted_is_delivered_once(
    pair: Pair,
) -> None:
    blob = pair.mail("one copy")
    pair.deliver(blob)
    pair.trust_alice()
    # The broker hands the same mail over again before the hold's next try: it opens now.
    out, incoming = pair.deliver(blob)
    assert acked(out) and payloads(incoming) == ["one copy"]
    # The held copy then opens too, and is known by its mail id.
    assert pair.reader.mailroom.retry_held(now=NOW) == []
    assert len(pair.reader.mailroom.held) == 0 and pair.reader.mailroom.held.released == 0
    [line] = pair.audit.events("mail_released")
    assert line["repeat"] is True


def test_mail_dated_ahead_of_our_clock_waits_until_the_clock_catches_up(pair: Pair) -> None:
    pair.trust_alice()
    out, incoming = pair.deliver(pair.mail("early", now=NOW + 1000), now=NOW)
    assert acked(out) and incoming == []
    assert [r["reason"] for r in pair.audit.events("mail_held")] == ["sealed_from_future"]
    # Tried again on the schedule: still ahead by more than the skew allowed (300 s).
    assert pair.reader.mailroom.retry_held(now=NOW + RETRY_FIRST) == []
    assert len(pair.reader.mailroom.held) == 1
    later = NOW + 800
    deadline = pair.reader.next_deadline()
    assert deadline is not None and deadline <= later
    assert payloads(pair.reader.mailroom.retry_held(now=later)) == ["early"]
    assert pair.reader.table.rejected == {}


def test_the_hold_gives_up_the_oldest_first_counted_and_audited(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, max_held_mail=2)
    for text in ("m0", "m1", "m2"):
        pair.deliver(pair.mail(text))
    assert len(pair.reader.mailroom.held) == 2
    assert pair.reader.dropped == {"held_mail_overflow": 1}
    [line] = pair.audit.events("reject", reason="held_mail_overflow")
    assert line["peer"] == pair.alice.agent_id and line["waited"] == "unknown_peer"
    pair.trust_alice()
    assert payloads(pair.reader.mailroom.retry_held(now=NOW)) == ["m1", "m2"]


def test_the_hold_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    first, second = pair.mail("a" * 1000), pair.mail("b" * 1000)
    pair = make_pair(tmp_path / "again", max_held_mail_bytes=len(first) + len(second) // 2)
    for text in ("a" * 1000, "b" * 1000):
        pair.deliver(pair.mail(text))
    assert len(pair.reader.mailroom.held) == 1
    assert pair.reader.mailroom.held.bytes <= pair.reader.mailroom.held.max_bytes
    assert pair.reader.dropped == {"held_mail_overflow": 1}
    pair.trust_alice()
    assert payloads(pair.reader.mailroom.retry_held(now=NOW)) == ["b" * 1000]


def test_permanently_bad_mail_is_still_dropped_at_once(pair: Pair, tmp_path: Path) -> None:
    pair.trust_alice()
    carol = Identity.generate("carol")
    to_carol = make_pair(tmp_path / "carol")
    to_carol.sender.trust.add(carol.public)
    public = to_carol.sender.trust.lookup(carol.agent_id, now=NOW).public
    for_carol = to_carol.sender.mail_message(
        carol.agent_id, public, MessageType.DATA, "not for dave", topic="", now=NOW
    ).payload
    assert isinstance(for_carol, bytes)
    too_old = pair.mail("old", now=NOW - pair.reader.mailroom.max_age - 1)
    for blob in (b"\x00" * 100, for_carol, too_old):
        out, incoming = pair.deliver(blob)
        assert acked(out) and incoming == []
    assert len(pair.reader.mailroom.held) == 0
    assert pair.reader.table.rejected == {"bad_seal": 2, "sealed_expired": 1}
    assert pair.audit.events("mail_held") == []


def test_held_mail_that_can_never_open_now_is_dropped_at_the_next_try(pair: Pair) -> None:
    revoked_meanwhile, aged_out = pair.mail("revoked"), pair.mail("too old by then")
    pair.deliver(revoked_meanwhile)
    assert len(pair.reader.mailroom.held) == 1
    pair.dave_trust.revoke(pair.alice.agent_id)  # the operator's decision: not a passing one
    assert pair.reader.mailroom.retry_held(now=NOW) == []
    assert len(pair.reader.mailroom.held) == 0
    assert pair.reader.table.rejected == {"revoked": 1}
    assert [line["peer"] for line in pair.audit.events("reject", reason="revoked")] == [
        pair.alice.agent_id
    ]

    pair.trust_alice()  # lifts the revocation
    pair.dave_trust.remove(pair.alice.agent_id)
    pair.deliver(aged_out)
    later = NOW + pair.reader.mailroom.max_age + 1
    pair.trust_alice()
    assert pair.reader.mailroom.retry_held(now=later) == []
    assert len(pair.reader.mailroom.held) == 0
    assert pair.reader.table.rejected == {"revoked": 1, "sealed_expired": 1}


def test_without_a_hold_mail_that_cannot_be_opened_is_dropped(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, max_held_mail=0)
    out, incoming = pair.deliver(pair.mail("lost"))
    assert acked(out) and incoming == []
    assert len(pair.reader.mailroom.held) == 0 and pair.reader.next_deadline() is None
    assert pair.reader.table.rejected == {"unknown_peer": 1}
    assert [line["peer"] for line in pair.audit.events("reject", reason="unknown_peer")] == [
        pair.alice.agent_id
    ]


# -- the retry schedule (pure) ---------------------------------------------------------------


def test_retries_back_off_to_a_cap_and_come_at_once_when_the_trust_store_changes() -> None:
    held = HeldMail()
    assert held.deadline(0) is None
    assert held.hold(b"sealed", "alice", "unknown_peer", now=NOW, generation=0) == ("held", [])
    assert held.hold(b"sealed", "alice", "unknown_peer", now=NOW, generation=0) == ("again", [])
    now = NOW
    intervals: list[float] = []
    while len(intervals) < 9:
        deadline = held.deadline(0)
        assert deadline is not None
        assert held.due(now=deadline - 0.001, generation=0) == []
        now = deadline
        assert len(held.due(now=now, generation=0)) == 1  # tried, and left held
        intervals.append(now)
    gaps = [b - a for a, b in itertools.pairwise([NOW, *intervals])]
    assert gaps == [1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, RETRY_MAX, RETRY_MAX]
    assert held.deadline(1) == -math.inf  # a new generation: due at once
    assert len(held.due(now=now, generation=1)) == 1
    assert held.due(now=now, generation=1) == []
    # Newly held mail is tried soon again.
    held.hold(b"other", "alice", "unknown_peer", now=now, generation=1)
    assert held.deadline(1) == now + RETRY_FIRST


def test_newly_held_mail_schedules_only_itself() -> None:
    """One new letter a second must not make the whole hold be tried every second."""
    held = HeldMail()
    held.hold(b"old", "alice", "unknown_peer", now=NOW, generation=0)
    for at in (NOW + 1, NOW + 2, NOW + 4):  # tried and left held: it now waits 4 s
        assert len(held.due(now=at, generation=0)) == 1
    held.hold(b"new", "mallory", "unknown_peer", now=NOW + 5, generation=0)
    assert held.deadline(0) == NOW + 6
    [(_, letter)] = held.due(now=NOW + 6, generation=0)
    assert letter.sender == "mallory"
    assert held.deadline(0) == NOW + 7  # mallory's next try; alice's comes at NOW + 8
    assert [letter.sender for _, letter in held.due(now=NOW + 7, generation=0)] == ["mallory"]
    assert [letter.sender for _, letter in held.due(now=NOW + 8, generation=0)] == ["alice"]


def test_a_trust_store_change_retries_only_what_it_can_settle_once_a_second() -> None:
    held = HeldMail()
    held.hold(b"unknown", "alice", "unknown_peer", now=NOW, generation=0)
    held.hold(b"ahead", "bob", "sealed_from_future", now=NOW, generation=0)
    assert held.deadline(1) == -math.inf
    assert [letter.sender for _, letter in held.due(now=NOW, generation=1)] == ["alice"]
    # Another change at once (a pin, a reload with a difference): no new round for a second.
    assert held.deadline(2) == NOW + RETRY_FIRST
    assert held.due(now=NOW + 0.5, generation=2) == []
    assert [letter.sender for _, letter in held.due(now=NOW + RETRY_FIRST, generation=2)] == [
        "alice",
        "bob",  # bob's own schedule is due at the same time
    ]


def test_a_clock_set_back_neither_stops_the_schedule_nor_the_trust_rounds() -> None:
    held = HeldMail()
    held.hold(b"unknown", "alice", "unknown_peer", now=NOW, generation=0)
    assert len(held.due(now=NOW, generation=1)) == 1  # a trust round: the next in 1 s
    back = NOW - 3600  # then the wall clock is set back an hour
    assert held.deadline(1, back) == back + RETRY_FIRST  # as far off as it was
    assert held.due(now=back + 0.5, generation=1) == []
    assert len(held.due(now=back + RETRY_FIRST, generation=1)) == 1  # its own schedule
    # Another trust store change is tried a second after the last round, not an hour.
    assert held.deadline(2, back + RETRY_FIRST) == back + RETRY_FIRST
    assert len(held.due(now=back + RETRY_FIRST, generation=2)) == 1


def test_a_round_opens_a_bounded_batch_per_call() -> None:
    held = HeldMail()
    for n in range(RETRY_BATCH + 6):
        held.hold(n.to_bytes(4, "big"), "alice", "unknown_peer", now=NOW, generation=0)
    first = held.due(now=NOW + RETRY_FIRST, generation=0)
    assert len(first) == RETRY_BATCH
    assert held.deadline(0) == NOW + RETRY_FIRST  # the other six are due still
    for key, _ in first:
        held.release(key, delivered=True)
    assert len(held.due(now=NOW + RETRY_FIRST, generation=0)) == 6
    assert held.released == RETRY_BATCH and len(held) == 6


def test_bounds_must_be_whole_numbers() -> None:
    with pytest.raises(ValueError):
        HeldMail(max_count=-1)
    with pytest.raises(ValueError):
        HeldMail(max_bytes=1.5)  # type: ignore[arg-type]


def _batch_mail(pair: Pair) -> bytes:
    """Mail whose sealed message is a batch frame (two payloads), as no honest node sends."""
    frames = _codec.encode_batch(
        MessageType.DATA, [[os.urandom(8), "a"], [os.urandom(8), "b"]], topic=""
    )
    public = pair.sender.trust.lookup(pair.dave.agent_id, now=NOW).public
    return seal(bytes(frames[0]), sender=pair.alice, recipient=public, now=NOW)


def test_a_batch_frame_sent_as_mail_is_refused_as_bad_mail(pair: Pair) -> None:
    """Reading a batch's ``.payload`` raised LocalProtocolError out of on_hop: with a mail
    store that cost the store (no ack went, so the broker handed it over again after every
    restart). It is bad input from a peer: refused, counted, acknowledged."""
    pair.trust_alice()
    out, incoming = pair.deliver(_batch_mail(pair))
    assert acked(out) and incoming == []
    assert pair.reader.table.rejected == {"bad_mail": 1}


def test_held_batch_mail_is_dropped_for_good_once_its_sender_is_trusted(pair: Pair) -> None:
    out, incoming = pair.deliver(_batch_mail(pair))  # from a stranger: held
    assert incoming == []
    assert acked(out) and len(pair.reader.mailroom.held) == 1
    pair.trust_alice()
    assert pair.reader.mailroom.retry_held(now=NOW) == []
    assert len(pair.reader.mailroom.held) == 0
    assert pair.reader.table.rejected == {"bad_mail": 1}
