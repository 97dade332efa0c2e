"""A node whose broker goes down and comes back: nothing it handed the link is lost or sent
twice, pump() and send() do not raise for the link's sake, subscriptions are said again to
the restarted broker; and a publication that did not come through the broker's fan-out is
refused.

Regression tests for the review of the store-and-forward path (fixed in 52d6c08). The broker
is stopped and started again on the same endpoint (with the same data directory where its
stored mail matters); nodes are pumped from the test thread, so the test decides what each
has handled when the link drops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import zmq

from zmqcomm.access import Policy
from zmqcomm.broker.server import Broker
from zmqcomm.errors import ZmqCommError
from zmqcomm.node import Node
from zmqcomm.node.messages import wrap
from zmqcomm.secure import SecureDealer
from zmqcomm.transport import DEFAULT_SOCKET_OPTIONS
from zmqcomm.wire import MessageType

from .conftest import BrokerFactory, Bus
from .support import BrokerThread, pump_until, settle

MakeNode = Callable[..., Node]

#: Reconnect within 0.1 s of the broker coming back (the default backs off to 5 s).
FAST_RECONNECT = DEFAULT_SOCKET_OPTIONS.with_changes(reconnect_interval_max=0.1)


class WallClock:
    """A node's wall clock that a test can move ahead (to make a handshake retry due)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def hop_dealer(node: Node) -> SecureDealer:
    """The node's broker link (Node says nothing public about it)."""
    dealer = node._broker
    assert dealer is not None, "a node through a broker"
    return dealer


def linked(node: Node) -> bool:
    return hop_dealer(node).established


def wait_link_down(nodes: Sequence[Node]) -> None:
    """Pump only the nodes' broker links (what they received stays in the link's inbox,
    unhandled) until each has seen its connection drop."""
    dealers = [hop_dealer(node) for node in nodes]
    deadline = time.monotonic() + 3.0
    while any(dealer.established for dealer in dealers):
        assert time.monotonic() < deadline, "the broker stopped; a node did not notice"
        for dealer in dealers:
            dealer.pump(0.005)


def hold_in_link(node: Node, what: str) -> None:
    """Pump only the node's broker link until something arrives, left there unhandled."""
    dealer = hop_dealer(node)
    deadline = time.monotonic() + 3.0
    while not dealer.inbox:
        assert time.monotonic() < deadline, f"no {what}"
        dealer.pump(0.005)


def pump_through(
    nodes: Sequence[Node], seconds: float, until: Callable[[], bool] | None = None
) -> list[ZmqCommError]:
    """Pump the nodes for ``seconds`` (at least once; less once ``until()`` holds); what
    escaped from pump(), which should be nothing."""
    escaped: list[ZmqCommError] = []
    end = time.monotonic() + seconds
    while True:
        for node in nodes:
            try:
                node.pump(0.005)
            except ZmqCommError as exc:
                escaped.append(exc)
        if (until is not None and until()) or time.monotonic() >= end:
            return escaped


def restart(start_broker: BrokerFactory, stopped: BrokerThread, data: Path) -> BrokerThread:
    """The broker again, on the same endpoint and data directory (its mail), knowing none of
    the sessions and subscriptions it had."""
    return start_broker(endpoint=stopped.endpoint, data_dir=data)


def mail_stored(broker: BrokerThread, recipient: str) -> int:
    def count(b: Broker) -> int:
        assert b.mailbox is not None
        return int(b.mailbox.count(recipient))

    return broker.call(count)


def payloads(node: Node) -> list[object]:
    return [message.payload for message in node.inbox]


# -- 1. mail handed over just before the broker goes down ------------------------------------


def test_mail_handed_over_as_the_broker_goes_down_is_delivered_once(
    bus: Bus, start_broker: BrokerFactory, tmp_path: Path, make_node: MakeNode
) -> None:
    data = tmp_path / "broker-data"
    broker = start_broker(data_dir=data)
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    dave_id = bus.id("dave")
    alice.send(dave_id, "important")
    pump_until([alice], lambda: mail_stored(broker, dave_id) == 1, what="mail stored")

    dave = make_node(
        bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, options=FAST_RECONNECT
    )
    # The broker hands the mail over as dave joins; it waits, unhandled, in dave's link when
    # the broker goes down, so the acknowledgement cannot go.
    hold_in_link(dave, "mail handed over")
    broker.stop()
    wait_link_down([dave])

    escaped = pump_through([dave], 1.0, until=lambda: bool(dave.inbox))
    # Delivered before its acknowledgement goes (it used to be marked seen, then lost when
    # the acknowledgement raised out of pump(), and dropped as a repeat once redelivered).
    assert payloads(dave) == ["important"], dave.statistics()
    assert escaped == []
    assert dave.statistics()["waiting_for_broker"] == 1  # the acknowledgement

    broker = restart(start_broker, broker, data)
    assert mail_stored(broker, dave_id) == 1  # never acknowledged: handed over again
    pump_until([dave], lambda: mail_stored(broker, dave_id) == 0, what="mail acknowledged")
    settle([dave], 0.1)
    [message] = dave.inbox  # the redelivery is a repeat: delivered once
    assert message.via == "mail" and message.sender == bus.id("alice")
    assert dave.statistics()["waiting_for_broker"] == 0


