"""Gossip over secure sessions (the default with a trust store): what the wire and an impostor
see, who counts as the sender, and what happens to peers that fail or lose their trust.

Every wait is bounded; sockets are on loopback tcp or ipc in a temporary directory.
"""

from __future__ import annotations

import selectors
import socket
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import SecurityError, UsageError
from zmqcomm.patterns.gossip import Graft, IWant, Message, Publish, id_material
from zmqcomm.patterns.gossip.codec import encode_frame, encode_item
from zmqcomm.patterns.gossip.driver import GossipAgent, GossipConfig
from zmqcomm.patterns.gossip.group import GossipGroup
from zmqcomm.patterns.gossip.links import UNREACHABLE, SecureLinks
from zmqcomm.patterns.gossip.queues import Priority

from .support import connect_secure, raw_dealer, secure_peer, step_until

FAST = GossipConfig(heartbeat=0.05, unreachable_grace=0.3)


class Relay:
    """A tcp relay on loopback that records every byte it passes on (a sniffer on the wire)."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.captured = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        other: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self.listener:
                        near, _ = self.listener.accept()
                        far = socket.create_connection(self.target, timeout=2.0)
                        other[near], other[far] = far, near
                        selector.register(near, selectors.EVENT_READ)
                        selector.register(far, selectors.EVENT_READ)
                        continue
                    data = sock.recv(65536)
                    if not data:
                        selector.unregister(sock)
                        continue
                    self.captured += data
                    other[sock].sendall(data)
        finally:
            for sock in other:
                sock.close()
            selector.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.listener.close()


def _pair(
    store: TrustStore, context: zmq.Context[Any], audit: MemoryAuditLog | None = None
) -> tuple[GossipAgent, GossipAgent]:
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    store.add(alice.public)
    store.add(bob.public)
    config = FAST
    a = GossipAgent(
        alice, "tcp://127.0.0.1:*", trust=store, config=config, context=context, audit=audit
    )
    b = GossipAgent(bob, "tcp://127.0.0.1:*", trust=store, config=config, context=context)
    return a, b


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_secure_is_the_default_with_a_trust_store_and_signed_only_needs_asking(
    store: TrustStore, context: zmq.Context[Any]
) -> None:
    me = Identity.generate("me")
    store.add(me.public)
    with GossipAgent(me, "tcp://127.0.0.1:*", trust=store, context=context) as agent:
        assert agent.secure and agent.statistics()["transport"]["secure"]
    with GossipAgent(me, "tcp://127.0.0.1:*", trust=store, context=context, secure=False) as agent:
        assert not agent.secure
    with GossipAgent(me, "tcp://127.0.0.1:*", verify_keys={}, context=context) as agent:
        assert not agent.secure  # no trust store to run handshakes with: signed-only
    with pytest.raises(UsageError, match="secure=True needs trust"):
        GossipAgent(me, "tcp://127.0.0.1:*", verify_keys={}, context=context, secure=True)


def test_a_sniffer_on_the_wire_sees_no_payload_and_the_peer_still_gets_it(
    store: TrustStore, context: zmq.Context[Any]
) -> None:
    a, b = _pair(store, context)
    relay = Relay(_port(b.endpoint))
    group = GossipGroup([a, b])
    try:
        # Alice reaches Bob only through the relay; Bob learns Alice from her Graft.
        a.add_peer(b.agent_id, f"tcp://127.0.0.1:{relay.port}")
        assert group.run_until(lambda: a.agent_id in b.node.peers, timeout=5.0)
        marker = b"confidential-gossip-payload-7f3a9c"
        mid = a.publish(marker * 4)
        got: list[Any] = []
        assert group.run_until(
            lambda: any(d.message_id == mid for _, d in got),
            timeout=5.0,
            on_delivered=lambda agent, d: got.append((agent, d)),
        )
        delivered = next(d for agent, d in got if agent is b and d.message_id == mid)
        assert delivered.payload == marker * 4 and delivered.sender == a.agent_id
        assert len(relay.captured) > len(marker) * 4  # the frames did cross the relay
        assert marker not in relay.captured
    finally:
        group.close()
        relay.close()


def test_an_impostor_under_a_trusted_routing_id_gets_nothing_and_is_not_heard(
    store: TrustStore, context: zmq.Context[Any]
) -> None:
    audit = MemoryAuditLog()
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    store.add(alice.public)
    store.add(bob.public)  # Bob is trusted; the impostor only knows his id, not his key
    agent = GossipAgent(alice, "tcp://127.0.0.1:*", trust=store, audit=audit, context=context)
    impostor = raw_dealer(context, bob.agent_id, agent.endpoint)
    try:
        mid = agent.publish(b"cached for repair")
        impostor.send(encode_frame([Graft(), IWant((mid,))]))
        for _ in range(10):
            agent.step(0.02)
        agent.publish(b"the secret")
        for _ in range(10):
            agent.step(0.02)
        assert bob.agent_id not in agent.node.peers  # its Graft was never taken
        while impostor.poll(0):
            data = b"".join(impostor.recv_multipart())
            assert b"secret" not in data and b"cached for repair" not in data
        stats = agent.statistics()
        assert stats["received_frames"] == 0 and stats["sent_frames"] == 0
        # Not a handshake: refused by the session layer (bad_magic: not even a zmqcomm
        # frame), counted and audited.
        assert any(k.startswith("session_") for k in stats["drops"]), stats["drops"]
        assert audit.events("reject")
    finally:
        impostor.close(0)
        agent.close()


def test_a_revoked_peer_is_cut_off_both_ways(store: TrustStore, context: zmq.Context[Any]) -> None:
    audit = MemoryAuditLog()
    a, b = _pair(store, context, audit)
    carol = Identity.generate("carol")  # an origin everyone trusts; Bob relays her message
    store.add(carol.public)
    group = GossipGroup([a, b])
    try:
        b.add_peer(a.agent_id, a.endpoint)
        a.add_peer(b.agent_id, b.endpoint)
        first = a.publish(b"before")
        assert group.run_until(
            lambda: any(d.message_id == first for d in b.deliveries), timeout=5.0
        )
        store.revoke(b.agent_id)
        signature = carol.sign(id_material(carol.agent_id, 1, b"relayed by bob"))
        relayed = Message(carol.agent_id, 1, b"relayed by bob", 0, signature)
        b.queues.push(a.agent_id, encode_item(Publish(relayed)), Priority.FORWARD)
        after = a.publish(b"after")
        assert group.run_until(lambda: b.agent_id not in a.node.peers, timeout=5.0)
        group.run_for(0.3)
        assert all(d.message_id != relayed.id for d in a.deliveries)  # nothing of Bob's taken
        assert all(d.message_id != after for d in b.deliveries)  # nothing more for Bob
        drops = a.statistics()["drops"]
        assert drops.get("session_revoked", 0) >= 1, drops
        assert audit.events("reject", reason="peer_untrusted")
        assert audit.events("reject", reason="revoked")
    finally:
        group.close()


def test_a_peer_whose_handshake_fails_is_counted_and_its_frames_drop_after_the_grace(
    store: TrustStore, context: zmq.Context[Any]
) -> None:
    audit = MemoryAuditLog()
    alice, mallory = Identity.generate("alice"), Identity.generate("mallory")
    expected = Identity.generate("expected")  # whom Alice means to dial
    store.add(alice.public)
    store.add(expected.public)
    store.add(mallory.public)  # trusted, but not who sits at that endpoint for Alice
    agent = GossipAgent(alice, "tcp://127.0.0.1:*", trust=store, audit=audit, context=context)
    other = GossipAgent(mallory, "tcp://127.0.0.1:*", trust=store, context=context)
    group = GossipGroup([agent, other])
    try:
        agent.add_peer(expected.agent_id, other.endpoint)
        agent.publish(b"for the expected peer only")
        assert group.run_until(
            lambda: any(k.startswith("unreachable_") for k in agent.statistics()["drops"]),
            timeout=5.0,
        )
        drops = agent.statistics()["drops"]
        assert any(k.startswith("session_") for k in drops), drops  # refused and counted
        assert audit.events("reject")
        assert other.statistics()["received_frames"] == 0
        assert all(d.sender is None for d in other.deliveries)
    finally:
        group.close()


def test_garbage_inside_a_session_never_raises_and_blames_the_authenticated_sender(
    store: TrustStore, context: zmq.Context[Any]
) -> None:
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    store.add(alice.public)
    store.add(bob.public)
    agent = GossipAgent(alice, "tcp://127.0.0.1:*", trust=store, context=context)
    dealer = secure_peer(context, bob, store, agent.endpoint)
    try:
        assert connect_secure(agent, dealer)
        dealer.send(b"\xc1garbage")
        dealer.send(msgpack.packb([1, [7]]))
        dealer.send({"not": "bytes"})
        assert step_until(agent, lambda: agent.counters["received_frames"] >= 3)
        drops = agent.statistics()["drops"]
        assert drops == {"malformed_undecodable": 1, "malformed_bad_item": 1, "bad_frames": 1}
        assert agent.scores.score(bob.agent_id, now=agent._clock()) < 0
    finally:
        dealer.close()
        agent.close()


def test_removing_peers_and_closing_leave_no_socket_behind(store: TrustStore) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    me = Identity.generate("me")
    store.add(me.public)
    agent = GossipAgent(me, "tcp://127.0.0.1:*", trust=store, context=ctx)
    peers = [Identity.generate(f"p{i}").agent_id for i in range(5)]
    for round_ in range(3):
        for i, peer in enumerate(peers):
            agent.add_peer(peer, f"tcp://127.0.0.1:{40000 + i + round_}")  # re-dialed each round
        agent.step(0.0)
    assert agent.statistics()["transport"]["dialed"] == 5
    assert len(agent.sockets) == 1 + 2 * 5  # the router, a dealer and its events per peer
    for peer in peers:
        agent.remove_peer(peer)
    assert agent.sockets == (agent.links.router.socket,)  # type: ignore[union-attr]
    agent.close()
    terminated = threading.Thread(target=ctx.term, daemon=True)
    terminated.start()
    terminated.join(5.0)
    assert not terminated.is_alive()  # every socket was closed


def test_a_dialed_peer_that_is_down_does_not_make_the_agent_tick_at_full_rate(
    store: TrustStore, context: zmq.Context[Any]
) -> None:
    """A dealer has no session before its first connection. Taken for a session that is gone
    and must be restarted now, it made the links tick every 10 ms for as long as the peer was
    down; the next tick is the idle one (its connection event wakes the agent instead)."""
    me, absent = Identity.generate("me"), Identity.generate("absent")
    store.add(me.public)
    store.add(absent.public)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        free_port = taken.getsockname()[1]  # closed below: nothing listens there
    with GossipAgent(me, "tcp://127.0.0.1:*", trust=store, context=context) as agent:
        agent.add_peer(absent.agent_id, f"tcp://127.0.0.1:{free_port}")
        links = agent.links
        assert isinstance(links, SecureLinks)
        for _ in range(3):
            links.tick()
            due = links.due_in()
            assert due is not None and due > 0.1, due


def test_a_session_that_refuses_to_send_is_replaced_and_its_peer_kept(
    store: TrustStore, context: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal that is not about trust (a rekey overdue past the session's hard limit)
    must not drop a trusted peer as untrusted: the dealer is dialed afresh instead."""
    audit = MemoryAuditLog()
    a, b = _pair(store, context, audit)
    group = GossipGroup([a, b])
    try:
        a.add_peer(b.agent_id, b.endpoint)  # only Alice dials: her dealer is the one session
        links = a.links
        assert isinstance(links, SecureLinks)
        assert group.run_until(lambda: links.dealers[b.agent_id].established, timeout=5.0)
        stale = links.dealers[b.agent_id]

        def overdue(*args: object, **kwargs: object) -> None:
            raise SecurityError("past the hard rekey limit", reason="rekey_overdue")

        monkeypatch.setattr(stale, "send", overdue)
        assert links.send(b.agent_id, encode_frame([Graft()])) == UNREACHABLE
        fresh = links.dealers[b.agent_id]
        assert fresh is not stale and stale.closed
        assert links.statistics()["session_resets"] == 1
        mid = a.publish(b"after the reset")
        assert group.run_until(lambda: any(d.message_id == mid for d in b.deliveries), timeout=5)
        assert b.agent_id in a.node.peers
        assert not audit.events("reject", reason="peer_untrusted")
    finally:
        group.close()


