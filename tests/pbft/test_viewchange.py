"""View changes in the simulator: crashed, silent and idle primaries, joining early, the
view-number jump bound, and liveness once the network is stable again."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from zmqcomm.patterns.pbft import PrePrepare, ViewChange, ViewChanged, material
from zmqcomm.sim import LinkModel, Network, byzantine, uniform

from .harness import build


def views_entered(cluster: Any, i: int) -> list[int]:
    return [o.view for o in cluster.sim.outputs[i] if isinstance(o, ViewChanged)]


@pytest.mark.parametrize("n", [4, 7])
def test_crashed_primary_is_replaced(n: int) -> None:
    cluster = build(n, seed=20)
    cluster.sim.crash(0)
    for k in range(3):
        cluster.put("c0", f"k{k}", "v")
    cluster.run_until_results(3, until=10.0)
    assert len(cluster.results("c0")) == 3
    for i in range(1, n):
        assert cluster.replica(i).view == 1 and not cluster.replica(i).changing
        assert views_entered(cluster, i) == [1]
    cluster.byzantine.add(0)
    cluster.check_safety()


def test_silent_primary_is_replaced() -> None:
    cluster = build(4, seed=21)
    cluster.sim.set_byzantine(0, byzantine.silent())
    cluster.byzantine.add(0)
    cluster.put("c0", "k", "v")
    cluster.run_until_results(1, until=10.0)
    assert len(cluster.results("c0")) == 1
    assert all(cluster.replica(i).view == 1 for i in (1, 2, 3))
    cluster.check_safety()


def test_idle_primary_that_never_proposes_is_detected() -> None:
    """The primary takes part in everything except ordering requests: backups holding a
    request (the client retransmits to all) run their timer and change the view."""
    cluster = build(4, seed=22)

    def idle(sender: Any, to: Any, message: Any, rng: Any) -> list[Any]:
        return [] if isinstance(message, PrePrepare) else [(to, message)]

    cluster.sim.set_byzantine(0, idle)
    cluster.byzantine.add(0)
    cluster.put("c0", "k", "v")
    cluster.run_until_results(1, until=10.0)
    assert len(cluster.results("c0")) == 1
    assert cluster.client("c0").retransmissions >= 1
    assert all(cluster.replica(i).view == 1 for i in (1, 2, 3))
    cluster.check_safety()


def test_two_primaries_in_a_row_down_needs_two_view_changes_with_doubled_timeout() -> None:
    cluster = build(7, seed=23, view_change_timeout=0.5)
    cluster.sim.crash(0)
    cluster.sim.crash(1)
    cluster.put("c0", "k", "v")
    cluster.run_until_results(1, until=20.0)
    assert len(cluster.results("c0")) == 1
    for i in range(2, 7):
        assert cluster.replica(i).view == 2
    cluster.byzantine.update({0, 1})
    cluster.check_safety()


def test_f_plus_one_view_changes_make_a_replica_join_early() -> None:
    cluster = build(4, seed=24)
    sim = cluster.sim
    # Replicas 1 and 2 (f + 1 = 2) time out; 3 has no request and no reason to.
    for i in (1, 2):
        sim.call_node(i, lambda r: r._start_view_change(1, sim.now))  # type: ignore[attr-defined]
    sim.run(until=sim.now + 0.1)
    assert cluster.replica(3).view == 1
    sim.run(until=sim.now + 1.0)
    assert all(cluster.replica(i).view == 1 and not cluster.replica(i).changing for i in range(4))


def test_a_single_view_change_does_not_drag_the_others() -> None:
    cluster = build(4, seed=25)
    sim = cluster.sim
    sim.call_node(3, lambda r: r._start_view_change(1, sim.now))  # type: ignore[attr-defined]
    cluster.put("c0", "k", "v")
    cluster.run_until_results(1, until=5.0)
    assert [cluster.replica(i).view for i in range(3)] == [0, 0, 0]
    assert len(cluster.results("c0")) == 1


def test_view_number_jump_of_a_million_is_refused() -> None:
    cluster = build(4, seed=26)
    sign = cluster.keys.signer(3)

    def jump(sender: Any, to: Any, message: Any, rng: Any) -> list[Any]:
        if isinstance(message, ViewChange):
            message = replace(message, new_view=message.new_view + 10**6)
            message = replace(message, signature=sign(material(message)))
        return [(to, message)]

    cluster.sim.set_byzantine(3, jump)
    cluster.byzantine.add(3)
    sim = cluster.sim
    for _ in range(3):  # even repeated announcements never reach f + 1 = 2 senders
        sim.call_node(3, lambda r: r._start_view_change(r.view + 1, sim.now))  # type: ignore[attr-defined]
        sim.run(until=sim.now + 0.2)
    cluster.put("c0", "k", "v")
    cluster.run_until_results(1, until=5.0)
    for i in range(3):
        assert cluster.replica(i).view == 0
        assert cluster.replica(i).rejected["view_jump"] >= 1
        assert max(cluster.replica(i).view_changes, default=0) < 10**6
    assert len(cluster.results("c0")) == 1
    cluster.check_safety()


def test_view_change_completes_within_a_bound_once_the_network_is_stable() -> None:
    """Liveness: a lossy, partitioned network until t=3, then a clean one. After that the
    committee needs at most a few (doubling) timeouts to commit every request."""
    network = Network(LinkModel(latency=uniform(0.001, 0.03), loss=0.3))
    cluster = build(4, seed=27, clients=2, network=network, view_change_timeout=0.3)
    sim = cluster.sim
    sim.call_at(0.5, lambda s: s.network.partition([[0], [1, 2, 3, "c0", "c1"]]))
    sim.call_at(1.5, lambda s: s.network.partition([[1], [0, 2, 3, "c0", "c1"]]))
    stable_at = 3.0

    def stabilise(s: Any) -> None:
        s.network.heal()
        s.network.default = LinkModel(latency=uniform(0.001, 0.01))

    sim.call_at(stable_at, stabilise)
    for c in cluster.clients:
        for k in range(4):
            cluster.put(c, f"{c}{k}", "v", at=0.2 * k)
    cluster.run_until_results(4, until=60.0)
    assert all(len(cluster.results(c)) == 4 for c in cluster.clients)
    # Worst case after stabilising: the timeout may have doubled up to a few times while
    # the network was bad, plus client retransmission backoff (max 8 s).
    assert sim.now - stable_at < 20.0
    cluster.check_safety()


def test_replayed_messages_from_an_old_view_are_dropped() -> None:
    cluster = build(4, seed=28)
    sim = cluster.sim
    recorded: list[tuple[Any, Any]] = []

    def record(sender: Any, to: Any, message: Any, rng: Any) -> list[Any]:
        recorded.append((to, message))
        return [(to, message)]

    sim.set_byzantine(1, record)
    cluster.put("c0", "a", "1")
    cluster.run_until_results(1, until=5.0)
    sim.set_byzantine(1, None)
    sim.crash(0)
    cluster.put("c0", "b", "2")
    cluster.run_until_results(2, until=10.0)
    assert cluster.replica(2).view == 1
    before = [cluster.replica(i).last_executed for i in (2, 3)]
    for to, message in recorded:
        if to != 0:
            sim.inject(1, to, message)
    sim.run(until=sim.now + 1.0)
    assert cluster.replica(2).rejected["old_view"] >= 1
    assert [cluster.replica(i).last_executed for i in (2, 3)] == before
    cluster.byzantine.add(0)
    cluster.check_safety()
