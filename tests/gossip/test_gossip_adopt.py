"""Feeders, Adopt and Prune, message by message (the whole story, a node that no mesh picked
being adopted and then pushed to eagerly, is in test_gossip_machine.py)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest
import zmq

from zmqcomm.actions import Send
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import UsageError
from zmqcomm.patterns.gossip import Adopt, Graft, Prune
from zmqcomm.patterns.gossip.codec import decode_frame, encode_frame
from zmqcomm.patterns.gossip.driver import GossipAgent

from .support import raw_dealer, step_until
from .test_gossip_machine import node, sends

X = "n3"


def test_graft_and_prune_add_and_remove_a_feeder() -> None:
    x = node(X, peers=["n0", "n1"])
    x.on_message("n0", Graft(), now=0.1)
    x.on_message("n1", Graft(), now=0.1)
    assert x.fed_by == ["n0", "n1"]
    assert x.on_message("n0", Prune(), now=0.2) == []
    assert x.fed_by == ["n1"] and x.counters["received_prune"] == 1
    x.on_message("stranger", Prune(), now=0.2)  # a Prune teaches nothing
    assert "stranger" not in x.peers
    x.remove_peer("n1")
    assert x.fed_by == []


def test_a_node_over_degree_high_prunes_the_peers_it_drops() -> None:
    a = node("n0", peers=[f"n{i}" for i in range(1, 6)], degree=2, degree_low=1, degree_high=3)
    # Neither Graft nor Adopt grows a mesh past degree_high; set it there to see the trim.
    a._mesh = dict.fromkeys(a.peers)
    out = sends(a.on_timer(now=1.0))
    pruned = [s.to for s in out if isinstance(s.message, Prune)]
    assert len(a.mesh) == 2 and len(pruned) == 3 and not set(pruned) & set(a.mesh)
    a._mesh["gone"] = None  # a peer removed meanwhile is dropped without a Prune
    assert not any(isinstance(s.message, Prune) for s in sends(a.on_timer(now=2.0)))


def test_adopt_is_taken_while_the_mesh_has_room_and_refused_when_full() -> None:
    a = node("n0", peers=["n1", "n2", "n3", "n4"], degree=2, degree_low=1, degree_high=3)
    assert a.mesh == ["n1", "n2"]
    assert sends(a.on_message("n3", Adopt(), now=0.1)) == [Send("n3", Graft())]
    assert a.mesh == ["n1", "n2", "n3"] and a.counters["adopted"] == 1
    assert a.on_message("n4", Adopt(), now=0.2) == []  # full (degree_high)
    assert "n4" not in a.mesh and a.counters["adopt_refused"] == 1
    # A member asking again (its Graft was lost) gets the Graft again, nothing more.
    assert sends(a.on_message("n1", Adopt(), now=0.3)) == [Send("n1", Graft())]
    assert len(a.mesh) == 3 and a.counters["received_adopt"] == 3


def test_adopt_from_a_stranger_beyond_max_peers_is_ignored() -> None:
    a = node("n0", peers=["n1"], max_peers=1)
    assert sends(a.on_message("x1", Adopt(), now=0.1)) == [Send("x1", Graft())]
    assert a.on_message("x2", Adopt(), now=0.1) == []
    assert a.peers == ["n1", "x1"] and "x2" not in a.mesh
    assert a.counters["peers_ignored"] == 1 and a.counters["adopt_refused"] == 0
    assert a.on_message("n0", Adopt(), now=0.1) == [] and "n0" not in a.mesh  # itself


def adopts(actions: list[Any]) -> list[Hashable]:
    return [s.to for s in sends(actions) if isinstance(s.message, Adopt)]


def test_adopt_waits_a_heartbeat_and_asks_other_peers_after_a_refusal() -> None:
    x = node(X, peers=["n0", "n1", "n2", "n4", "n5"])
    assert adopts(x.on_timer(now=1.0)) == []  # the first heartbeat: Grafts may be in flight
    assert adopts(x.on_timer(now=2.0)) == ["n0", "n1"]
    x.on_message("n1", Graft(), now=2.1)  # n0 refused (silently)
    assert adopts(x.on_timer(now=3.0)) == ["n2"]  # not n0 again right away
    assert adopts(x.on_timer(now=4.0)) == ["n0"]  # its turn came back
    x.on_message("n0", Graft(), now=4.1)
    assert adopts(x.on_timer(now=5.0)) == []


def test_min_fed_is_capped_by_peers_and_degree() -> None:
    lone = node(X, peers=["n0"])
    lone.on_timer(now=1.0)
    assert adopts(lone.on_timer(now=2.0)) == ["n0"]  # one peer: asks it alone
    lone.on_message("n0", Graft(), now=2.1)
    assert adopts(lone.on_timer(now=3.0)) == []
    lazy = node(X, peers=["n0", "n1"], degree=0, degree_low=0)  # lazy pull only
    assert lazy.min_fed == 0
    for t in (1.0, 2.0, 3.0):
        assert adopts(lazy.on_timer(now=t)) == []
    assert node(X, min_fed=5).min_fed == 5
    with pytest.raises(UsageError):
        node(X, min_fed=13)  # above degree_high
    with pytest.raises(UsageError):
        node(X, min_fed=-1)


# -- the driver: the same trust rule as Graft -------------------------------------------------


@pytest.mark.parametrize("trusted", [False, True], ids=["stranger", "trusted"])
def test_only_a_trusted_id_can_ask_an_agent_to_adopt_it(
    context: zmq.Context[zmq.Socket[bytes]], store: TrustStore, trusted: bool
) -> None:
    alice, other = Identity.generate("alice"), Identity.generate("other")
    store.add(alice.public)
    if trusted:
        store.add(other.public)
    # Signed-only: routing ids are claims, so the agent checks them itself.
    agent = GossipAgent(alice, "tcp://127.0.0.1:*", trust=store, context=context, secure=False)
    asker = raw_dealer(context, other.agent_id, agent.endpoint)
    try:
        asker.send(encode_frame([Adopt(), Prune()]))
        assert step_until(agent, lambda: agent.counters["received_items"] == 2)
        drops = agent.statistics()["drops"]
        if trusted:
            assert agent.node.mesh == [other.agent_id] and "untrusted_control" not in drops
            assert step_until(agent, lambda: asker.poll(0) != 0)
            assert decode_frame(asker.recv()) == [Graft()]
        else:
            assert other.agent_id not in agent.node.peers and agent.node.mesh == []
            assert drops["untrusted_control"] == 2
            agent.step(0.05)
            assert not asker.poll(0)
    finally:
        asker.close(0)
        agent.close()


def test_a_feeder_whose_session_is_made_anew_counts_again_only_once_it_feeds_us() -> None:
    x = node(X, peers=["n0", "n1", "n2"])
    x.on_message("n0", Graft(), now=0.1)
    x.on_message("n1", Graft(), now=0.1)
    assert adopts(x.on_timer(now=1.0)) == [] and adopts(x.on_timer(now=2.0)) == []
    x.peer_reconnected("n0")  # it restarted: its mesh was drawn anew
    x.peer_reconnected("n2")  # not a feeder: nothing to forget
    assert x.fed_by == ["n1"] and x.counters["feeder_reconnected"] == 1
    assert adopts(x.on_timer(now=3.0)) == []  # underfed for one heartbeat: it only notes it
    assert adopts(x.on_timer(now=4.0)) == ["n0"]
    x.on_message("n0", Graft(), now=4.1)  # n0 takes us back
    assert x.fed_by == ["n1", "n0"]
    assert adopts(x.on_timer(now=5.0)) == []
