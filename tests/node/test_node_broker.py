"""Nodes talking through a broker: delivery, requests, mail, policy, revocation, hostile
clients, a hundred agents, backpressure and statistics.

The broker serves in a thread of its own (``BrokerThread``); nodes the test drives directly
are pumped from the test thread, and nodes that must answer while the test thread blocks in
``request()`` live in threads of their own (``NodeThread``).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from zmqcomm.access import Policy
from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.channel import SecureChannel
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import ConnectError, QueueFullError, RequestTimeout, UsageError
from zmqcomm.node import Incoming, Node
from zmqcomm.node.tunnel import HopMessage
from zmqcomm.transport import shared_context
from zmqcomm.wire import MessageType

from .conftest import BrokerFactory, Bus, write_trust_directory
from .support import BrokerThread, NodeThread, pump_until, settle, wait_for

MakeNode = Callable[..., Node]
SpawnNode = Callable[..., NodeThread]


def echo(message: Incoming) -> object:
    return {"echo": message.payload, "from": message.sender}


# -- 1. delivery and requests ---------------------------------------------------------------


def test_send_delivers_payload_with_the_authenticated_sender(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    bob = make_node(
        bus.agents["bob"], bus.trust("bob", roles={"alice": ["worker"]}), broker=broker.endpoint
    )
    # A claim inside the payload changes nothing: the sender is what the session proved.
    alice.send(bus.id("bob"), {"task": 7, "from": bus.id("carol")}, topic="jobs")
    pump_until([alice, bob], lambda: bool(bob.inbox), what="message at bob")
    message = bob.inbox.popleft()
    assert message.sender == bus.id("alice")
    assert message.payload == {"task": 7, "from": bus.id("carol")}
    assert message.kind == MessageType.DATA
    assert message.topic == "jobs"
    assert message.via == "session"
    assert message.roles == frozenset({"worker"})  # from bob's trust store
    assert not message.is_request
    settle([alice, bob], 0.05)
    assert not bob.inbox and not alice.inbox  # exactly once


def test_first_messages_crossing_open_one_session(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    # Both send before either pumps: the two handshakes cross in the broker, and the
    # tie-break must keep exactly one session, with both messages delivered.
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)
    alice.send(bus.id("bob"), "hello bob")
    bob.send(bus.id("alice"), "hello alice")
    pump_until([alice, bob], lambda: bool(alice.inbox and bob.inbox), what="crossed messages")
    assert [m.payload for m in bob.inbox] == ["hello bob"]
    assert [m.payload for m in alice.inbox] == ["hello alice"]
    for node in (alice, bob):
        stats = node.statistics()
        assert stats["handshakes"] == 2, stats  # the hop session and one end-to-end session
        assert stats["rejected"] == {}, stats


def test_request_returns_the_reply_of_the_request_handler(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, spawn_node: SpawnNode
) -> None:
    bob = spawn_node(
        bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint, request_handler=echo
    )
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    assert alice.request(bob.agent_id, {"op": "status"}, timeout=5) == {
        "echo": {"op": "status"},
        "from": bus.id("alice"),
    }
    # A second request runs on the established session.
    assert alice.request(bob.agent_id, [1, 2, 3], timeout=5)["echo"] == [1, 2, 3]
    assert not alice.inbox  # replies go to request(), not to the inbox
    assert bob.call(lambda node: node.statistics()["received"]) == 2


def test_request_answered_with_receive_and_reply(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, spawn_node: SpawnNode
) -> None:
    bob = spawn_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)

    def answer_one(node: Node) -> Incoming:
        message = node.receive(timeout=10)
        node.reply(message, message.payload * 2)
        return message

    answered = bob.submit(answer_one)
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    assert alice.request(bob.agent_id, 21, timeout=5) == 42
    request = answered.result(5)
    assert request.is_request and request.request_id is not None
    assert request.sender == bus.id("alice") and request.payload == 21


def test_two_nodes_requesting_each_other_at_once_both_get_replies(
    bus: Bus, broker: BrokerThread, spawn_node: SpawnNode
) -> None:
    alice = spawn_node(
        bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint, request_handler=echo
    )
    bob = spawn_node(
        bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint, request_handler=echo
    )
    for round_ in range(3):  # the first round also opens the session from both ends
        barrier = threading.Barrier(2, timeout=5)

        def ask(peer: str, payload: str, barrier: threading.Barrier = barrier) -> Any:
            def run(node: Node) -> Any:
                barrier.wait()
                return node.request(peer, payload, timeout=5)

            return run

        from_alice = alice.submit(ask(bob.agent_id, f"a{round_}"))
        from_bob = bob.submit(ask(alice.agent_id, f"b{round_}"))
        assert from_alice.result(10) == {"echo": f"a{round_}", "from": alice.agent_id}
        assert from_bob.result(10) == {"echo": f"b{round_}", "from": bob.agent_id}


# -- 2. mail ----------------------------------------------------------------------------------


def mail_waiting(broker: BrokerThread, recipient: str | None = None) -> int:
    def count(b: Any) -> int:
        assert b.mailbox is not None
        return int(b.mailbox.count(recipient))

    return broker.call(count)


def test_mail_to_an_offline_agent_is_delivered_when_it_connects(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    dave_id = bus.id("dave")
    alice.send(dave_id, {"note": "while you were out"}, topic="memo")
    pump_until(
        [alice],
        lambda: alice.statistics()["mailed"] > 0 and mail_waiting(broker, dave_id) == 1,
        what="mail stored at the broker",
    )
    stats = alice.statistics()
    assert stats["mailed"] == 1 and stats["queued"] == 0 and stats["dropped"] == {}

    dave = make_node(bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint)
    pump_until([dave], lambda: bool(dave.inbox), what="mail at dave")
    message = dave.inbox.popleft()
    assert message.via == "mail"
    assert message.sender == bus.id("alice")
    assert message.payload == {"note": "while you were out"}
    assert message.kind == MessageType.DATA and message.topic == "memo"
    assert message.roles == frozenset({"agent"})
    # Dave acknowledged it: the broker deletes it.
    pump_until([dave], lambda: mail_waiting(broker) == 0, what="empty mailbox after the ack")
    assert not dave.inbox


def test_redelivered_mail_is_delivered_once(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    dave_id = bus.id("dave")
    alice.send(dave_id, "only once")
    pump_until([alice], lambda: mail_waiting(broker, dave_id) == 1, what="stored mail")

    def store_again(b: Any) -> int:
        # What a broker does after a crash between handing mail over and deleting it.
        [stored] = b.mailbox.pending(dave_id)
        b.mailbox.put(dave_id, stored.sender, stored.blob, now=time.time())
        return int(b.mailbox.count(dave_id))

    assert broker.call(store_again) == 2
    dave = make_node(bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint)
    # Both copies are acknowledged (so both were handled) ...
    pump_until([dave], lambda: mail_waiting(broker) == 0, what="both copies acknowledged")
    settle([dave], 0.05)
    # ... and one reached the application.
    assert [(m.payload, m.via) for m in dave.inbox] == [("only once", "mail")]
    assert dave.statistics()["received"] == 1


def test_mail_from_a_revoked_sender_is_refused_and_acknowledged(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    dave_id = bus.id("dave")
    alice.send(dave_id, "from a key dave no longer trusts")
    pump_until([alice], lambda: mail_waiting(broker, dave_id) == 1, what="stored mail")
    dave_trust = bus.trust("dave")
    assert dave_trust.revoke(bus.id("alice"))
    audit = MemoryAuditLog()
    dave = make_node(bus.agents["dave"], dave_trust, broker=broker.endpoint, audit=audit)
    pump_until([dave], lambda: mail_waiting(broker) == 0, what="bad mail acknowledged")
    settle([dave], 0.05)
    assert not dave.inbox
    assert dave.statistics()["rejected"] == {"revoked": 1}
    [line] = audit.events("reject", reason="revoked")
    assert line["peer"] == bus.id("alice")


def test_mail_from_a_sender_not_yet_trusted_waits_at_the_recipient_until_it_is(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    dave_id = bus.id("dave")
    alice.send(dave_id, "before dave knew alice")
    pump_until([alice], lambda: mail_waiting(broker, dave_id) == 1, what="stored mail")
    dave_trust = bus.trust("dave")
    assert dave_trust.remove(bus.id("alice"))  # not revoked: simply not known yet
    audit = MemoryAuditLog()
    dave = make_node(bus.agents["dave"], dave_trust, broker=broker.endpoint, audit=audit)
    # Acknowledged (the broker's slot is free) and held, not lost.
    pump_until(
        [dave],
        lambda: mail_waiting(broker) == 0 and dave.statistics()["mail_held"] == 1,
        what="mail acknowledged and held",
    )
    assert not dave.inbox and dave.statistics()["rejected"] == {}
    assert [line["reason"] for line in audit.events("mail_held")] == ["unknown_peer"]

    dave_trust.add(bus.agents["alice"].public, roles=["agent"])
    pump_until([dave], lambda: bool(dave.inbox), what="held mail delivered")
    settle([dave], 0.05)
    assert [(m.payload, m.via, m.sender) for m in dave.inbox] == [
        ("before dave knew alice", "mail", bus.id("alice"))
    ]
    stats = dave.statistics()
    assert (stats["mail_held"], stats["mail_held_total"], stats["mail_released"]) == (0, 1, 1)
    assert stats["received"] == 1 and stats["dropped"] == {}


def test_held_mail_that_opens_survives_a_handler_that_raises(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    """Held mail that opens was acknowledged long ago and is marked seen: a request handler
    raising on the first piece must leave the others for the next pump, not lose them."""
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    dave_id = bus.id("dave")
    alice.start_request(dave_id, "a request")
    alice.send(dave_id, "data 1")
    alice.send(dave_id, "data 2")
    pump_until([alice], lambda: mail_waiting(broker, dave_id) == 3, what="stored mail")
    dave_trust = bus.trust("dave")
    assert dave_trust.remove(bus.id("alice"))
    dave = make_node(bus.agents["dave"], dave_trust, broker=broker.endpoint)

    def handler(message: Incoming) -> object:
        raise RuntimeError("a bug in the application's handler")

    dave.request_handler = handler
    pump_until([dave], lambda: dave.statistics()["mail_held"] == 3, what="mail held")
    dave_trust.add(bus.agents["alice"].public, roles=["agent"])
    raised = 0
    deadline = time.monotonic() + 10
    while not raised and time.monotonic() < deadline:
        try:
            dave.pump(0.01)
        except RuntimeError:
            raised += 1
    assert raised == 1 and not dave.inbox
    # What the handler left behind is due now: the next pump does not wait for input.
    assert dave.wait_time(3.0) == 0.0
    dave.pump(0.0)
    assert sorted(m.payload for m in dave.inbox) == ["data 1", "data 2"]
    assert dave.statistics()["mail_held"] == 0


def test_held_mail_still_held_at_close_is_counted_as_dropped(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    dave_id = bus.id("dave")
    alice.send(dave_id, "never trusted")
    pump_until([alice], lambda: mail_waiting(broker, dave_id) == 1, what="stored mail")
    dave_trust = bus.trust("dave")
    dave_trust.remove(bus.id("alice"))
    dave = make_node(bus.agents["dave"], dave_trust, broker=broker.endpoint)
    pump_until([dave], lambda: dave.statistics()["mail_held"] == 1, what="mail held")
    held_bytes = dave.statistics()["mail_held_bytes"]
    assert held_bytes > len("never trusted")
    dave.close()
    stats = dave.statistics()
    assert stats["mail_held"] == 0 and stats["dropped"] == {"held_at_close": 1}


def test_malformed_mail_is_refused_acknowledged_and_does_not_block_the_next(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    dave_id = bus.id("dave")
    assert alice._tunnels is not None
    public = alice.trust.lookup(dave_id, now=time.time()).public
    # Sealed and signed by alice, so it opens: a REQUEST without its request id inside.
    bad = alice._tunnels.mail_message(
        dave_id, public, MessageType.REQUEST, "no id", topic="", now=time.time()
    )
    alice._broker_path.hop(bad.payload, bad.msg_type, bad.topic)
    pump_until([alice], lambda: mail_waiting(broker, dave_id) == 1, what="bad mail stored")
    alice.send(dave_id, "good mail")
    pump_until([alice], lambda: mail_waiting(broker, dave_id) == 2, what="good mail stored")

    audit = MemoryAuditLog()
    dave = make_node(bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, audit=audit)
    pump_until([dave], lambda: mail_waiting(broker) == 0, what="both pieces acknowledged")
    pump_until([dave], lambda: bool(dave.inbox), what="the good mail")
    assert [(m.payload, m.via) for m in dave.inbox] == [("good mail", "mail")]
    assert dave.statistics()["rejected"] == {"bad_request": 1}
    [line] = audit.events("reject", reason="bad_request")
    assert line["peer"] == bus.id("alice")


def test_message_to_a_peer_that_went_offline_is_mailed(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)
    alice.send(bus.id("bob"), "m1")
    pump_until([alice, bob], lambda: bool(bob.inbox), what="m1 at bob")
    bob.close()
    time.sleep(0.3)  # the broker's ROUTER notices the closed connection
    alice.send(bus.id("bob"), "m2")  # sealed on the session: the broker answers UNREACHABLE
    settle([alice], 0.3)
    alice.send(bus.id("bob"), "m3")  # no session any more: queued, then mailed
    pump_until([alice], lambda: alice.statistics()["mailed"] >= 1, what="mail")
    settle([alice], 0.2)
    stats = alice.statistics()
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)
    settle([alice, bob], 0.5)
    got = [m.payload for m in bob.inbox]
    # m2 must reach bob (as mail), or at least be accounted for as dropped.
    assert got == ["m2", "m3"] or sum(stats["dropped"].values()) >= 1, (got, stats)


def test_messages_reach_a_peer_that_restarted(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)
    alice.send(bus.id("bob"), "before")
    pump_until([alice, bob], lambda: bool(bob.inbox), what="first message")
    bob.close()
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)
    alice.send(bus.id("bob"), "after the restart")
    # Generous: a recovery by handshake retry (2 s timeout) would count.
    pump_until([alice, bob], lambda: bool(bob.inbox), timeout=3.0, what="message at new bob")
    assert bob.inbox[0].payload == "after the restart"


# -- 3. policy -------------------------------------------------------------------------------

POLICY = """
[roles.observer]
send = ["DATA"]

