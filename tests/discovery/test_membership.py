"""SWIM membership, pure: the codec and the machine driven by hand (no simulator, no sockets)."""

from __future__ import annotations

import ast
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zmqcomm.patterns.discovery as package
from zmqcomm.actions import Send
from zmqcomm.crypto.keys import Identity
from zmqcomm.errors import UnknownPeerError, UsageError
from zmqcomm.patterns.discovery import PeerEvent
from zmqcomm.patterns.discovery.membership import Membership
from zmqcomm.patterns.discovery.membership_config import MembershipConfig
from zmqcomm.patterns.discovery.membership_wire import (
    ACK,
    ALIVE,
    DEAD,
    JOIN,
    LEAVE,
    MAX_DATAGRAM,
    MIN_MAX_DATAGRAM,
    PING,
    PING_REQ,
    SUSPECT,
    SYNC,
    MembershipWireError,
    Packet,
    Update,
    UpdateQueue,
    decode_packet,
    encode_packet,
    packet_material,
)

REASONS = {
    "datagram_size",
    "bad_magic",
    "unsupported_version",
    "bad_msgpack",
    "malformed",
    "non_canonical",
}
CONFIG = MembershipConfig(period=1.0, ping_timeout=0.4, sync_every=0)
IDS = [Identity.generate(f"m{i}") for i in range(6)]


def _addr(i: int) -> tuple[str, int]:
    return (f"10.0.0.{i + 1}", 7000 + i)


def _node(i: int, seeds: tuple[int, ...] = (), **kwargs: Any) -> Membership:
    kwargs.setdefault("config", CONFIG)
    return Membership.from_identity(
        IDS[i], address=_addr(i), seeds=[_addr(s) for s in seeds], rng=random.Random(i), **kwargs
    )


Drop = Callable[[Any, Any, Packet], bool]


class Net:
    """Delivers Sends between machines at once, in order, with a drop rule; collects events."""

    def __init__(self, nodes: list[Membership]) -> None:
        self.nodes: dict[Any, Membership] = {node.address: node for node in nodes}
        self.events: dict[Any, list[PeerEvent]] = {a: [] for a in self.nodes}
        self.drop: Drop = lambda source, to, packet: False
        self.sent: list[tuple[Any, Any, Packet]] = []

    def run(self, source: Any, actions: list[Any], now: float) -> None:
        queue = [(source, a) for a in actions]
        for _ in range(10_000):
            if not queue:
                return
            origin, action = queue.pop(0)
            if isinstance(action, PeerEvent):
                self.events[origin].append(action)
                continue
            assert isinstance(action, Send)
            self.sent.append((origin, action.to, action.message))
            assert len(encode_packet(action.message)) <= MAX_DATAGRAM
            target = self.nodes.get(action.to)
            if target is None or self.drop(origin, action.to, action.message):
                continue
            queue += [(action.to, a) for a in target.on_message(origin, action.message, now=now)]
        raise AssertionError("message storm")

    def advance(self, until: float, step: float = 0.05) -> None:
        now = getattr(self, "now", 0.0)
        while now < until:
            now = round(now + step, 6)
            for address, node in self.nodes.items():
                deadline = node.next_deadline()
                if deadline is not None and deadline <= now:
                    self.run(address, node.on_timer(now=now), now)
        self.now = now

    def kinds(self, i: int) -> list[tuple[str, str]]:
        return [(e.kind, e.agent_id) for e in self.events[_addr(i)]]


def _joined(count: int, **kwargs: Any) -> tuple[Net, list[Membership]]:
    nodes = [_node(i, seeds=(0,) if i else (), **kwargs) for i in range(count)]
    net = Net(nodes)
    net.advance(8.0)
    for node in nodes:
        assert len(node) == count - 1
    return net, nodes


# -- codec ------------------------------------------------------------------------------------


