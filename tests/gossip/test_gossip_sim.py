"""Gossip in the simulator: coverage, rounds and duplicates at scale, loss, late joiners and
Byzantine nodes (all seeded, so any failure replays from its seed)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import Any, cast

import pytest

from zmqcomm.crypto.keys import Identity
from zmqcomm.patterns.gossip import (
    Deliver,
    GossipNode,
    Message,
    Publish,
    id_material,
)
from zmqcomm.sim import Simulator
from zmqcomm.sim.gossip_metrics import (
    DEGREE,
    HEARTBEAT,
    PUBLISH_AT,
    Swarm,
    build,
    measure_gossip,
    summarize,
)


@dataclass
class Result:
    rounds: list[int]
    duplicates_per_node_message: float
    seconds: float


def spread(swarm: Swarm, origins: list[int], *, correct: list[int], max_rounds: int) -> Result:
    """Publish one message from each origin at PUBLISH_AT, then run heartbeat by heartbeat
    until every correct, live node has every message; return the round each got full."""
    started = time.perf_counter()
    sim = swarm.sim

    def publisher(origin: int, payload: bytes) -> Callable[[Simulator], None]:
        return lambda _: swarm.publish(origin, payload)

    for k, origin in enumerate(origins):
        sim.call_at(PUBLISH_AT, publisher(origin, b"msg %d" % k))
    sim.run(until=PUBLISH_AT)
    live = [i for i in correct if sim.is_up(i)]
    rounds: dict[bytes, int] = {}
    for r in range(1, max_rounds + 1):
        sim.run(until=PUBLISH_AT + r * HEARTBEAT)
        for mid in swarm.published:
            if mid not in rounds and all(swarm.node(i).has_seen(mid) for i in live):
                rounds[mid] = r
        if len(rounds) == len(swarm.published):
            break
    missing = {
        mid: sum(not swarm.node(i).has_seen(mid) for i in live)
        for mid in swarm.published
        if mid not in rounds
    }
    assert not missing, f"nodes still missing after {max_rounds} rounds: {missing}"
    duplicates = sum(swarm.node(i).counters["duplicates"] for i in live)
    return Result(
        [rounds[mid] for mid in swarm.published],
        duplicates / (len(live) * len(swarm.published)),
        time.perf_counter() - started,
    )


def check_coverage(n: int, seed: int) -> Result:
    swarm = build(n, seed)
    origins = random.Random(seed ^ 0x5EED).sample(range(n), 5)
    bound = math.ceil(math.log2(n)) + 4
    result = spread(swarm, origins, correct=list(range(n)), max_rounds=bound)
    assert len(result.rounds) == 5 and max(result.rounds) <= bound
    assert result.duplicates_per_node_message <= DEGREE
    # Exactly once: every node delivered each message once.
    hops = 0
    for i in range(n):
        delivered = [a.message for a in swarm.sim.outputs[i] if isinstance(a, Deliver)]
        assert sorted(m.id for m in delivered) == sorted(swarm.published)
        hops = max(hops, *(m.hops for m in delivered))
    # The relay depth (an eager-push "round" in the epidemic sense) is logarithmic too.
    assert hops <= bound
    print(
        f"\nN={n} seed={seed}: rounds to full coverage {result.rounds} (bound {bound}), "
        f"max relay hops {hops}, duplicates/node/message {result.duplicates_per_node_message:.2f}, "
        f"{result.seconds:.2f}s"
    )
    return result


@pytest.mark.parametrize("seed", range(5))
def test_200_nodes_with_loss_reach_everyone(seed: int) -> None:
    check_coverage(200, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5, 30))
def test_200_nodes_with_loss_reach_everyone_more_seeds(seed: int) -> None:
    check_coverage(200, seed)


@pytest.mark.slow
def test_1000_nodes_with_loss_reach_everyone() -> None:
    started = time.perf_counter()
    check_coverage(1000, 1000)
    elapsed = time.perf_counter() - started
    print(f"1000 nodes took {elapsed:.1f}s")
    assert elapsed < 60


def test_lazy_repair_alone_covers_in_logarithmic_rounds() -> None:
    # No mesh at all: only IHave/IWant spreads, so heartbeats really are the rounds.
    n = 200
    swarm = build(n, 5, degree=0)
    result = spread(swarm, [0, 1, 2], correct=list(range(n)), max_rounds=20)
    bound = math.ceil(math.log2(n)) + 4
    print(f"\nlazy only, N={n}: rounds {result.rounds} (bound {bound})")
    assert 2 <= max(result.rounds) <= bound


def test_the_same_seed_replays_the_same_run() -> None:
    def run(seed: int) -> tuple[list[int], float, int]:
        swarm = build(60, seed)
        result = spread(swarm, [1, 2, 3], correct=list(range(60)), max_rounds=20)
        return result.rounds, result.duplicates_per_node_message, swarm.sim.delivered

    assert run(7) == run(7)


def test_crashed_node_recovers_missed_messages_by_lazy_repair() -> None:
    swarm = build(100, 11)
    sim = swarm.sim
    sim.crash(5)
    sim.call_at(PUBLISH_AT + 0.2, lambda s: s.restart(5))  # back after the eager push
    result = spread(swarm, [1, 2], correct=list(range(100)), max_rounds=5)
    assert all(swarm.node(5).has_seen(mid) for mid in swarm.published)
    assert swarm.node(5).counters["sent_iwant"] > 0
    assert result.rounds


def test_late_joiner_learns_through_graft_and_pulls_recent_messages() -> None:
    swarm = build(50, 3, loss=0.0)
    sim = swarm.sim
    swarm.publish(0, b"before")  # published at t=0, before the joiner exists
    sim.run(until=0.6)
    swarm.identities.append(Identity.generate("late"))
    sim.add_node(
        50,
        lambda: GossipNode(
            50,
            [1, 2, 3, 4, 5, 6],
            sign=None,
            verify=None,
            choose=swarm.choose_rng.sample,
            now=sim.now,
        ),
    )
    sim.run(until=3.0)
    [mid] = list(swarm.published)
    assert swarm.node(50).has_seen(mid)  # nobody knew node 50: Graft taught them


@pytest.mark.parametrize("seed", range(3))
def test_late_joiners_are_adopted_and_then_pushed_to_within_the_round(seed: int) -> None:
    # Joiners graft existing nodes whose meshes are full already, so no mesh takes them in:
    # they ask for adoption after a heartbeat without feeders, and from then on they get
    # messages by eager push, not from IHave/IWant at the next heartbeat.
    n, joiners = 100, range(100, 110)
    swarm = build(n, seed, loss=0.0)
    sim = swarm.sim
    sim.run(until=2.5)  # meshes formed at t=1
    rng = random.Random(seed)

    def joiner(j: int, peers: list[int]) -> Callable[[], GossipNode]:
        return lambda: GossipNode(
            j, peers, sign=None, verify=None, choose=swarm.choose_rng.sample, now=sim.now
        )

    for j in joiners:
        sim.add_node(j, joiner(j, rng.sample(range(n), 6)))  # knows 6 of the old nodes
    sim.run(until=PUBLISH_AT + 5 * HEARTBEAT + 0.05)  # joiners' heartbeats at 3.5 and 4.5
    published_at = sim.now  # just after the old nodes' heartbeat: the next is ~1 s away
    swarm.publish(0, b"after the joiners came")
    sim.run(until=published_at + 0.3 * HEARTBEAT)
    [mid] = list(swarm.published)
    everyone = [*range(n), *joiners]
    assert all(swarm.node(i).has_seen(mid) for i in everyone)  # within the round
    assert all(swarm.node(i).counters["sent_iwant"] == 0 for i in joiners)
    assert all(swarm.node(i).fed_by for i in everyone)
    duplicates = sum(swarm.node(i).counters["duplicates"] for i in everyone)
    assert duplicates / len(everyone) <= DEGREE
    adopted = sum(swarm.node(i).counters["adopted"] for i in everyone)
    print(
        f"\nlate joiners seed={seed}: adopted {adopted}, dup/node {duplicates / len(everyone):.2f}"
    )


# -- Byzantine ----------------------------------------------------------------------------


def corrupt(sender: Hashable, to: Hashable, message: Any, rng: random.Random) -> list[Any]:
    """Alters every message it forwards: payloads, signatures, origins or hops."""
    if not isinstance(message, Publish):
        return [(to, message)]
    m = message.message
    choice = rng.randrange(4)
    if choice == 0:
        bad = replace(m, payload=m.payload + b" (altered)")
    elif choice == 1:
        bad = replace(m, signature=bytes(64))
    elif choice == 2:
        bad = replace(m, origin=(cast(int, m.origin) + 1) % 10_000)
    else:
        bad = replace(m, hops=10_000)
    return [(to, Publish(bad))]


@pytest.mark.parametrize("seed", range(3))
def test_a_third_byzantine_cannot_forge_and_cannot_stop_honest_messages(seed: int) -> None:
    n = 210
    swarm = build(n, seed)
    sim = swarm.sim
    rng = random.Random(seed)
    byzantine = sorted(rng.sample(range(n), n // 3))
    correct = [i for i in range(n) if i not in byzantine]
    for b in byzantine:
        sim.set_byzantine(b, corrupt)
    # Forgeries in honest origins' names, signed with the wrong key or not at all, some with
    # sequences the honest origins will really use, injected before and during publication.
    for k, b in enumerate(byzantine):
        victim = correct[k % len(correct)]
        for sequence, payload in ((0, b"forged"), (0, b"msg 0"), (99, b"forged 99")):
            signature = swarm.identities[b].sign(id_material(victim, sequence, payload))
            forged = Message(victim, sequence, payload, 0, signature)
            for target in rng.sample(correct, 5):
                sim.inject(b, target, Publish(forged), delay=rng.uniform(0.0, 2.0))
    origins = rng.sample(correct, 5)
    result = spread(swarm, origins, correct=correct, max_rounds=20)
    genuine = {(o, s, p) for o, s, p in swarm.published.values()}
    assert len(genuine) == 5
    for i in correct:
        for action in sim.outputs[i]:
            if isinstance(action, Deliver):
                m = action.message
                assert (m.origin, m.sequence, m.payload) in genuine
    bad = sum(swarm.node(i).counters["bad_signature"] for i in correct)
    assert bad > 0
    print(
        f"\nByzantine {len(byzantine)}/{n} seed={seed}: honest coverage rounds {result.rounds}, "
        f"rejected {bad} bad signatures, duplicates/node/message "
        f"{result.duplicates_per_node_message:.2f}"
    )


# -- the metrics harness --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_measured_run_reports_full_coverage_within_the_bounds(seed: int) -> None:
    n = 120
    metrics = measure_gossip(n, seed, loss=0.1, messages=3)
    bound = math.ceil(math.log2(n)) + 4
    assert metrics.coverage == 1.0
    assert 1 <= metrics.rounds_to_full <= bound
    levels = [metrics.seconds_to[level] for level in (50, 90, 99, 100)]
    assert levels == sorted(levels) and levels[-1] <= bound * HEARTBEAT
    assert 0 < metrics.duplicates_per_node_message <= DEGREE
    assert 1 <= metrics.max_hops <= bound and metrics.mean_hops <= metrics.max_hops
    assert metrics.control_per_node_message > 0 and metrics.bytes_per_node_second > 0


def test_a_run_cut_short_reports_partial_coverage_and_infinite_full_time() -> None:
    metrics = measure_gossip(300, 4, loss=0.5, messages=1, max_rounds=1)
    assert metrics.coverage < 1.0
    assert metrics.rounds_to_full == 2  # one past the limit: not finished
    assert metrics.seconds_to[100] == math.inf


def test_summary_over_seeds_orders_its_statistics() -> None:
    runs = [measure_gossip(60, seed, messages=2, signed=False) for seed in range(5)]
    summary = summarize(runs)
    for figures in summary.values():
        assert figures["p50"] <= figures["p99"] <= figures["max"]
    assert summary["coverage"]["mean"] == 1.0
    assert summary["rounds_to_full"]["max"] == max(r.rounds_to_full for r in runs)