[roles.worker]
send = ["DATA", "REQUEST", "REPLY"]
"""


def test_role_without_request_gets_no_reply_and_is_audited(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, spawn_node: SpawnNode
) -> None:
    audit = MemoryAuditLog()
    bob = spawn_node(
        bus.agents["bob"],
        bus.trust("bob", roles={"alice": ["observer"], "carol": ["worker"]}),
        broker=broker.endpoint,
        policy=Policy.from_toml(POLICY),
        audit=audit,
        request_handler=echo,
    )
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    carol = make_node(bus.agents["carol"], bus.trust("carol"), broker=broker.endpoint)

    # DATA is granted to observers.
    alice.send(bob.agent_id, "just watching")
    received = wait_for(bob.submit(lambda node: node.receive(timeout=5)), [alice])
    assert (received.sender, received.payload) == (alice.agent_id, "just watching")
    assert received.roles == frozenset({"observer"})

    with pytest.raises(RequestTimeout):
        alice.request(bob.agent_id, "may I?", timeout=0.5)
    denied = audit.events("reject", reason="denied")
    assert [line["peer"] for line in denied] == [alice.agent_id]
    assert bob.call(lambda node: node.statistics()["rejected"]) == {"denied": 1}
    assert bob.call(lambda node: len(node.inbox)) == 0  # the request reached nobody

    # A worker's request is answered.
    assert carol.request(bob.agent_id, "status?", timeout=5)["echo"] == "status?"
    assert len(audit.events("reject")) == 1


def test_a_subscriber_refused_a_topic_key_is_told_and_drops_the_publications_at_once(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    audit = MemoryAuditLog()
    reader_only = Policy.from_toml('[roles.reader]\nsubscribe = ["news/*"]\n')
    alice = make_node(
        bus.agents["alice"],
        bus.trust("alice", roles={"bob": ["agent"]}),
        broker=broker.endpoint,
        policy=reader_only,
        audit=audit,
    )
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)
    bob.subscribe("secret/*")
    # Published until one reaches bob (his subscription may not be at the broker yet); the
    # refusal then comes back while its publications would otherwise wait for a key.
    pump_until(
        [alice, bob],
        lambda: (
            alice.publish("secret/plans", "hidden") or "key_refused" in bob.statistics()["dropped"]
        ),
        what="bob told his key request is refused",
    )
    assert bob.inbox == deque() and bob._topics is not None and bob._topics._pending == {}
    assert alice.statistics()["rejected"] == {"denied": 1}
    assert [line["peer"] for line in audit.events("reject", reason="denied")] == [bob.agent_id]


# -- 4. revocation ---------------------------------------------------------------------------


def test_revoked_sender_is_cut_off_while_others_get_through(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    audit = MemoryAuditLog()
    bob_trust = bus.trust("bob")
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    bob = make_node(bus.agents["bob"], bob_trust, broker=broker.endpoint, audit=audit)
    carol = make_node(bus.agents["carol"], bus.trust("carol"), broker=broker.endpoint)
    nodes = [alice, bob, carol]
    alice.send(bob.agent_id, "alice before")
    carol.send(bob.agent_id, "carol before")
    pump_until(nodes, lambda: len(bob.inbox) == 2, what="messages before the revocation")
    bob.inbox.clear()

    assert bob_trust.revoke(alice.agent_id)
    alice.send(bob.agent_id, "alice after")  # her session is still up at her end
    carol.send(bob.agent_id, "carol after")
    pump_until(
        nodes,
        lambda: bool(bob.inbox) and bob.statistics()["rejected"].get("revoked", 0) >= 1,
        what="carol's message and alice's refusal",
    )
    alice.send(bob.agent_id, "alice again")
    carol.send(bob.agent_id, "carol again")
    pump_until(nodes, lambda: len(bob.inbox) == 2, what="carol's second message")
    settle(nodes, 0.05)
    assert [(m.sender, m.payload) for m in bob.inbox] == [
        (carol.agent_id, "carol after"),
        (carol.agent_id, "carol again"),
    ]
    assert bob.statistics()["rejected"] == {"revoked": 2}
    lines = audit.events("reject", reason="revoked")
    assert [line["peer"] for line in lines] == [alice.agent_id] * 2


# -- 5. a client speaking garbage ------------------------------------------------------------


def test_garbage_client_is_dropped_and_agents_keep_talking(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)
    alice.send(bob.agent_id, -1)
    pump_until([alice, bob], lambda: len(bob.inbox) == 1, what="first message")
    rejected_before = broker.call(lambda b: sum(b.router.table.rejected.values()))

    rng = random.Random(20260509)
    mallory = SecureChannel(
        identity=Identity.generate("mallory"), trust=bus.broker_trust, random_bytes=os.urandom
    )
    init = bytes(mallory.connect(now=time.time())[0])
    junk: list[list[bytes]] = [[rng.randbytes(rng.randint(1, 300))] for _ in range(150)]
    junk += [[b""], [b"\x00"], [b"ZC"], [rng.randbytes(40), rng.randbytes(900)]]
    junk += [[init[:n]] for n in (1, 5, 6, 12, 20, len(init) // 2, len(init) - 1)]
    talk = list(range(0, len(junk), 10))  # what the agents send meanwhile
    raw = shared_context().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(broker.endpoint)
    try:
        for index, frames in enumerate(junk):
            raw.send_multipart(frames)
            if index % 10 == 0:  # the agents talk on while it happens
                alice.send(bob.agent_id, index)
                for node in (alice, bob):
                    node.pump(0.0)
        pump_until(
            [alice, bob],
            lambda: (
                len(bob.inbox) == 1 + len(talk)
                and broker.call(lambda b: sum(b.router.table.rejected.values()))
                >= rejected_before + len(junk)
            ),
            what="every junk message refused and every real one delivered",
        )
        assert [m.payload for m in bob.inbox] == [-1, *talk]
        # Exactly one refusal per junk message, none for the agents; nothing answers junk.
        rejected = broker.call(lambda b: dict(b.router.table.rejected))
        assert sum(rejected.values()) == rejected_before + len(junk), rejected
        assert raw.poll(100) == 0
        # No channel and no agent was made for it, and nothing of it reached the core.
        state = broker.call(
            lambda b: (sorted(b.core.agents), len(b.router.table.channels), b.core.rejected)
        )
        assert state == (sorted([alice.agent_id, bob.agent_id]), 2, {})
        assert broker.audit is not None
        assert len(broker.audit.events("reject")) >= len(junk)
    finally:
        raw.close(linger=0)
    # And the agents can still do everything, both ways.
    bob.send(alice.agent_id, "still here")
    pump_until([alice, bob], lambda: bool(alice.inbox), what="reply after the attack")
    assert alice.inbox[0].payload == "still here"


# -- 6. a hundred agents ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["inproc", "ipc"])
def test_hundred_agents_in_a_ring(
    transport: str,
    tmp_path: Path,
    start_broker: BrokerFactory,
    unique: Callable[[str], str],
    ipc_endpoint: Callable[[str], str],
) -> None:
    count = 100
    broker_identity = Identity.generate("broker")
    identities = [Identity.generate(f"agent{i}") for i in range(count)]
    publics = [identity.public for identity in identities]
    broker_trust = write_trust_directory(tmp_path / "ring-broker", publics)
    agent_trust = write_trust_directory(
        tmp_path / "ring-agents", [broker_identity.public, *publics]
    )
    endpoint = unique("ring") if transport == "inproc" else ipc_endpoint("ring")
    broker = start_broker(endpoint=endpoint, identity=broker_identity, trust=broker_trust)
    ids = [identity.agent_id for identity in identities]
    nodes: list[Node] = []
    started = time.monotonic()
    try:
        for identity in identities:
            nodes.append(Node(identity, agent_trust, broker=broker.endpoint, connect_timeout=20))
        connected = time.monotonic() - started
        for index, node in enumerate(nodes):
            node.send(ids[(index + 1) % count], {"from": index})
        ring = pump_until(
            nodes,
            lambda: all(node.inbox for node in nodes),
            timeout=30,
            what="a message at every agent",
        )
        print(f"\n{count} agents on {transport}: connected in {connected:.2f} s, ", end="")
        print(f"ring delivered in {ring:.2f} s")
        for index, node in enumerate(nodes):
            [message] = node.inbox
            assert message.sender == ids[index - 1]
            assert message.payload == {"from": (index - 1) % count}
            assert node.statistics()["rejected"] == {}
        assert broker.call(lambda b: len(b.core.agents)) == count
    finally:
        for node in nodes:
            node.close(timeout=0)


# -- 8. backpressure -------------------------------------------------------------------------


def test_queue_full_before_the_broker_answers(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint, max_queue=3)
    dave_id = bus.id("dave")  # trusted, never connected
    for index in range(3):
        alice.send(dave_id, index)  # no pump: the broker's UNREACHABLE is not read yet
    with pytest.raises(QueueFullError) as caught:
        alice.send(dave_id, 3)
    text = str(caught.value)
    assert "3 messages already wait" in text and dave_id in text and "max_queue" in text
    assert caught.value.reason == "queue_full"
    stats = alice.statistics()
    assert stats["queued"] == 3 and stats["dropped"] == {"queue_full": 1}
    assert stats["sent"] == 3  # the refused one is not counted as sent
    alice.send(bus.id("carol"), "another peer has its own queue")

    # Once the broker's answers are read, the queued messages (three for dave, one for
    # carol) become mail, and reach dave in order when he connects.
    pump_until([alice], lambda: alice.statistics()["queued"] == 0, what="queue drained into mail")
    assert alice.statistics()["mailed"] == 4
    pump_until([alice], lambda: mail_waiting(broker) == 4, what="mail stored")
    dave = make_node(bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint)
    pump_until([dave], lambda: len(dave.inbox) == 3, what="mail at dave")
    assert [(m.payload, m.via) for m in dave.inbox] == [(0, "mail"), (1, "mail"), (2, "mail")]


def test_a_send_to_a_malformed_id_or_to_itself_is_refused_at_once(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    bad = ["nobody", "", bus.id("bob").upper(), bus.id("bob") + "x", bus.id("alice")]
    for peer in bad:
        with pytest.raises(UsageError):
            alice.send(peer, "lost")
        with pytest.raises(UsageError):
            alice.send_many(peer, ["lost"])
        with pytest.raises(UsageError):
            alice.request(peer, "lost", timeout=5)
    with pytest.raises(UsageError, match="itself"):
        alice.send(bus.id("alice"), "to me")
    stats = alice.statistics()
    assert (stats["queued"], stats["sent"]) == (0, 0)
    assert alice._waiting == {}


# -- 9. statistics and rekeys ----------------------------------------------------------------


def test_statistics_count_traffic_and_handshakes(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)
    fresh = alice.statistics()
    assert fresh["agent_id"] == alice.agent_id
    assert (fresh["sent"], fresh["received"], fresh["handshakes"]) == (0, 0, 1)  # hop only
    for index in range(5):
        alice.send(bob.agent_id, index)
    pump_until([alice, bob], lambda: len(bob.inbox) == 5, what="five messages")
    for index in range(3):
        bob.send(alice.agent_id, index)
    pump_until([alice, bob], lambda: len(alice.inbox) == 3, what="three messages")
    a, b = alice.statistics(), bob.statistics()
    assert (a["sent"], a["received"], b["sent"], b["received"]) == (5, 3, 3, 5)
    for stats in (a, b):
        assert stats["handshakes"] == 2  # hop and end-to-end
        assert stats["rekeys"] == 0
        assert stats["rejected"] == {}
        assert (stats["queued"], stats["mailed"], stats["dropped"]) == (0, 0, {})


def test_rekeys_after_max_messages_lose_nothing(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    rekey = RekeyPolicy(max_messages=20, hard_max_messages=10_000)
    audit = MemoryAuditLog()
    alice = make_node(
        bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint, rekey=rekey, audit=audit
    )
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint, rekey=rekey)

    def bob_has(count: int) -> Callable[[], bool]:
        return lambda: len(bob.inbox) == count

    def end_to_end_rekeys() -> int:  # not the hop session's rekeys with the broker
        return sum(1 for line in audit.events("rekey") if line["peer"] == bob.agent_id)

    for start in range(0, 100, 10):  # ten rounds of ten, each delivered before the next
        for index in range(start, start + 10):
            alice.send(bob.agent_id, index)
            alice.pump(0.0)
            bob.pump(0.0)
        pump_until([alice, bob], bob_has(start + 10), what="a round of ten")
    pump_until([alice, bob], lambda: end_to_end_rekeys() >= 2, what="two end-to-end rekeys")
    for index in range(60):
        bob.send(alice.agent_id, index)
        bob.pump(0.0)
        alice.pump(0.0)
    pump_until([alice, bob], lambda: len(alice.inbox) == 60, what="60 messages back")
    settle([alice, bob], 0.05)
    assert [m.payload for m in bob.inbox] == list(range(100))
    assert [m.payload for m in alice.inbox] == list(range(60))
    a, b = alice.statistics(), bob.statistics()
    assert a["rekeys"] >= 2 and b["rekeys"] >= 2, (a, b)
    assert a["rejected"] == {} and b["rejected"] == {}
    assert (a["sent"], a["received"], b["sent"], b["received"]) == (100, 60, 60, 100)


def test_a_rekey_finish_the_broker_link_holds_loses_nothing_the_peer_sent_meanwhile(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice's end-to-end rekey FINISH finds her broker link full and waits in her hop
    outbox past the grace period. Bob, who seals under the old keys until that FINISH
    comes, keeps sending: alice must open all of it, and nothing is lost once the FINISH
    goes (the outbox tells her tunnels to keep the old key open while it holds it)."""
    rekey = RekeyPolicy(max_messages=20, hard_max_messages=10_000, grace_period=0.2)
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint, rekey=rekey)
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint, rekey=rekey)
    path = alice._broker_path
    assert path is not None
    link_full = False
    put = path.outbox.put

    def put_filling_the_link_at_the_finish(messages: list[HopMessage]) -> None:
        nonlocal link_full
        channel = path.tunnels.table.channel_to(bob.agent_id)
        rekeyed = channel is not None and channel.session is not None and channel.session.epoch
        if rekeyed and any(m.finish_for == bob.agent_id for m in messages):
            link_full = True  # room runs out just as a rekey's FINISH is made
        put(messages)

    monkeypatch.setattr(path.outbox, "put", put_filling_the_link_at_the_finish)
    monkeypatch.setattr(path.link, "writable", lambda: not link_full)
    sent = 0
    while not link_full and sent < 40:
        alice.send(bob.agent_id, sent)
        sent += 1
        alice.pump(0.0)
        bob.pump(0.0)
    pump_until([alice, bob], lambda: link_full, what="alice's rekey FINISH")
    settle([alice, bob], 0.4)  # twice the grace period
    for index in range(5):
        bob.send(alice.agent_id, f"sealed under the old keys {index}")
    pump_until([alice, bob], lambda: len(alice.inbox) == 5, what="bob's messages at alice")
    link_full = False
    pump_until([alice, bob], lambda: len(bob.inbox) == sent, what="alice's messages")
    bob.send(alice.agent_id, "under the new keys")
    pump_until([alice, bob], lambda: len(alice.inbox) == 6, what="bob's last message")
    settle([alice, bob], 0.05)
    assert [m.payload for m in alice.inbox] == [
        *(f"sealed under the old keys {index}" for index in range(5)),
        "under the new keys",
    ]
    assert [m.payload for m in bob.inbox] == list(range(sent))
    assert alice.statistics()["rejected"] == {} and bob.statistics()["rejected"] == {}


