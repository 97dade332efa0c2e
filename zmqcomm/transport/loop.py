"""The synchronous event loop: drain ready sockets, fire the one due timer, repeat.

One ``poll`` wakes the loop; it then receives with ``NOBLOCK`` until each ready socket is empty
(up to ``max_burst`` messages, so one busy peer cannot starve the others). Paying one poll per
burst instead of one per message is what lets a Python loop keep up with libzmq.

Timers are objects with ``next_deadline()`` and ``on_timer(now)`` (the pure protocol machines
and :class:`~zmqcomm.transport.batching.BatchingSender` have that shape); the loop sleeps
until the earliest deadline.

A handler that raises :class:`~zmqcomm.errors.RemoteProtocolError` or
:class:`~zmqcomm.errors.SecurityError` is reporting bad input from a peer: the loop counts the
``reason`` in :attr:`Loop.rejected` and goes on. Any other exception is a bug and propagates.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import zmq

from zmqcomm.checks import check_count, check_timeout
from zmqcomm.errors import ClosedError, RemoteProtocolError, SecurityError
from zmqcomm.transport.sockets import poll_ms, translate_zmq_error

Frames = list[bytes]
Handler = Callable[[Frames], None]
Clock = Callable[[], float]


class TimerSource(Protocol):
    def next_deadline(self) -> float | None: ...

    def on_timer(self, now: float | None = None) -> None: ...


#: Peer input errors a handler may raise without stopping the loop.
PEER_ERRORS = (RemoteProtocolError, SecurityError)


class Dispatcher:
    """What the sync and asyncio loops share: registrations, draining and timers."""

    def __init__(self, *, max_burst: int = 1000, clock: Clock = time.monotonic) -> None:
        check_count(max_burst, "max_burst", minimum=1)
        self.max_burst = max_burst
        self._clock = clock
        self._poller = self._make_poller()
        self._handlers: dict[zmq.Socket[Any], Handler] = {}
        self._timers: list[TimerSource] = []
        self._stopping = False
        self._closed = False
        #: Messages a handler rejected as bad peer input, by reason.
        self.rejected: Counter[str] = Counter()
        self.received = 0

    # -- registration ------------------------------------------------------------------------

    def add_reader(self, sock: zmq.Socket[Any], handler: Handler) -> None:
        """Call ``handler(frames)`` for every message that arrives on ``sock``."""
        self._check_open()
        if sock not in self._handlers:
            self._poller.register(sock, zmq.POLLIN)
        self._handlers[sock] = handler

    def remove_reader(self, sock: zmq.Socket[Any]) -> None:
        if self._handlers.pop(sock, None) is not None:
            self._poller.unregister(sock)

    def add_timer(self, source: TimerSource) -> None:
        self._check_open()
        self._timers.append(source)

    def remove_timer(self, source: TimerSource) -> None:
        self._timers.remove(source)

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (t.next_deadline() for t in self._timers) if d is not None]
        return min(deadlines) if deadlines else None

    def stop(self) -> None:
        """Make ``run`` return after the current iteration (callable from a handler)."""
        self._stopping = True

    def close(self, *, close_sockets: bool = True) -> None:
        """Stop watching everything; close the registered sockets unless told not to."""
        if self._closed:
            return
        for sock in list(self._handlers):
            self.remove_reader(sock)
            if close_sockets:
                sock.close()
        self._timers.clear()
        self._closed = True

    # -- shared internals --------------------------------------------------------------------

    def _make_poller(self) -> Any:
        return zmq.Poller()

    def _wait_seconds(self, timeout: float | None) -> float | None:
        deadline = self.next_deadline()
        if deadline is not None:
            until_timer = max(0.0, deadline - self._clock())
            timeout = until_timer if timeout is None else min(timeout, until_timer)
        return timeout

    def _handle(self, ready: list[tuple[Any, int]]) -> int:
        """Drain every ready socket, then fire due timers; returns messages handled."""
        handled = sum(self._drain(sock) for sock, _ in ready)
        self._fire_timers()
        return handled

    def _drain(self, sock: zmq.Socket[Any]) -> int:
        handler = self._handlers.get(sock)
        if handler is None:
            return 0
        handled = 0
        while handled < self.max_burst:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                raise translate_zmq_error(exc, "receive") from exc
            handled += 1
            try:
                handler(frames)
            except PEER_ERRORS as exc:
                self.rejected[exc.reason] += 1
        self.received += handled
        return handled

    def _fire_timers(self) -> None:
        if not self._timers:
            return
        now = self._clock()
        for source in list(self._timers):
            deadline = source.next_deadline()
            if deadline is not None and deadline <= now:
                source.on_timer(now)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the loop is closed")


class RunPlan:
    """The time slices of one ``run`` call, shared by the sync and asyncio loops.

    Iterating yields how long the next ``run_once`` may wait; afterwards :attr:`completed`
    says whether the run ended because ``until()`` held or ``stop()`` was called (True) or
    because ``timeout`` passed (False).
    """

    #: Wake at least this often so until() is re-checked even when nothing arrives.
    SLICE = 0.05

    def __init__(
        self, loop: Dispatcher, until: Callable[[], bool] | None, timeout: float | None
    ) -> None:
        self._loop = loop
        self._until = until
        self._clock = loop._clock
        check_timeout(timeout, "run timeout")
        self._give_up = None if timeout is None else self._clock() + timeout
        self.completed = True
        loop._stopping = False

    def __iter__(self) -> Iterator[float]:
        while not self._loop._stopping:
            if self._until is not None and self._until():
                return
            remaining = None if self._give_up is None else self._give_up - self._clock()
            if remaining is not None and remaining <= 0:
                self.completed = False
                return
            yield self.SLICE if remaining is None else min(self.SLICE, remaining)


class Loop(Dispatcher):
    """Drives sockets and timers in the calling thread."""

    def run_once(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds (None: until something happens), handle what is
        ready, fire due timers. Returns the number of messages handled."""
        self._check_open()
        wait = self._wait_seconds(timeout)
        try:
            ready = self._poller.poll(None if wait is None else poll_ms(wait))
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, "poll") from exc
        return self._handle(ready)

    def run(self, until: Callable[[], bool] | None = None, *, timeout: float | None = None) -> bool:
        """Run until ``until()`` is true, :meth:`stop` is called, or ``timeout`` passes.

        Returns ``True`` if it stopped because the condition held or stop() was called, and
        ``False`` on timeout.
        """
        plan = RunPlan(self, until, timeout)
        for slice_ in plan:
            self.run_once(slice_)
        return plan.completed

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