def test_packet_round_trip_and_canonical_form() -> None:
    node = _node(0)
    update = Update(ALIVE, _node(1).record)
    send = node._packet(PING_REQ, 7, _node(2).record, _addr(1), [update])
    datagram = encode_packet(send.message)
    assert datagram[:4] == b"ZCM\x01"
    assert decode_packet(datagram) == send.message
    assert decode_packet(memoryview(datagram)) == send.message


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"ZCM\x01", "datagram_size"),
        (b"x" * (MAX_DATAGRAM + 1), "datagram_size"),
        (b"ZRE\x01" + bytes(80), "bad_magic"),
        (b"ZCM\x02" + bytes(80), "unsupported_version"),
        (b"ZCM\x01\xc1" + bytes(64), "bad_msgpack"),
        (b"ZCM\x01\x93\x01\x02\x03" + bytes(64), "malformed"),
    ],
)
def test_garbage_has_a_reason(datagram: bytes, reason: str) -> None:
    with pytest.raises(MembershipWireError) as info:
        decode_packet(datagram)
    assert info.value.reason == reason


def test_non_canonical_body_is_refused() -> None:
    send = _node(0)._packet(PING, 5, IDS[1].sender_id, _addr(1))
    datagram = encode_packet(send.message)
    # seq 5 as a uint32 (0xce) instead of a positive fixint: same value, other bytes.
    body = datagram[4:-64]
    assert body[:3] == b"\x95\x01\x05"
    stretched = datagram[:4] + b"\x95\x01\xce\x00\x00\x00\x05" + body[3:] + datagram[-64:]
    with pytest.raises(MembershipWireError) as info:
        decode_packet(stretched)
    assert info.value.reason == "non_canonical"


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=1300))
def test_random_bytes_only_raise_wire_errors(data: bytes) -> None:
    for candidate in (data, b"ZCM\x01" + data):
        try:
            decode_packet(candidate)
        except MembershipWireError as exc:
            assert exc.reason in REASONS


def test_record_refuses_impossible_fields() -> None:
    good = _node(0).record
    with pytest.raises(UsageError):
        replace(good, port=0)
    with pytest.raises(UsageError):
        replace(good, ports=tuple(range(1, 10)))
    with pytest.raises(UsageError):
        replace(good, incarnation=-1)


def test_config_is_checked() -> None:
    with pytest.raises(UsageError, match="ping_timeout"):
        MembershipConfig(period=1.0, ping_timeout=1.0)
    with pytest.raises(UsageError):
        MembershipConfig(max_members=0)


def test_max_datagram_below_the_largest_bare_packet_is_refused() -> None:
    with pytest.raises(UsageError, match=f"max_datagram must be in {MIN_MAX_DATAGRAM}"):
        MembershipConfig(max_datagram=MIN_MAX_DATAGRAM - 1)
    with pytest.raises(UsageError, match="max_datagram"):
        MembershipConfig(max_datagram=400)
    # At the minimum, the worst packet (a PING_REQ of two longest records) still fits,
    # and queued news does not push it over.
    config = MembershipConfig(period=1.0, ping_timeout=0.4, max_datagram=MIN_MAX_DATAGRAM)
    ports = [65535] * 8
    nodes = [
        Membership.from_identity(
            IDS[i], address=("f" * 64, 65000 + i), rng=random.Random(i), ports=ports, config=config
        )
        for i in range(3)
    ]
    for node in nodes[1:]:
        # Straight in: a 64-byte host is not an IP literal, which on_message would refuse.
        nodes[0]._add(node.record)
    assert len(nodes[0]) == 2 and len(nodes[0]._queue) == 2
    for kind, target in ((PING_REQ, nodes[1].record), (PING, IDS[1].sender_id), (JOIN, None)):
        send = nodes[0]._packet(kind, 1, target, nodes[2].record)
        assert len(encode_packet(send.message)) <= MIN_MAX_DATAGRAM
    assert MIN_MAX_DATAGRAM == 478  # 4 + body (two 201-byte records) + 64: see the wire doc


def test_hosts_are_limited_in_bytes_not_characters() -> None:
    good = _node(0).record
    with pytest.raises(UsageError, match="bytes"):
        replace(good, host="\u00e9" * 40)  # 40 characters, 80 bytes
    assert replace(good, host="\u00e9" * 32).host  # 64 bytes: allowed


