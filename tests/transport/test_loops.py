"""The sync and asyncio loops: drain bursts, fire timers, count bad peer input, close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from zmqcomm.errors import ClosedError, RemoteProtocolError, UsageError
from zmqcomm.transport import AsyncLoop, BatchingSender, Loop, bind, connect, send_frames
from zmqcomm.wire import MessageType, WireCodec

MakeSocket = Callable[..., zmq.Socket[Any]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Alarm:
    """A timer source that fires once at ``at``."""

    def __init__(self, at: float) -> None:
        self.at: float | None = at
        self.fired: list[float] = []

    def next_deadline(self) -> float | None:
        return self.at

    def on_timer(self, now: float | None = None) -> None:
        assert now is not None
        self.fired.append(now)
        self.at = None


def _pull_push(make_socket: MakeSocket, endpoint: str) -> tuple[Any, Any]:
    pull = make_socket(zmq.PULL)
    push = make_socket(zmq.PUSH)
    connect(push, bind(pull, endpoint))
    return pull, push


def test_sync_loop_drains_a_burst_in_one_wakeup(make_socket: MakeSocket, endpoint: str) -> None:
    pull, push = _pull_push(make_socket, endpoint)
    for index in range(500):
        send_frames(push, [str(index).encode()])
    got: list[bytes] = []
    with Loop(max_burst=10_000) as loop:
        loop.add_reader(pull, lambda frames: got.append(frames[0]))
        assert loop.run(lambda: len(got) == 500, timeout=5)
    assert got == [str(i).encode() for i in range(500)]
    assert loop.received == 500


def test_max_burst_bounds_one_drain(make_socket: MakeSocket) -> None:
    pull, push = _pull_push(make_socket, "inproc://burst")
    for _ in range(50):
        send_frames(push, [b"x"])
    loop = Loop(max_burst=20)
    loop.add_reader(pull, lambda frames: None)
    assert loop.run_once(timeout=1) == 20
    assert loop.run_once(timeout=1) == 20
    assert loop.run_once(timeout=1) == 10
    loop.close(close_sockets=False)


def test_peer_errors_are_counted_and_the_loop_goes_on(make_socket: MakeSocket) -> None:
    pull, push = _pull_push(make_socket, "inproc://garbage")
    codec = WireCodec()
    good: list[object] = []

    def handle(frames: list[bytes]) -> None:
        good.append(codec.decode(frames).payload)

    send_frames(push, [b"not a zmqcomm frame"])
    send_frames(push, codec.encode(MessageType.DATA, "fine"))
    send_frames(push, [b"ZC\x09" + bytes(60)])
    with Loop() as loop:
        loop.add_reader(pull, handle)
        assert loop.run(lambda: loop.received == 3, timeout=5)
    assert good == ["fine"]
    assert sum(loop.rejected.values()) == 2
    assert loop.rejected["bad_magic"] == 1


def test_handler_bugs_propagate(make_socket: MakeSocket) -> None:
    pull, push = _pull_push(make_socket, "inproc://bug")
    send_frames(push, [b"x"])

    def broken(frames: list[bytes]) -> None:
        raise KeyError("bug")

    with Loop() as loop:
        loop.add_reader(pull, broken)
        with pytest.raises(KeyError):
            loop.run(timeout=2)


def test_timer_fires_at_its_deadline_with_a_fake_clock() -> None:
    clock = FakeClock()
    alarm = Alarm(at=1000.5)
    loop = Loop(clock=clock)
    loop.add_timer(alarm)
    loop.run_once(timeout=0)
    assert alarm.fired == []
    clock.now = 1000.5
    loop.run_once(timeout=0)
    assert alarm.fired == [1000.5]
    assert loop.next_deadline() is None
    loop.close()


def test_the_wait_is_cut_short_by_the_next_timer() -> None:
    alarm = Alarm(at=0.0)
    loop = Loop()
    alarm.at = loop._clock() + 0.02
    loop.add_timer(alarm)
    assert loop.run(lambda: bool(alarm.fired), timeout=2)
    loop.close()


def test_batching_sender_flushes_on_the_loop_timer(make_socket: MakeSocket) -> None:
    pull, push = _pull_push(make_socket, "inproc://batching")
    codec = WireCodec()
    sender = BatchingSender(push.send_multipart, codec, max_delay=0.005)
    received: list[object] = []
    with Loop() as loop:
        loop.add_reader(pull, lambda frames: received.extend(codec.decode(frames).payloads))
        loop.add_timer(sender)
        for index in range(10):
            sender.send(MessageType.DATA, index)
        assert loop.run(lambda: len(received) == 10, timeout=5)
    assert received == list(range(10))
    assert sender.frames_sent == 1


def test_closed_loop_refuses_work(make_socket: MakeSocket) -> None:
    pull = make_socket(zmq.PULL)
    loop = Loop()
    loop.add_reader(pull, lambda frames: None)
    loop.close()
    assert pull.closed
    with pytest.raises(ClosedError):
        loop.run_once(0)
    with pytest.raises(ClosedError):
        loop.add_reader(make_socket(zmq.PULL), lambda frames: None)
    loop.close()  # closing twice is harmless


def test_bad_burst_size_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="max_burst"):
        Loop(max_burst=0)


def test_async_loop_drains_and_shares_the_event_loop(
    make_socket: MakeSocket, endpoint: str
) -> None:
    pull, push = _pull_push(make_socket, endpoint)
    got: list[bytes] = []
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    async def main() -> bool:
        task = asyncio.create_task(ticker())
        async with AsyncLoop(max_burst=64) as loop:
            loop.add_reader(pull, lambda frames: got.append(frames[0]))
            for index in range(2000):
                send_frames(push, [index.to_bytes(4, "big")])
            done = await loop.run(lambda: len(got) == 2000, timeout=5)
        task.cancel()
        return done

    assert asyncio.run(main())
    assert got == [i.to_bytes(4, "big") for i in range(2000)]
    assert ticks > 0


def test_async_loop_counts_peer_errors_and_fires_timers(make_socket: MakeSocket) -> None:
    pull, push = _pull_push(make_socket, "inproc://async-errors")
    alarm = Alarm(at=0.0)

    def reject(frames: list[bytes]) -> None:
        raise RemoteProtocolError("junk", reason="junk")

    async def main() -> AsyncLoop:
        loop = AsyncLoop()
        alarm.at = loop._clock() + 0.01
        loop.add_timer(alarm)
        loop.add_reader(pull, reject)
        send_frames(push, [b"x"])
        await loop.run(lambda: loop.received == 1 and bool(alarm.fired), timeout=5)
        loop.close()
        return loop

    loop = asyncio.run(main())
    assert loop.rejected["junk"] == 1
    assert len(alarm.fired) == 1


def test_async_run_times_out() -> None:
    async def proper() -> bool:
        async with AsyncLoop() as loop:
            return await loop.run(lambda: False, timeout=0.05)

    assert asyncio.run(proper()) is False


def test_a_negative_wait_returns_at_once_in_both_loops(make_socket: MakeSocket) -> None:
    # A caller's "deadline - now" once the deadline passed; zmq_poll would wait forever.
    quiet = make_socket(zmq.PULL)
    bind(quiet, "inproc://negative-wait")
    with Loop() as loop:
        loop.add_reader(quiet, lambda frames: None)
        assert loop.run_once(timeout=-0.5) == 0

    async def main() -> int:
        async with AsyncLoop() as loop:
            loop.add_reader(quiet, lambda frames: None)
            return await asyncio.wait_for(loop.run_once(timeout=-0.5), 5)

    assert asyncio.run(main()) == 0
