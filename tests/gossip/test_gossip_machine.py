"""The pure gossip machine, one node at a time: delivery, dedup, signatures, hops, repair."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import Any

import pytest

from zmqcomm.actions import Send
from zmqcomm.crypto.keys import Identity
from zmqcomm.errors import UsageError
from zmqcomm.patterns.gossip import (
    Deliver,
    GossipNode,
    Graft,
    IHave,
    IWant,
    Message,
    Publish,
    ed25519_verifier,
    id_material,
    message_id,
)

NAMES = [f"n{i}" for i in range(20)]
IDENTITIES = {name: Identity.generate(name) for name in NAMES[:4]}
VERIFY = ed25519_verifier({name: ident.verify_key for name, ident in IDENTITIES.items()})


def first(population: Sequence[Hashable], k: int) -> list[Hashable]:
    return list(population)[:k]


def node(name: str = "n0", peers: Sequence[str] = tuple(NAMES), **kwargs: Any) -> GossipNode:
    options: dict[str, Any] = {
        "sign": IDENTITIES[name].sign,
        "verify": VERIFY,
        "choose": first,
        "now": 0.0,
    }
    options.update(kwargs)
    return GossipNode(name, peers, **options)


def sends(actions: list[Any]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def delivered(actions: list[Any]) -> list[Message]:
    return [a.message for a in actions if isinstance(a, Deliver)]


def signed(origin: str, sequence: int, payload: bytes, hops: int = 0) -> Message:
    signature = IDENTITIES[origin].sign(id_material(origin, sequence, payload))
    return Message(origin, sequence, payload, hops, signature)


def test_publish_delivers_locally_and_pushes_to_the_mesh() -> None:
    a = node()
    mid, actions = a.publish(b"hello", now=0.1)
    assert mid == message_id("n0", 0, b"hello") and len(mid) == 16
    [message] = delivered(actions)
    assert message.payload == b"hello" and message.id == mid and message.hops == 0
    out = sends(actions)
    assert 0 < len(out) <= a.degree
    assert {s.to for s in out} == set(a.mesh) and "n0" not in a.mesh
    assert all(isinstance(s.message, Publish) and s.message.message == message for s in out)
    assert a.counters["sent_publish"] == len(out)
    mid2, _ = a.publish(b"hello", now=0.2)
    assert mid2 != mid  # the sequence makes equal payloads distinct


def test_receiver_delivers_once_and_forwards_except_to_sender_and_origin() -> None:
    b = node("n1", peers=["n0", "n2", "n3", "n4"], degree=4, degree_low=2)
    message = signed("n0", 7, b"x")
    actions = b.on_message("n2", Publish(message), now=1.0)
    assert delivered(actions) == [message]
    targets = sorted(s.to for s in sends(actions))  # type: ignore[type-var]
    assert targets == ["n3", "n4"]
    assert all(s.message.message.hops == 1 for s in sends(actions))
    again = b.on_message("n3", Publish(replace(message, hops=5)), now=1.1)
    assert again == [] and b.counters["duplicates"] == 1


def test_altered_payload_or_forged_signature_is_never_delivered_nor_forwarded() -> None:
    b = node("n1")
    genuine = signed("n0", 1, b"pay 1")
    altered = replace(genuine, payload=b"pay 9")
    forged = Message("n0", 1, b"pay 1", 0, IDENTITIES["n2"].sign(genuine.material))
    unsigned = replace(genuine, signature=None)
    unknown_origin = Message("n9", 1, b"x", 0, b"\0" * 64)
    for bad in (altered, forged, unsigned, unknown_origin):
        assert b.on_message("n3", Publish(bad), now=1.0) == []
    assert b.counters["bad_signature"] == 4
    # A forged copy arriving first did not mark the id as seen: the genuine one still gets in.
    assert delivered(b.on_message("n3", Publish(genuine), now=1.0)) == [genuine]
    assert b.counters["duplicates"] == 0


def test_hop_limit() -> None:
    b = node("n1", max_hops=3)
    assert b.on_message("n2", Publish(signed("n0", 1, b"far", hops=4)), now=1.0) == []
    assert b.counters["too_many_hops"] == 1
    at_limit = b.on_message("n2", Publish(signed("n0", 2, b"edge", hops=3)), now=1.0)
    assert len(delivered(at_limit)) == 1 and sends(at_limit) == []  # delivered, not relayed


def test_ihave_iwant_repair() -> None:
    a = node("n0", peers=["n1", "n2"], degree=1, degree_low=1)
    b = node("n1", peers=["n0"], degree=1, degree_low=1)
    mid, _ = a.publish(b"late", now=0.5)  # pretend the eager push to n1 was lost
    heartbeat = a.on_timer(now=1.0)
    ihaves = [s for s in sends(heartbeat) if isinstance(s.message, IHave)]
    assert ihaves and all(s.message.ids == (mid,) for s in ihaves)
    assert {s.to for s in sends(heartbeat) if isinstance(s.message, Graft)} == set(a.mesh)
    [want] = sends(b.on_message("n0", IHave((mid,)), now=1.0))
    assert want.to == "n0" and want.message == IWant((mid,))
    # Asked already: a second IHave within a heartbeat does not ask again.
    assert b.on_message("n2", IHave((mid,)), now=1.1) == []
    [reply] = sends(a.on_message("n1", want.message, now=1.0))
    assert isinstance(reply.message, Publish) and reply.to == "n1"
    assert [m.id for m in delivered(b.on_message("n0", reply.message, now=1.0))] == [mid]
    assert b.on_message("n0", IHave((mid,)), now=3.0) == []  # known now: nothing wanted


def test_caches_are_bounded_in_time() -> None:
    a = node("n0", peers=["n1"], degree=1, degree_low=1, history=2, gossip_windows=1, seen_ttl=2.5)
    mid, _ = a.publish(b"old", now=0.0)
    assert any(isinstance(s.message, IHave) for s in sends(a.on_timer(now=1.0)))
    assert not any(isinstance(s.message, IHave) for s in sends(a.on_timer(now=2.0)))
    assert a.on_message("n1", IWant((mid,)), now=2.1) == []  # fell out of the cache
    assert a.has_seen(mid)
    a.on_timer(now=3.0)
    assert not a.has_seen(mid)
    assert a.next_deadline() == 4.0


def test_graft_teaches_a_peer_and_mesh_is_kept_in_bounds() -> None:
    a = node("n0", peers=[], degree=2, degree_low=1, degree_high=3)
    assert a.mesh == [] and a.on_timer(now=1.0) == []
    a.on_message("n5", Graft(), now=1.5)
    assert a.peers == ["n5"]
    graft = a.on_timer(now=2.0)
    assert a.mesh == ["n5"] and [s.to for s in sends(graft)] == ["n5"]
    a.remove_peer("n5")
    assert a.mesh == []


def test_malformed_input_is_counted_and_ignored() -> None:
    a = node()
    for junk in (
        "x",
        IHave(("short",)),  # type: ignore[arg-type]
        IWant([b"0" * 16]),  # type: ignore[arg-type]
        Publish(Message("n1", -1, b"", 0, None)),
    ):
        assert a.on_message("n1", junk, now=0.0) == []
    assert a.counters["malformed"] == 4
    with pytest.raises(UsageError):
        node(degree=3, degree_low=4)
    with pytest.raises(UsageError):
        a.publish("text", now=0.0)  # type: ignore[arg-type]


def test_unsigned_mode_without_verify() -> None:
    a = node(sign=None, verify=None)
    _, actions = a.publish(b"plain", now=0.0)
    assert delivered(actions)[0].signature is None
    b = node("n1", sign=None, verify=None)
    assert len(delivered(b.on_message("n0", Publish(delivered(actions)[0]), now=0.0))) == 1


def test_a_withheld_or_forged_reply_makes_the_node_ask_the_next_source() -> None:
    b = node("n1", peers=["n0", "n2", "n3"], degree=1, degree_low=1)
    mid = signed("n0", 3, b"wanted").id
    b.on_timer(now=1.0)
    [first_ask] = sends(b.on_message("n0", IHave((mid,)), now=1.1))
    assert first_ask.to == "n0"
    assert b.on_message("n2", IHave((mid,)), now=1.12) == []  # remembered as a source
    assert b.next_deadline() == pytest.approx(1.1 + b.iwant_timeout)
    forged = replace(signed("n0", 3, b"wanted"), payload=b"tampered")
    assert b.on_message("n0", Publish(forged), now=1.15) == []
    [retry] = sends(b.on_timer(now=1.1 + b.iwant_timeout))
    assert retry.to == "n2" and retry.message == IWant((mid,))
    assert b.on_timer(now=1.9) == []  # no source left: the id is forgotten ...
    assert b.next_deadline() == 2.0
    assert sends(b.on_message("n3", IHave((mid,)), now=1.95))[0].to == "n3"  # ... asked anew


def test_iwant_answers_each_id_once_and_replies_are_capped_per_heartbeat() -> None:
    a = node("n0", peers=["n1"], degree=1, degree_low=1, max_iwant_replies=2)
    m1, _ = a.publish(b"one", now=0.1)
    m2, _ = a.publish(b"two", now=0.1)
    m3, _ = a.publish(b"three", now=0.1)
    replies = sends(a.on_message("n1", IWant((m1, m1, m2, m1, m3)), now=0.2))
    assert [r.message.message.id for r in replies] == [m1, m2]  # once each, then capped
    assert a.counters["iwant_replies_capped"] == 1
    assert a.on_message("n1", IWant((m3,)), now=0.3) == []
    assert a.counters["iwant_replies_capped"] == 2
    # Another asker has its own allowance, and a heartbeat renews everyone's.
    assert len(sends(a.on_message("n2", IWant((m3,)), now=0.4))) == 1
    a.on_timer(now=1.0)
    [again] = sends(a.on_message("n1", IWant((m3, m3)), now=1.1))
    assert again.to == "n1" and again.message.message.id == m3
    with pytest.raises(UsageError):
        node("n0", max_iwant_replies=-1)


def test_learned_peer_slots_are_freed_by_removal_and_configuration() -> None:
    a = node("n0", peers=[], max_peers=1)
    a.on_message("n5", Graft(), now=0.1)
    a.on_message("n6", Graft(), now=0.1)
    assert a.peers == ["n5"] and a.counters["peers_ignored"] == 1
    a.add_peer("n5")  # configured now: it no longer takes the one learned slot
    a.on_message("n6", Graft(), now=0.2)
    assert a.peers == ["n5", "n6"]
    a.remove_peer("n6")
    a.on_message("n7", Graft(), now=0.3)
    assert a.peers == ["n5", "n7"] and a.counters["peers_ignored"] == 1


# -- replay windows ---------------------------------------------------------------------------


def _delivered(actions: list[Any]) -> list[bytes]:
    return [a.message.payload for a in actions if isinstance(a, Deliver)]


def test_a_replay_after_seen_ttl_is_refused_and_not_flooded() -> None:
    receiver = node("n1", seen_ttl=10.0)
    message = Publish(signed("n0", 7, b"transfer 100 to bob"))
    assert _delivered(receiver.on_message("n0", message, now=0.0)) == [b"transfer 100 to bob"]
    for t in range(1, 30):
        receiver.on_timer(now=float(t))
    assert not receiver.has_seen(message.message.id)  # the seen-cache forgot it
    assert receiver.on_message("n2", message, now=30.0) == []  # neither delivered nor relayed
    assert receiver.counters["replayed"] == 1


def test_the_replay_window_takes_overtaken_messages_and_refuses_old_ones() -> None:
    receiver = node("n1", seen_ttl=1.0, replay_window=64)
    for sequence in (100, 98, 99):  # 98 and 99 were overtaken: still taken, once
        assert _delivered(receiver.on_message("n0", Publish(signed("n0", sequence, b"m")), now=0))
    for t in range(1, 5):
        receiver.on_timer(now=float(t))
    for sequence in (98, 100, 36):  # in the window and taken, or below it
        assert receiver.on_message("n0", Publish(signed("n0", sequence, b"m")), now=5.0) == []
    assert receiver.counters["replayed"] == 3
    assert _delivered(receiver.on_message("n0", Publish(signed("n0", 97, b"late")), now=5.0))


def test_a_forged_copy_does_not_move_the_replay_window() -> None:
    receiver = node("n1")
    genuine = signed("n0", 5, b"genuine")
    forged = replace(signed("n0", 10_000, b"forged"), payload=b"altered")
    assert receiver.on_message("n2", Publish(forged), now=0.0) == []
    assert receiver.counters["bad_signature"] == 1
    assert _delivered(receiver.on_message("n0", Publish(genuine), now=0.0)) == [b"genuine"]


def test_replay_windows_are_bounded_over_origins_and_a_restart_numbering_higher_passes() -> None:
    receiver = node("n1", max_origins=2)
    for origin in ("n0", "n2", "n3"):
        assert _delivered(receiver.on_message(origin, Publish(signed(origin, 0, b"x")), now=0.0))
    assert len(receiver._replay) == 2
    assert receiver.counters["replay_origins_forgotten"] == 1
    restarted = Publish(signed("n3", 10**18, b"x"))  # GossipAgent numbers from time_ns
    assert _delivered(receiver.on_message("n3", restarted, now=0.0)) == [b"x"]


def test_a_copy_of_our_own_message_sent_back_after_seen_ttl_is_a_replay() -> None:
    origin = node("n0", seen_ttl=1.0)
    _, actions = origin.publish(b"mine", now=0.0)
    sent = next(a.message for a in actions if isinstance(a, Send))
    for t in range(1, 4):
        origin.on_timer(now=float(t))
    assert origin.on_message("n1", sent, now=4.0) == []
    assert origin.counters["replayed"] == 1


# -- IHave promises -----------------------------------------------------------------------------


def test_one_peers_empty_promises_cannot_switch_off_repair_for_everyone() -> None:
    rng = random.Random(5)
    me = node("n0", ["n1", "n2"], verify=None, heartbeat=0.5, max_seen=1000)
    for _ in range(40):  # 40 x 512 ids that exist nowhere: 2.5 x the whole IWant table
        ids = tuple(rng.randbytes(16) for _ in range(512))
        me.on_message("n1", IHave(ids), now=0.01)
    real = message_id("n2", 0, b"real news")
    [ask] = sends(me.on_message("n2", IHave((real,)), now=0.02))
    assert ask.to == "n2" and ask.message == IWant((real,))
    assert len(me._wanted) <= me.max_wants_per_peer + 1
    assert me.counters["iwant_peer_capped"] > 0


def test_unanswered_iwants_are_broken_promises_of_the_peer_asked() -> None:
    rng = random.Random(6)
    me = node("n0", ["n1", "n2"], verify=None, max_wants_per_peer=100)
    fake = tuple(rng.randbytes(16) for _ in range(300))
    for start in range(0, 300, 50):
        me.on_message("n1", IHave(fake[start : start + 50]), now=0.0)
    real = signed("n2", 0, b"kept")
    me.on_message("n2", IHave((real.id,)), now=0.0)
    me.on_message("n2", Publish(real), now=0.01)  # a kept promise
    assert me.take_broken_promises() == {}
    me.on_timer(now=me.iwant_timeout + 0.01)
    assert me.take_broken_promises() == {"n1": 100}
    assert me.take_broken_promises() == {}
    assert me.counters["broken_promises"] == 100
    # The liar's wants are released with the promises: it may be asked again, within its cap.
    more = tuple(rng.randbytes(16) for _ in range(50))
    assert sends(me.on_message("n1", IHave(more), now=1.0))


# -- adoption: a node in no mesh --------------------------------------------------------------


X = "n3"  # the node that no mesh ever picks (a late joiner whose Grafts came too late)


def x_last(population: Sequence[Hashable], k: int) -> list[Hashable]:
    """Picks X only when it must: with degree 2 of 3 other peers, no mesh ever takes X."""
    return sorted(population, key=lambda peer: peer == X)[:k]


def route(nodes: dict[str, GossipNode], sender: str, actions: list[Any], now: float) -> None:
    """Deliver every Send at once (no latency, no loss), and what the receivers send back."""
    pending = deque((sender, a) for a in actions if isinstance(a, Send))
    while pending:
        source, send = pending.popleft()
        target = nodes.get(str(send.to))
        if target is not None:
            replies = target.on_message(source, send.message, now=now)
            pending += ((str(send.to), a) for a in replies if isinstance(a, Send))


def heartbeat(nodes: dict[str, GossipNode], now: float) -> None:
    for name, gossip in nodes.items():
        route(nodes, name, gossip.on_timer(now=now), now)


def swarm() -> dict[str, GossipNode]:
    names = ["n0", "n1", "n2", X]
    return {
        name: node(name, [p for p in names if p != name], choose=x_last, degree=2, degree_low=1)
        for name in names
    }


def publish(nodes: dict[str, GossipNode], origin: str, payload: bytes, now: float) -> bytes:
    mid, actions = nodes[origin].publish(payload, now=now)
    route(nodes, origin, actions, now)
    return mid


def test_a_node_in_no_mesh_is_adopted_and_then_pushed_to_eagerly() -> None:
    nodes = swarm()
    x = nodes[X]
    heartbeat(nodes, 1.0)  # meshes form and Grafts go out; none of them picks X
    assert not any(X in nodes[p].mesh for p in ("n0", "n1", "n2"))
    early = publish(nodes, "n0", b"before adoption", 1.5)
    assert not x.has_seen(early)  # nobody pushes to X: it waits for the next heartbeat ...
    heartbeat(nodes, 2.0)
    assert x.has_seen(early) and x.counters["sent_iwant"] == 1  # ... and IHave/IWant
    # Feeder-less for a whole heartbeat, X asked two peers to adopt it at that heartbeat.
    late = publish(nodes, "n2", b"after adoption", 2.5)
    assert x.has_seen(late)  # pushed in the same step (n2 -> n0 or n1 -> X) ...
    assert x.counters["sent_iwant"] == 1  # ... not pulled
    assert x.counters["sent_adopt"] == 2
    assert sorted(p for p in ("n0", "n1", "n2") if X in nodes[p].mesh) == ["n0", "n1"]
    assert sorted(x.fed_by) == ["n0", "n1"]  # type: ignore[type-var]
    heartbeat(nodes, 3.0)
    assert x.counters["sent_adopt"] == 2  # fed now: no more asking


def test_a_restarted_node_learns_its_feeders_from_their_pushes_and_asks_no_one() -> None:
    """After a restart a node has no record of the Grafts its feeders sent long ago, while
    they still push to it. A peer that pushes a new message unasked is a feeder: the node
    does not ask for adoption it does not need (it used to, and every restart grew two
    meshes by one for good)."""
    nodes = swarm()
    heartbeat(nodes, 1.0)
    restarted = "n0"  # in the other nodes' meshes (x_last picks it)
    feeders = sorted(p for p in ("n1", "n2", X) if restarted in nodes[p].mesh)
    assert len(feeders) >= 2
    nodes[restarted] = node(restarted, ["n1", "n2", X], choose=x_last, degree=2, degree_low=1)
    for at, origin in ((1.5, "n1"), (2.5, "n2"), (3.5, "n1")):
        publish(nodes, origin, f"from {origin} at {at}".encode(), at)
        heartbeat(nodes, at + 0.5)
    again = nodes[restarted]
    assert len(again.fed_by) >= 2
    assert again.counters["sent_adopt"] == 0
    assert again.counters["sent_iwant"] == 0


@pytest.mark.parametrize("bad", [1.5, "2", True])
def test_min_fed_must_be_a_whole_number(bad: object) -> None:
    with pytest.raises(UsageError, match="min_fed"):
        node("n0", ["n1"], min_fed=bad)
