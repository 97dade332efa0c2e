"""The asyncio event loop: one await per burst of messages, not one per message.

:class:`AsyncLoop` has the registration API of :class:`~zmqcomm.transport.loop.Loop`, but
waits with a :class:`zmq.asyncio.Poller` so it shares the thread with other asyncio code.
Once a socket is readable it is drained synchronously with ``NOBLOCK``: awaiting
``recv_multipart()`` per message costs a future and an event-loop round per message, which is
most of the time spent on small messages.

Sockets are ordinary (blocking) pyzmq sockets from
:func:`~zmqcomm.transport.sockets.open_socket`; only the wait is asynchronous.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from zmqcomm.transport.loop import Dispatcher, RunPlan
from zmqcomm.transport.sockets import poll_ms, translate_zmq_error


class AsyncLoop(Dispatcher):
    """Drives sockets and timers from an asyncio task."""

    def _make_poller(self) -> Any:
        return zmq.asyncio.Poller()

    async def run_once(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds for a socket or timer, handle what is ready.

        Returns the number of messages handled.
        """
        self._check_open()
        wait = self._wait_seconds(timeout)
        try:
            ready = await self._poller.poll(None if wait is None else poll_ms(wait))
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, "poll") from exc
        handled = self._handle(ready)
        if handled >= self.max_burst:
            # A busy socket must not starve the other tasks of this event loop.
            await asyncio.sleep(0)
        return handled

    async def run(
        self, until: Callable[[], bool] | None = None, *, timeout: float | None = None
    ) -> bool:
        """Run until ``until()`` is true, :meth:`stop` is called, or ``timeout`` passes.

        Returns ``True`` if the condition held or stop() was called, ``False`` on timeout.
        Cancelling the task stops it too (the cancellation propagates).
        """
        plan = RunPlan(self, until, timeout)
        for slice_ in plan:
            await self.run_once(slice_)
        return plan.completed

    async def __aenter__(self) -> AsyncLoop:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