def test_send_many_delivers_a_batch_in_order(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    bob = make_node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint)
    alice.send_many(bob.agent_id, ["queued", "before", "the session"], topic="t")
    pump_until([alice, bob], lambda: len(bob.inbox) == 3, what="first batch")
    alice.send_many(bob.agent_id, list(range(50)), topic="t")  # one sealed batch
    pump_until([alice, bob], lambda: len(bob.inbox) == 53, what="second batch")
    assert [m.payload for m in bob.inbox] == ["queued", "before", "the session", *range(50)]
    assert {(m.sender, m.topic) for m in bob.inbox} == {(alice.agent_id, "t")}
    assert alice.statistics()["sent"] == 53 and bob.statistics()["received"] == 53


def test_send_many_into_a_full_queue_keeps_the_statistics_right(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint, max_queue=3)
    with pytest.raises(QueueFullError):
        alice.send_many(bus.id("dave"), [0, 1, 2, 3, 4])
    stats = alice.statistics()
    # All or nothing would do (queued 0, sent 0), and so would counting what was queued.
    assert stats["sent"] == stats["queued"], stats


def test_broker_refuses_an_agent_whose_trust_expired(
    bus: Bus, start_broker: BrokerFactory, make_node: MakeNode
) -> None:
    lapsed = TrustStore(bus.root / "trust" / "broker-lapsed")
    lapsed.add(bus.agents["alice"].public, expires="2020-01-01T00:00:00Z")
    broker = start_broker(trust=lapsed)
    with pytest.raises(ConnectError):
        make_node(
            bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint, connect_timeout=1.0
        )
    assert broker.audit is not None
    assert broker.audit.events("reject", reason="trust_expired")