def _leave_record(i: int) -> Update:
    leaver = _node(i)
    leaver.leave(now=0.0)
    return Update(LEAVE, leaver.record)


def test_update_queue_is_bounded_and_evicts_the_most_sent_non_urgent() -> None:
    updates = [Update(ALIVE, _node(i).record) for i in range(4)]
    queue = UpdateQueue(capacity=3)
    queue.put(updates[0], urgent=True)
    queue.put(updates[1], urgent=False)
    queue.put(updates[2], urgent=False)
    head = b"\x00" * 200
    # One fill sends all three once; a second update about member 2 restarts its count.
    assert len(queue.fill(head, (), (), limit=10)) == 3
    queue.put(updates[2], urgent=False)
    queue.put(updates[3], urgent=False)  # full: member 1 (non-urgent, sent most) goes
    assert len(queue) == 3 and queue.evicted == 1
    assert IDS[1].agent_id not in queue and IDS[0].agent_id in queue
    queue.discard(IDS[2].agent_id)
    queue.discard(IDS[2].agent_id)  # twice: harmless
    assert IDS[2].agent_id not in queue and len(queue) == 2
    urgent = UpdateQueue(capacity=2)
    urgent.put(updates[0], urgent=True)
    urgent.put(updates[1], urgent=True)
    urgent.put(updates[2], urgent=False)  # non-urgent news never displaces urgent news
    assert IDS[2].agent_id not in urgent and len(urgent) == 2
    urgent.put(updates[3], urgent=True)  # urgent news does, when nothing else can go
    assert IDS[3].agent_id in urgent and len(urgent) == 2
    with pytest.raises(UsageError):
        UpdateQueue(capacity=0)


def test_forgotten_dead_members_leave_the_update_queue() -> None:
    config = MembershipConfig(period=1.0, ping_timeout=0.4, sync_every=0, max_dead=2)
    node = _node(0, config=config)
    for i in (1, 2, 3, 4):
        friend = _node(i)
        node.on_message(_addr(i), friend._packet(SYNC, 1, None, _addr(0)).message, now=0.0)
    assert len(node) == 4
    news = _node(5)  # a member who passes the LEAVEs of members 1, 2 and 3 on
    packet = news._packet(SYNC, 1, None, _addr(0), [_leave_record(i) for i in (1, 2, 3)])
    events = node.on_message(_addr(5), packet.message, now=1.0)
    assert [e.kind for e in events if isinstance(e, PeerEvent)] == ["ENTER"] + ["LEAVE"] * 3
    assert not node.is_dead(IDS[1].agent_id)  # the oldest remembered went first
    assert IDS[1].agent_id not in node._queue  # ... and its queued LEAVE with it
    assert all(node.is_dead(IDS[i].agent_id) and IDS[i].agent_id in node._queue for i in (2, 3))


def test_a_strangers_leave_is_remembered_but_not_gossiped() -> None:
    node = _node(0)
    friend = _node(1)
    stranger = _node(2)
    alive = Update(ALIVE, stranger.record)
    leave = _leave_record(2)
    node.on_message(_addr(1), friend._packet(SYNC, 1, None, _addr(0), [leave]).message, now=0.0)
    assert node.is_dead(IDS[2].agent_id) and IDS[2].agent_id not in node._queue
    # Older news of it (gossip racing its goodbye) does not bring it in.
    node.on_message(_addr(1), friend._packet(SYNC, 2, None, _addr(0), [alive]).message, now=0.1)
    assert IDS[2].agent_id not in node and node.dropped["stale"] == 1


