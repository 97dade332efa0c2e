from __future__ import annotations

import pytest
import zmq

from zmqcomm.errors import ClosedError, EndpointError, UsageError
from zmqcomm.transport import (
    ConnectionPool,
    SocketOptions,
    bind,
    open_socket,
    receive_frames,
    send_frames,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _pool(clock: FakeClock, **kwargs: object) -> ConnectionPool:
    return ConnectionPool(options=SocketOptions(linger=0), clock=clock, **kwargs)  # type: ignore[arg-type]


def test_one_socket_per_endpoint_and_it_delivers() -> None:
    server = open_socket(zmq.DEALER, SocketOptions(linger=0))
    try:
        endpoint = bind(server, "tcp://127.0.0.1:0")
        with _pool(FakeClock()) as pool:
            sock = pool.get(endpoint)
            assert pool.get(endpoint) is sock
            assert endpoint in pool
            assert len(pool) == 1
            sock.send(b"via pool")
            assert receive_frames(server, timeout=5) == [b"via pool"]
    finally:
        server.close(linger=0)


def test_least_recently_used_socket_is_closed_when_full() -> None:
    clock = FakeClock()
    pool = _pool(clock, max_sockets=2)
    a = pool.get("inproc://a")
    clock.now = 1
    pool.get("inproc://b")
    clock.now = 2
    assert pool.get("inproc://a") is a  # a is now the most recently used
    clock.now = 3
    pool.get("inproc://c")
    assert list(pool) == ["inproc://a", "inproc://c"]
    assert pool.evicted == 1
    assert pool.opened == 3
    pool.close()


def test_idle_sockets_are_pruned_on_the_timer() -> None:
    clock = FakeClock()
    pool = _pool(clock, idle_timeout=10.0)
    old = pool.get("inproc://old")
    clock.now = 6
    pool.get("inproc://new")
    assert pool.next_deadline() == 10.0
    clock.now = 10
    pool.on_timer(clock.now)
    assert list(pool) == ["inproc://new"]
    assert old.closed
    assert pool.next_deadline() == 16.0
    assert pool.prune(now=100) == 1
    assert pool.next_deadline() is None
    pool.close()


def test_endpoints_are_normalised_and_checked() -> None:
    pool = _pool(FakeClock())
    first = pool.get("tcp://[0::1]:5999")
    assert pool.get("tcp://[::1]:5999") is first
    with pytest.raises(EndpointError):
        pool.get("tcp://nowhere")
    pool.discard("tcp://[::1]:5999")
    assert len(pool) == 0
    assert first.closed
    pool.close()


def test_closed_pool_and_bad_settings() -> None:
    pool = _pool(FakeClock())
    pool.close()
    with pytest.raises(ClosedError):
        pool.get("inproc://x")
    with pytest.raises(UsageError, match="max_sockets"):
        _pool(FakeClock(), max_sockets=0)
    with pytest.raises(UsageError, match="idle_timeout"):
        _pool(FakeClock(), idle_timeout=0)


def test_a_failing_get_leaves_the_pool_and_its_sockets_alone() -> None:
    with _pool(FakeClock(), max_sockets=1) as pool:
        healthy = pool.get("inproc://pool-healthy")
        with pytest.raises(EndpointError):
            pool.get("tcp://127.0.0.1:0")  # parses, but connect() refuses port 0
        assert not healthy.closed
        assert list(pool) == ["inproc://pool-healthy"]
        assert pool.evicted == 0 and pool.opened == 1
        assert pool.get("inproc://pool-healthy") is healthy


def test_sending_on_an_evicted_socket_is_a_closed_error() -> None:
    with _pool(FakeClock(), max_sockets=1) as pool:
        first = pool.get("inproc://pool-first")
        pool.get("inproc://pool-second")
        assert first.closed and pool.evicted == 1
        with pytest.raises(ClosedError):
            send_frames(first, [b"hello"])
