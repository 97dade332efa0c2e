"""Who becomes a member: only a node heard from at the address its record names, and only
addresses in the node's own scope (a loopback node never admits, hence never probes, any
other host). Pure machines with hand-made packets; the non-loopback hosts here are data
that the machine must refuse, nothing is sent anywhere."""

from __future__ import annotations

import random
from typing import Any

import pytest

from zmqcomm.actions import Send
from zmqcomm.crypto.keys import Identity
from zmqcomm.patterns.discovery.membership import VERIFY_PINGS, Membership
from zmqcomm.patterns.discovery.membership_config import MembershipConfig
from zmqcomm.patterns.discovery.membership_wire import (
    ACK,
    ALIVE,
    JOIN,
    PING,
    PING_REQ,
    SYNC,
    Update,
    decode_packet,
    encode_packet,
)

CONFIG = MembershipConfig(period=1.0, ping_timeout=0.4, sync_every=0)
NODE = ("127.0.0.1", 7000)
VICTIM = ("127.0.0.1", 9999)  # never sends anything to anybody
ATTACKER = ("127.0.0.1", 5555)  # where the attacker's datagrams really come from


def _machine(name: str, address: tuple[str, int], seed: int = 0, **kwargs: Any) -> Membership:
    kwargs.setdefault("config", CONFIG)
    return Membership.from_identity(
        Identity.generate(name), address=address, rng=random.Random(seed), **kwargs
    )


def _wire(send: Send) -> Any:
    return decode_packet(encode_packet(send.message))  # as it comes off the wire


