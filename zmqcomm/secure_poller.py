"""Waiting on several secure sockets at once, and pumping only those with something to read.

A pump costs a ``zmq_poll`` and a timer check even when nothing waits: about 5 us per
socket, so a :class:`~zmqcomm.node.Node` that pumped all its 64 direct links spent 317 us on
every idle ``pump(0)`` (91 us with this; ``benchmarks/node_links.py``). A loop over one
router and a dealer per peer (a node, a PBFT replica, a load generator) pumps the readable
sockets instead. Every socket is still pumped now and then: a pump also runs that socket's
own timers (handshake retries, rekeys, a new handshake after a reconnect).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import zmq

from zmqcomm.transport.sockets import poll_ms


class HasSocket(Protocol):
    @property
    def socket(self) -> zmq.Socket[Any]: ...

    def side_sockets(self) -> list[zmq.Socket[Any]]: ...

    def on_side_ready(self, side: zmq.Socket[Any]) -> None: ...


S = TypeVar("S", bound=HasSocket)

#: How often every socket is pumped, readable or not.
FULL_PUMP_INTERVAL = 0.02


class SecurePoller(Generic[S]):
    """Waits on ``sockets`` (anything with a ``.socket``, such as
    :class:`~zmqcomm.secure.SecureRouter` and :class:`~zmqcomm.secure.SecureDealer`) and
    says which to pump: the readable ones, or all of them once every ``full_every`` seconds
    of ``clock`` (give it the sockets' own clock, so their timers come due on it too). It
    also wakes for their side sockets (a dealer's connection events) and hands those over
    at once: a reconnect starts its handshake without waiting out the caller's timeout.

    A poll sees only what waits in a socket: a caller that pumps a socket itself must also
    take what that pump left in the socket's inbox. So must one that sends on a dealer: a
    send reads the connection events, and on a reconnect the dealer reads what the old
    connection left into its inbox (otherwise taken on the next full pump)."""

    def __init__(
        self,
        sockets: Sequence[S],
        *,
        clock: Callable[[], float] = time.monotonic,
        full_every: float = FULL_PUMP_INTERVAL,
    ) -> None:
        self.sockets = list(sockets)
        self.clock = clock
        self.full_every = full_every
        self._poller = zmq.Poller()
        #: Side socket -> the secure socket it belongs to.
        self._sides: dict[zmq.Socket[Any], S] = {}
        for sock in self.sockets:
            self._register(sock)
        self._next_full = -math.inf

    def _register(self, sock: S) -> None:
        self._poller.register(sock.socket, zmq.POLLIN)
        for side in sock.side_sockets():
            self._poller.register(side, zmq.POLLIN)
            self._sides[side] = sock

    def add(self, sock: S) -> None:
        self.sockets.append(sock)
        self._register(sock)

    def remove(self, sock: S) -> None:
        self.sockets.remove(sock)
        self._poller.unregister(sock.socket)
        for side in [side for side, owner in self._sides.items() if owner is sock]:
            self._poller.unregister(side)
            del self._sides[side]

    def wait(self, timeout: float) -> list[S]:
        """Wait up to ``timeout`` s for a socket to become readable; returns those to pump."""
        ready = dict(self._poller.poll(poll_ms(timeout)))
        woken: list[S] = []
        if self._sides:
            for side, owner in self._sides.items():
                if side in ready:
                    owner.on_side_ready(side)  # drained here, or the next wait would spin
                    woken.append(owner)
        now = self.clock()
        if now >= self._next_full:
            self._next_full = now + self.full_every
            return list(self.sockets)
        return [sock for sock in self.sockets if sock.socket in ready or sock in woken]