def test_non_members_are_answered_only_at_the_address_they_sent_from() -> None:
    node = _node(0)
    joiner = _node(1)
    join = joiner._packet(JOIN, 7, None, _addr(0)).message
    ping = joiner._packet(PING, 8, IDS[0].sender_id, _addr(0)).message
    elsewhere = ("10.0.0.99", 40000)
    for packet in (join, ping):
        assert node.on_message(elsewhere, packet, now=0.0) == []
        assert node.on_message(_addr(1)[0], packet, now=0.0) == []  # not even an address
    assert node.dropped == {"address_mismatch": 4}
    assert len(node) == 0 and not node._queue  # dropped: nothing learnt
    # From its own address the JOIN is answered (and a PING would be, too).
    actions = node.on_message(_addr(1), join, now=0.0)
    assert [(a.to, a.message.kind) for a in actions if isinstance(a, Send)] == [(_addr(1), SYNC)]
    assert IDS[1].agent_id in node
    # A member keeps being answered wherever its datagram comes from (its record is known).
    actions = node.on_message(elsewhere, ping, now=0.1)
    assert [(a.to, a.message.kind) for a in actions if isinstance(a, Send)] == [(_addr(1), ACK)]
    assert node.dropped == {"address_mismatch": 4}


def test_address_check_compares_ip_literals_by_value() -> None:
    node = Membership.from_identity(IDS[0], address=("::1", 7000), rng=random.Random(0))
    joiner = Membership.from_identity(
        IDS[1], address=("0:0:0:0:0:0:0:1", 7001), rng=random.Random(1)
    )
    join = joiner._packet(JOIN, 1, None, node.address).message
    assert node.on_message(("::1", 7002), join, now=0.0) == []  # another port
    actions = node.on_message(("::1", 7001), join, now=0.0)
    assert [a.message.kind for a in actions if isinstance(a, Send)] == [SYNC]
    assert node.dropped == {"address_mismatch": 1}


# -- the machine ------------------------------------------------------------------------------


def test_join_then_ping_ack_keeps_everyone_alive() -> None:
    net, nodes = _joined(3)
    net.advance(20.0)
    for i, node in enumerate(nodes):
        assert {k for k, _ in net.kinds(i)} == {"ENTER"}
        assert all(m.state == "ALIVE" for m in node.members)
        assert node.stats["probes"] >= 15
        assert node.stats["acks"] == node.stats["probes"] or node.stats["acks"] >= 15
        assert not node.dropped
    kinds = {packet.kind for _, _, packet in net.sent}
    assert PING in kinds and ACK in kinds and PING_REQ not in kinds


def test_indirect_probe_relays_the_ack() -> None:
    net, nodes = _joined(3)
    a, b = _addr(0), _addr(1)
    # The direct path between 0 and 1 is cut both ways; 2 can still reach both.
    net.drop = lambda source, to, packet: {source, to} == {a, b}
    net.advance(30.0)
    assert nodes[0].stats["indirect_probes"] > 0
    assert nodes[2].stats["relayed_acks"] > 0
    assert "EVASIVE" not in {k for k, _ in net.kinds(0)}
    assert IDS[1].agent_id in nodes[0]


def test_suspicion_is_refuted_by_a_higher_incarnation() -> None:
    net, nodes = _joined(3)
    victim = _addr(1)
    net.drop = lambda source, to, packet: victim in (source, to)  # isolated for a while
    while ("EVASIVE", IDS[1].agent_id) not in net.kinds(0) + net.kinds(2):
        assert net.now < 20
        net.advance(net.now + 0.5)
    net.drop = lambda source, to, packet: False
    net.advance(net.now + 30)
    assert nodes[1].incarnation >= 1
    assert nodes[1].stats["refuted"] >= 1
    for i in (0, 2):
        assert ("EXPIRED", IDS[1].agent_id) not in net.kinds(i)
        (info,) = [m for m in nodes[i].members if m.agent_id == IDS[1].agent_id]
        assert info.state == "ALIVE" and info.incarnation == nodes[1].incarnation
    assert all(m.state == "ALIVE" for node in nodes for m in node.members)