# -- 2. messages flushed from a finished handshake as the link drops -------------------------


def test_messages_flushed_by_a_handshake_as_the_link_drops_arrive_after_the_restart(
    bus: Bus, start_broker: BrokerFactory, tmp_path: Path, make_node: MakeNode
) -> None:
    data = tmp_path / "broker-data"
    broker = start_broker(data_dir=data)
    alice, bob = (
        make_node(bus.agents[name], bus.trust(name), broker=broker.endpoint, options=FAST_RECONNECT)
        for name in ("alice", "bob")
    )
    for text in ("m1", "m2", "m3"):
        alice.send(bob.agent_id, text)  # no session yet: queued while the handshake runs
    assert alice.statistics()["queued"] == 3
    # Run the handshake until bob has finished it; his last frame, which finishes alice's
    # side and flushes her queue, is on its way to her.
    deadline = time.monotonic() + 3.0
    while bob.statistics()["handshakes"] < 2:  # the hop session and the one with alice
        assert time.monotonic() < deadline, "no session between alice and bob"
        alice.pump(0.0)
        bob.pump(0.005)
    hold_in_link(alice, "handshake frame from bob")
    assert alice.statistics()["handshakes"] == 1  # not handled yet
    broker.stop()
    wait_link_down([alice, bob])

    # Alice's side of the session completes, which flushes her queue to the link.
    escaped = pump_through([alice], 1.0, until=lambda: alice.statistics()["handshakes"] == 2)
    assert alice.statistics()["handshakes"] == 2 and alice.statistics()["queued"] == 0

    broker = restart(start_broker, broker, data)
    # Bob first: reaching the new broker before him, they would be bounced and mailed.
    pump_until([bob], lambda: linked(bob), what="bob back")
    pump_until([alice, bob], lambda: len(bob.inbox) >= 3, timeout=3.0, what="m1..m3 at bob")
    settle([alice, bob], 0.1)
    assert payloads(bob) == ["m1", "m2", "m3"], bob.statistics()
    assert escaped == []
    assert alice.statistics()["dropped"] == {}


# -- 3. subscriptions after a broker restart -------------------------------------------------


def publish_until_received(
    publisher: Node, subscriber: Node, topic: str, *, also: str | None = None
) -> None:
    """Publish on ``topic`` (and on ``also``) every 50 ms until ``subscriber`` gets one on
    ``topic``: the broker learns a subscription some time after subscribe() returns."""
    published = 0
    last = 0.0

    def received() -> bool:
        nonlocal published, last
        if any(message.topic == topic for message in subscriber.inbox):
            return True
        if time.monotonic() - last >= 0.05:
            if also is not None:
                publisher.publish(also, published)
            publisher.publish(topic, published)
            published += 1
            last = time.monotonic()
        return False

    pump_until([publisher, subscriber], received, timeout=3.0, what=f"a publication on {topic}")


def test_subscriptions_are_said_again_to_a_restarted_broker(
    bus: Bus, start_broker: BrokerFactory, tmp_path: Path, make_node: MakeNode
) -> None:
    data = tmp_path / "broker-data"
    broker = start_broker(data_dir=data)
    alice, bob = (
        make_node(bus.agents[name], bus.trust(name), broker=broker.endpoint, options=FAST_RECONNECT)
        for name in ("alice", "bob")
    )
    bob.subscribe("alerts")
    bob.subscribe("news")
    bob.unsubscribe("news")
    publish_until_received(alice, bob, "alerts")
    bob.inbox.clear()

    broker.stop()
    wait_link_down([alice, bob])
    broker = restart(start_broker, broker, data)
    pump_until([alice, bob], lambda: linked(alice) and linked(bob), what="both back")
    # Used to stop without a word: the new broker knew none of bob's subscriptions.
    publish_until_received(alice, bob, "alerts", also="news")
    settle([alice, bob], 0.2)
    assert {message.topic for message in bob.inbox} == {"alerts"}  # not the unsubscribed one
    assert all(message.sender == alice.agent_id for message in bob.inbox)


# -- 6. publications that skipped the broker's fan-out ---------------------------------------

BROKER_POLICY = Policy.from_toml(
    """
[roles.agent]
send = ["FORWARD", "MAIL", "PUBLISH", "SUBSCRIBE"]
publish = ["chat/*"]
subscribe = ["*"]
"""
)


