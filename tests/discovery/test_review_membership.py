"""Adversarial review of SWIM membership: each test states a rule a review found broken
(trust expiry, bounded queues, no reflection, the datagram bound), so it stays kept."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from zmqcomm.actions import Send
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import UsageError
from zmqcomm.patterns.discovery.membership import Membership
from zmqcomm.patterns.discovery.membership_config import MembershipConfig
from zmqcomm.patterns.discovery.membership_udp import MembershipService
from zmqcomm.patterns.discovery.membership_wire import (
    JOIN,
    LEAVE,
    MIN_MAX_DATAGRAM,
    PING,
    PING_REQ,
    SYNC,
    Update,
    encode_packet,
)

CONFIG = MembershipConfig(period=1.0, ping_timeout=0.4, sync_every=0)


def _machine(identity: Identity, address: tuple[str, int], seed: int, **kwargs: Any) -> Membership:
    kwargs.setdefault("config", CONFIG)
    return Membership.from_identity(identity, address=address, rng=random.Random(seed), **kwargs)


def test_expired_trust_entry_is_refused_by_the_udp_service(tmp_path: Path) -> None:
    me, peer = Identity.generate("me"), Identity.generate("peer")
    trust = TrustStore(tmp_path / "trust")
    trust.add(peer.public, expires=time.time() - 3600)  # trust ran out an hour ago
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    try:
        with MembershipService(me, trust=trust, config=CONFIG, rng=random.Random(1)) as service:
            sender = _machine(peer, listener.getsockname(), 2)
            ping = sender._packet(PING, 1, me.sender_id, service.address).message
            listener.sendto(encode_packet(ping), service.address)
            deadline = time.monotonic() + 3.0
            while service.received == 0 and time.monotonic() < deadline:
                service.step(0.05)
            assert service.received == 1
            assert peer.agent_id not in service.machine
            assert service.dropped["unknown_sender"] == 1
    finally:
        listener.close()


def test_update_queue_stays_bounded_under_a_flood_of_stranger_leaves() -> None:
    config = MembershipConfig(period=1.0, ping_timeout=0.4, sync_every=0, max_members=4, max_dead=4)
    node = _machine(Identity.generate("victim"), ("127.0.0.1", 7000), 0, config=config)
    attacker = _machine(Identity.generate("attacker"), ("127.0.0.1", 7001), 1)
    strangers = []
    for i in range(60):
        stranger = _machine(Identity.generate(f"s{i}"), ("127.0.0.1", 8000 + i), 10 + i)
        stranger.leave(now=0.0)  # a self-signed LEAVE record, as anyone can make
        strangers.append(Update(LEAVE, stranger.record))
    seq = 0
    while strangers:
        seq += 1
        batch, strangers = strangers[:5], strangers[5:]
        packet = attacker._packet(SYNC, seq, None, node.address, batch).message
        assert len(packet.updates) == len(batch)
        node.on_message(attacker.address, packet, now=1.0)
    bound = config.max_members + config.max_dead + 1
    assert len(node._queue) <= bound


def test_packets_never_exceed_the_configured_max_datagram() -> None:
    # A bound below the largest bare packet is refused up front ...
    with pytest.raises(UsageError):
        MembershipConfig(period=1.0, ping_timeout=0.4, sync_every=0, max_datagram=400)
    # ... and the smallest accepted bound holds for the worst-case PING_REQ head.
    config = MembershipConfig(
        period=1.0, ping_timeout=0.4, sync_every=0, max_datagram=MIN_MAX_DATAGRAM
    )
    ports = [65535] * 8
    nodes = [
        _machine(Identity.generate(f"n{i}"), ("f" * 64, 65000 + i), i, ports=ports, config=config)
        for i in range(3)
    ]
    send = nodes[0]._packet(PING_REQ, 1, nodes[1].record, nodes[2].record)
    assert len(encode_packet(send.message)) <= config.max_datagram


def test_no_amplified_reply_to_an_address_that_never_sent_anything() -> None:
    node = _machine(Identity.generate("node"), ("127.0.0.1", 7000), 0)
    # The node knows a few members, so its SYNC reply carries their records.
    for i in range(4):
        friend = _machine(Identity.generate(f"f{i}"), ("127.0.0.1", 7100 + i), 20 + i)
        node.on_message(
            friend.address, friend._packet(SYNC, 1, None, node.address).message, now=0.5
        )
    assert len(node) == 4
    victim = ("127.0.0.1", 9)  # has never sent the node anything
    attacker_source = ("127.0.0.1", 40000)
    forger = _machine(Identity.generate("forger"), victim, 1)  # a record claiming the victim
    join = forger._packet(JOIN, 7, None, node.address).message
    request_bytes = len(encode_packet(join))
    actions = node.on_message(attacker_source, join, now=1.0)
    to_victim = [a for a in actions if isinstance(a, Send) and a.to == victim]
    # A non-member is answered only at the address it sent from, which must be its record's:
    # nothing goes to the victim, and nothing is learnt from the forged JOIN.
    assert not to_victim
    assert node.dropped["address_mismatch"] == 1
    sent = sum(len(encode_packet(a.message)) for a in to_victim)
    assert sent <= request_bytes
    assert len(node) == 4
