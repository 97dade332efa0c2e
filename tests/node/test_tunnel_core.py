"""The pure tunnel core: end-to-end sessions and mail through a broker played by the test."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import numpy as np
import pytest

from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import LocalProtocolError, RemoteProtocolError, SecurityError
from zmqcomm.node import tunnel
from zmqcomm.node.messages import Incoming
from zmqcomm.node.tunnel import HopMessage, Tunnels
from zmqcomm.wire import Message, MessageType, WireCodec

NOW = 1_800_000_000.0
_codec = WireCodec()
_stored_ids = itertools.count(1)


def message(kind: int, payload: object, topic: str) -> Message:
    return _codec.decode(_codec.encode(kind, payload, topic=topic))


def as_broker(sender: str, hop: HopMessage) -> tuple[str, Message] | None:
    """What a broker hands on for ``hop`` from ``sender``: (recipient, message), or None."""
    if hop.msg_type == MessageType.FORWARD:
        return hop.topic, message(MessageType.DELIVER, hop.payload, sender)
    if hop.msg_type == MessageType.SESSION_RESET:
        return hop.topic, message(MessageType.SESSION_RESET, hop.payload, sender)
    if hop.msg_type == MessageType.MAIL:
        stored = [next(_stored_ids), hop.payload]
        return hop.topic, message(MessageType.MAIL_DELIVER, stored, sender)
    return None  # acks and the like stay with the broker


def flow(agents: dict[str, Tunnels], hops: list[tuple[str, HopMessage]]) -> list[Incoming]:
    """Carry ``hops`` (sender, hop) and every answer they cause; returns what was delivered."""
    delivered: list[Incoming] = []
    while hops:
        routed = as_broker(*hops.pop(0))
        if routed is None:
            continue
        recipient, sent = routed
        out, incoming = agents[recipient].on_hop(sent, now=NOW)
        hops += [(recipient, hop) for hop in out]
        delivered += incoming
    return delivered


def open_session(agents: dict[str, Tunnels], text: str = "m0") -> None:
    """Alice's first message to bob sets up their session and arrives."""
    alice_id, bob_id = agents
    opening = agents[alice_id].send(bob_id, MessageType.DATA, text, topic="", now=NOW)
    assert [m.payload for m in flow(agents, [(alice_id, hop) for hop in opening])] == [text]


def _agents_who_trust_each_other(
    tmp_path: Path, names: list[str], rekey: RekeyPolicy | None = None
) -> dict[str, Tunnels]:
    identities = [Identity.generate(name) for name in names]
    made = {}
    for me in identities:
        trust = TrustStore(tmp_path / me.name)
        for other in identities:
            if other is not me:
                trust.add(other.public, roles=["agent"])
        made[me.agent_id] = Tunnels(
            identity=me, trust=trust, random_bytes=os.urandom, now=NOW, rekey=rekey
        )
    return made


@pytest.fixture
def agents(tmp_path: Path) -> dict[str, Tunnels]:
    return _agents_who_trust_each_other(tmp_path, ["alice", "bob"])


def test_a_bounce_for_a_slow_consumer_mails_only_the_bounced_message(
    agents: dict[str, Tunnels],
) -> None:
    alice_id, bob_id = agents
    alice = agents[alice_id]
    open_session(agents)

    [first, second, third] = [
        alice.send(bob_id, MessageType.DATA, text, topic="", now=NOW)[0]
        for text in ("m1", "m2", "m3")
    ]
    # Bob's queue at the broker was full for m1 and m3 only: they bounce, m2 gets through.
    hops = [(alice_id, second)]
    for bounced in (first, third, first):  # the last: the same bounce again
        out, _ = alice.on_hop(message(MessageType.UNREACHABLE, bounced.payload, bob_id), now=NOW)
        hops += [(alice_id, hop) for hop in out]
    got = [(m.payload, m.via) for m in flow(agents, hops)]
    assert got == [("m2", "session"), ("m1", "mail"), ("m3", "mail")]
    assert (alice.mailroom.sealed, alice.queued()) == (2, 0)


