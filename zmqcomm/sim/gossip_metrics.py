"""Gossip measured in the simulator: coverage, time and rounds to coverage, hops, duplicates,
control overhead and bytes, for one seed or summarised over many.

This is a harness, not a protocol core: it builds a swarm of :class:`GossipNode` machines on a
:class:`Simulator` (random peer sets, a lossy network with latencies that reorder), publishes,
runs heartbeat by heartbeat and reads what happened. The tests, ``benchmarks/gossip_sim.py``
and ``zmqcomm bench`` all use it, so the figures they report are computed one way.

Bytes are estimated from the message fields (the sizes of the msgpack encoding in
:mod:`zmqcomm.patterns.gossip` give the same order): they compare settings, they are not a
capture of a real network.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from zmqcomm.crypto.keys import Identity
from zmqcomm.errors import UsageError
from zmqcomm.patterns.gossip import (
    Deliver,
    GossipNode,
    IHave,
    IWant,
    Publish,
    ed25519_verifier,
)
from zmqcomm.quantiles import nearest_rank
from zmqcomm.sim.network import LinkModel, Network, uniform
from zmqcomm.sim.simulator import Simulator

HEARTBEAT = 1.0
DEGREE = 6
PEERS_PER_NODE = 20
PUBLISH_AT = 0.5
COVERAGE_LEVELS = (50, 90, 99, 100)

# Estimated encoded sizes: a small envelope per message, 16-byte ids, 64-byte signatures.
_ENVELOPE = 12
_ID = 16


def estimated_size(message: Any) -> int:
    """About how many bytes ``message`` takes on the wire."""
    if isinstance(message, Publish):
        m = message.message
        return _ENVELOPE + _ID + 9 + len(m.payload) + 3 + (64 if m.signature else 0)
    if isinstance(message, IHave | IWant):
        return _ENVELOPE + _ID * len(message.ids)
    return _ENVELOPE


class MeasuredNode:
    """Wraps a :class:`GossipNode` to note when it delivered what and what it sent."""

    def __init__(self, node: GossipNode, log: _Log) -> None:
        self.node = node
        self._log = log

    def on_message(self, sender: Hashable, message: Any, *, now: float) -> list[Any]:
        return self._note(self.node.on_message(sender, message, now=now), now)

    def on_timer(self, *, now: float) -> list[Any]:
        return self._note(self.node.on_timer(now=now), now)

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()

    def publish(self, payload: bytes, *, now: float) -> tuple[bytes, list[Any]]:
        mid, actions = self.node.publish(payload, now=now)
        return mid, self._note(actions, now)

    def _note(self, actions: list[Any], now: float) -> list[Any]:
        log = self._log
        for action in actions:
            if isinstance(action, Deliver):
                log.delivered.setdefault(action.message_id, []).append((now, action.message.hops))
            else:
                message = getattr(action, "message", None)
                log.sent[type(message).__name__] += 1
                log.bytes += estimated_size(message)
        return actions


@dataclass
class _Log:
    delivered: dict[bytes, list[tuple[float, int]]] = field(default_factory=dict)
    sent: Counter[str] = field(default_factory=Counter)
    bytes: int = 0


@dataclass
class Swarm:
    """A simulated gossip swarm: node ``i`` is a :class:`MeasuredNode` with identity ``i``."""

    sim: Simulator
    identities: list[Identity]
    choose_rng: random.Random
    log: _Log
    published: dict[bytes, tuple[Hashable, int, bytes]] = field(default_factory=dict)

    def node(self, index: int) -> GossipNode:
        machine = self.sim.machine(index)
        return machine.node if isinstance(machine, MeasuredNode) else cast(GossipNode, machine)

    def publish(self, index: int, payload: bytes) -> None:
        def call(machine: Any) -> list[Any]:
            mid, actions = machine.publish(payload, now=self.sim.now)
            self.published[mid] = (index, cast(Deliver, actions[0]).message.sequence, payload)
            return cast(list[Any], actions)

        self.sim.call_node(index, call)


def build(
    n: int,
    seed: int,
    *,
    loss: float = 0.1,
    degree: int = DEGREE,
    peers_per_node: int = PEERS_PER_NODE,
    signed: bool = True,
) -> Swarm:
    """``n`` nodes, each knowing ``peers_per_node`` random others, on a network that loses
    ``loss`` of all messages and delays each by 1-20 ms (so messages reorder)."""
    if n < 2:
        raise UsageError(f"a gossip swarm needs at least 2 nodes, got {n}")
    rng = random.Random(seed)
    network = Network(LinkModel(latency=uniform(0.001, 0.02), loss=loss))
    sim = Simulator(seed=seed, network=network, trace=False)
    identities = [Identity.generate(f"n{i}") for i in range(n)] if signed else []
    verify = (
        ed25519_verifier({i: ident.verify_key for i, ident in enumerate(identities)})
        if signed
        else None
    )
    swarm = Swarm(sim, identities, random.Random(rng.getrandbits(64)), _Log())
    for i in range(n):
        others = [j for j in range(n) if j != i] if n <= 2 * peers_per_node else None
        peers = (
            rng.sample(others, min(peers_per_node, len(others)))
            if others is not None
            else _sample_others(rng, n, i, peers_per_node)
        )

        def factory(i: int = i, peers: list[int] = peers) -> MeasuredNode:
            node = GossipNode(
                i,
                peers,
                sign=swarm.identities[i].sign if signed else None,
                verify=verify,
                choose=swarm.choose_rng.sample,
                now=sim.now,
                degree=degree,
                degree_low=min(4, degree),
                gossip_fanout=DEGREE,
                heartbeat=HEARTBEAT,
            )
            return MeasuredNode(node, swarm.log)

        sim.add_node(i, factory)
    return swarm


def _sample_others(rng: random.Random, n: int, me: int, k: int) -> list[int]:
    # Without building an n-long list per node: 10,000 nodes would make that quadratic.
    chosen: dict[int, None] = {}
    while len(chosen) < k:
        candidate = rng.randrange(n)
        if candidate != me:
            chosen.setdefault(candidate, None)
    return list(chosen)


@dataclass(frozen=True)
class GossipMetrics:
    """What one seeded run showed. Times are virtual seconds after publication."""

    nodes: int
    seed: int
    loss: float
    messages: int
    #: Fraction of (live node, message) pairs delivered by the end of the run.
    coverage: float
    #: Worst over the messages: seconds until 50/90/99/100 % of live nodes had it.
    seconds_to: dict[int, float]
    #: Heartbeat rounds until every live node had every message.
    rounds_to_full: int
    max_hops: int
    mean_hops: float
    duplicates_per_node_message: float
    #: IHave + IWant + Graft + Prune + Adopt messages sent, per node per published message.
    control_per_node_message: float
    bytes_per_node_second: float
    wall_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_gossip(
    n: int,
    seed: int,
    *,
    loss: float = 0.1,
    messages: int = 1,
    max_rounds: int | None = None,
    signed: bool = True,
) -> GossipMetrics:
    """Publish ``messages`` messages from distinct random nodes at once and run until every
    node has all of them or ``max_rounds`` heartbeats (default ceil(log2 n) + 8) passed."""
    if not 1 <= messages <= n:
        raise UsageError(f"messages must be between 1 and the number of nodes, got {messages}")
    started = time.perf_counter()
    swarm = build(n, seed, loss=loss, signed=signed)
    sim = swarm.sim
    origins = random.Random(seed ^ 0x5EED).sample(range(n), messages)

    def publish_all(_: Simulator) -> None:
        for k, origin in enumerate(origins):
            swarm.publish(origin, b"msg %d" % k)

    sim.call_at(PUBLISH_AT, publish_all)
    sim.run(until=PUBLISH_AT)
    limit = max_rounds if max_rounds is not None else math.ceil(math.log2(n)) + 8
    rounds = limit
    for r in range(1, limit + 1):
        sim.run(until=PUBLISH_AT + r * HEARTBEAT)
        if all(len(swarm.log.delivered.get(mid, ())) >= n for mid in swarm.published):
            rounds = r
            break
    else:
        rounds = limit + 1  # did not finish: one past the limit, and coverage says how far
    elapsed = sim.now - PUBLISH_AT
    return _metrics(
        swarm,
        n=n,
        seed=seed,
        loss=loss,
        rounds=rounds,
        elapsed=elapsed,
        wall=time.perf_counter() - started,
    )


def _metrics(
    swarm: Swarm, *, n: int, seed: int, loss: float, rounds: int, elapsed: float, wall: float
) -> GossipMetrics:
    messages = len(swarm.published)
    delivered = [swarm.log.delivered.get(mid, []) for mid in swarm.published]
    seconds_to: dict[int, float] = {}
    for level in COVERAGE_LEVELS:
        needed = math.ceil(n * level / 100)
        per_message = []
        for copies in delivered:
            times = sorted(t for t, _ in copies)
            per_message.append(times[needed - 1] - PUBLISH_AT if len(times) >= needed else math.inf)
        seconds_to[level] = max(per_message)
    hops = [h for copies in delivered for _, h in copies]
    sent = swarm.log.sent
    duplicates = sum(swarm.node(i).counters["duplicates"] for i in range(n))
    control = sum(sent[kind] for kind in ("IHave", "IWant", "Graft", "Prune", "Adopt"))
    return GossipMetrics(
        nodes=n,
        seed=seed,
        loss=loss,
        messages=messages,
        coverage=sum(len(c) for c in delivered) / (n * messages),
        seconds_to=seconds_to,
        rounds_to_full=rounds,
        max_hops=max(hops, default=0),
        mean_hops=statistics.fmean(hops) if hops else 0.0,
        duplicates_per_node_message=duplicates / (n * messages),
        control_per_node_message=control / (n * messages),
        bytes_per_node_second=swarm.log.bytes / n / elapsed if elapsed > 0 else 0.0,
        wall_seconds=wall,
    )


def summarize(runs: Sequence[GossipMetrics]) -> dict[str, dict[str, float]]:
    """Mean, median, 99th percentile and worst of each figure over seeded runs."""
    if not runs:
        raise UsageError("summarize needs at least one run")
    figures: dict[str, list[float]] = {
        "coverage": [r.coverage for r in runs],
        "rounds_to_full": [float(r.rounds_to_full) for r in runs],
        "max_hops": [float(r.max_hops) for r in runs],
        "duplicates_per_node_message": [r.duplicates_per_node_message for r in runs],
        "control_per_node_message": [r.control_per_node_message for r in runs],
        "bytes_per_node_second": [r.bytes_per_node_second for r in runs],
        "wall_seconds": [r.wall_seconds for r in runs],
    }
    for level in COVERAGE_LEVELS:
        figures[f"seconds_to_{level}"] = [r.seconds_to[level] for r in runs]
    summary: dict[str, dict[str, float]] = {}
    for name, values in figures.items():
        ordered = sorted(values)
        summary[name] = {
            "mean": statistics.fmean(ordered),
            "p50": nearest_rank(ordered, 0.50),
            "p99": nearest_rank(ordered, 0.99),
            "max": ordered[-1],
        }
    return summary


__all__ = [
    "COVERAGE_LEVELS",
    "GossipMetrics",
    "MeasuredNode",
    "Swarm",
    "build",
    "estimated_size",
    "measure_gossip",
    "summarize",
]