def test_a_publication_sent_in_a_session_is_refused(
    bus: Bus, start_broker: BrokerFactory, make_node: MakeNode
) -> None:
    broker = start_broker(policy=BROKER_POLICY)
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)
    bob.subscribe("chat/general")
    # A modified node hands bob a PUBLISH on a topic the broker would not let it publish
    # on, and bob never subscribed to, over their end-to-end session; then a message.
    alice._send(bob.agent_id, MessageType.PUBLISH, {"cmd": "shutdown"}, topic="ops/commands")
    alice.send(bob.agent_id, "after")
    pump_until([alice, bob], lambda: "after" in payloads(bob), what="the message behind it")
    assert payloads(bob) == ["after"]
    assert bob.statistics()["rejected"] == {"bad_type": 1}


def test_a_publication_sent_as_mail_is_refused(
    bus: Bus, start_broker: BrokerFactory, make_node: MakeNode
) -> None:
    broker = start_broker(policy=BROKER_POLICY)
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    dave_id = bus.id("dave")
    tunnels = alice._tunnels
    assert tunnels is not None
    injected = tunnels.mail_message(
        dave_id,
        bus.agents["dave"].public,
        MessageType.PUBLISH,
        wrap(MessageType.PUBLISH, {"cmd": "shutdown"}, None),
        topic="ops/commands",
        now=time.time(),
    )
    alice._broker_path.to_broker([injected])
    alice.send(dave_id, "after")  # dave is offline: mail too, stored behind it
    pump_until([alice], lambda: mail_stored(broker, dave_id) == 2, what="both stored")

    dave = make_node(bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint)
    pump_until([dave], lambda: "after" in payloads(dave), what="the mail behind it")
    assert payloads(dave) == ["after"]
    assert dave.statistics()["rejected"] == {"bad_type": 1}
    pump_until([dave], lambda: mail_stored(broker, dave_id) == 0, what="both acknowledged")


# -- 7. send() while the broker is down ------------------------------------------------------


def test_send_during_an_outage_succeeds_and_is_delivered_once(
    bus: Bus, start_broker: BrokerFactory, tmp_path: Path, make_node: MakeNode
) -> None:
    data = tmp_path / "broker-data"
    broker = start_broker(data_dir=data)
    alice = make_node(
        bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint, options=FAST_RECONNECT
    )
    broker.stop()
    wait_link_down([alice])

    # It used to raise ConnectError ("send again once established") for a message it had
    # queued: a caller that did so got it delivered twice.
    alice.send(bus.id("bob"), "pay 100")
    stats = alice.statistics()
    assert stats["queued"] == 1 and stats["waiting_for_broker"] == 1, stats  # and its INIT

    broker = restart(start_broker, broker, data)
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)
    pump_until([alice, bob], lambda: bool(bob.inbox), what="the payment at bob")
    settle([alice, bob], 0.2)
    assert payloads(bob) == ["pay 100"]
    assert alice.statistics()["waiting_for_broker"] == 0


# -- 11. pump() while the broker is down and a message waits for a session -----------------


def test_pump_does_not_raise_while_the_broker_is_down(
    bus: Bus, start_broker: BrokerFactory, tmp_path: Path, make_node: MakeNode
) -> None:
    data = tmp_path / "broker-data"
    broker = start_broker(data_dir=data)
    wall_clock = WallClock()
    alice = make_node(
        bus.agents["alice"],
        bus.trust("alice"),
        broker=broker.endpoint,
        options=FAST_RECONNECT,
        wall_clock=wall_clock,
    )
    # Bob is online but not pumped: alice's INIT reaches him and nothing answers, so her
    # message waits for the session (it is not mailed).
    bob = make_node(
        bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint, options=FAST_RECONNECT
    )
    alice.send(bob.agent_id, "queued")
    broker.stop()
    wait_link_down([alice])

    wall_clock.advance(2.5)  # past the handshake timeout: the INIT is sent again
    escaped = pump_through([alice], 0.2)
    # Used to raise ConnectError out of every pump() (so receive(), run(), request()).
    assert escaped == []
    stats = alice.statistics()
    assert stats["queued"] == 1 and stats["waiting_for_broker"] == 1, stats  # the new INIT

    broker = restart(start_broker, broker, data)
    pump_until([alice, bob], lambda: bool(bob.inbox), what="the message at bob")
    settle([alice, bob], 0.2)
    assert payloads(bob) == ["queued"]
    assert alice.statistics()["dropped"] == {}


# -- 12. close() with the broker gone --------------------------------------------------------


def test_close_does_not_wait_to_say_goodbye_to_a_broker_that_is_gone(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    """The BYE is a courtesy (the broker's idle timeout covers a node that never says it).
    With the broker gone and the node not yet aware of it (it has not pumped since), the BYE
    has no connection to queue on: close() used to block for the link's send timeout, a
    second per node with the default, here made 20 s so that a wait cannot pass unseen."""
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    hop_dealer(alice).socket.setsockopt(zmq.SNDTIMEO, 20_000)
    broker.stop()
    time.sleep(0.2)  # the connection is gone; alice does not pump, so it still looks up
    started = time.monotonic()
    alice.close(timeout=0)
    assert time.monotonic() - started < 10
    assert alice.closed