def test_an_unencodable_payload_is_refused_at_send_and_the_queue_goes_out(
    agents: dict[str, Tunnels],
) -> None:
    alice_id, bob_id = agents
    alice = agents[alice_id]
    hops = alice.send(bob_id, MessageType.DATA, "one", topic="", now=NOW)  # queued: no session
    with pytest.raises(LocalProtocolError, match="cannot encode payload"):
        alice.send(bob_id, MessageType.DATA, object(), topic="", now=NOW)
    with pytest.raises(LocalProtocolError, match="cannot encode payload"):
        alice.send_many(bob_id, MessageType.DATA, ["not queued", {1, 2}], topic="", now=NOW)
    hops += alice.send(bob_id, MessageType.DATA, "two", topic="", now=NOW)
    assert alice.queued(bob_id) == 2
    got = flow(agents, [(alice_id, hop) for hop in hops])
    assert [m.payload for m in got] == ["one", "two"]


def test_a_message_mail_cannot_carry_is_dropped_and_the_others_are_mailed(
    agents: dict[str, Tunnels],
) -> None:
    numpy = pytest.importorskip("numpy")
    alice_id, bob_id = agents
    alice = agents[alice_id]
    big = numpy.zeros(1 << 20, dtype=numpy.uint8)  # sent as its own frame: not as mail
    [init] = alice.send(bob_id, MessageType.DATA, "one", topic="", now=NOW)
    alice.send(bob_id, MessageType.DATA, big, topic="", now=NOW)
    alice.send(bob_id, MessageType.DATA, "two", topic="", now=NOW)
    # Bob is offline: the broker bounces the handshake, and the queue turns into mail.
    out, _ = alice.on_hop(message(MessageType.UNREACHABLE, init.payload, bob_id), now=NOW)
    got = flow(agents, [(alice_id, hop) for hop in out])
    assert [(m.payload, m.via) for m in got] == [("one", "mail"), ("two", "mail")]
    assert alice.dropped == {"unmailable": 1} and alice.queued() == 0


def test_a_bounce_of_a_message_too_old_to_resend_is_counted(
    agents: dict[str, Tunnels],
) -> None:
    alice_id, bob_id = agents
    alice = agents[alice_id]
    # Before any session, the INIT bounces (bob is offline): normal, the message is mailed.
    [init] = alice.send(bob_id, MessageType.DATA, "m0", topic="", now=NOW)
    out, _ = alice.on_hop(message(MessageType.UNREACHABLE, init.payload, bob_id), now=NOW)
    assert [hop.msg_type for hop in out] == [MessageType.MAIL]
    assert alice.dropped == {}
    open_session(agents, "m1")
    [bounced] = alice.send(bob_id, MessageType.DATA, "victim", topic="", now=NOW)
    for n in range(4100):  # a busy sender: the bounce comes after it forgot the frame
        alice.send(bob_id, MessageType.DATA, n, topic="", now=NOW)
    out, _ = alice.on_hop(message(MessageType.UNREACHABLE, bounced.payload, bob_id), now=NOW)
    assert out == []
    assert alice.dropped == {"bounced_unknown": 1}


def test_mail_older_than_its_maximum_age_is_refused(tmp_path: Path) -> None:
    alice, dave = Identity.generate("alice"), Identity.generate("dave")
    trusts = {}
    for me, other in ((alice, dave), (dave, alice)):
        trusts[me.name] = TrustStore(tmp_path / me.name)
        trusts[me.name].add(other.public, roles=["agent"])
    sender = Tunnels(identity=alice, trust=trusts["alice"], random_bytes=os.urandom, now=NOW)
    reader = Tunnels(
        identity=dave, trust=trusts["dave"], random_bytes=os.urandom, now=NOW, mail_max_age=3600
    )
    public = trusts["alice"].lookup(dave.agent_id, now=NOW).public
    for age, expected in ((3000, ["mail"]), (4000, [])):
        mail = sender.mail_message(
            dave.agent_id, public, MessageType.DATA, "mail", topic="", now=NOW - age
        )
        stored = [next(_stored_ids), mail.payload]
        out, incoming = reader.on_hop(
            message(MessageType.MAIL_DELIVER, stored, alice.agent_id), now=NOW
        )
        assert [m.payload for m in incoming] == expected
        assert [hop.msg_type for hop in out] == [MessageType.MAIL_ACK]  # deleted either way
    assert reader.table.rejected == {"sealed_expired": 1}


