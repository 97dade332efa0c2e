"""Adversarial review of gossip over ROUTER sockets: regression tests for the bugs it found.

Each test states a rule the code must keep (each was a strict xfail until its bug was fixed).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
import zmq

import zmqcomm.patterns.gossip.driver as driver_module
from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.keys import Identity, agent_id_from_sender
from zmqcomm.patterns.gossip import GossipNode, Graft, IHave, IWant
from zmqcomm.patterns.gossip.codec import (
    DEFAULT_CODEC_LIMITS,
    CodecLimits,
    GossipMessage,
    encode_frame,
    encode_item,
)
from zmqcomm.patterns.gossip.driver import GossipAgent, GossipConfig

from .support import raw_dealer, step_until

#: A peer that asks by IWant (a trusted id: strangers' IWants are refused).
ASKER = agent_id_from_sender(random.Random(3).randbytes(16))


def known(*agent_ids: str) -> dict[str, bytes]:
    """``verify_keys`` naming ``agent_ids``: their control items are taken (the keys are
    placeholders; these tests send no Publish from them)."""
    return dict.fromkeys(agent_ids, bytes(32))


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.term()


def test_no_queue_is_kept_for_transient_senders(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    rng = random.Random(7)
    rids = [agent_id_from_sender(rng.randbytes(16)) for _ in range(60)]
    agent = GossipAgent(
        Identity.generate("victim"), "tcp://127.0.0.1:*", verify_keys=known(*rids), context=context
    )
    try:
        dealers = [raw_dealer(context, rid, agent.endpoint) for rid in rids]
        for dealer in dealers:
            dealer.send(encode_frame([IHave((rng.randbytes(16),))]))
        answered = 0
        deadline = time.monotonic() + 4.0
        while answered < len(dealers) and time.monotonic() < deadline:
            agent.step(0.02)
            for dealer in dealers:
                if dealer.poll(0):
                    dealer.recv()
                    answered += 1
        assert answered == len(dealers)  # every stranger got its IWant
        for dealer in dealers:
            dealer.close(0)
        agent.step(0.0)
        kept = sum(rid in agent.queues for rid in rids)
        assert kept <= len(rids) // 10, f"{kept} empty queues kept for gone strangers"
    finally:
        agent.close()


def test_iwant_replies_cost_is_bounded_by_the_queue(
    context: zmq.Context[zmq.Socket[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = GossipConfig(queue_bytes=256 * 1024)
    agent = GossipAgent(
        Identity.generate("victim"),
        "tcp://127.0.0.1:*",
        verify_keys=known(ASKER),
        config=config,
        context=context,
    )
    try:
        mid = agent.publish(bytes(16 * 1024))  # cached for lazy repair
        packed = [0]

        def counting(message: GossipMessage, limits: CodecLimits = DEFAULT_CODEC_LIMITS) -> bytes:
            item = encode_item(message, limits)
            packed[0] += len(item)
            return item

        monkeypatch.setattr(driver_module, "encode_item", counting)
        asker = ASKER
        frame = encode_frame([IWant((mid,) * 64) for _ in range(20)])
        assert len(frame) < 32 * 1024
        dealer = raw_dealer(context, asker, agent.endpoint)
        dealer.send(frame)
        deadline = time.monotonic() + 4.0
        while agent.counters["received_frames"] == 0 and time.monotonic() < deadline:
            agent.step(0.02)
        dealer.close(0)
        assert agent.counters["received_items"] == 20
        # Work per frame should be bounded by what can be queued (twice, for slack).
        assert packed[0] <= 2 * config.queue_bytes, f"{packed[0]} bytes packed for one frame"
    finally:
        agent.close()


def test_graft_learning_survives_removed_grafters() -> None:
    node = GossipNode(
        "me",
        [],
        sign=None,
        verify=None,
        choose=random.Random(0).sample,
        now=0.0,
        max_peers=2,
    )
    for grafter in ("x1", "x2"):
        node.on_message(grafter, Graft(), now=0.1)
        node.remove_peer(grafter)  # gone, graylisted or expired: no longer a peer
    assert node.peers == []
    node.on_message("late-joiner", Graft(), now=0.2)
    assert "late-joiner" in node.peers


def test_a_repair_that_cannot_fit_the_queue_is_never_packed(
    context: zmq.Context[zmq.Socket[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = GossipConfig(queue_bytes=8 * 1024)
    agent = GossipAgent(
        Identity.generate("victim"),
        "tcp://127.0.0.1:*",
        verify_keys=known(agent_id_from_sender(bytes(16))),
        config=config,
        context=context,
    )
    try:
        mid = agent.publish(bytes(16 * 1024))
        calls = [0]

        def counting(message: GossipMessage, limits: CodecLimits = DEFAULT_CODEC_LIMITS) -> bytes:
            calls[0] += 1
            return encode_item(message, limits)

        monkeypatch.setattr(driver_module, "encode_item", counting)
        dealer = raw_dealer(context, agent_id_from_sender(bytes(16)), agent.endpoint)
        dealer.send(encode_frame([IWant((mid,))]))
        assert step_until(agent, lambda: agent.counters["received_items"] == 1)
        dealer.close(0)
        assert calls[0] == 0
        assert agent.statistics()["drops"].get("full_repair") == 1
    finally:
        agent.close()


def test_a_gone_grafter_is_forgotten_but_a_configured_peer_is_kept(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    config = GossipConfig(heartbeat=0.05, unreachable_grace=0.2)
    agent = GossipAgent(
        Identity.generate("victim"),
        "tcp://127.0.0.1:*",
        verify_keys=known(agent_id_from_sender(bytes(range(16)))),
        config=config,
        context=context,
    )
    try:
        configured = Identity.generate("absent").agent_id
        agent.add_peer(configured, "tcp://127.0.0.1:1")  # nobody listens there
        grafter = agent_id_from_sender(bytes(range(16)))
        dealer = raw_dealer(context, grafter, agent.endpoint)
        dealer.send(encode_frame([Graft()]))
        assert step_until(agent, lambda: grafter in agent.node.peers)
        dealer.close(0)
        agent.publish(b"anyone there?")
        assert step_until(agent, lambda: grafter not in agent.node.peers)
        assert grafter not in agent.queues
        assert step_until(
            agent, lambda: any(k.startswith("unreachable_") for k in agent.statistics()["drops"])
        )
        assert configured in agent.node.peers  # configured: only its queue went
    finally:
        agent.close()


def test_graylisted_sender_is_dropped_before_its_frames_are_looked_at(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    agent = GossipAgent(
        Identity.generate("victim"), "tcp://127.0.0.1:*", verify_keys={}, context=context
    )
    try:
        sender = agent_id_from_sender(bytes(16))
        for _ in range(10):
            agent.scores.invalid(sender, "test", now=time.monotonic())
        assert agent.scores.is_graylisted(sender)
        dealer = raw_dealer(context, sender, agent.endpoint)
        dealer.send_multipart([b"three", b"part", b"frame"])
        assert step_until(agent, lambda: agent.counters["received_frames"] == 1)
        dealer.close(0)
        drops = agent.statistics()["drops"]
        assert drops.get("graylisted") == 1 and "bad_frames" not in drops
    finally:
        agent.close()


def test_bad_routing_id_audit_lines_are_rate_limited(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    audit = MemoryAuditLog()
    clock = [100.0]
    agent = GossipAgent(
        Identity.generate("victim"),
        "tcp://127.0.0.1:*",
        verify_keys={},
        audit=audit,
        clock=lambda: clock[0],
        context=context,
    )
    try:
        dealer = raw_dealer(context, "not-an-agent-id", agent.endpoint)
        for _ in range(5):
            dealer.send(encode_frame([IHave(())]))
        assert step_until(agent, lambda: agent.counters["received_frames"] == 5)
        assert len(audit.events("reject", reason="bad_routing_id")) == 1
        clock[0] += 1.5
        dealer.send(encode_frame([IHave(())]))
        assert step_until(agent, lambda: agent.counters["received_frames"] == 6)
        dealer.close(0)
        assert len(audit.events("reject", reason="bad_routing_id")) == 2
        assert agent.statistics()["drops"]["bad_routing_id"] == 6  # every one counted
    finally:
        agent.close()
