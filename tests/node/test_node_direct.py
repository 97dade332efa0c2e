"""Nodes linked directly (``bind=`` and ``connect()``), without a broker.

Bob lives in a thread of its own (``NodeThread``) so that he answers while Alice, driven by the
test thread, blocks in ``connect()`` or ``request()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from zmqcomm.access import Policy
from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import (
    ClosedError,
    ConnectError,
    ReceiveTimeout,
    RequestTimeout,
    UnknownPeerError,
    UsageError,
)
from zmqcomm.node import Incoming, Node, direct_topics
from zmqcomm.secure import SecureDealer
from zmqcomm.transport import SocketOptions
from zmqcomm.wire import MessageType

from .conftest import Bus
from .support import NodeThread, pump_until, settle, wait_for

MakeNode = Callable[..., Node]
SpawnNode = Callable[..., NodeThread]
Endpoints = Callable[[str], str]


@pytest.fixture(params=["inproc", "ipc", "tcp"])
def endpoints(
    request: pytest.FixtureRequest, unique: Endpoints, ipc_endpoint: Endpoints
) -> Endpoints:
    """Bindable endpoints on one transport (tcp on loopback, port 0)."""
    if request.param == "inproc":
        return unique
    if request.param == "ipc":
        return ipc_endpoint
    return lambda label: "tcp://127.0.0.1:0"


def echo(message: Incoming) -> object:
    return {"echo": message.payload, "from": message.sender}


def linked(
    bus: Bus,
    make_node: MakeNode,
    spawn_node: SpawnNode,
    endpoints: Endpoints,
    **bob_options: object,
) -> tuple[Node, NodeThread, str]:
    """Bob listening in his thread, Alice (this thread) connected to him; and his endpoint."""
    bob_options.setdefault("request_handler", echo)
    bob_trust = bob_options.pop("trust", None) or bus.trust("bob")
    bob = spawn_node(bus.agents["bob"], bob_trust, bind=endpoints("bob"), **bob_options)
    bob_endpoint = bob.call(lambda node: node.endpoint)
    assert bob_endpoint is not None
    alice = make_node(bus.agents["alice"], bus.trust("alice"), bind=endpoints("alice"))
    assert alice.connect(bob_endpoint, expect_peer=bob.agent_id, timeout=5) == bob.agent_id
    return alice, bob, bob_endpoint


def test_messages_and_requests_both_ways(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, endpoints: Endpoints
) -> None:
    alice, bob, _ = linked(bus, make_node, spawn_node, endpoints)
    alice.request_handler = lambda message: {"alice got": message.payload}
    assert alice.peers == [bob.agent_id]
    assert bob.call(lambda node: node.peers) == [alice.agent_id]

    # Alice -> Bob (Alice dialled him).
    alice.send(bob.agent_id, {"task": 1}, topic="jobs")
    message = wait_for(bob.submit(lambda node: node.receive(timeout=5)), [alice])
    assert (message.sender, message.payload, message.topic) == (alice.agent_id, {"task": 1}, "jobs")
    assert message.kind == MessageType.DATA and message.via == "session"
    assert message.roles == frozenset({"agent"})

    # Bob -> Alice (over the connection she opened).
    bob.call(lambda node: node.send(alice.agent_id, "hello alice"))
    message = alice.receive(timeout=5)
    assert (message.sender, message.payload) == (bob.agent_id, "hello alice")

    # Requests, both ways.
    assert alice.request(bob.agent_id, 5, timeout=5) == {"echo": 5, "from": alice.agent_id}
    asked = bob.submit(lambda node: node.request(alice.agent_id, 6, timeout=5))
    assert wait_for(asked, [alice]) == {"alice got": 6}

    settle([alice], 0.05)
    assert not alice.inbox
    stats = alice.statistics()
    assert (stats["sent"], stats["received"]) == (3, 3)  # data, request, reply each way
    assert stats["handshakes"] == 1 and stats["rejected"] == {}
    bob_stats = bob.call(lambda node: node.statistics())
    assert (bob_stats["sent"], bob_stats["received"]) == (3, 3)
    assert bob_stats["handshakes"] == 1 and bob_stats["rejected"] == {}


def test_messages_iterator_ends_after_its_timeout(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    alice, bob, _ = linked(bus, make_node, spawn_node, ipc_endpoint)

    def send_three(node: Node) -> None:
        for index in range(3):
            node.send(alice.agent_id, index)

    bob.call(send_three)
    started = time.monotonic()
    got = [message.payload for message in alice.messages(timeout=0.3)]
    elapsed = time.monotonic() - started
    assert got == [0, 1, 2]
    assert 0.3 <= elapsed < 2.0, elapsed

    started = time.monotonic()
    assert list(alice.messages(timeout=0.1)) == []
    assert 0.1 <= time.monotonic() - started < 1.0


def test_close_is_idempotent_and_later_calls_raise(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    alice, bob, bob_endpoint = linked(bus, make_node, spawn_node, ipc_endpoint)
    alice.close()
    alice.close()  # again: nothing happens
    alice.close(timeout=0)
    request = Incoming(bob.agent_id, MessageType.REQUEST, "x", request_id=1)
    calls: list[Callable[[], object]] = [
        lambda: alice.send(bob.agent_id, "late"),
        lambda: alice.request(bob.agent_id, "late", timeout=0.1),
        lambda: alice.reply(request, "late"),
        lambda: alice.pump(0.0),
        lambda: alice.receive(timeout=0.1),
        lambda: next(alice.messages(timeout=0.1)),
        lambda: alice.connect(bob_endpoint, timeout=0.1),
    ]
    for call in calls:
        with pytest.raises(ClosedError):
            call()
    # Bob is unaffected.
    assert bob.call(lambda node: node.statistics()["rejected"]) == {}

    # The context manager closes too, and closing again after it is fine.
    with Node(bus.agents["carol"], bus.trust("carol"), bind=ipc_endpoint("carol")) as carol:
        pass
    carol.close()
    with pytest.raises(ClosedError):
        carol.pump()


def test_connect_fails_cleanly(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), bind=ipc_endpoint("alice"))
    nowhere = ipc_endpoint("nobody")
    with pytest.raises(ConnectError, match="no authenticated session"):
        alice.connect(nowhere, timeout=0.3)

    # Bob does not trust Alice: no session, and Bob says why in his audit trail.
    audit = MemoryAuditLog()
    lonely = TrustStore(bus.root / "trust" / "bob-alone")
    lonely.add(bus.agents["carol"].public)
    bob = spawn_node(bus.agents["bob"], lonely, bind=ipc_endpoint("bob"), audit=audit)
    bob_endpoint = bob.call(lambda node: node.endpoint)
    assert bob_endpoint is not None
    with pytest.raises(ConnectError):
        alice.connect(bob_endpoint, timeout=0.5)
    assert audit.events("reject", reason="unknown_peer")

    # Carol trusts Bob but expects somebody else at his address.
    carol = make_node(bus.agents["carol"], bus.trust("carol"), bind=ipc_endpoint("carol"))
    with pytest.raises(ConnectError):
        carol.connect(bob_endpoint, expect_peer=bus.id("dave"), timeout=0.5)
    assert alice.peers == [] and carol.peers == []
    assert carol.connect(bob_endpoint, expect_peer=bob.agent_id, timeout=5) == bob.agent_id


def test_usage_errors(bus: Bus, make_node: MakeNode, ipc_endpoint: Endpoints) -> None:
    with pytest.raises(UsageError, match="broker="):
        Node(bus.agents["alice"], bus.trust("alice"))
    alice = make_node(bus.agents["alice"], bus.trust("alice"), bind=ipc_endpoint("alice"))
    with pytest.raises(UnknownPeerError, match="connect"):
        alice.send(bus.id("bob"), "no link to bob")  # direct only, never connected
    with pytest.raises(UsageError):
        alice.reply(Incoming(bus.id("bob"), MessageType.DATA, "not a request"), "answer")


POLICY = """
[roles.observer]
send = ["DATA"]
"""


def test_policy_refuses_a_request_from_an_observer(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    audit = MemoryAuditLog()
    alice, bob, _ = linked(
        bus,
        make_node,
        spawn_node,
        ipc_endpoint,
        trust=bus.trust("bob", roles={"alice": ["observer"]}),
        policy=Policy.from_toml(POLICY),
        audit=audit,
    )
    alice.send(bob.agent_id, "data is fine")
    message = wait_for(bob.submit(lambda node: node.receive(timeout=5)), [alice])
    assert message.roles == frozenset({"observer"})
    with pytest.raises(RequestTimeout):
        alice.request(bob.agent_id, "a request is not", timeout=0.5)
    assert [line["peer"] for line in audit.events("reject", reason="denied")] == [alice.agent_id]
    assert bob.call(lambda node: node.statistics()["rejected"]) == {"denied": 1}


def test_revocation_cuts_a_direct_peer_off(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    audit = MemoryAuditLog()
    alice, bob, bob_endpoint = linked(bus, make_node, spawn_node, ipc_endpoint, audit=audit)
    carol = make_node(bus.agents["carol"], bus.trust("carol"), bind=ipc_endpoint("carol"))
    carol.connect(bob_endpoint, timeout=5)
    assert bob.call(lambda node: node.trust.revoke(alice.agent_id))
    alice.send(bob.agent_id, "alice after")
    carol.send(bob.agent_id, "carol after")
    pump_until(
        [alice, carol],
        lambda: bob.call(lambda node: node.statistics()["rejected"]).get("revoked", 0) >= 1,
        what="alice refused",
    )
    message = wait_for(bob.submit(lambda node: node.receive(timeout=5)), [alice, carol])
    assert (message.sender, message.payload) == (carol.agent_id, "carol after")
    assert bob.call(lambda node: len(node.inbox)) == 0
    assert [line["peer"] for line in audit.events("reject", reason="revoked")] == [alice.agent_id]


def test_dialer_handshakes_again_when_the_listener_restarts(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    bob_endpoint = ipc_endpoint("bob")
    bob = spawn_node(bus.agents["bob"], bus.trust("bob"), bind=bob_endpoint)
    alice = make_node(bus.agents["alice"], bus.trust("alice"), bind=ipc_endpoint("alice"))
    alice.connect(bob_endpoint, timeout=5)
    alice.send(bob.agent_id, "before")
    assert wait_for(bob.submit(lambda node: node.receive(timeout=5)), [alice]).payload == "before"
    bob.stop()

    bob = spawn_node(bus.agents["bob"], bus.trust("bob"), bind=bob_endpoint)
    pump_until(
        [alice], lambda: alice.statistics()["handshakes"] == 2, what="a new session with bob"
    )
    alice.send(bob.agent_id, "after")
    message = wait_for(bob.submit(lambda node: node.receive(timeout=5)), [alice])
    assert (message.sender, message.payload) == (alice.agent_id, "after")


def test_a_send_while_the_listener_is_down_fails_instead_of_vanishing(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    # It used to wait in ZeroMQ, sealed for the old session, and the restarted listener
    # dropped it unread: lost, and the sender never knew.
    alice, bob, bob_endpoint = linked(bus, make_node, spawn_node, ipc_endpoint)
    bob.stop()
    link = alice._direct.dealers[bob.agent_id]
    pump_until([alice], lambda: not link.established, what="the link seen down")
    with pytest.raises(ConnectError, match="is down") as caught:
        alice.send(bob.agent_id, "while down")
    assert caught.value.reason == "link_down"

    bob = spawn_node(bus.agents["bob"], bus.trust("bob"), bind=bob_endpoint)
    pump_until([alice], lambda: link.established, what="a new session with bob")
    alice.send(bob.agent_id, "after")
    message = wait_for(bob.submit(lambda node: node.receive(timeout=5)), [alice])
    assert message.payload == "after"


def test_connecting_again_to_the_same_agent_replaces_the_first_link(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    alice, bob, bob_endpoint = linked(bus, make_node, spawn_node, ipc_endpoint)
    first = alice._direct.dealers[bob.agent_id]
    before = alice.statistics()
    assert alice.connect(bob_endpoint, timeout=5) == bob.agent_id
    assert first.socket.closed  # not left open and unpumped
    # What the first link counted stays counted.
    after = alice.statistics()
    assert after["handshakes"] == before["handshakes"] + 1
    assert alice.peers == [bob.agent_id]
    alice.send(bob.agent_id, "over the new link")
    message = wait_for(bob.submit(lambda node: node.receive(timeout=5)), [alice])
    assert message.payload == "over the new link"
    bob.call(lambda node: node.send(alice.agent_id, "back"))
    assert alice.receive(timeout=5).payload == "back"


def test_what_arrives_behind_the_handshake_is_not_stranded_in_the_new_link(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    # Bob greets a new peer with his subscriptions right behind the handshake, so connect()
    # reads them off the socket while it finishes the handshake. A frozen clock means no
    # periodic pump of every link will come along later to pick them up.
    bob = spawn_node(bus.agents["bob"], bus.trust("bob"), bind=ipc_endpoint("bob"))
    bob.call(lambda node: node.subscribe("news"))
    bob_endpoint = bob.call(lambda node: node.endpoint)
    assert bob_endpoint is not None
    alice = make_node(
        bus.agents["alice"], bus.trust("alice"), bind=ipc_endpoint("alice"), clock=lambda: 1000.0
    )
    alice.connect(bob_endpoint, timeout=5)
    pump_until(
        [alice],
        lambda: alice.subscribers("news") == [bob.agent_id],
        what="bob's subscription, sent right behind the handshake",
    )


def test_a_handler_that_connects_again_does_not_break_the_pump_it_runs_in(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    alice, bob, bob_endpoint = linked(bus, make_node, spawn_node, ipc_endpoint)
    alice.request_handler = lambda message: alice.connect(bob_endpoint, timeout=5)
    alice._poller.full_every = 0.0  # every pump walks every link, the old one to bob included
    carol = spawn_node(bus.agents["carol"], bus.trust("carol"), bind=ipc_endpoint("carol"))
    alice_endpoint = alice.endpoint
    assert alice_endpoint is not None
    carol_dials = carol.submit(lambda node: node.connect(alice_endpoint, timeout=5))
    wait_for(carol_dials, [alice])
    # Alice answers inside her pump, and the answer replaces the link that pump is walking.
    asked = carol.submit(lambda node: node.request(alice.agent_id, "reconnect", timeout=5))
    assert wait_for(asked, [alice]) == bob.agent_id
    alice.send(bob.agent_id, "still linked")
    message = wait_for(bob.submit(lambda node: node.receive(timeout=5)), [alice])
    assert message.payload == "still linked"


def test_a_node_with_many_links_hears_each_of_them(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    # Bob and Carol each listen; Alice dials both and listens too: three links, and a message
    # on any one of them wakes her pump (which looks only at the readable ones).
    alice, bob, _ = linked(bus, make_node, spawn_node, ipc_endpoint)
    carol = spawn_node(bus.agents["carol"], bus.trust("carol"), bind=ipc_endpoint("carol"))
    carol_endpoint = carol.call(lambda node: node.endpoint)
    assert carol_endpoint is not None
    alice.connect(carol_endpoint, timeout=5)
    for sender in (carol, bob, carol):
        sender.call(lambda node: node.send(alice.agent_id, node.agent_id))
        message = alice.receive(timeout=5)
        assert (message.sender, message.payload) == (sender.agent_id, sender.agent_id)


# -- time: trust and certificate expiry are wall-clock (epoch) times -----------------------


def test_expired_trust_refuses_a_direct_peer(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    lapsed = TrustStore(bus.root / "trust" / "bob-lapsed")
    lapsed.add(bus.agents["alice"].public, expires="2020-01-01T00:00:00Z")
    with pytest.raises(UnknownPeerError, match="expired"):  # the store's own verdict
        lapsed.lookup(bus.id("alice"), now=time.time())
    audit = MemoryAuditLog()
    bob = spawn_node(bus.agents["bob"], lapsed, bind=ipc_endpoint("bob"), audit=audit)
    bob_endpoint = bob.call(lambda node: node.endpoint)
    assert bob_endpoint is not None
    alice = make_node(bus.agents["alice"], bus.trust("alice"), bind=ipc_endpoint("alice"))
    with pytest.raises(ConnectError):
        alice.connect(bob_endpoint, timeout=1.0)
    assert audit.events("reject", reason="trust_expired")


def test_expired_certificate_refuses_a_direct_peer(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    stale = Identity.generate("stale", cert_expires=int(time.time()) - 60)
    bob_trust = bus.trust("bob")
    bob_trust.add(stale.public)
    audit = MemoryAuditLog()
    bob = spawn_node(bus.agents["bob"], bob_trust, bind=ipc_endpoint("bob"), audit=audit)
    bob_endpoint = bob.call(lambda node: node.endpoint)
    assert bob_endpoint is not None
    stale_trust = TrustStore(bus.root / "trust" / "stale")
    stale_trust.add(bus.agents["bob"].public)
    node = make_node(stale, stale_trust, bind=ipc_endpoint("stale"))
    with pytest.raises(ConnectError):
        node.connect(bob_endpoint, timeout=1.0)
    assert audit.events("reject", reason="certificate_expired")


def test_audit_lines_of_a_direct_session_carry_the_wall_clock_time(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    audit = MemoryAuditLog()
    linked(bus, make_node, spawn_node, ipc_endpoint, audit=audit)
    [line] = audit.events("handshake")
    assert abs(line["ts"] - time.time()) < 600, line


def test_publish_and_subscribe_between_direct_peers(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, endpoints: Endpoints
) -> None:
    alice, bob, _ = linked(bus, make_node, spawn_node, endpoints)
    bob.call(lambda node: node.subscribe("news/*"))
    pump_until([alice], lambda: bool(alice._direct_topics.subscribers("news/x")), what="sub")
    alice.publish("news/today", {"n": 1})
    alice.publish("sport/today", {"n": 2})  # nobody subscribed: not sent at all
    message = wait_for(bob.submit(lambda node: node.receive(timeout=5)), [alice])
    assert (message.kind, message.topic, message.payload) == (
        MessageType.PUBLISH,
        "news/today",
        {"n": 1},
    )
    assert message.sender == alice.agent_id
    bob.call(lambda node: node.unsubscribe("news/*"))
    pump_until([alice], lambda: not alice._direct_topics.subscribers("news/x"), what="unsub")
    alice.publish("news/later", {"n": 3})
    settle([alice], 0.1)
    with pytest.raises(ReceiveTimeout):
        bob.call(lambda node: node.receive(timeout=0.2))


def test_a_direct_subscription_the_policy_forbids_is_refused(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, endpoints: Endpoints
) -> None:
    audit = MemoryAuditLog()
    bob = spawn_node(bus.agents["bob"], bus.trust("bob"), bind=endpoints("bob"))
    alice = make_node(
        bus.agents["alice"],
        bus.trust("alice"),
        bind=endpoints("alice"),
        policy=Policy.from_toml('[roles.agent]\nsubscribe = ["public/*"]\n'),
        audit=audit,
    )
    alice.connect(bob.call(lambda node: node.endpoint), expect_peer=bob.agent_id, timeout=5)
    bob.call(lambda node: node.subscribe("secret/*"))
    pump_until([alice], lambda: bool(audit.events("reject", reason="denied")), what="denial")
    assert alice._direct_topics.subscribers("secret/x") == []


def test_only_the_agent_asked_can_answer_a_request(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), bind=ipc_endpoint("alice"))
    endpoint = alice.endpoint
    assert endpoint is not None
    bob = spawn_node(bus.agents["bob"], bus.trust("bob"), bind=ipc_endpoint("bob"))
    carol = spawn_node(bus.agents["carol"], bus.trust("carol"), bind=ipc_endpoint("carol"))
    for peer in (bob, carol):
        wait_for(peer.submit(lambda node: node.connect(endpoint, timeout=5)), [alice])
    request_id = alice.start_request(bob.agent_id, "what is your balance?")
    # Carol guesses the id (a counter) and answers a request sent to bob.
    guessed = Incoming(alice.agent_id, MessageType.REQUEST, None, request_id=request_id)
    carol.call(lambda node: node.reply(guessed, "forged by carol"))
    pump_until(
        [alice],
        lambda: alice.statistics()["rejected"].get("wrong_replier") == 1,
        what="carol's reply refused",
    )
    assert alice.take_reply(request_id) is None
    bob.call(lambda node: node.reply(guessed, "from bob"))
    pump_until([alice], lambda: request_id in alice._replies, what="bob's reply")
    reply = alice.take_reply(request_id)
    assert reply is not None and (reply.sender, reply.payload) == (bob.agent_id, "from bob")
    # Answered: a second reply to the same request is late, not a second answer.
    bob.call(lambda node: node.reply(guessed, "again"))
    pump_until([alice], lambda: alice.counters["late_replies"] == 1, what="the late reply")
    assert alice.take_reply(request_id) is None


def test_a_connect_cut_short_by_a_handler_error_closes_its_new_link(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    made: list[SecureDealer] = []
    real_init = SecureDealer.__init__

    def tracked(self: SecureDealer, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(SecureDealer, "__init__", tracked)
    alice = make_node(bus.agents["alice"], bus.trust("alice"), bind=ipc_endpoint("alice"))
    endpoint = alice.endpoint
    assert endpoint is not None

    def broken(message: Incoming) -> object:
        raise RuntimeError("a bug in the application's request handler")

    alice.request_handler = broken
    bob = spawn_node(bus.agents["bob"], bus.trust("bob"), bind=ipc_endpoint("bob"))
    carol = spawn_node(bus.agents["carol"], bus.trust("carol"), bind=ipc_endpoint("carol"))
    wait_for(carol.submit(lambda node: node.connect(endpoint, timeout=5)), [alice])
    carol.submit(lambda node: node.start_request(alice.agent_id, "hi"))
    router = alice._direct.router
    assert router is not None and router.socket.poll(5000)  # the request waits for a pump
    with pytest.raises(RuntimeError, match="request handler"):
        alice.connect(bob.call(lambda node: node.endpoint), timeout=5)  # its pump meets it
    alice_links = [d for d in made if d.table.identity is bus.agents["alice"]]
    assert alice_links and all(link.closed for link in alice_links)


def test_a_bad_request_timeout_is_refused_before_anything_is_sent(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    alice, bob, _ = linked(bus, make_node, spawn_node, ipc_endpoint)
    for bad in ("5", None, float("nan")):
        with pytest.raises(UsageError, match="request timeout"):
            alice.request(bob.agent_id, "never sent", timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="receive timeout"):
        alice.receive(timeout="soon")  # type: ignore[arg-type]
    alice.send(bob.agent_id, "the first thing sent")
    first = wait_for(bob.submit(lambda node: node.receive(timeout=5)), [alice])
    assert first.payload == "the first thing sent"


@pytest.mark.parametrize("bad", ["x" * 256, None, 7, "\ud800"])
def test_a_topic_the_header_cannot_carry_is_refused_before_it_is_stored(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints, bad: object
) -> None:
    alice = make_node(bus.agents["alice"], bus.trust("alice"), bind=ipc_endpoint("alice"))
    with pytest.raises(UsageError, match="at most 255 bytes"):
        alice.subscribe(bad)  # type: ignore[arg-type]
    alice.subscribe("é" * 127)  # 254 bytes: fits
    # A peer that connects now is greeted with the good topic only, and nothing raises.
    bob = spawn_node(bus.agents["bob"], bus.trust("bob"), bind=ipc_endpoint("bob"))
    alice.connect(bob.call(lambda node: node.endpoint), timeout=5)
    wait_for(
        bob.submit(lambda node: pump_until([node], lambda: bool(node.subscribers("é" * 127)))),
        [alice],
    )


def receive_until(node: Node, last: object) -> list[object]:
    """Payloads ``node`` receives up to and including ``last``."""
    got = []
    while not got or got[-1] != last:
        got.append(node.receive(timeout=5).payload)
    return got


def test_a_departed_peer_is_forgotten_and_the_others_still_hear_from_us(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Endpoints
) -> None:
    audit = MemoryAuditLog()
    alice = make_node(bus.agents["alice"], bus.trust("alice"), bind=ipc_endpoint("a"), audit=audit)
    endpoint = alice.endpoint
    assert endpoint is not None
    others = {}
    for name in ("bob", "carol", "dave"):
        other = spawn_node(bus.agents[name], bus.trust(name), bind=ipc_endpoint(name))
        wait_for(other.submit(lambda node: node.connect(endpoint, timeout=5)), [alice])
        other.call(lambda node: node.subscribe("news"))
        others[name] = other
    pump_until([alice], lambda: len(alice.subscribers("news")) == 3, what="three subscribers")
    bob, carol, dave = others["bob"], others["carol"], others["dave"]

    # Bob leaves: publishing goes on (to nobody's error) until the router finds him gone.
    bob.close_node()
    sequence = iter(range(1_000_000))
    pump_until(
        [alice],
        lambda: alice.publish("news", next(sequence)) or bob.agent_id not in alice.peers,
        what="bob forgotten",
    )
    assert alice.subscribers("news") == sorted([carol.agent_id, dave.agent_id])
    alice.publish("news", "after bob")
    for other in (carol, dave):
        got = wait_for(other.submit(lambda node: receive_until(node, "after bob")), [alice])
        assert got[-1] == "after bob"

    # Carol leaves: a subscription sent to every peer skips her too.
    carol.close_node()
    topics = (f"topic/{index}" for index in range(1_000_000))
    pump_until(
        [alice],
        lambda: alice.subscribe(next(topics)) or alice.peers == [dave.agent_id],
        what="carol forgotten",
    )
    assert alice.subscribers("news") == [dave.agent_id]
    # Each counted and audited (as unroutable, or unknown if a timer found them gone first).
    rejected = alice.statistics()["rejected"]
    assert rejected.get("unroutable", 0) + rejected.get("unknown_peer", 0) == 2, rejected
    lines = audit.events("reject")
    assert {line["peer"] for line in lines} == {bob.agent_id, carol.agent_id}, lines


def test_subscriptions_per_peer_are_capped_counted_and_audited(
    bus: Bus,
    make_node: MakeNode,
    spawn_node: SpawnNode,
    ipc_endpoint: Endpoints,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(direct_topics, "MAX_SUBSCRIPTIONS", 3, raising=False)
    audit = MemoryAuditLog()
    bob = spawn_node(bus.agents["bob"], bus.trust("bob"), bind=ipc_endpoint("bob"))
    alice = make_node(bus.agents["alice"], bus.trust("alice"), bind=ipc_endpoint("a"), audit=audit)
    alice.connect(bob.call(lambda node: node.endpoint), expect_peer=bob.agent_id, timeout=5)
    for topic in ("t/0", "t/1", "t/2", "t/1", "t/3", "t/4"):  # t/1 again takes no new place
        bob.call(lambda node, topic=topic: node.subscribe(topic))
    pump_until(
        [alice],
        lambda: len(audit.events("reject", reason="too_many_subscriptions")) == 2,
        what="two refused subscriptions",
    )
    assert [alice.subscribers(f"t/{index}") for index in range(5)] == [[bob.agent_id]] * 3 + [
        []
    ] * 2
    assert alice.statistics()["rejected"] == {"too_many_subscriptions": 2}
    # Room made by an unsubscribe is room again.
    bob.call(lambda node: node.unsubscribe("t/0"))
    bob.call(lambda node: node.subscribe("t/4"))
    pump_until([alice], lambda: alice.subscribers("t/4") == [bob.agent_id], what="t/4 taken")
    assert alice.subscribers("t/0") == []


def test_a_peer_that_does_not_read_its_replies_holds_up_no_one(
    bus: Bus, make_node: MakeNode, ipc_endpoint: Callable[[str], str]
) -> None:
    """Automatic replies (and publications, subscriptions) go out from inside pump(): they
    used to wait send_timeout (1 s) each for a peer whose queue was full, so a peer that
    sent requests and never read the answers stalled the node for everyone else. They
    never wait now: such a reply is dropped and counted (queue_full)."""
    small = SocketOptions(send_hwm=10, receive_hwm=10)
    endpoint = ipc_endpoint("slow")
    server = make_node(bus.agents["alice"], bus.trust("alice"), bind=endpoint, options=small)
    server.request_handler = echo
    with SecureDealer(
        endpoint,
        identity=bus.agents["dave"],
        trust=bus.trust("dave"),
        options=small,
        connect_timeout=None,
    ) as greedy:
        pump_until([server], lambda: greedy.pump(0.01) >= 0 and greedy.established)
        for index in range(60):
            greedy.send([index + 1, "x"], msg_type=MessageType.REQUEST)  # never reads
        deadline = time.monotonic() + 30
        while server.statistics()["rejected"].get("queue_full", 0) == 0:
            assert time.monotonic() < deadline, server.statistics()["rejected"]
            server.pump(0.01)
        settle([server], 0.2)
        rejected = server.statistics()["rejected"]
        assert "send_timeout" not in rejected, rejected
        assert rejected["queue_full"] >= 1


def test_receive_with_no_time_left_returns_a_message_already_waiting(
    bus: Bus, make_node: MakeNode, spawn_node: SpawnNode, ipc_endpoint: Callable[[str], str]
) -> None:
    """receive(0) raised before it pumped, so a message waiting in a socket was never
    returned (and messages(timeout=0) yielded nothing)."""
    alice, bob, _ = linked(bus, make_node, spawn_node, ipc_endpoint)
    bob.call(lambda node: node.send(alice.agent_id, "waiting"))
    first = alice._direct.dealers[bob.agent_id]
    assert first.socket.poll(5000)  # in alice's socket, not yet read
    assert alice.receive(timeout=0).payload == "waiting"
    with pytest.raises(ReceiveTimeout):
        alice.receive(timeout=0)