def test_messages_kept_for_a_resend_are_bounded_in_bytes(
    agents: dict[str, Tunnels], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tunnel, "_RECENT_BYTES", 10_000)
    alice_id, bob_id = agents
    alice = agents[alice_id]
    open_session(agents)
    sent = [
        alice.send(bob_id, MessageType.DATA, bytes([n]) * 1000, topic="", now=NOW)[0]
        for n in range(50)
    ]
    assert alice._recent_bytes[bob_id] <= 10_000
    # The oldest were forgotten to stay within the bound; the latest can still be resent.
    out, _ = alice.on_hop(message(MessageType.UNREACHABLE, sent[0].payload, bob_id), now=NOW)
    assert out == [] and alice.dropped["bounced_unknown"] == 1
    out, _ = alice.on_hop(message(MessageType.UNREACHABLE, sent[-1].payload, bob_id), now=NOW)
    assert [hop.msg_type for hop in out] == [MessageType.MAIL]


def test_a_message_on_the_old_session_is_resent_when_the_restarted_peer_spoke_first(
    agents: dict[str, Tunnels], tmp_path: Path
) -> None:
    """Bob restarts and opens a new session to alice; alice's next message, still on the
    old session, crosses bob's INIT at the broker. Bob, holding only his own handshake,
    answers SESSION_RESET, and alice sends it again over the new session."""
    alice_id, bob_id = agents
    alice, bob = agents[alice_id], agents[bob_id]
    open_session(agents)
    agents[bob_id] = reborn = Tunnels(
        identity=bob.identity, trust=bob.trust, random_bytes=os.urandom, now=NOW
    )
    bob_init = [
        (bob_id, h) for h in reborn.send(alice_id, MessageType.DATA, "hi", topic="", now=NOW)
    ]
    alice_m1 = [
        (alice_id, h) for h in alice.send(bob_id, MessageType.DATA, "m1", topic="", now=NOW)
    ]
    delivered = flow(agents, alice_m1 + bob_init)
    delivered += flow(
        agents,
        [(alice_id, h) for h in alice.on_timer(now=NOW + 10)]
        + [(bob_id, h) for h in reborn.on_timer(now=NOW + 10)],
    )
    assert sorted((m.sender, m.payload) for m in delivered) == sorted(
        [(bob_id, "hi"), (alice_id, "m1")]
    )


def test_a_large_message_is_forwarded_uncopied_and_recovered_when_it_bounces(
    agents: dict[str, Tunnels],
) -> None:
    alice_id, bob_id = agents
    alice = agents[alice_id]
    open_session(agents)
    big, array = os.urandom(1 << 20), np.arange(1 << 16, dtype=np.float64)
    forward = alice.send(bob_id, MessageType.DATA, {"b": big, "a": array}, topic="", now=NOW)[0]
    # The sealed frames themselves (written in place), not copies of them.
    assert [type(frame) for frame in forward.payload] == [bytearray, bytearray]
    sealed = [bytes(frame) for frame in forward.payload]
    (got,) = flow(agents, [(alice_id, forward)])
    assert got.payload["b"] == big and np.array_equal(got.payload["a"], array)
    assert [bytes(frame) for frame in forward.payload] == sealed  # nothing wrote to them
    # A bounced large frame is still recognised and its message sent again, by mail (which
    # carries up to 1 MiB).
    half = big[: 1 << 19]
    bounced = alice.send(bob_id, MessageType.DATA, half, topic="", now=NOW)[0]
    assert type(bounced.payload[0]) is bytearray
    out, _ = alice.on_hop(message(MessageType.UNREACHABLE, bounced.payload, bob_id), now=NOW)
    assert [(m.payload, m.via) for m in flow(agents, [(alice_id, hop) for hop in out])] == [
        (half, "mail")
    ]


