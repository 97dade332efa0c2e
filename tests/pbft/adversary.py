"""Byzantine behaviours for PBFT replicas in the simulator, and the randomized schedules.

A Byzantine replica keeps its own signing key, so what it sends is validly signed: the
mutations below are lies the receivers must catch by the protocol's rules, not by a bad
signature. Forged messages in another replica's name go through ``Simulator.inject``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import Any

from zmqcomm.patterns.pbft import (
    Checkpoint,
    Commit,
    MemoryStore,
    Prepare,
    PrePrepare,
    Reply,
    Request,
    ViewChange,
    batch_digest,
    material,
)
from zmqcomm.sim import LinkModel, Network, byzantine, uniform

from .harness import Cluster, CrashSafe, Signer, Twins, build

Interceptor = Callable[[Hashable, Hashable, Any, random.Random], list[tuple[Hashable, Any]]]


def resign(message: Any, sign: Signer) -> Any:
    if hasattr(message, "signature"):
        return replace(message, signature=sign(material(message)))
    return message


def mutate(message: Any, rng: random.Random, sign: Signer, history: list[bytes]) -> Any:
    """A small, validly signed change to an honest message: view or sequence +-1, an old or
    random digest, another batch, a far view number."""
    delta = rng.choice((-1, 1))
    if isinstance(message, PrePrepare):
        choice = rng.randrange(4)
        if choice == 0:
            changed = replace(message, sequence=max(1, message.sequence + delta))
        elif choice == 1:
            changed = replace(message, view=max(0, message.view + delta))
        elif choice == 2:
            batch = message.requests[:-1] if message.requests else ()
            changed = replace(message, requests=batch, digest=batch_digest(batch))
        else:
            extra = (Request("mallory", rng.randrange(1, 10**6), b"forged"),)
            batch = message.requests + extra
            changed = replace(message, requests=batch, digest=batch_digest(batch))
        return resign(changed, sign)
    if isinstance(message, (Prepare, Commit)):
        choice = rng.randrange(3)
        if choice == 0:
            digest = history[rng.randrange(len(history))] if history else bytes(32)
            changed = replace(message, digest=digest)
        elif choice == 1:
            changed = replace(message, sequence=max(1, message.sequence + delta))
        else:
            changed = replace(message, view=max(0, message.view + delta))
        return resign(changed, sign)
    if isinstance(message, Checkpoint):
        return resign(replace(message, digest=rng.randbytes(32)), sign)
    if isinstance(message, ViewChange):
        jump = rng.choice((1, 10**6))
        return resign(replace(message, new_view=message.new_view + jump), sign)
    if isinstance(message, Reply):
        return replace(message, result=b"lie")
    return message


def _remember(history: list[bytes], message: Any) -> None:
    digest = getattr(message, "digest", None)
    if isinstance(digest, bytes):
        history.append(digest)
        del history[:-50]


def mutating(sign: Signer, probability: float) -> Interceptor:
    history: list[bytes] = []

    def intercept(sender: Hashable, to: Hashable, message: Any, rng: random.Random) -> Any:
        _remember(history, message)
        if rng.random() < probability:
            return [(to, mutate(message, rng, sign, history))]
        return [(to, message)]

    return intercept


def equivocating(sign: Signer) -> Interceptor:
    """Tells odd and even replicas different things: as primary, another batch for the
    same sequence (a forged request added); as backup, prepares and commits for a digest
    it saw earlier."""
    history: list[bytes] = []

    def intercept(sender: Hashable, to: Hashable, message: Any, rng: random.Random) -> Any:
        _remember(history, message)
        if not (isinstance(to, int) and to % 2):
            return [(to, message)]
        if isinstance(message, PrePrepare):
            forged = Request("mallory", 1 + message.sequence + 1000 * message.view, b"other")
            batch = (*message.requests[1:], forged)
            changed = replace(message, requests=batch, digest=batch_digest(batch))
            return [(to, resign(changed, sign))]
        if isinstance(message, (Prepare, Commit)) and len(history) > 1:
            return [(to, resign(replace(message, digest=history[-2]), sign))]
        return [(to, message)]

    return intercept


#: When every crashed replica is back and the network healed (liveness is checked after it).
RECOVER_AT = 5.0
#: Lying behaviours (equivocation, mutations, twins) are drawn more often than omissions.
WEIGHTS = (1, 1, 2, 3, 1, 1, 2)
BEHAVIOURS = ("silent", "drop", "mutate", "equivocate", "replay", "flood", "twins")


def make_byzantine(cluster: Cluster, i: int, behaviour: str, rng: random.Random) -> None:
    sim, sign = cluster.sim, cluster.keys.signer(i)
    cluster.byzantine.add(i)
    if behaviour == "silent":
        sim.set_byzantine(i, byzantine.silent())
    elif behaviour == "drop":
        sim.set_byzantine(i, byzantine.drop(0.5))
    elif behaviour == "mutate":
        sim.set_byzantine(i, mutating(sign, 0.5))
    elif behaviour == "equivocate":
        sim.set_byzantine(i, equivocating(sign))
    elif behaviour == "replay":
        sim.set_byzantine(i, byzantine.replay(0.5))
    elif behaviour == "flood":
        sim.set_byzantine(i, byzantine.flood(2))
    elif behaviour == "twins":
        others = [r for r in range(cluster.n) if r != i]
        group = set(rng.sample(others, len(others) // 2))
        second = cluster.make_replica(i, store=MemoryStore())  # each twin has its own disk
        twins = Twins(cluster.make_replica(i), second, group, cluster.n)
        crash_safe = CrashSafe(twins, lambda: sim.crash(i))
        sim.replace_machine(i, crash_safe)
    else:
        raise ValueError(behaviour)


@dataclass
class Schedule:
    seed: int
    n: int
    description: list[str]
    cluster: Cluster
    ops: int


def random_schedule(seed: int) -> Schedule:
    rng = random.Random(seed)
    n = rng.choice((4, 4, 4, 5, 7))
    high = rng.choice((0.002, 0.01, 0.03))
    loss = rng.choice((0.0, 0.0, 0.02, 0.1))
    network = Network(LinkModel(latency=uniform(0.0005, high), loss=loss, duplicate=0.02))
    cluster = build(
        n,
        seed,
        clients=2,
        network=network,
        crash_safe=True,
        checkpoint_interval=rng.choice((2, 4)),
        max_batch=rng.choice((1, 3)),
        batch_delay=rng.choice((0.0, 0.002)),
        view_change_timeout=rng.choice((0.2, 0.5)),
        client_timeout=0.3,
    )
    description = [f"n={n} latency<={high} loss={loss}"]
    f = (n - 1) // 3
    faulty = rng.sample(range(n), rng.randint(0, f))
    if faulty and rng.random() < 0.5 and 0 not in faulty:
        faulty[0] = 0  # often the first primary: the most damaging place to lie
    for i in faulty:
        behaviour = rng.choices(BEHAVIOURS, weights=WEIGHTS)[0]
        make_byzantine(cluster, i, behaviour, rng)
        description.append(f"replica {i} {behaviour}")
    sim = cluster.sim
    events = rng.randint(0, 3)
    for _ in range(events):
        kind = rng.choice(("crash", "partition", "crash_store"))
        victim = rng.randrange(n)
        start = rng.uniform(0.0, 2.0)
        end = start + rng.uniform(0.1, 2.0)
        description.append(f"{kind} {victim} {start:.3f}..{end:.3f}")
        if kind == "crash":
            sim.call_at(start, lambda s, v=victim: s.crash(v) if s.is_up(v) else None)
            sim.call_at(end, lambda s, v=victim: s.restart(v) if not s.is_up(v) else None)
        elif kind == "crash_store":
            k = rng.randint(1, 20)
            sim.call_at(start, lambda s, v=victim, k=k: cluster.stores[v].fail_after(k))
            sim.call_at(end, lambda s, v=victim: s.restart(v) if not s.is_up(v) else None)
        else:
            sim.call_at(
                start,
                lambda s, v=victim: s.network.partition([[v], [x for x in s.nodes if x != v]]),
            )
            sim.call_at(end, lambda s: s.network.heal())

    def recover_all(s: Any) -> None:
        s.network.heal()
        for v in range(n):
            cluster.stores[v].disarm()  # crash injection that did not fire
            if not s.is_up(v):
                s.restart(v)

    sim.call_at(RECOVER_AT, recover_all)
    ops = rng.randint(2, 4)
    for c in cluster.clients:
        for k in range(ops):
            cluster.put(c, f"{c}-{k}", str(rng.random()), at=rng.uniform(0.0, 1.0))
    return Schedule(seed, n, description, cluster, ops)
