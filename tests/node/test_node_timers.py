"""Node.pump waits no longer than the node's own next timer: a tunnel's handshake retry,
messages held for the broker link, the keepalive (zmqcomm/node/node.py, ``wait_time``).

The clocks are frozen once the node is connected, and the waits are the values the node
computed (what it hands its poller), not elapsed time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from zmqcomm.node import Node, aio
from zmqcomm.node.direct_links import Link
from zmqcomm.node.hop_outbox import HELD_RETRY, KEEPALIVE
from zmqcomm.node.node import TIMER_TICK

from .conftest import Bus
from .support import BrokerThread

MakeNode = Callable[..., Node]


class Clock:
    """Follows ``source`` until frozen; then reads ``now``, which the test sets."""

    def __init__(self, source: Callable[[], float]) -> None:
        self.source = source
        self.now: float | None = None

    def freeze(self) -> float:
        self.now = self.source()
        return self.now

    def __call__(self) -> float:
        return self.source() if self.now is None else self.now


class Frozen:
    """A node through the broker, its clocks frozen, and every wait it asks its poller for."""

    def __init__(self, node: Node, mono: Clock, wall: Clock) -> None:
        self.node, self.mono, self.wall = node, mono, wall
        self.waits: list[float] = []
        real_wait = node._poller.wait

        def wait(timeout: float) -> list[Link]:
            self.waits.append(timeout)
            return real_wait(timeout)

        node._poller.wait = wait  # type: ignore[method-assign]
        mono.freeze()
        wall.freeze()


@pytest.fixture
def frozen(bus: Bus, broker: BrokerThread, make_node: MakeNode) -> Iterator[Frozen]:
    mono, wall = Clock(time.monotonic), Clock(time.time)
    node = make_node(
        bus.agents["alice"],
        bus.trust("alice"),
        broker=broker.endpoint,
        clock=mono,
        wall_clock=wall,
    )
    yield Frozen(node, mono, wall)


def test_a_pump_waits_only_until_a_tunnel_handshake_retry_is_due(bus: Bus, frozen: Frozen) -> None:
    node = frozen.node
    node.send(bus.id("bob"), "hello")  # bob is offline: a handshake starts, with a retry timer
    assert node._tunnels is not None
    deadline = node._tunnels.next_deadline()
    assert deadline is not None
    frozen.wall.now = deadline - 0.25
    node.pump(1.0)
    assert frozen.waits[0] == pytest.approx(0.25)


def test_a_due_tunnel_timer_is_run_at_once_and_then_does_not_spin(
    frozen: Frozen, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = frozen.node
    assert node._tunnels is not None
    ran: list[float] = []

    def on_timer(*, now: float) -> list[object]:
        ran.append(now)
        return []  # a deadline its timer does not move

    past = frozen.wall() - 1.0
    monkeypatch.setattr(node._tunnels, "next_deadline", lambda now=None: past)
    monkeypatch.setattr(node._tunnels, "on_timer", on_timer)
    node.pump(1.0)
    assert frozen.waits == [0.0]  # due: no wait, and the timer ran in that pump
    assert len(ran) == 1
    node.pump(1.0)
    # Still due (stuck): a tick, not a loop of pumps that return at once.
    assert frozen.waits[1] == pytest.approx(TIMER_TICK)
    frozen.mono.now = frozen.mono() + TIMER_TICK
    assert node.wait_time(1.0) == 0.0


def test_a_pump_waits_only_until_held_messages_are_offered_again(
    bus: Bus, frozen: Frozen, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = frozen.node
    assert node._broker is not None and node._outbox is not None
    monkeypatch.setattr(node._broker, "writable", lambda: False)  # the link's queue is full
    node.send(bus.id("bob"), "hello")
    assert len(node._outbox) == 1  # held
    node.pump(1.0)
    assert frozen.waits[0] == pytest.approx(HELD_RETRY)
    assert len(node._outbox) == 1  # still no room: no PING piled up behind it either
    monkeypatch.undo()
    frozen.mono.now = frozen.mono() + HELD_RETRY
    node.pump(1.0)
    assert frozen.waits[1] == 0.0
    assert len(node._outbox) == 0


def test_a_pump_waits_only_until_the_keepalive_is_due(frozen: Frozen) -> None:
    node = frozen.node
    assert node._outbox is not None
    frozen.mono.now = node._outbox.last_sent + KEEPALIVE - 0.5
    node.pump(1.0)
    assert frozen.waits[0] == pytest.approx(0.5)


def test_a_pump_with_no_timer_due_waits_its_whole_timeout(frozen: Frozen) -> None:
    frozen.node.pump(0.5)
    assert frozen.waits == [0.5]
    frozen.node.pump(0.0)
    assert frozen.waits[1] == 0.0


def test_asyncio_waits_are_cut_short_by_the_same_timers(
    bus: Bus, frozen: Frozen, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = frozen.node
    node.send(bus.id("bob"), "hello")
    assert node._tunnels is not None
    deadline = node._tunnels.next_deadline()
    assert deadline is not None
    frozen.wall.now = deadline - 0.02
    waited: list[float] = []
    real_wait_for = asyncio.wait_for

    async def wait_for(awaitable: object, timeout: float) -> object:
        waited.append(timeout)
        return await real_wait_for(awaitable, timeout)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio, "wait_for", wait_for)
    asyncio.run(aio.wait_for_input(node, 1.0))
    assert waited == [pytest.approx(0.02)]