def test_a_refusal_from_the_broker_is_counted_and_kept_as_the_last_error(
    agents: dict[str, Tunnels],
) -> None:
    alice = next(iter(agents.values()))
    refusal = {"reason": "denied", "type": int(MessageType.SUBSCRIBE)}
    assert alice.on_hop(message(MessageType.ERROR, refusal, "other/*"), now=NOW) == ([], [])
    assert alice.refused_by_broker == {"denied": 1}
    assert alice.last_error == "the broker refused SUBSCRIBE 'other/*': denied"


@pytest.mark.parametrize(
    "answer",
    [None, "denied", {"reason": "denied"}, {"reason": 7, "type": 2}, {"reason": "", "type": 2}],
)
def test_a_malformed_refusal_is_refused_and_changes_nothing(
    agents: dict[str, Tunnels], answer: object
) -> None:
    alice = next(iter(agents.values()))
    with pytest.raises(RemoteProtocolError) as caught:
        alice.on_hop(message(MessageType.ERROR, answer, "t"), now=NOW)
    assert caught.value.reason == "bad_error"
    assert alice.refused_by_broker == {} and alice.last_error is None


def _rekeying_agents(tmp_path: Path) -> dict[str, Tunnels]:
    rekey = RekeyPolicy(max_messages=3, hard_max_messages=1000, jitter=0.0)
    return _agents_who_trust_each_other(tmp_path, ["alice", "bob"], rekey)


def _carry(
    agents: dict[str, Tunnels], hops: list[tuple[str, HopMessage]], *, now: float
) -> tuple[list[object], list[HopMessage]]:
    """:func:`flow` at ``now``, except that rekey FINISH frames stay with their sender's
    broker link (as if it were down); returns what was delivered and those FINISH hops."""
    delivered: list[object] = []
    finishes: list[HopMessage] = []
    while hops:
        sender, hop = hops.pop(0)
        if hop.finish_for:
            finishes.append(hop)
            continue
        routed = as_broker(sender, hop)
        if routed is not None:
            recipient, sent = routed
            out, incoming = agents[recipient].on_hop(sent, now=now)
            hops += [(recipient, answer) for answer in out]
            delivered += [item.payload for item in incoming]
    return delivered, finishes


def test_a_tunnel_finish_held_for_the_broker_link_keeps_the_superseded_key_open(
    tmp_path: Path,
) -> None:
    """Alice's rekey FINISH to bob waits in her hop outbox longer than the grace period
    (her broker link is down). Bob seals under the old epoch until it arrives: what he
    sends meanwhile must still open at alice, not be refused as ``stale_epoch`` and lost.
    Once the FINISH has left, the old key lives one grace period more, and no longer."""
    agents = _rekeying_agents(tmp_path)
    (alice_id, alice), (bob_id, bob) = agents.items()
    open_session(agents)
    held: list[HopMessage] = []
    for n in range(1, 6):
        if held:
            break
        hops = alice.send(bob_id, MessageType.DATA, f"m{n}", topic="", now=NOW)
        _, held = _carry(agents, [(alice_id, hop) for hop in hops], now=NOW)
    assert [hop.finish_for for hop in held] == [bob_id], "alice's rekey FINISH"
    alice.hold_finish(bob_id, now=NOW)  # what her hop outbox does on holding it
    grace = RekeyPolicy().grace_period

    later = NOW + 3 * grace
    late = bob.send(
        alice_id, MessageType.DATA, "sealed before the FINISH came", topic="", now=later
    )
    assert _carry(agents, [(bob_id, hop) for hop in late], now=later)[0] == [
        "sealed before the FINISH came"
    ]
    assert alice.table.rejected["stale_epoch"] == 0

    alice.release_finish(bob_id, now=later)  # the link came back and the FINISH left
    routed = as_broker(alice_id, held[0])
    assert routed is not None
    assert bob.on_hop(routed[1], now=later) == ([], [])  # the FINISH reaches bob only now
    bob_session = bob.table.channel_to(alice_id).session  # type: ignore[union-attr]
    alice_session = alice.table.channel_to(bob_id).session  # type: ignore[union-attr]
    assert bob_session is not None and alice_session is not None
    assert bob_session.epoch == alice_session.epoch == 1
    after = later + grace / 2
    hops = bob.send(alice_id, MessageType.DATA, "under the new keys", topic="", now=after)
    assert _carry(agents, [(bob_id, hop) for hop in hops], now=after)[0] == ["under the new keys"]
    assert alice.table.rejected == {} and bob.table.rejected == {}
    assert alice_session.open_epochs == [0, 1]  # the old key: half its grace left
    alice_session.on_timer(now=later + grace + 0.001)
    assert alice_session.open_epochs == [1]


