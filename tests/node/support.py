"""Helpers for node tests: a broker and nodes that live in their own threads, and pump loops.

A Node or a Broker does its work only when called, and belongs to one thread. Tests that need
two parties to make progress at once (a request and its answer, a handshake) run one party in
a thread of its own and talk to it only through :meth:`NodeThread.submit` (or
:meth:`BrokerThread.call`): the callable runs in the owner's thread, between two pumps.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Generic, TypeVar

from zmqcomm.broker.server import Broker
from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.node import Node

T = TypeVar("T")
Owned = TypeVar("Owned")


def pump_until(
    nodes: Iterable[Node],
    until: Callable[[], bool],
    *,
    timeout: float = 5.0,
    what: str = "the condition",
) -> float:
    """Pump every node round-robin until ``until()`` holds; returns the seconds it took.

    Raises AssertionError (with each node's statistics) after ``timeout`` seconds.
    """
    nodes = list(nodes)
    started = time.monotonic()
    deadline = started + timeout
    while not until():
        if time.monotonic() > deadline:
            stats = [node.statistics() for node in nodes[:6]]
            raise AssertionError(f"no {what} within {timeout} s; node statistics: {stats}")
        handled = 0
        for node in nodes:
            handled += node.pump(0.0)
        if not handled:
            if len(nodes) == 1:
                nodes[0].pump(0.005)
            else:
                time.sleep(0.0005)
    return time.monotonic() - started


def settle(nodes: Sequence[Node], seconds: float) -> None:
    """Keep pumping for ``seconds`` (to give something that must not happen a chance to)."""
    end = time.monotonic() + seconds
    pump_until(nodes, lambda: time.monotonic() >= end, timeout=seconds + 5.0)


def wait_for(future: Future[T], nodes: Iterable[Node] = (), *, timeout: float = 10.0) -> T:
    """Pump ``nodes`` (owned by this thread) until ``future`` is done; return its result."""
    pump_until(nodes, future.done, timeout=timeout, what="answer from the other thread")
    return future.result(0)


class _Owner(Generic[Owned]):
    """A thread that owns one object and runs other threads' callables on it between steps."""

    def __init__(self, name: str, factory: Callable[[], Owned], *, ready_timeout: float) -> None:
        self.name = name
        self._factory = factory
        self._calls: queue.SimpleQueue[tuple[Callable[[Owned], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._stopping = threading.Event()
        self._ready: Future[Owned] = Future()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        # The object itself is only read here for fixed facts (its id, its endpoint).
        self._owned = self._ready.result(timeout=ready_timeout)

    # -- the owner's thread ----------------------------------------------------------------

    def _main(self) -> None:
        try:
            owned = self._factory()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(owned)
        try:
            self._loop(owned)
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                self._finish(owned)
            finally:
                self._fail_pending()

    def _loop(self, owned: Owned) -> None:
        raise NotImplementedError

    def _finish(self, owned: Owned) -> None:
        raise NotImplementedError

    def _run_calls(self, owned: Owned) -> None:
        while True:
            try:
                function, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(owned))
            except BaseException as exc:
                future.set_exception(exc)

    def _fail_pending(self) -> None:
        while True:
            try:
                _, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError(f"{self.name} stopped before the call ran"))

    # -- other threads ---------------------------------------------------------------------

    def submit(self, function: Callable[[Owned], T]) -> Future[T]:
        """Run ``function(owned)`` in the owner's thread; its result comes in the future."""
        if not self._thread.is_alive():
            raise RuntimeError(f"{self.name} is not running (error: {self.error!r})")
        future: Future[T] = Future()
        self._calls.put((function, future))
        return future

    def call(self, function: Callable[[Owned], T], *, timeout: float = 10.0) -> T:
        return self.submit(function).result(timeout)

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop the thread (closing what it owns); re-raises an error from its loop."""
        self._stopping.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"{self.name} did not stop within {timeout} s")
        if self.error is not None:
            raise AssertionError(f"{self.name} failed in its loop") from self.error


class BrokerThread(_Owner[Broker]):
    """A Broker serving in its own thread (``Broker.serve``); reach it with :meth:`call`."""

    def __init__(
        self,
        factory: Callable[[], Broker],
        *,
        name: str = "broker",
        audit: MemoryAuditLog | None = None,
    ) -> None:
        #: The audit log the broker writes to (thread-safe to read), if the test gave one.
        self.audit = audit
        super().__init__(name, factory, ready_timeout=10.0)
        self.endpoint: str = self._owned.endpoints[0]

    def _loop(self, owned: Broker) -> None:
        def until() -> bool:
            self._run_calls(owned)
            return self._stopping.is_set()

        owned.serve(until=until)

    def _finish(self, owned: Broker) -> None:
        owned.close()


class NodeThread(_Owner[Node]):
    """A Node that lives (is made, pumped and closed) in its own thread."""

    def __init__(self, factory: Callable[[], Node], *, name: str) -> None:
        self._closed_on_purpose = threading.Event()
        super().__init__(name, factory, ready_timeout=20.0)
        self.agent_id: str = self._owned.agent_id

    def _loop(self, owned: Node) -> None:
        while not self._stopping.is_set():
            self._run_calls(owned)
            if self._closed_on_purpose.is_set():
                time.sleep(0.005)  # closed by a test: keep serving calls, pump no more
            else:
                owned.pump(0.005)

    def _finish(self, owned: Node) -> None:
        owned.close(timeout=0.5)

    def close_node(self) -> None:
        """Close the node (in its thread) and stop pumping it; calls still run."""
        self._closed_on_purpose.set()
        self.call(lambda node: node.close())


@contextlib.contextmanager
def serving(broker: Broker) -> Iterator[Broker]:
    """Run ``broker`` in a thread of its own for the ``with`` block, then close it. Between
    the two, the test thread may only read what the broker has settled (counters, tables)."""
    stop = threading.Event()
    thread = threading.Thread(target=broker.serve, kwargs={"until": stop.is_set})
    thread.start()
    try:
        yield broker
    finally:
        stop.set()
        thread.join(timeout=10)
        broker.close()


def trusting_node(
    me: Identity, others: Iterable[Identity], directory: Path, endpoint: str, **options: Any
) -> Node:
    """A node for ``me`` through the broker at ``endpoint``, trusting ``others`` (role agent)."""
    trust = TrustStore(directory / f"trust-{me.name}")
    for other in others:
        trust.add(other.public, roles=["agent"])
    return Node(me, trust, broker=endpoint, **options)
