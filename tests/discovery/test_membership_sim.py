"""SWIM membership in the deterministic simulator: joins, loss, crashes, partitions, liars."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from zmqcomm.crypto.keys import Identity
from zmqcomm.errors import UnknownPeerError
from zmqcomm.patterns.discovery.membership import Membership
from zmqcomm.patterns.discovery.membership_wire import DEAD, PING, SUSPECT, Update
from zmqcomm.sim import Simulator
from zmqcomm.sim.membership_swarm import Swarm
from zmqcomm.sim.membership_swarm import address as _addr
from zmqcomm.sim.membership_swarm import identity as _identity


def test_hundred_nodes_join_through_two_seeds() -> None:
    swarm = Swarm(100)
    took = swarm.run_until(lambda: swarm.full(list(range(100))), limit=90)
    drops: Counter[str] = Counter()
    for i in range(100):
        drops += swarm.node(i).dropped
        assert {e.kind for e in swarm.events(i)} == {"ENTER"}
        assert len(swarm.events(i, "ENTER")) == 99  # exactly once each
    assert drops == Counter()
    assert took <= 90


def test_same_seed_same_run() -> None:
    runs = []
    for _ in range(2):
        swarm = Swarm(12, seed=7, loss=0.05)
        swarm.sim._tracing = True
        swarm.sim.run(until=20)
        runs.append(swarm.sim.trace_digest())
    assert runs[0] == runs[1]


def test_ten_percent_loss_declares_no_live_node_dead() -> None:
    swarm = Swarm(40, loss=0.10, seed=3)
    swarm.run_until(lambda: swarm.full(list(range(40))), limit=120)
    start = swarm.sim.now
    swarm.sim.run(until=start + 150)
    probes = failed = 0
    for i in range(40):
        node = swarm.node(i)
        probes += node.stats["probes"]
        failed += node.stats["probe_failed"]
        assert swarm.events(i, "EXPIRED") == []
        assert len(node) == 39
    # Loss did bite: some probes failed and their suspicions were refuted.
    assert failed > 0 and probes > 40 * 150
    assert sum(swarm.node(i).stats["refuted"] for i in range(40)) > 0


def test_crashed_node_is_declared_dead_by_all_in_bounded_time() -> None:
    swarm = Swarm(30)
    swarm.run_until(lambda: swarm.full(list(range(30))), limit=90)
    victim = 17
    crashed_at = swarm.sim.now
    swarm.sim.crash(_addr(victim))
    others = [i for i in range(30) if i != victim]
    gone = _identity(victim).agent_id
    took = swarm.run_until(
        lambda: all(gone not in swarm.node(i) for i in others), limit=crashed_at + 60
    )
    for i in others:
        kinds = [e.kind for e in swarm.events(i) if e.agent_id == gone]
        assert kinds == ["ENTER", "EVASIVE", "EXPIRED"]
        assert swarm.node(i).is_dead(gone)
    # Bound: max suspicion timeout (3 x 4 x log10(30) ~ 18 periods) plus dissemination.
    assert took - crashed_at <= 40


def test_restarted_node_comes_back_with_a_higher_incarnation() -> None:
    swarm = Swarm(10)
    swarm.run_until(lambda: swarm.full(list(range(10))), limit=60)
    swarm.sim.crash(_addr(4))
    gone = _identity(4).agent_id
    swarm.run_until(lambda: all(gone not in swarm.node(i) for i in range(10) if i != 4), limit=200)
    swarm.sim.restart(_addr(4))  # a fresh machine: incarnation 0 again
    swarm.run_until(lambda: swarm.full(list(range(10))), limit=300)
    assert swarm.node(4).incarnation >= 1
    assert all(swarm.events(i)[-1].kind == "ENTER" for i in range(10) if i != 4)


def test_partition_then_heal() -> None:
    swarm = Swarm(20)
    everyone = list(range(20))
    swarm.run_until(lambda: swarm.full(everyone), limit=60)
    left, right = list(range(0, 20, 2)), list(range(1, 20, 2))  # seed 0 left, seed 1 right
    swarm.sim.network.partition([[_addr(i) for i in left], [_addr(i) for i in right]])
    swarm.run_until(lambda: swarm.full(left) and swarm.full(right), limit=swarm.sim.now + 80)
    for i in left:
        assert {e.agent_id for e in swarm.events(i, "EXPIRED")} == {
            _identity(j).agent_id for j in right
        }
    swarm.sim.network.heal()
    healed = swarm.sim.now
    took = swarm.run_until(lambda: swarm.full(everyone), limit=healed + 120)
    assert took - healed <= 120
    assert all(swarm.node(i).incarnation >= 1 for i in everyone)  # each refuted its death


@pytest.mark.parametrize("status", [SUSPECT, DEAD])
def test_forged_claims_about_a_live_node_are_refuted(status: int) -> None:
    swarm = Swarm(10)
    swarm.run_until(lambda: swarm.full(list(range(10))), limit=60)
    liar, victim = 9, 3
    gone = _identity(victim).agent_id

    def lie(sim: Simulator) -> None:
        # A trusted member (it holds a valid key) tells everyone the victim is gone.
        record = swarm.node(victim).record
        for i in range(9):
            if i != victim and sim.is_up(_addr(i)):
                packet = swarm.node(liar)._packet(
                    PING, 1, _identity(i).sender_id, _addr(i), [Update(status, record)]
                )
                sim.inject(_addr(liar), _addr(i), packet.message)

    start = swarm.sim.now
    for k in range(20):
        swarm.sim.call_at(start + 1.5 * k, lie)
    swarm.sim.run(until=start + 60)
    assert swarm.node(victim).incarnation >= 1
    for i in range(9):
        if i != victim:
            assert all(e.kind != "EXPIRED" for e in swarm.events(i) if e.agent_id == gone)
            assert gone in swarm.node(i)


def test_untrusted_forger_is_dropped() -> None:
    trusted = [_identity(i) for i in range(6)]

    class Trust:
        def lookup(self, agent_id: str, *, now: float) -> Any:
            for identity in trusted:
                if identity.agent_id == agent_id:
                    return identity
            raise UnknownPeerError("not trusted", reason="unknown_peer")

    swarm = Swarm(0)
    for i in range(6):
        swarm.sim.add_node(_addr(i), swarm.factory(i, trust=Trust()))
    swarm.count = 6
    swarm.run_until(lambda: swarm.full(list(range(6))), limit=40)
    outsider = Membership.from_identity(
        Identity.generate("outsider"), address=("10.9.9.9", 1), rng=random.Random(0)
    )
    victim_record = swarm.node(2).record
    for i in range(6):
        packet = outsider._packet(
            PING, 1, _identity(i).sender_id, _addr(i), [Update(DEAD, victim_record)]
        )
        swarm.sim.inject(outsider.address, _addr(i), packet.message)
    swarm.sim.run(until=swarm.sim.now + 10)
    assert all(swarm.node(i).dropped["unknown_sender"] == 1 for i in range(6))
    assert swarm.node(2).incarnation == 0  # nothing reached the machine: no refutation needed
    assert swarm.full(list(range(6)))
