"""Many :class:`GossipAgent` s stepped in one thread with one :class:`zmq.Poller`.

For tests, benchmarks and simulations on real sockets: one poll wakes the group, only the
agents whose sockets are ready are drained, then every agent fires its due timers and flushes
its queues. Agents keep their own clocks; the group only decides how long to sleep. A secure
agent's sockets change as it dials and hangs up peers (a dealer each, with its connection
events): the group registers them afresh whenever an agent's ``sockets_version`` moved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from zmqcomm.checks import check_seconds, check_timeout
from zmqcomm.errors import UsageError
from zmqcomm.patterns.gossip.driver import Delivered, GossipAgent
from zmqcomm.transport.sockets import poll_ms


class GossipGroup:
    """Steps a set of agents together; :meth:`step` returns ``(agent, delivered)`` pairs."""

    def __init__(
        self, agents: Iterable[GossipAgent] = (), *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._poller = zmq.Poller()
        self._owner: dict[Any, GossipAgent] = {}
        #: Agent -> (the sockets_version registered, the sockets registered for it).
        self._registered: dict[GossipAgent, tuple[int, tuple[Any, ...]]] = {}
        self.agents: list[GossipAgent] = []
        for agent in agents:
            self.add(agent)

    def add(self, agent: GossipAgent) -> None:
        if agent in self.agents:
            raise UsageError(f"{agent!r} is already in this group")
        self.agents.append(agent)
        self._register(agent)

    def _register(self, agent: GossipAgent) -> None:
        self._unregister(agent)
        socks = agent.sockets
        for sock in socks:
            self._owner[sock] = agent
            self._poller.register(sock, zmq.POLLIN)
        self._registered[agent] = (agent.sockets_version, socks)

    def _unregister(self, agent: GossipAgent) -> None:
        _, socks = self._registered.pop(agent, (0, ()))
        for sock in socks:
            self._poller.unregister(sock)
            del self._owner[sock]

    def remove(self, agent: GossipAgent) -> None:
        self.agents.remove(agent)
        self._unregister(agent)

    def step(self, timeout: float = 0.0) -> list[tuple[GossipAgent, Delivered]]:
        """Wait at most ``timeout`` seconds (less if a timer is due) and run one round."""
        for agent in self.agents:
            if agent.sockets_version != self._registered[agent][0]:
                self._register(agent)  # a peer dialed or hung up since the last round
        wakes = [w for w in (a.wake_at() for a in self.agents) if w is not None]
        if wakes:
            timeout = min(timeout, max(0.0, min(wakes) - self._clock()))
        ready = self._poller.poll(poll_ms(timeout))
        out: list[tuple[GossipAgent, Delivered]] = []
        now = self._clock()
        busy: dict[GossipAgent, None] = {}
        for sock, _ in ready:
            agent = self._owner[sock]
            busy[agent] = None
            out += [(agent, d) for d in agent.drain(sock, now)]
        now = self._clock()
        for agent in self.agents:  # only agents with input or a due timer have work
            wake = agent.wake_at()
            if agent in busy or (wake is not None and wake <= now):
                out += [(agent, d) for d in agent.service(now)]
        return out

    def run_until(
        self,
        done: Callable[[], bool],
        *,
        timeout: float,
        on_delivered: Callable[[GossipAgent, Delivered], None] | None = None,
    ) -> bool:
        """Step until ``done()`` is true (True) or ``timeout`` seconds pass (False)."""
        check_timeout(timeout, "run_until timeout", allow_none=False)
        deadline = self._clock() + timeout
        while not done():
            left = deadline - self._clock()
            if left <= 0:
                return False
            for agent, delivered in self.step(min(left, 0.05)):
                if on_delivered is not None:
                    on_delivered(agent, delivered)
        return True

    def run_for(self, seconds: float) -> list[tuple[GossipAgent, Delivered]]:
        """Step for ``seconds``; returns every delivery."""
        check_seconds(seconds, "run_for seconds")
        out: list[tuple[GossipAgent, Delivered]] = []
        deadline = self._clock() + seconds
        while (left := deadline - self._clock()) > 0:
            out += self.step(min(left, 0.05))
        return out

    def close(self) -> None:
        for agent in list(self.agents):
            self.remove(agent)
            agent.close()

    def __enter__(self) -> GossipGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
