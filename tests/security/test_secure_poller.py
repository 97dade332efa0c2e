"""SecurePoller: the readable sockets to pump, and all of them every ``full_every`` seconds."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq

from zmqcomm.secure_poller import SecurePoller


@dataclass
class Link:
    """What SecurePoller needs from a secure socket: ``.socket``, and its side sockets."""

    name: str
    socket: zmq.Socket[Any]
    peer: zmq.Socket[Any]
    side: zmq.Socket[Any] | None = None
    handled: list[bytes] = field(default_factory=list)

    def side_sockets(self) -> list[zmq.Socket[Any]]:
        return [] if self.side is None else [self.side]

    def on_side_ready(self, side: zmq.Socket[Any]) -> None:
        self.handled.append(side.recv())


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def links() -> Iterator[list[Link]]:
    context: zmq.Context[Any] = zmq.Context()
    made = []
    for name in ("router", "dealer-1", "dealer-2"):
        ours, theirs = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
        ours.bind(f"inproc://poller-{name}")
        theirs.connect(f"inproc://poller-{name}")
        made.append(Link(name, ours, theirs))
    yield made
    for link in made:
        link.socket.close(linger=0)
        link.peer.close(linger=0)
    context.term()


def names(pumped: list[Link]) -> list[str]:
    return [link.name for link in pumped]


def test_the_first_wait_pumps_everyone(links: list[Link]) -> None:
    poller = SecurePoller(links, clock=FakeClock())
    assert names(poller.wait(0)) == ["router", "dealer-1", "dealer-2"]


def test_then_only_the_readable_sockets_until_the_interval_passes(links: list[Link]) -> None:
    clock = FakeClock()
    poller = SecurePoller(links, clock=clock, full_every=0.02)
    poller.wait(0)
    assert poller.wait(0) == []
    links[1].peer.send(b"hello")
    assert names(poller.wait(1.0)) == ["dealer-1"]
    assert names(poller.wait(0)) == ["dealer-1"]  # still unread: still readable
    links[1].socket.recv()
    clock.now += 0.019
    assert poller.wait(0) == []
    clock.now += 0.001
    assert names(poller.wait(0)) == ["router", "dealer-1", "dealer-2"]
    assert poller.wait(0) == []


def test_a_wait_returns_as_soon_as_a_socket_is_readable(links: list[Link]) -> None:
    clock = FakeClock()
    poller = SecurePoller(links, clock=clock)
    poller.wait(0)
    links[2].peer.send(b"hello")
    # A wait of 10 s that returned at once with the readable socket, not a timeout.
    assert names(poller.wait(10.0)) == ["dealer-2"]


@pytest.mark.parametrize(
    ("wait", "milliseconds"),
    [
        (0.0004, 1),  # not 0, which returns at once: the caller would spin
        (-0.5, 0),  # a deadline already past: zmq_poll takes a negative wait as "forever"
        (0.05, 50),
    ],
)
def test_the_wait_reaches_zmq_poll_rounded_up_and_never_negative(
    links: list[Link], monkeypatch: pytest.MonkeyPatch, wait: float, milliseconds: int
) -> None:
    poller = SecurePoller(links, clock=FakeClock())
    asked: list[int] = []
    poll = poller._poller.poll

    def recording_poll(timeout: int) -> Any:
        asked.append(timeout)
        return poll(timeout)

    monkeypatch.setattr(poller._poller, "poll", recording_poll)
    poller.wait(wait)
    assert asked == [milliseconds]


def test_sockets_added_and_removed_later(links: list[Link]) -> None:
    clock = FakeClock()
    poller = SecurePoller(links[:1], clock=clock)
    poller.wait(0)
    poller.add(links[2])
    links[2].peer.send(b"hello")
    assert names(poller.wait(1.0)) == ["dealer-2"]
    poller.remove(links[2])
    assert poller.wait(0) == []  # still readable, but no longer watched
    clock.now += 1.0
    assert names(poller.wait(0)) == ["router"]


def test_a_side_socket_wakes_the_wait_and_is_handed_over_at_once() -> None:
    """A dealer's connection events arrive on its monitor socket. The poller watched only
    the data sockets, so a reconnect waited out the caller's whole timeout before its
    handshake started (52 ms for a node pumping 0.05 s at a time)."""
    context: zmq.Context[Any] = zmq.Context()
    sockets = [context.socket(zmq.PAIR) for _ in range(4)]
    try:
        data, data_peer, monitor, monitor_peer = sockets
        data.bind("inproc://side-data")
        data_peer.connect("inproc://side-data")
        monitor.bind("inproc://side-monitor")
        monitor_peer.connect("inproc://side-monitor")
        link = Link("dealer", data, data_peer, side=monitor)
        poller = SecurePoller([link], clock=FakeClock(), full_every=1e9)
        poller.wait(0)  # the first wait pumps everyone
        monitor_peer.send(b"connected")
        assert names(poller.wait(10.0)) == ["dealer"]
        assert link.handled == [b"connected"]  # drained: the next wait does not spin
        assert poller.wait(0) == []
        poller.remove(link)
        monitor_peer.send(b"after removal")
        assert poller.wait(0.05) == []
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()
