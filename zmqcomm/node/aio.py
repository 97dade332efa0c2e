"""asyncio for the Node: ``await node.areceive()``, ``async for``, ``await node.arequest()``.

The node's work still happens in :meth:`Node.pump`; these methods pump without blocking and,
when nothing is ready, await the readiness of the node's ZeroMQ sockets (their ``zmq.FD``
through the event loop), so other tasks run meanwhile. ZeroMQ's FD is edge-triggered, so
every wait is preceded by a full drain and bounded by a short tick, and by the node's next
own timer (timers, rekeys and mail need a turn even when no socket wakes us).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import zmq

from zmqcomm.checks import check_timeout
from zmqcomm.errors import ReceiveTimeout, RequestTimeout

if TYPE_CHECKING:
    from zmqcomm.node.messages import Incoming
    from zmqcomm.node.node import Node

_TICK = 0.05


class _Waiters:
    """The tasks waiting on one node's sockets. One reader per descriptor wakes them all:
    ``add_reader`` replaces a reader already on that descriptor, and a task's
    ``remove_reader`` removed another's, so per-task readers stole each other's wake-ups."""

    def __init__(self) -> None:
        self.events: set[asyncio.Event] = set()
        self.descriptors: list[int] = []

    def wake(self) -> None:
        for event in self.events:
            event.set()


_waiting: weakref.WeakKeyDictionary[Node, _Waiters] = weakref.WeakKeyDictionary()


async def wait_for_input(node: Node, timeout: float) -> None:
    """Return when one of the node's sockets may have input, after ``timeout``, or when one
    of the node's own timers is due (:meth:`Node.wait_time`), whichever comes first."""
    timeout = node.wait_time(min(timeout, _TICK))
    loop = asyncio.get_running_loop()
    waiters = _waiting.setdefault(node, _Waiters())
    ready = asyncio.Event()
    if not waiters.events:
        waiters.descriptors = [int(sock.getsockopt(zmq.FD)) for sock in node.sockets()]
        for descriptor in waiters.descriptors:
            loop.add_reader(descriptor, waiters.wake)
    waiters.events.add(ready)
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ready.wait(), timeout)
    finally:
        waiters.events.discard(ready)
        if not waiters.events:
            for descriptor in waiters.descriptors:
                loop.remove_reader(descriptor)
            waiters.descriptors = []


async def areceive(node: Node, timeout: float | None = None) -> Incoming:
    """Like :meth:`Node.receive`, letting other tasks run while it waits."""
    check_timeout(timeout, "receive timeout")
    deadline = None if timeout is None else node.clock() + timeout
    while True:
        node.pump(0.0)
        if node.inbox:
            return node.inbox.popleft()
        left = _TICK if deadline is None else deadline - node.clock()
        if left <= 0:
            raise ReceiveTimeout(f"no message within {timeout} s")
        await wait_for_input(node, left)


async def amessages(node: Node, timeout: float | None = None) -> AsyncIterator[Incoming]:
    """``async for message in node.amessages(timeout)``: ends after ``timeout`` of quiet."""
    while True:
        try:
            yield await node.areceive(timeout)
        except ReceiveTimeout:
            return


async def aclose(node: Node, timeout: float) -> None:
    """Like :meth:`Node.close`: wait (awaiting, not blocking) up to ``timeout`` for what is
    queued to go, then close."""
    check_timeout(timeout, "close timeout", allow_none=False)
    deadline = node.clock() + timeout
    while not node.closed and node.unsent() and node.clock() < deadline:
        if not node._flush_step(0.0):
            break  # the mail store is lost: close() counts what is left
        await wait_for_input(node, deadline - node.clock())
    node.close(timeout=0)


async def arequest(node: Node, peer: str, payload: object, *, timeout: float = 5.0) -> Any:
    """Like :meth:`Node.request`, letting other tasks run while it waits."""
    check_timeout(timeout, "request timeout", allow_none=False)
    request_id = node.start_request(peer, payload)
    try:
        deadline = node.clock() + timeout
        while True:
            node.pump(0.0)
            reply = node.take_reply(request_id)
            if reply is not None:
                return reply.payload
            left = deadline - node.clock()
            if left <= 0:
                raise RequestTimeout(f"no reply from {peer} within {timeout} s")
            await wait_for_input(node, left)
    finally:
        node.abandon_request(request_id)
