"""What a peer can make a node hold, and what a peer's behaviour can make a node raise:
the inbox is bounded, key requests to a publisher that never answers are refused rather
than raised, and request ids do not restart at 1 (found by a review of the broker path)."""

from __future__ import annotations

from collections.abc import Callable

from zmqcomm.node import Node
from zmqcomm.wire import MessageType

from .conftest import Bus
from .support import BrokerThread, NodeThread, pump_until, settle

MakeNode = Callable[..., Node]
SpawnNode = Callable[..., NodeThread]


def test_the_inbox_holds_at_most_max_inbox_and_loses_nothing(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint, max_inbox=50)
    batch = 20
    for start in range(0, 200, batch):
        alice.send_many(bus.id("bob"), list(range(start, start + batch)))
    settle([alice, bob], 0.5)  # bob pumps but takes nothing
    assert len(bob.inbox) <= 50 + batch  # a batch is taken whole
    assert bob.statistics()["inbox_full"] > 0
    got = [bob.receive(timeout=5).payload for _ in range(200)]
    assert got == list(range(200))


def test_a_request_still_gets_its_reply_while_the_inbox_is_full(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, spawn_node: SpawnNode
) -> None:
    spawn_node(
        bus.agents["alice"],
        bus.trust("alice"),
        request_handler=lambda message: {"echo": message.payload},
        broker=broker.endpoint,
    )
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint, max_inbox=5)
    carol = make_node(bus.agents["carol"], bus.trust("carol"), broker=broker.endpoint)
    carol.send_many(bus.id("bob"), list(range(20)))
    pump_until([carol, bob], lambda: len(bob.inbox) >= 5, what="a full inbox at bob")
    # The reply comes in behind messages bob has not taken: a waiting request reads on.
    assert bob.request(bus.id("alice"), "ping", timeout=5) == {"echo": "ping"}
    assert [bob.receive(timeout=5).payload for _ in range(20)] == list(range(20))


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
        mallory._hop(topics.publish("news", b"x"), MessageType.PUBLISH, "news")
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