def test_unrefuted_suspicion_ends_in_dead_and_stale_news_cannot_revive() -> None:
    net, nodes = _joined(3)
    victim = _addr(1)
    old_record = nodes[1].record
    del net.nodes[victim]  # crashed: nothing reaches it, it sends nothing
    net.advance(net.now + 40)
    for i in (0, 2):
        kinds = [k for k, agent in net.kinds(i) if agent == IDS[1].agent_id]
        assert kinds == ["ENTER", "EVASIVE", "EXPIRED"]
        assert IDS[1].agent_id not in nodes[i] and nodes[i].is_dead(IDS[1].agent_id)
    # A replay of its old self-signed record (by a third node) does not bring it back.
    replay = nodes[2]._packet(PING, 99, IDS[0].sender_id, _addr(0), [Update(ALIVE, old_record)])
    before = nodes[0].dropped["stale"]
    net.run(_addr(2), [replay], net.now)
    assert IDS[1].agent_id not in nodes[0]
    assert nodes[0].dropped["stale"] > before
    # The node itself, restarted from scratch, learns it was declared dead and outbids it.
    reborn = _node(1, seeds=(0,))
    net.nodes[victim] = reborn
    net.events[victim] = []
    net.advance(net.now + 40)
    assert reborn.incarnation > old_record.incarnation
    for i in (0, 2):
        assert IDS[1].agent_id in nodes[i]
        assert net.kinds(i)[-1] == ("ENTER", IDS[1].agent_id)


def test_lower_incarnation_updates_are_stale() -> None:
    net, nodes = _joined(2)
    newer = nodes[1]._signed_record(5, leaving=False)
    nodes[1]._record = newer  # as after five refutations
    net.run(
        _addr(1),
        [nodes[1]._packet(PING, 1, IDS[0].sender_id, _addr(0), [Update(ALIVE, newer)])],
        net.now,
    )
    assert [m.incarnation for m in nodes[0].members] == [5]
    older = nodes[1]._signed_record(3, leaving=False)
    suspect_old = nodes[1]._packet(ACK, 1, IDS[0].sender_id, _addr(0), [Update(SUSPECT, older)])
    before = nodes[0].dropped["stale"]
    assert nodes[0].on_message(_addr(1), suspect_old.message, now=net.now) == []
    assert nodes[0].dropped["stale"] == before + 1
    assert [m.state for m in nodes[0].members] == ["ALIVE"]


def test_forged_and_unsigned_input_is_dropped_without_effect() -> None:
    net, nodes = _joined(3)
    target = nodes[0]
    good = nodes[1]._packet(PING, 1, IDS[0].sender_id, _addr(0)).message
    state = (target.members, target.incarnation)
    # Not a packet at all; a bad packet signature; a record signed by someone else.
    assert target.on_message(_addr(1), b"junk", now=net.now) == []
    assert target.on_message(_addr(1), replace(good, signature=bytes(64)), now=net.now) == []
    fake = replace(nodes[2].record, incarnation=9)  # keeps 2's old signature: invalid
    forged = nodes[1]._packet(PING, 2, IDS[0].sender_id, _addr(0), [Update(ALIVE, fake)])
    target.on_message(_addr(1), forged.message, now=net.now)
    # A packet claiming to come from 2 but signed by 1.
    body = (PING, 3, nodes[2].record, IDS[0].sender_id, ())
    impostor = Packet(*body, signature=IDS[1].sign(packet_material(*body)))
    assert target.on_message(_addr(1), impostor, now=net.now) == []
    assert target.dropped["malformed"] == 1
    assert target.dropped["bad_signature"] == 3
    assert (target.members, target.incarnation) == state


class _Trust:
    def __init__(self, identities: list[Identity]) -> None:
        self.keys = {i.agent_id: i.verify_key for i in identities}

    def lookup(self, agent_id: str, *, now: float) -> Any:
        if agent_id not in self.keys:
            raise UnknownPeerError(f"{agent_id} unknown", reason="unknown_peer")
        return type("Entry", (), {"verify_key": self.keys[agent_id]})()


def test_unknown_signers_are_dropped_with_a_trust_store() -> None:
    trust = _Trust(IDS[:2])
    node = _node(0, trust=trust)
    stranger = _node(4)
    ping = stranger._packet(PING, 1, IDS[0].sender_id, _addr(0)).message
    assert node.on_message(_addr(4), ping, now=1.0) == []
    assert node.dropped["unknown_sender"] == 1
    # A trusted sender forwarding a stranger's record: that update alone is dropped.
    friend = _node(1)
    carrying = friend._packet(PING, 2, IDS[0].sender_id, _addr(0), [Update(ALIVE, stranger.record)])
    actions = node.on_message(_addr(1), carrying.message, now=1.0)
    assert node.dropped["unknown_member"] == 1
    assert [m.agent_id for m in node.members] == [IDS[1].agent_id]
    assert any(isinstance(a, Send) and a.message.kind == ACK for a in actions)


