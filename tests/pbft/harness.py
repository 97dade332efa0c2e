"""A PBFT committee in the simulator: replicas, clients, keys, crash-safe wrappers and the
safety invariants every test checks."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from zmqcomm.actions import Send
from zmqcomm.crypto.keys import Identity
from zmqcomm.patterns.pbft import (
    Client,
    Committed,
    Executed,
    KeyValueStore,
    MemoryStore,
    Replica,
    Result,
    SimulatedCrash,
    StateTransferred,
    ed25519_verifier,
    encode_op,
)
from zmqcomm.sim import LinkModel, Network, Simulator, fixed

Signer = Callable[[bytes], bytes]
Verifier = Callable[[int, bytes, bytes], bool]


class FakeKeys:
    """Keyed BLAKE2b "signatures": unforgeable inside a simulation, and 50x cheaper than
    Ed25519, for the many-schedule tests. :class:`Ed25519Keys` is the real thing."""

    def __init__(self, n: int, salt: bytes = b"") -> None:
        self.secrets = [
            hashlib.blake2b(salt + bytes([i]), digest_size=32).digest() for i in range(n)
        ]

    def signer(self, replica: int) -> Signer:
        key = self.secrets[replica]
        return lambda material: hashlib.blake2b(material, key=key, digest_size=32).digest()

    def verifier(self) -> Verifier:
        def verify(replica: int, material: bytes, signature: bytes) -> bool:
            if not isinstance(replica, int) or not 0 <= replica < len(self.secrets):
                return False
            key = self.secrets[replica]
            return hashlib.blake2b(material, key=key, digest_size=32).digest() == signature

        return verify


class Ed25519Keys:
    def __init__(self, n: int) -> None:
        self.identities = [Identity.generate(f"r{i}") for i in range(n)]

    def signer(self, replica: int) -> Signer:
        return self.identities[replica].sign

    def verifier(self) -> Verifier:
        return ed25519_verifier({i: ident.verify_key for i, ident in enumerate(self.identities)})


class CrashSafe:
    """Runs a replica; a :class:`SimulatedCrash` from its store crashes the node instead of
    the test (the actions of the failed call are lost, as they would be in a real crash)."""

    def __init__(self, replica: Any, on_crash: Callable[[], None]) -> None:
        self.inner = replica
        self.on_crash = on_crash

    def _guard(self, call: Callable[[], list[Any]]) -> list[Any]:
        try:
            return call()
        except SimulatedCrash:
            self.on_crash()
            return []

    def on_message(self, sender: Hashable, message: Any, *, now: float) -> list[Any]:
        return self._guard(lambda: self.inner.on_message(sender, message, now=now))

    def on_timer(self, *, now: float) -> list[Any]:
        return self._guard(lambda: self.inner.on_timer(now=now))

    def next_deadline(self) -> float | None:
        return cast(float | None, self.inner.next_deadline())


class Twins:
    """Two replicas sharing one identity and keys (Twins, Bano et al.): messages from
    ``group`` reach the first instance, all others the second; each instance's messages
    to replicas go only to its own side."""

    def __init__(self, first: Replica, second: Replica, group: set[int], n: int) -> None:
        self.first, self.second, self.group, self.n = first, second, group, n

    def _route(self, actions: list[Any], mine: bool) -> list[Any]:
        out = []
        for action in actions:
            to_replica = (
                isinstance(action, Send) and isinstance(action.to, int) and action.to < self.n
            )
            if to_replica and (action.to in self.group) != mine:
                continue
            out.append(action)
        return out

    def on_message(self, sender: Hashable, message: Any, *, now: float) -> list[Any]:
        if sender in self.group:
            return self._route(self.first.on_message(sender, message, now=now), True)
        return self._route(self.second.on_message(sender, message, now=now), False)

    def on_timer(self, *, now: float) -> list[Any]:
        return self._route(self.first.on_timer(now=now), True) + self._route(
            self.second.on_timer(now=now), False
        )

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.first.next_deadline(), self.second.next_deadline()) if d]
        return min(deadlines, default=None)


@dataclass
class Cluster:
    n: int
    sim: Simulator
    keys: Any
    options: dict[str, Any]
    stores: list[MemoryStore]
    clients: list[str]
    byzantine: set[int] = field(default_factory=set)
    sent: Counter[str] = field(default_factory=Counter)
    _results: dict[str, tuple[int, list[Result]]] = field(default_factory=dict)

    # -- building ------------------------------------------------------------------------------

    def make_replica(self, i: int, store: MemoryStore | None = None) -> Replica:
        return Replica(
            i,
            self.n,
            state_machine=KeyValueStore(),
            store=self.stores[i] if store is None else store,
            sign=self.keys.signer(i),
            verify=self.keys.verifier(),
            now=self.sim.now,
            **self.options,
        )

    def replica(self, i: int) -> Replica:
        machine = self.sim.machine(i)
        return cast(Replica, machine.inner if isinstance(machine, CrashSafe) else machine)

    def client(self, name: str) -> Client:
        return cast(Client, self.sim.machine(name))

    # -- driving -------------------------------------------------------------------------------

    def request(self, client: str, op: bytes, *, at: float | None = None) -> None:
        def call(sim: Simulator) -> None:
            sim.call_node(client, lambda m: cast(Client, m).request(op, now=sim.now))

        if at is None:
            call(self.sim)
        else:
            self.sim.call_at(at, call)

    def put(self, client: str, key: str, value: str, *, at: float | None = None) -> None:
        self.request(client, encode_op("put", key.encode(), value.encode()), at=at)

    def load_and_check(self, count: int, *, until: float) -> None:
        """Every client puts ``count`` keys; all must get their results by ``until`` and the
        run must be safe."""
        for c in self.clients:
            for k in range(count):
                self.put(c, f"{c}{k}", "v")
        self.run_until_results(count, until=until)
        assert all(len(self.results(c)) == count for c in self.clients)
        self.check_safety()

    def count_messages(self) -> None:
        """Count every message each node sends, by type (honest pass-through)."""
        for node in self.sim.nodes:
            self.sim.set_byzantine(node, self._counter)

    def _counter(self, sender: Hashable, to: Hashable, message: Any, rng: Any) -> list[Any]:
        self.sent[type(message).__name__] += 1
        return [(to, message)]

    def run_until_results(
        self, count: int, *, until: float, clients: Iterable[str] | None = None
    ) -> None:
        names = list(self.clients if clients is None else clients)
        self.sim.run(until=until, stop=lambda: all(len(self.results(c)) >= count for c in names))

    # -- observing -----------------------------------------------------------------------------

    def results(self, client: str) -> list[Result]:
        # Incremental: run_until_results asks after every event.
        outputs = self.sim.outputs[client]
        seen, found = self._results.get(client, (0, []))
        found.extend(o for o in outputs[seen:] if isinstance(o, Result))
        self._results[client] = (len(outputs), found)
        return found

    def executed(self, i: int) -> list[Executed]:
        return [o for o in self.sim.outputs[i] if isinstance(o, Executed)]

    def transferred(self, i: int) -> list[StateTransferred]:
        return [o for o in self.sim.outputs[i] if isinstance(o, StateTransferred)]

    def skipped_ahead(self, i: int) -> bool:
        """Fetched a checkpoint, or restarted (re-execution on recovery emits nothing)."""
        return bool(self.transferred(i)) or self.sim.incarnation(i) > 0

    def correct(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.byzantine]

    def check_safety(self) -> None:
        """The invariants: agreement per sequence, prefix histories, exactly-once, and every
        accepted client result is what correct replicas executed."""
        batches: dict[int, dict[int, bytes]] = {}
        for i in self.correct():
            mine = batches[i] = {}
            for o in self.sim.outputs[i]:
                if isinstance(o, Committed):
                    known = mine.setdefault(o.sequence, o.digest)
                    assert known == o.digest, f"replica {i} committed two batches at {o.sequence}"
            if not self.skipped_ahead(i):
                assert sorted(mine) == list(range(1, len(mine) + 1)), f"replica {i} has gaps"
        for a, ours in batches.items():
            for b, theirs in batches.items():
                for s in ours.keys() & theirs.keys():
                    assert ours[s] == theirs[s], (
                        f"replicas {a} and {b} committed different batches at {s}"
                    )
        per_replica: dict[int, dict[int, tuple[Any, ...]]] = {}
        for i in self.correct():
            by_seq: dict[int, list[Any]] = {}
            seen: set[tuple[Any, int]] = set()
            for e in self.executed(i):
                key = (e.request.client, e.request.timestamp)
                assert key not in seen, f"replica {i} executed {key} twice"
                seen.add(key)
                by_seq.setdefault(e.sequence, []).append((e.request, e.result))
            per_replica[i] = {s: tuple(v) for s, v in by_seq.items()}
        replicas = list(per_replica)
        for a in replicas:
            for b in replicas:
                if a >= b:
                    continue
                common = per_replica[a].keys() & per_replica[b].keys()
                for s in common:
                    assert per_replica[a][s] == per_replica[b][s], (
                        f"replicas {a} and {b} executed different requests at {s}"
                    )
                if self.skipped_ahead(a) or self.skipped_ahead(b):
                    continue  # a gap in the outputs is expected; per-sequence check holds
                # Outputs, not replica state: a node that crashed mid-call lost the outputs.
                upto = min(max(batches[a], default=0), max(batches[b], default=0))
                ha = [(s, v) for s, v in sorted(per_replica[a].items()) if s <= upto]
                hb = [(s, v) for s, v in sorted(per_replica[b].items()) if s <= upto]
                assert ha == hb, f"histories of {a} and {b} differ up to {upto}"
        executed: dict[tuple[Any, int], set[bytes]] = {}
        for table in per_replica.values():
            for entries in table.values():
                for request, result in entries:
                    executed.setdefault((request.client, request.timestamp), set()).add(result)
        for key, results in executed.items():
            assert len(results) == 1, f"correct replicas disagree on the result of {key}"
        for c in self.clients:
            for r in self.results(c):
                assert executed.get((c, r.timestamp)) == {r.result}, (
                    f"client {c} accepted a result no correct replica produced ({r})"
                )


def build(
    n: int,
    seed: int,
    *,
    clients: int = 1,
    network: Network | None = None,
    ed25519: bool = False,
    trace: bool = False,
    client_timeout: float = 0.5,
    crash_safe: bool = False,
    restart_delay: float | None = None,
    **options: Any,
) -> Cluster:
    network = network if network is not None else Network(LinkModel(latency=fixed(0.001)))
    sim = Simulator(seed=seed, network=network, trace=trace)
    keys = Ed25519Keys(n) if ed25519 else FakeKeys(n, salt=seed.to_bytes(8, "big"))
    options.setdefault("batch_delay", 0.002)
    options.setdefault("view_change_timeout", 0.5)
    cluster = Cluster(
        n, sim, keys, options, [MemoryStore() for _ in range(n)], [f"c{k}" for k in range(clients)]
    )
    for i in range(n):
        if crash_safe:
            sim.add_node(i, _crash_safe_factory(cluster, i, restart_delay))
        else:
            sim.add_node(i, lambda i=i: cluster.make_replica(i))
    for name in cluster.clients:
        sim.add_node(name, lambda name=name: Client(name, n, now=sim.now, timeout=client_timeout))
    return cluster


def _crash_safe_factory(cluster: Cluster, i: int, restart_delay: float | None) -> Callable[[], Any]:
    """A replica whose simulated store crash crashes the node (and restarts it later)."""

    def crashed() -> None:
        sim = cluster.sim
        sim.crash(i)
        if restart_delay is not None:
            sim.call_at(sim.now + restart_delay, lambda s: s.restart(i) if not s.is_up(i) else None)

    def factory() -> Any:
        return CrashSafe(cluster.make_replica(i), crashed)

    return factory


def recorder(log: list[tuple[Hashable, Any]]) -> Callable[..., list[tuple[Hashable, Any]]]:
    """An honest interceptor that records what a node sends."""

    def intercept(sender: Hashable, to: Hashable, message: Any, rng: Any) -> list[Any]:
        log.append((to, message))
        return [(to, message)]

    return intercept