def _sends(actions: list[Any]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def _run_timers(node: Membership, start: float, seconds: float) -> list[Send]:
    sent: list[Send] = []
    t = start
    while t < start + seconds:
        t += 0.25
        sent += _sends(node.on_timer(now=t))
    return sent


@pytest.mark.parametrize("kind", [ACK, SYNC, PING_REQ])
def test_a_stranger_is_not_admitted_from_another_address_by_any_packet_kind(kind: int) -> None:
    node = _machine("node", NODE)
    node.on_timer(now=0.0)
    forger = _machine("forger", VICTIM, 1)  # a self-signed record naming the victim
    target = {ACK: bytes(16), SYNC: None, PING_REQ: _machine("t", ("127.0.0.1", 7001)).record}
    packet = _wire(forger._packet(kind, 1, target[kind], NODE))
    assert node.on_message(ATTACKER, packet, now=0.1) == []
    assert len(node) == 0 and node.dropped["address_mismatch"] == 1
    assert not [s for s in _run_timers(node, 0.1, 10.0) if s.to == VICTIM]


def test_a_stranger_announced_by_gossip_is_pinged_bare_and_never_admitted_unheard() -> None:
    node = _machine("node", NODE)
    node.on_timer(now=0.0)
    liar = _machine("liar", ATTACKER, 1)  # speaks from its own address: it may join
    fake = _machine("fake", VICTIM, 2).record  # a fresh key naming the victim
    packet = liar._packet(SYNC, 1, None, NODE, [Update(ALIVE, fake)])
    actions = node.on_message(ATTACKER, _wire(packet), now=0.1)
    assert fake.agent_id not in node and liar.record.agent_id in node  # no ENTER for the fake
    to_victim = [s for s in _sends(actions) if s.to == VICTIM]
    assert [(s.message.kind, s.message.updates) for s in to_victim] == [(PING, ())]
    # Bare: no bigger than the update that named the victim.
    assert len(encode_packet(to_victim[0].message)) <= len(encode_packet(packet.message))
    # A few retries for loss, then given up; the same news again starts over, never more.
    later = [s for s in _run_timers(node, 0.1, 20.0) if s.to == VICTIM and s.message.kind == PING]
    assert len(to_victim) + len(later) == VERIFY_PINGS
    assert fake.agent_id not in node
    assert node.stats["strangers_unverified"] == 1


def test_a_gossiped_member_is_admitted_once_it_answers_from_its_address() -> None:
    seed = _machine("seed", NODE)
    old = _machine("old", ("127.0.0.1", 7001), 1)
    joiner = _machine("joiner", ("127.0.0.1", 7002), 2)
    for m in (seed, old, joiner):
        m.on_timer(now=0.0)
    seed.on_message(old.address, _wire(old._packet(JOIN, 1, None, NODE)), now=0.1)
    assert old.record.agent_id in seed
    # The joiner's JOIN gets a SYNC naming `old`; the joiner admits the seed (it answered
    # from its own address) and only pings `old`.
    sync = _sends(
        seed.on_message(joiner.address, _wire(joiner._packet(JOIN, 2, None, NODE)), now=0.2)
    )
    actions = joiner.on_message(NODE, _wire(sync[0]), now=0.3)
    assert seed.record.agent_id in joiner and old.record.agent_id not in joiner
    (ping,) = [s for s in _sends(actions) if s.to == old.address]
    # `old` answers (and admits the joiner, heard from its own address); its ACK admits it.
    (ack,) = _sends(old.on_message(joiner.address, _wire(ping), now=0.4))
    assert joiner.record.agent_id in old
    events = joiner.on_message(old.address, _wire(ack), now=0.5)
    assert [e.kind for e in events if not isinstance(e, Send)] == ["ENTER"]
    assert old.record.agent_id in joiner


@pytest.mark.parametrize(
    ("own", "host"),
    [
        ("127.0.0.1", "192.0.2.1"),  # a loopback node admits only loopback members
        ("127.0.0.1", "localhost"),  # never a name: a record must not make anyone resolve
        ("127.0.0.1", "0.0.0.0"),
        ("127.0.0.1", "::1"),  # another family: our socket cannot reach it
        ("192.0.2.7", "127.0.0.1"),  # someone else's loopback is ours
        ("192.0.2.7", "255.255.255.255"),
        ("192.0.2.7", "224.0.0.1"),
        ("::1", "::ffff:127.0.0.1"),
    ],
)
def test_record_hosts_outside_the_nodes_scope_are_refused(own: str, host: str) -> None:
    node = _machine("node", (own, 7000))
    node.on_timer(now=0.0)
    stranger = _machine("s", (host, 7001), 1)
    # Even when the datagram claims to come from the record's address, and as gossip.
    direct = stranger._packet(SYNC, 1, None, node.address).message
    assert node.on_message((host, 7001), direct, now=0.1) == []
    assert len(node) == 0 and node.dropped["bad_address"] == 1
    friend_host = "::2" if ":" in own else "127.0.0.2" if own.startswith("127.") else "192.0.2.8"
    friend = _machine("f", (friend_host, 7002), 2)
    news = friend._packet(SYNC, 1, None, node.address, [Update(ALIVE, stranger.record)])
    actions = node.on_message(friend.address, news.message, now=0.2)
    assert {s.to for s in _sends(actions)} <= {friend.address}
    assert stranger.record.agent_id not in node and node.dropped["bad_address"] == 2


def test_in_scope_members_are_still_admitted() -> None:
    for own, host in (("127.0.0.1", "127.0.0.5"), ("::1", "::1"), ("192.0.2.7", "192.0.2.9")):
        node = _machine("node", (own, 7000))
        stranger = _machine("s", (host, 7001), 1)
        node.on_message(
            (host, 7001), stranger._packet(SYNC, 1, None, node.address).message, now=0.1
        )
        assert stranger.record.agent_id in node


def test_the_probe_order_forgets_removed_members() -> None:
    # A node with no members never completes a probe round, so removed members used to
    # stay in its probe order: fresh keys joining and leaving grew it without bound.
    node = _machine("seed", NODE)
    node.on_timer(now=0.0)
    t = 0.0
    for i in range(50):
        visitor = _machine(f"v{i}", ("127.0.0.1", 20000 + i), i)
        t += 0.01
        node.on_message(visitor.address, _wire(visitor._packet(JOIN, 1, None, NODE)), now=t)
        assert visitor.record.agent_id in node
        t += 0.01
        node.on_message(visitor.address, _wire(_goodbye(visitor, node)), now=t)
        assert visitor.record.agent_id not in node
        node.on_timer(now=t)
    assert len(node) == 0 and node._order == []
    # Removal mid-round keeps the walk in step: the others are still each probed once.
    stayers = [_machine(f"s{i}", ("127.0.0.1", 21000 + i), 100 + i) for i in range(4)]
    for s in stayers:
        node.on_message(s.address, _wire(s._packet(JOIN, 1, None, NODE)), now=t)
    gone = _machine("gone", ("127.0.0.1", 21999), 99)
    node.on_message(gone.address, _wire(gone._packet(JOIN, 1, None, NODE)), now=t)
    node._next_target()
    node.on_message(gone.address, _wire(_goodbye(gone, node)), now=t)
    assert sorted(node._order) == sorted(s.record.agent_id for s in stayers)


def _goodbye(leaver: Membership, to: Membership) -> Send:
    leaver.leave(now=0.0)  # a LEAVE record at a new incarnation (it knows no one to tell)
    return leaver._packet(PING, 2, to.record.sender_id, to.address)
