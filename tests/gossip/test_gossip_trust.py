"""Who may make a gossip agent send to it or track it, and which origins are honoured.

Each test names a rule a second review found broken; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import UsageError
from zmqcomm.patterns.discovery.peers import ENTER, PeerEvent
from zmqcomm.patterns.gossip import (
    Deliver,
    GossipNode,
    Graft,
    IHave,
    IWant,
    Message,
    Publish,
    id_material,
)
from zmqcomm.patterns.gossip.codec import decode_frame, encode_frame
from zmqcomm.patterns.gossip.driver import GossipAgent, GossipConfig, tcp_endpoint, trust_verifier
from zmqcomm.patterns.gossip.scoring import ScoreParams
from zmqcomm.secure import SecureDealer

from .support import connect_secure, payloads_of, raw_dealer, secure_peer, step_until


@pytest.mark.parametrize("revoked", [False, True], ids=["stranger", "revoked"])
def test_an_untrusted_id_cannot_graft_ihave_or_iwant_its_way_into_the_traffic(
    context: zmq.Context[zmq.Socket[bytes]], store: TrustStore, revoked: bool
) -> None:
    alice, other = Identity.generate("alice"), Identity.generate("other")
    store.add(alice.public)
    if revoked:
        store.add(other.public)
        store.revoke(other.agent_id)
    audit = MemoryAuditLog()
    # Signed-only transport: ids are claims, so the agent checks them (secure sessions refuse
    # an untrusted or revoked key at the handshake: test_gossip_secure.py).
    agent = GossipAgent(
        alice, "tcp://127.0.0.1:*", trust=store, audit=audit, context=context, secure=False
    )
    evil = raw_dealer(context, other.agent_id, agent.endpoint)
    try:
        mid = agent.publish(b"cached for repair")
        evil.send(encode_frame([Graft(), IHave((bytes(16),)), IWant((mid,))]))
        assert step_until(agent, lambda: agent.counters["received_items"] == 3)
        assert other.agent_id not in agent.node.peers
        assert agent.statistics()["drops"]["untrusted_control"] == 3
        assert audit.events("reject", reason="untrusted_control")
        agent.publish(b"secret")
        agent.flush()
        agent.step(0.05)
        assert not evil.poll(0), decode_frame(evil.recv())  # neither IWant, reply nor publish
    finally:
        evil.close(0)
        agent.close()


class _Bob:
    """Bob's side of a link to Alice's agent: a raw dealer (signed-only) or a secure session."""

    def __init__(self, sock: zmq.Socket[bytes] | SecureDealer) -> None:
        self.sock = sock

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def frames(self) -> list[bytes]:
        if isinstance(self.sock, SecureDealer):
            return payloads_of(self.sock)
        out = []
        while self.sock.poll(0):
            out.append(self.sock.recv())
        return out

    def close(self) -> None:
        if isinstance(self.sock, SecureDealer):
            self.sock.close()
        else:
            self.sock.close(0)


@contextlib.contextmanager
def _grafted(
    context: zmq.Context[zmq.Socket[bytes]],
    store: TrustStore,
    audit: MemoryAuditLog | None = None,
    *,
    secure: bool,
) -> Iterator[tuple[GossipAgent, _Bob, Identity]]:
    """Alice's agent, and Bob (both trusted) grafted onto its mesh through a raw dealer or a
    secure session of his own."""
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    store.add(alice.public)
    store.add(bob.public)
    agent = GossipAgent(
        alice, "tcp://127.0.0.1:*", trust=store, audit=audit, context=context, secure=secure
    )
    if secure:
        dealer = _Bob(secure_peer(context, bob, store, agent.endpoint))
    else:
        dealer = _Bob(raw_dealer(context, bob.agent_id, agent.endpoint))
    try:
        if isinstance(dealer.sock, SecureDealer):
            assert connect_secure(agent, dealer.sock)
        dealer.send(encode_frame([Graft()]))
        assert step_until(agent, lambda: bob.agent_id in agent.node.peers)
        yield agent, dealer, bob
    finally:
        dealer.close()
        agent.close()


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_a_trusted_grafter_is_still_learned(
    context: zmq.Context[zmq.Socket[bytes]], store: TrustStore, secure: bool
) -> None:
    with _grafted(context, store, secure=secure) as (agent, _, _):
        assert "untrusted_control" not in agent.statistics()["drops"]


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_a_peer_revoked_after_it_joined_is_dropped_at_the_next_heartbeat(
    context: zmq.Context[zmq.Socket[bytes]], store: TrustStore, secure: bool
) -> None:
    audit = MemoryAuditLog()
    with _grafted(context, store, audit, secure=secure) as (agent, dealer, bob):
        store.revoke(bob.agent_id)
        assert step_until(agent, lambda: bob.agent_id not in agent.node.peers)
        assert audit.events("reject", reason="peer_untrusted")
        agent.publish(b"after the revocation")
        agent.flush()
        agent.step(0.05)
        for raw in dealer.frames():  # what was sent before the revocation may still be queued
            frame = decode_frame(raw)
            assert not any(getattr(m, "payload", b"") == b"after the revocation" for m in frame)


def test_a_revoked_origin_is_refused_on_its_next_message(store: TrustStore) -> None:
    bad, me = Identity.generate("compromised"), Identity.generate("me")
    store.add(bad.public)
    node = GossipNode(
        me.agent_id,
        [bad.agent_id, Identity.generate("other").agent_id],
        sign=me.sign,
        verify=trust_verifier(store),
        choose=random.Random(1).sample,
        now=0.0,
    )

    def publish(sequence: int, payload: bytes) -> list[Any]:
        signature = bad.sign(id_material(bad.agent_id, sequence, payload))
        message = Message(bad.agent_id, sequence, payload, 0, signature)
        return node.on_message(bad.agent_id, Publish(message), now=0.0)

    assert any(isinstance(a, Deliver) for a in publish(0, b"hello"))
    store.revoke(bad.agent_id)
    assert publish(1, b"after revocation") == []  # neither delivered nor relayed
    assert node.counters["bad_signature"] == 1


def test_a_restarted_agent_numbers_above_its_earlier_messages(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    origin = Identity.generate("origin")
    keys = {origin.agent_id: origin.verify_key}
    published = []
    for _ in range(2):  # the same identity, before and after a restart
        agent = GossipAgent(origin, "tcp://127.0.0.1:*", verify_keys=keys, context=context)
        try:
            mid = agent.publish(b"leader=me")
            published.append((agent.deliveries[-1].sequence, mid))
        finally:
            agent.close()
    (first, first_id), (second, second_id) = published
    assert second > first and second <= 2**64 - 1
    assert second_id != first_id  # a peer that saw the first copy delivers the second


def test_a_peer_that_does_not_keep_its_ihave_promises_loses_score(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    liar = Identity.generate("liar").agent_id
    agent = GossipAgent(
        Identity.generate("victim"),
        "tcp://127.0.0.1:*",
        verify_keys={liar: bytes(32)},
        config=GossipConfig(heartbeat=0.05),
        context=context,
    )
    dealer = raw_dealer(context, liar, agent.endpoint)
    try:
        rng = random.Random(8)
        ids = tuple(rng.randbytes(16) for _ in range(64))
        dealer.send(encode_frame([IHave(ids)]))
        assert step_until(
            agent, lambda: agent.scores.peer_counters(liar).get("broken_promises") == 64
        )
        assert agent.scores.score(liar, now=agent._clock()) < 0
    finally:
        dealer.close(0)
        agent.close()


@pytest.mark.parametrize(
    ("address", "ports", "endpoint"),
    [
        ("127.0.0.1", (5555,), "tcp://127.0.0.1:5555"),
        ("::1", (5555, 6000), "tcp://[::1]:5555"),
        ("2001:db8::1", (1,), "tcp://[2001:db8::1]:1"),
        ("a b", (5555,), None),
        ("127.0.0.1:1/x", (5555,), None),
        ("example.com", (5555,), None),  # a peer's record never makes us resolve a name
        ("fe80::1%eth0", (5555,), None),
        ("127.0.0.1", (), None),
        ("127.0.0.1", (0,), None),
        ("127.0.0.1", (70000,), None),
    ],
)
def test_tcp_endpoint_takes_only_ip_literals(
    address: str, ports: tuple[int, ...], endpoint: str | None
) -> None:
    assert tcp_endpoint(PeerEvent(ENTER, "x" * 26, address, ports)) == endpoint


def test_a_peer_event_that_cannot_be_dialed_is_counted_not_raised(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    audit = MemoryAuditLog()
    me = Identity.generate("me")
    agent = GossipAgent(me, "tcp://127.0.0.1:*", verify_keys={}, audit=audit, context=context)
    try:
        ipv6 = Identity.generate("six").agent_id
        agent.on_peer_event(PeerEvent(ENTER, ipv6, "::1", (5555,)))
        assert agent._dialed[ipv6] == "tcp://[::1]:5555"
        junk = Identity.generate("junk").agent_id
        agent.on_peer_event(
            PeerEvent(ENTER, junk, "a b", (5555,)), endpoint_for=lambda e: "tcp://a b:5555"
        )
        assert junk not in agent.node.peers
        assert agent.statistics()["drops"]["bad_peer_endpoint"] == 1
        assert audit.events("reject", reason="bad_peer_endpoint")
    finally:
        agent.close()


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("unreachable_grace", NAN),
        ("unreachable_grace", INF),
        ("retry_interval", NAN),
        ("retry_interval", INF),
        ("heartbeat", NAN),
        ("heartbeat", INF),
    ],
)
def test_gossip_config_refuses_nan_and_infinite_durations(field: str, value: float) -> None:
    with pytest.raises(UsageError, match=f"GossipConfig.{field} must be a finite number"):
        GossipConfig(**{field: value})


@pytest.mark.parametrize("field", ["iwant_timeout", "seen_ttl", "heartbeat"])
@pytest.mark.parametrize("value", [NAN, INF])
def test_gossip_node_refuses_nan_and_infinite_durations(field: str, value: float) -> None:
    with pytest.raises(UsageError, match=f"{field} must be a finite number"):
        GossipNode(
            "a",
            ["b"],
            sign=None,
            verify=None,
            choose=random.Random(1).sample,
            now=0.0,
            **{field: value},
        )


@pytest.mark.parametrize("field", ["graylist_seconds", "decay_half_life"])
@pytest.mark.parametrize("value", [NAN, INF])
def test_score_params_refuse_nan_and_infinite_durations(field: str, value: float) -> None:
    with pytest.raises(UsageError, match=f"ScoreParams.{field} must be a finite number"):
        ScoreParams(**{field: value})


@pytest.mark.parametrize("value", [NAN, INF])
def test_score_params_refuse_nan_and_infinite_rates(value: float) -> None:
    with pytest.raises(UsageError, match="must be finite"):
        ScoreParams(rate=value)


@pytest.mark.parametrize("value", [-1, 2**64, 1.5, True])
def test_gossip_node_refuses_a_first_sequence_outside_uint64(value: Any) -> None:
    with pytest.raises(UsageError, match="first_sequence"):
        GossipNode(
            "a",
            ["b"],
            sign=None,
            verify=None,
            choose=random.Random(1).sample,
            now=0.0,
            first_sequence=value,
        )
