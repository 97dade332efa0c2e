"""A deterministic discrete-event simulator for the pure protocol machines.

Every node is a :class:`~zmqcomm.actions.Machine`. The simulator owns the only clock (virtual)
and the only random source (seeded), delivers :class:`~zmqcomm.actions.Send` and
:class:`~zmqcomm.actions.Broadcast` actions through a :class:`~zmqcomm.sim.network.Network`,
fires each node's timer at its ``next_deadline()``, and records every other action as an
output of that node. Nothing else may introduce nondeterminism, so a failing run replays
exactly from its seed: ``Simulator(seed=...)`` plus the same script gives the same
:attr:`Simulator.trace`.

Faults: :meth:`crash` and :meth:`restart` (a restart builds a fresh machine from the node's
factory, which decides what survives, e.g. its storage), partitions through
:attr:`Simulator.network`, and Byzantine behaviour through per-node interceptors that rewrite
what a node sends (drop, alter, equivocate, replay, flood) and :meth:`inject` to forge
messages in another node's name.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from zmqcomm.actions import Broadcast, Machine, Send
from zmqcomm.errors import UsageError
from zmqcomm.sim.network import Network

NodeId = Hashable
Factory = Callable[[], Machine]
#: Rewrites one outgoing message of a Byzantine node: given (sender, recipient, message, rng),
#: returns the (recipient, message) pairs to send instead (empty list: drop).
Interceptor = Callable[[NodeId, NodeId, Any, random.Random], list[tuple[NodeId, Any]]]

_DELIVER, _TIMER, _CALL = 0, 1, 2


@dataclass(frozen=True)
class TraceEvent:
    """One thing that happened, for replaying and for reading a failing run."""

    time: float
    kind: str
    node: NodeId
    detail: str


@dataclass
class _NodeState:
    factory: Factory
    machine: Machine
    up: bool = True
    timer_generation: int = 0
    armed: float | None = None
    incarnation: int = 0


class Simulator:
    """Runs machines on a virtual clock; see the module docstring."""

    def __init__(self, *, seed: int, network: Network | None = None, trace: bool = True) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        self.network = network if network is not None else Network()
        self.now = 0.0
        self.outputs: dict[NodeId, list[Any]] = defaultdict(list)
        self.trace: list[TraceEvent] = []
        self.delivered = 0
        self.dropped = 0
        self._tracing = trace
        self._nodes: dict[NodeId, _NodeState] = {}
        self._interceptors: dict[NodeId, Interceptor] = {}
        self._queue: list[tuple[float, int, int, Any]] = []
        self._sequence = 0

    # -- set-up ------------------------------------------------------------------------------

    def add_node(self, node: NodeId, factory: Factory) -> Machine:
        if node in self._nodes:
            raise UsageError(f"node {node!r} already exists")
        machine = factory()
        self._nodes[node] = _NodeState(factory, machine)
        self._arm_timer(node)
        return machine

    @property
    def nodes(self) -> list[NodeId]:
        return list(self._nodes)

    def machine(self, node: NodeId) -> Machine:
        return self._nodes[node].machine

    def is_up(self, node: NodeId) -> bool:
        return self._nodes[node].up

    def incarnation(self, node: NodeId) -> int:
        """How many times ``node`` was restarted."""
        return self._check_node(node).incarnation

    def replace_machine(
        self, node: NodeId, machine: Machine | None = None, *, factory: Factory | None = None
    ) -> None:
        """Swap the running machine of ``node`` (a wrapper, a twin) and/or the factory its
        next restart uses; messages in flight to it still arrive."""
        state = self._check_node(node)
        if machine is not None:
            state.machine = machine
            self._arm_timer(node)
        if factory is not None:
            state.factory = factory

    def set_byzantine(self, node: NodeId, interceptor: Interceptor | None) -> None:
        """Rewrite everything ``node`` sends through ``interceptor`` (None: honest again)."""
        self._check_node(node)
        if interceptor is None:
            self._interceptors.pop(node, None)
        else:
            self._interceptors[node] = interceptor

    # -- faults and scripted events ----------------------------------------------------------

    def crash(self, node: NodeId) -> None:
        """Stop ``node`` now: it loses messages in flight to it and its timers."""
        state = self._check_node(node)
        state.up = False
        state.timer_generation += 1
        state.armed = None
        self._record("crash", node, "")

    def restart(self, node: NodeId) -> None:
        """Bring ``node`` back as a fresh machine from its factory."""
        state = self._check_node(node)
        state.machine = state.factory()
        state.up = True
        state.incarnation += 1
        self._record("restart", node, f"incarnation {state.incarnation}")
        self._arm_timer(node)

    def inject(self, sender: NodeId, to: NodeId, message: Any, *, delay: float = 0.0) -> None:
        """Deliver ``message`` to ``to`` as if ``sender`` sent it (forgery, replay, tests)."""
        self._check_node(to)
        self._push(self.now + delay, _DELIVER, (sender, to, message, -1))

    def call_at(self, time: float, action: Callable[[Simulator], None]) -> None:
        """Run ``action(sim)`` at virtual ``time`` (scripted partitions, crashes, requests)."""
        if time < self.now:
            raise UsageError(f"cannot schedule in the past ({time} < {self.now})")
        self._push(time, _CALL, action)

    def call_node(self, node: NodeId, method: Callable[[Machine], list[Any]]) -> None:
        """Call into a node now (a client request) and perform the actions it returns."""
        state = self._check_node(node)
        if state.up:
            self._perform(node, method(state.machine))

    # -- running -----------------------------------------------------------------------------

    def step(self) -> bool:
        """Process the next event; False when there is none."""
        if not self._queue:
            return False
        time, _, kind, payload = heapq.heappop(self._queue)
        self.now = max(self.now, time)
        if kind == _DELIVER:
            self._deliver(*payload)
        elif kind == _TIMER:
            self._fire_timer(*payload)
        else:
            payload(self)
        return True

    def run(
        self,
        *,
        until: float | None = None,
        max_events: int = 10_000_000,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Process events until the queue is empty, virtual time ``until``, or ``stop()``.

        Returns the number of events processed. ``max_events`` guards against a livelock
        (a machine that keeps itself busy forever) and raises when hit.
        """
        processed = 0
        while self._queue:
            if stop is not None and stop():
                break
            if until is not None and self._queue[0][0] > until:
                self.now = max(self.now, until)
                break
            self.step()
            processed += 1
            if processed >= max_events:
                raise RuntimeError(
                    f"simulation still busy after {max_events} events at t={self.now:.6f} "
                    f"(seed {self.seed}): a livelock or a too-small max_events"
                )
        else:
            if until is not None:
                self.now = max(self.now, until)
        return processed

    def trace_digest(self) -> str:
        """A short fingerprint of the whole trace, to compare two runs of one seed."""
        digest = hashlib.blake2b(digest_size=16)
        for event in self.trace:
            digest.update(
                repr((round(event.time, 12), event.kind, event.node, event.detail)).encode()
            )
        return digest.hexdigest()

    # -- internals ---------------------------------------------------------------------------

    def _check_node(self, node: NodeId) -> _NodeState:
        try:
            return self._nodes[node]
        except KeyError:
            raise UsageError(f"no node {node!r} in the simulation") from None

    def _push(self, time: float, kind: int, payload: Any) -> None:
        self._sequence += 1  # ties break in scheduling order: deterministic
        heapq.heappush(self._queue, (time, self._sequence, kind, payload))

    def _record(self, kind: str, node: NodeId, detail: str) -> None:
        if self._tracing:
            self.trace.append(TraceEvent(self.now, kind, node, detail))

    def _deliver(self, sender: NodeId, to: NodeId, message: Any, incarnation: int) -> None:
        state = self._nodes[to]
        # A message in flight to a node that crashed (and maybe restarted since) is lost.
        if not state.up or (incarnation >= 0 and incarnation != state.incarnation):
            self.dropped += 1
            self._record("lost", to, f"from {sender!r}")
            return
        self.delivered += 1
        if self._tracing:  # repr of big messages is costly: only when someone reads it
            self._record("deliver", to, f"from {sender!r}: {message!r}")
        self._perform(to, state.machine.on_message(sender, message, now=self.now))

    def _fire_timer(self, node: NodeId, generation: int) -> None:
        state = self._nodes[node]
        if not state.up or generation != state.timer_generation:
            return  # re-armed or crashed since: stale
        state.armed = None
        self._record("timer", node, "")
        self._perform(node, state.machine.on_timer(now=self.now))

    def _perform(self, node: NodeId, actions: Iterable[Any]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(node, action.to, action.message)
            elif isinstance(action, Broadcast):
                for other in self._nodes:
                    if other != node:
                        self._send(node, other, action.message)
            else:
                self.outputs[node].append(action)
                if self._tracing:
                    self._record("output", node, repr(action))
        self._arm_timer(node)

    def _send(self, sender: NodeId, to: NodeId, message: Any) -> None:
        if to not in self._nodes:
            self.dropped += 1
            self._record("unroutable", sender, f"to {to!r}")
            return
        interceptor = self._interceptors.get(sender)
        rewritten = (
            [(to, message)]
            if interceptor is None
            else interceptor(sender, to, message, self.random)
        )
        for target, payload in rewritten:
            if target not in self._nodes:
                continue
            delays = self.network.transit(sender, target, self.random)
            if not delays:
                self.dropped += 1
                self._record("drop", sender, f"to {target!r}")
            incarnation = self._nodes[target].incarnation
            for delay in delays:
                self._push(self.now + delay, _DELIVER, (sender, target, payload, incarnation))

    def _arm_timer(self, node: NodeId) -> None:
        state = self._nodes[node]
        if not state.up:
            return
        deadline = state.machine.next_deadline()
        if deadline == state.armed:
            return  # already scheduled: do not flood the queue with stale timers
        state.timer_generation += 1
        state.armed = deadline
        if deadline is not None:
            self._push(max(deadline, self.now), _TIMER, (node, state.timer_generation))