def test_a_feeder_that_restarts_stops_counting_until_it_feeds_us_again(
    store: TrustStore, context: zmq.Context[Any], tmp_path: Path
) -> None:
    """Bob feeds Alice (he grafted her). He restarts, and may have drawn a mesh without her:
    Alice no longer counts him as a feeder until his new self grafts or pushes to her (else,
    all her feeders restarted, she would think herself fed and get everything late). Both
    of her sockets see his new sessions; the restart counts once, and his new Graft stays."""
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    store.add(alice.public)
    store.add(bob.public)
    # ipc: a restarted agent binds the same path at once (a tcp port may still be held).
    a = GossipAgent(alice, f"ipc://{tmp_path}/a", trust=store, config=FAST, context=context)
    b = GossipAgent(bob, f"ipc://{tmp_path}/b", trust=store, config=FAST, context=context)
    a.add_peer(b.agent_id, b.endpoint)
    b.add_peer(a.agent_id, a.endpoint)
    group = GossipGroup([a, b])
    try:
        assert group.run_until(lambda: b.agent_id in a.node.fed_by, timeout=5.0)
        assert a.node.counters["feeder_reconnected"] == 0
        b.close()
        b = GossipAgent(bob, f"ipc://{tmp_path}/b", trust=store, config=FAST, context=context)
        b.add_peer(a.agent_id, a.endpoint)
        group = GossipGroup([a, b])
        assert group.run_until(lambda: a.node.counters["feeder_reconnected"] == 1, timeout=5.0)
        # Bob's new mesh holds Alice (his only peer): his Graft makes him a feeder again.
        assert group.run_until(lambda: b.agent_id in a.node.fed_by, timeout=5.0)
        group.run_for(0.5)  # both of Alice's sockets have seen his new sessions by now
        assert a.node.counters["feeder_reconnected"] == 1
        assert b.agent_id in a.node.fed_by
    finally:
        group.close()
