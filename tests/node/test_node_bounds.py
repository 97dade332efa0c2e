"""What a peer's behaviour can make a node raise or hold: key requests to a publisher that
never answers are refused rather than raised, request ids do not restart at 1, and what is
still queued at close is counted (found by a review of the broker path)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from zmqcomm.errors import LocalProtocolError, QueueFullError
from zmqcomm.node import Node
from zmqcomm.node.tunnel import HopMessage
from zmqcomm.wire import MessageType

from .conftest import Bus
from .support import BrokerThread, settle

MakeNode = Callable[..., Node]


def test_a_publisher_that_never_answers_cannot_make_a_subscriber_raise(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    mallory = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    victim = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint, max_queue=20)
    victim.subscribe("news")
    settle([victim], 0.2)
    topics = mallory._topics
    assert topics is not None
    for key_id in range(40):  # each publication under a key id never seen: a key request
        topics.publish("news", b"x")
        topics._mine["news"].key_id = key_id
        mallory._broker_path.hop(topics.publish("news", b"x"), MessageType.PUBLISH, "news")
        assert mallory._broker is not None
        mallory._broker.pump(0)  # keeps its hop session; never answers bob's handshake
    settle([victim], 1.0)  # pump() must not raise QueueFullError for mallory's sake
    assert victim.statistics()["rejected"].get("queue_full", 0) > 0


def test_request_ids_do_not_start_at_one(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    firsts = set()
    for _ in range(3):
        node = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
        firsts.add(node._requests.start(bus.id("bob")))
        node.close(timeout=0)
    assert 1 not in firsts and len(firsts) == 3  # a restarted node reuses no old ids


def test_messages_still_waiting_for_a_session_at_close_are_counted(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)  # never pumps
    alice.send(bus.id("bob"), "never answered")
    alice.close(timeout=0.2)
    assert alice.statistics()["dropped"] == {"unsent_at_close": 1}


def test_what_the_node_sends_on_its_own_never_raises_out_of_pump(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks, handshake frames, key answers, resubscriptions: a hop message the link can never
    carry is counted and audited inside pump(); only the application's own send raises."""
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    assert alice._outbox is not None

    def refuse(messages: object) -> None:
        raise LocalProtocolError("too large for the hop", reason="frame_too_large")

    monkeypatch.setattr(alice._outbox, "put", refuse)
    alice._broker_path.to_broker_quietly([HopMessage(MessageType.SUBSCRIBE, None, "news")])
    assert alice.statistics()["rejected"] == {"frame_too_large": 1}
    with pytest.raises(LocalProtocolError):
        alice.send(bus.id("bob"), "an application send says so")


def test_a_subscription_the_broker_queue_cannot_take_is_refused_not_dropped(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    assert alice._outbox is not None
    alice._outbox.max_held = 0  # as full as it gets
    with pytest.raises(QueueFullError):
        alice.subscribe("news")