def test_the_deadline_index_agrees_with_a_scan_of_every_channel(tmp_path: Path) -> None:
    """The channel table keeps each channel's next timer in a heap instead of asking every
    channel on every pump (0.6 ms with 1,000 peers). Whatever the tunnels do (sessions,
    rekeys by count and by age, held and released FINISH frames, resets, expiries, timers),
    its answer must stay the one a scan of every channel gives: a deadline it missed would
    leave a key unerased or a rekey undone until some other event. The table's on_timer
    visits only the channels the heap says are due, so after it none may be left due."""
    rng = random.Random(7)
    rekey = RekeyPolicy(max_messages=4, max_age=50.0, hard_max_age=100.0, grace_period=5.0)
    agents = _agents_who_trust_each_other(tmp_path, [f"agent{n}" for n in range(4)], rekey)
    ids = list(agents)
    now = NOW
    held: list[tuple[str, HopMessage]] = []
    for _ in range(400):
        step = rng.random()
        sender, receiver = rng.sample(ids, 2)
        if step < 0.55:
            try:
                hops = agents[sender].send(receiver, MessageType.DATA, "x", topic="", now=now)
            except SecurityError:  # past the hard limit while its rekey waits: refused
                hops = []
            _, finishes = _carry(agents, [(sender, hop) for hop in hops], now=now)
            for finish in finishes:  # some wait for a broker link, as a hop outbox would
                if rng.random() < 0.5:
                    agents[sender].hold_finish(finish.topic, now=now)
                    held.append((sender, finish))
                else:
                    _carry_finish(agents, sender, finish, now=now)
        elif step < 0.7 and held:
            sender, finish = held.pop(rng.randrange(len(held)))
            agents[sender].release_finish(finish.topic, now=now)
            _carry_finish(agents, sender, finish, now=now)
        elif step < 0.8:
            now += rng.choice([0.5, 3.0, 6.0, 20.0])
            for agent_id, agent in agents.items():
                hops = agent.on_timer(now=now)
                # on_timer visits only the channels its heap says are due: all of them
                left = agent.table.scan_deadline()
                assert left is None or left > now, "a channel due now was not visited"
                _carry(agents, [(agent_id, hop) for hop in hops], now=now)
        elif step < 0.85:
            agents[sender].table.drop(receiver.encode())  # as a bounce or a reset would
        for agent in agents.values():
            assert agent.table.next_deadline() == agent.table.scan_deadline()


def _carry_finish(
    agents: dict[str, Tunnels], sender: str, finish: HopMessage, *, now: float
) -> None:
    routed = as_broker(sender, finish)
    assert routed is not None
    recipient, message = routed
    out, _ = agents[recipient].on_hop(message, now=now)
    _carry(agents, [(recipient, hop) for hop in out], now=now)
