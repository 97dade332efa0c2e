"""A bounded pool of outgoing DEALER sockets, one per remote endpoint.

An agent that talks to many peers would otherwise keep a socket (and its buffers, file
descriptors and reconnect timers) for every peer it ever spoke to. The pool keeps at most
``max_sockets``, closes the least recently used one when full, and closes sockets idle for
longer than ``idle_timeout`` when :meth:`ConnectionPool.prune` runs.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from zmqcomm.errors import ClosedError, UsageError
from zmqcomm.transport.endpoints import parse_endpoint
from zmqcomm.transport.sockets import DEFAULT_SOCKET_OPTIONS, SocketOptions, connect, open_socket

Clock = Callable[[], float]


class ConnectionPool:
    """Hands out one connected DEALER per endpoint, closing idle and excess ones."""

    def __init__(
        self,
        *,
        max_sockets: int = 256,
        idle_timeout: float = 300.0,
        options: SocketOptions = DEFAULT_SOCKET_OPTIONS,
        socket_type: int = zmq.DEALER,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_sockets < 1:
            raise UsageError(f"max_sockets must be at least 1, got {max_sockets}")
        if idle_timeout <= 0:
            raise UsageError(f"idle_timeout must be positive, got {idle_timeout}")
        self.max_sockets = max_sockets
        self.idle_timeout = idle_timeout
        self._options = options
        self._socket_type = socket_type
        self._clock = clock
        # endpoint -> (socket, last use); ordered from least to most recently used.
        self._sockets: OrderedDict[str, tuple[zmq.Socket[Any], float]] = OrderedDict()
        self._closed = False
        self.opened = 0
        self.evicted = 0

    def get(self, endpoint: str) -> zmq.Socket[Any]:
        """The socket connected to ``endpoint``, connecting one if needed.

        When the pool is full, the least recently used socket is closed, but only once the
        new one is connected: a failing ``get`` leaves the pool as it was. The pool owns its
        sockets: a socket returned earlier may be closed by a later ``get`` (eviction),
        :meth:`prune`, :meth:`discard` or :meth:`close`, after which sending on it fails
        (:class:`~zmqcomm.errors.ClosedError` from ``send_frames``). Call ``get`` again for
        each use instead of keeping the socket.
        """
        if self._closed:
            raise ClosedError("the connection pool is closed")
        key = str(parse_endpoint(endpoint))
        now = self._clock()
        entry = self._sockets.get(key)
        if entry is not None:
            self._sockets[key] = (entry[0], now)
            self._sockets.move_to_end(key)
            return entry[0]
        # Open and connect first: a get() that fails must not cost a healthy connection.
        sock = open_socket(self._socket_type, self._options)
        try:
            connect(sock, key)
        except BaseException:
            sock.close(linger=0)
            raise
        if len(self._sockets) >= self.max_sockets:
            _, (oldest, _) = self._sockets.popitem(last=False)
            oldest.close()
            self.evicted += 1
        self._sockets[key] = (sock, now)
        self.opened += 1
        return sock

    def discard(self, endpoint: str) -> None:
        """Close the socket for ``endpoint`` (for example after the peer was removed)."""
        entry = self._sockets.pop(str(parse_endpoint(endpoint)), None)
        if entry is not None:
            entry[0].close()

    def next_deadline(self) -> float | None:
        """When the least recently used socket becomes idle, for a loop's timer."""
        for _, last_use in self._sockets.values():
            return last_use + self.idle_timeout
        return None

    def prune(self, now: float | None = None) -> int:
        """Close sockets unused for ``idle_timeout``; return how many were closed."""
        now = self._clock() if now is None else now
        closed = 0
        while self._sockets:
            key, (sock, last_use) = next(iter(self._sockets.items()))
            if now - last_use < self.idle_timeout:
                break
            del self._sockets[key]
            sock.close()
            closed += 1
        self.evicted += closed
        return closed

    def on_timer(self, now: float | None = None) -> None:
        self.prune(now)

    def close(self) -> None:
        """Close every socket, letting each deliver what it queued within its linger."""
        self._closed = True
        while self._sockets:
            _, (sock, _) = self._sockets.popitem(last=False)
            sock.close()

    def __len__(self) -> int:
        return len(self._sockets)

    def __contains__(self, endpoint: object) -> bool:
        return isinstance(endpoint, str) and str(parse_endpoint(endpoint)) in self._sockets

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._sockets))

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