def test_forged_dead_claims_only_cause_a_refutation() -> None:
    net, nodes = _joined(4)
    liar, victim = nodes[3], nodes[1]
    for round_ in range(5):
        for i in (0, 1, 2):
            lie = liar._packet(
                PING, 100 + round_, IDS[i].sender_id, _addr(i), [Update(DEAD, victim.record)]
            )
            net.run(_addr(3), [lie], net.now)
        net.advance(net.now + 2)
    net.advance(net.now + 30)
    assert victim.incarnation >= 1
    for i in (0, 2):
        assert ("EXPIRED", IDS[1].agent_id) not in net.kinds(i)
        assert IDS[1].agent_id in nodes[i]


def test_join_with_one_seed_down_and_backoff() -> None:
    seed = _node(1)
    joiner = _node(2, seeds=(0, 1))  # seed 0 never answers: it does not exist
    net = Net([seed, joiner])
    net.advance(5.0)
    assert IDS[1].agent_id in joiner and IDS[2].agent_id in seed
    to_dead_seed = [p for _, to, p in net.sent if to == _addr(0)]
    assert len(to_dead_seed) <= 2  # joined: the missing seed is retried only after a while
    net.advance(70.0)
    to_dead_seed = [p for _, to, p in net.sent if to == _addr(0)]
    assert 3 <= len(to_dead_seed) <= 4  # every join_backoff_max (30 s), not every period
    lonely = _node(3, seeds=(0,))
    alone = Net([lonely])
    alone.advance(40.0)
    # Backoff while nobody answers: 1, 2, 4, 8, 16, 30 s -> attempts at 0, 1, 3, 7, 15, 31.
    assert lonely.stats["join_attempts"] == 6


def test_leave_is_announced_and_final() -> None:
    net, nodes = _joined(3)
    leaver = nodes[2]
    net.run(_addr(2), leaver.leave(now=net.now), net.now)
    assert leaver.next_deadline() is None and leaver.leave(now=net.now) == []
    net.advance(net.now + 5)
    for i in (0, 1):
        assert net.kinds(i)[-1] == ("LEAVE", IDS[2].agent_id)
        assert IDS[2].agent_id not in nodes[i]
        assert all(e.kind != "EXPIRED" for e in net.events[_addr(i)])


def test_datagrams_stay_under_the_bound_with_many_updates() -> None:
    node = _node(0, config=replace(CONFIG, max_members=50))
    sizes: list[int] = []
    counts: list[int] = []
    for i in range(60):
        peer = Membership.from_identity(
            Identity.generate(f"x{i}"), address=("10.0.1.1", 20000 + i),
            ports=(1, 2, 3, 4, 5, 6, 7, 8), rng=random.Random(i),
        )  # fmt: skip
        ping = peer._packet(PING, 1, IDS[0].sender_id, _addr(0)).message
        for action in node.on_message(peer.address, ping, now=1.0):
            if isinstance(action, Send):
                sizes.append(len(encode_packet(action.message)))
                counts.append(len(action.message.updates))
    assert len(node) == 50 and node.dropped["members_full"] == 10
    assert len(sizes) == 60 and max(sizes) <= MAX_DATAGRAM
    assert max(counts) >= 5  # full packets: the cap, not a lack of news, limited them


@pytest.mark.parametrize("module", ["membership", "membership_config", "membership_wire"])
def test_the_core_is_pure(module: str) -> None:
    source = Path(package.__file__).with_name(f"{module}.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    forbidden = {"zmq", "socket", "asyncio", "time", "random", "threading", "selectors", "os"}
    assert imported and not imported & forbidden
    assert "urandom" not in source
