"""SWIM membership swarms in the deterministic simulator, for tests and benchmarks.

:class:`Swarm` starts ``count`` :class:`Membership` machines 50 ms apart (as processes
launched by a script), all joining through the first ``seeds`` of them, over links of 1-20 ms
with optional loss. Node ``i`` has the address :func:`address` ``(i)`` and the identity
:func:`identity` ``(i)`` (generated once per process and shared: key generation is not what is
measured).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from zmqcomm.crypto.keys import Identity
from zmqcomm.patterns.discovery import PeerEvent
from zmqcomm.patterns.discovery.membership import Membership
from zmqcomm.patterns.discovery.membership_config import MembershipConfig
from zmqcomm.sim.network import LinkModel, Network, uniform
from zmqcomm.sim.simulator import Simulator

__all__ = ["CONFIG", "Swarm", "address", "identity"]

CONFIG = MembershipConfig(period=1.0, ping_timeout=0.5, join_backoff_max=8.0)
_IDENTITIES: list[Identity] = []


def identity(i: int) -> Identity:
    while len(_IDENTITIES) <= i:  # shared: key generation is not what is measured
        _IDENTITIES.append(Identity.generate(f"s{len(_IDENTITIES)}"))
    return _IDENTITIES[i]


def address(i: int) -> tuple[str, int]:
    return (f"10.0.{i // 250}.{i % 250 + 1}", 7946)


class Swarm:
    """A swarm of membership machines in one simulator (see the module docstring)."""

    def __init__(self, count: int, *, seed: int = 1, loss: float = 0.0, seeds: int = 2) -> None:
        link = LinkModel(latency=uniform(0.001, 0.02), loss=loss)
        self.sim = Simulator(seed=seed, network=Network(link), trace=False)
        self.count = count
        self.seeds = [address(i) for i in range(seeds)]
        for i in range(count):
            # Staggered start, 50 ms apart, like processes launched by a script.
            self.sim.call_at(i * 0.05, self._starter(i))

    def _starter(self, i: int) -> Callable[[Simulator], None]:
        def start(sim: Simulator) -> None:
            sim.add_node(address(i), self.factory(i))

        return start

    def factory(self, i: int, **kwargs: Any) -> Any:
        def make() -> Membership:
            return Membership.from_identity(
                identity(i),
                address=address(i),
                seeds=self.seeds,
                rng=random.Random(1000 + i),
                config=CONFIG,
                **kwargs,
            )

        return make

    def node(self, i: int) -> Membership:
        machine = self.sim.machine(address(i))
        assert isinstance(machine, Membership)
        return machine

    def events(self, i: int, kind: str | None = None) -> list[PeerEvent]:
        return [
            e
            for e in self.sim.outputs[address(i)]
            if isinstance(e, PeerEvent) and (kind is None or e.kind == kind)
        ]

    def run_until(self, done: Any, *, limit: float) -> float:
        """Advance one period at a time until ``done()``; the virtual time it took."""
        while not done():
            assert self.sim.now < limit, f"not done by t={limit}"
            self.sim.run(until=self.sim.now + 1.0)
        return self.sim.now

    def full(self, members: list[int]) -> bool:
        if len(self.sim.nodes) < self.count:
            return False
        wanted = {identity(i).agent_id for i in members}
        return all(
            {m.agent_id for m in self.node(i).members} == wanted - {identity(i).agent_id}
            for i in members
        )
