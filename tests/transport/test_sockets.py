"""Sockets on every transport: round trips, big messages, full queues, restarts, bad input."""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from zmqcomm.errors import (
    AddressInUseError,
    ClosedError,
    ConnectError,
    EndpointError,
    QueueFullError,
    ReceiveTimeout,
    SendTimeout,
    TransportError,
    UsageError,
)
from zmqcomm.transport import (
    SocketOptions,
    bind,
    connect,
    open_socket,
    receive_frames,
    send_frames,
    shared_context,
)
from zmqcomm.transport.sockets import _SharedContext, poll_ms
from zmqcomm.wire import MessageType, WireCodec

MakeSocket = Callable[..., zmq.Socket[Any]]


def _pair(make_socket: MakeSocket, endpoint: str, **options: Any) -> tuple[Any, Any, str]:
    server = make_socket(zmq.DEALER, **options)
    client = make_socket(zmq.DEALER, **options)
    bound = bind(server, endpoint)
    connect(client, bound)
    return server, client, bound


def test_bind_reports_the_real_endpoint(make_socket: MakeSocket, endpoint: str) -> None:
    server = make_socket(zmq.DEALER)
    bound = bind(server, endpoint)
    if endpoint.startswith("tcp"):
        assert bound.startswith("tcp://127.0.0.1:")
        assert int(bound.rsplit(":", 1)[1]) > 0
    else:
        assert bound == endpoint


def test_codec_round_trip_and_multipart(make_socket: MakeSocket, endpoint: str) -> None:
    server, client, _ = _pair(make_socket, endpoint)
    codec = WireCodec()
    send_frames(client, codec.encode(MessageType.REQUEST, {"n": 1}, topic="t"))
    message = codec.decode(receive_frames(server, timeout=5))
    assert message.payload == {"n": 1}
    assert message.header.topic == "t"
    send_frames(server, [b"a", b"", b"c" * 100_000])
    assert receive_frames(client, timeout=5) == [b"a", b"", b"c" * 100_000]


def test_sixteen_mebibyte_message(make_socket: MakeSocket, endpoint: str) -> None:
    server, client, _ = _pair(make_socket, endpoint)
    blob = os.urandom(16 * 1024 * 1024)
    codec = WireCodec()
    send_frames(client, codec.encode(MessageType.DATA, blob))
    assert codec.decode(receive_frames(server, timeout=10)).payload == blob


def test_oversized_frame_is_dropped_by_the_receiver(
    make_socket: MakeSocket, short_dir: str
) -> None:
    # MAXMSGSIZE applies to connections (not inproc): the receiver drops the peer, not memory.
    server = make_socket(zmq.DEALER, max_message_size=1024)
    client = make_socket(zmq.DEALER)
    connect(client, bind(server, f"ipc://{short_dir}/big.sock"))
    send_frames(client, [b"x" * 4096])
    with pytest.raises(ReceiveTimeout):
        receive_frames(server, timeout=0.3)


def test_full_queue_raises_a_clear_error_without_blocking(
    make_socket: MakeSocket, endpoint: str
) -> None:
    # Nobody reads the server side, so the client's queue (and the server's) fill up.
    _server, client, _ = _pair(make_socket, endpoint, send_hwm=10, receive_hwm=10)
    sent = 0
    with pytest.raises(QueueFullError, match="high-water mark") as caught:
        for _ in range(1_000_000):
            send_frames(client, [b"m" * 64], timeout=0)
            sent += 1
    # The HWMs bound what is buffered; libzmq adds its socket and pipe buffers on top, so the
    # bound is loose but far below the million attempted.
    assert 10 <= sent < 100_000
    assert caught.value.reason == "queue_full"
    assert isinstance(caught.value.__cause__, zmq.Again)


def test_full_queue_with_a_timeout_raises_send_timeout(make_socket: MakeSocket) -> None:
    client = make_socket(zmq.DEALER, send_hwm=1)  # connected to nobody: nothing can leave
    with pytest.raises(SendTimeout) as caught:
        send_frames(client, [b"m"], timeout=0.05)
    assert isinstance(caught.value, TimeoutError)


def test_a_timeout_for_one_send_leaves_the_sockets_own_in_place(make_socket: MakeSocket) -> None:
    """It used to be reset to -1 (block for ever) after the call."""
    client = make_socket(zmq.DEALER, send_hwm=1)
    client.setsockopt(zmq.SNDTIMEO, 200)
    with pytest.raises(SendTimeout):
        send_frames(client, [b"m"], timeout=0.05)
    assert client.getsockopt(zmq.SNDTIMEO) == 200


def test_send_timeout_of_nan_is_refused_and_sends_nothing(
    make_socket: MakeSocket, endpoint: str
) -> None:
    server, client, _ = _pair(make_socket, endpoint)
    with pytest.raises(UsageError, match="send timeout"):
        send_frames(client, [b"m"], timeout=float("nan"))
    with pytest.raises(ReceiveTimeout):
        receive_frames(server, timeout=0.05)


def test_a_negative_send_timeout_has_run_out_and_never_blocks(make_socket: MakeSocket) -> None:
    client = make_socket(zmq.DEALER, send_hwm=1)  # connected to nobody: nothing can leave
    with pytest.raises(QueueFullError):
        send_frames(client, [b"m"], timeout=-0.5)


def test_full_queue_memory_stays_bounded(make_socket: MakeSocket, short_dir: str) -> None:
    # 64 KiB messages into a stalled peer: a bounded queue means refusals, not growth.
    _server, client, _ = _pair(
        make_socket, f"ipc://{short_dir}/mem.sock", send_hwm=4, receive_hwm=4
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused = 0
    for _ in range(2000):  # 125 MiB if nothing were bounded
        try:
            send_frames(client, [b"z" * 65536], timeout=0)
        except QueueFullError:
            refused += 1
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert refused > 1500
    assert grown_kib < 64 * 1024


def test_receive_timeout(make_socket: MakeSocket, endpoint: str) -> None:
    server, _client, _ = _pair(make_socket, endpoint)
    with pytest.raises(ReceiveTimeout, match=r"within 0\.05 s"):
        receive_frames(server, timeout=0.05)
    # A deadline already past (deadline - now < 0) times out at once, never "forever".
    with pytest.raises(ReceiveTimeout):
        receive_frames(server, timeout=-0.5)


@pytest.mark.parametrize(
    ("seconds", "milliseconds"),
    [
        (0.0, 0),
        (0.0004, 1),
        (0.001, 1),
        (0.0011, 2),
        (0.05, 50),
        (2.5, 2500),
        (-0.001, 0),
        (-3, 0),
        (float("-inf"), 0),
        (1e300, 2**31 - 1),
    ],
)
def test_poll_ms_rounds_up_and_never_goes_negative(seconds: float, milliseconds: int) -> None:
    assert poll_ms(seconds) == milliseconds


def test_poll_ms_of_infinity_is_forever_and_of_nan_a_usage_error() -> None:
    assert poll_ms(float("inf")) == -1
    with pytest.raises(UsageError, match="NaN"):
        poll_ms(float("nan"))


def test_reconnect_after_the_peer_restarts(make_socket: MakeSocket, short_dir: str) -> None:
    endpoints = [f"ipc://{short_dir}/restart.sock", "tcp://127.0.0.1:0"]
    for endpoint in endpoints:
        first = make_socket(zmq.DEALER)
        bound = bind(first, endpoint)
        client = make_socket(zmq.DEALER)
        connect(client, bound)
        send_frames(client, [b"before"])
        assert receive_frames(first, timeout=5) == [b"before"]
        first.close(linger=0)
        # The peer comes back on the same address; the client reconnects by itself.
        second = make_socket(zmq.DEALER)
        _bind_when_released(second, bound)
        # A message sent while the old connection is being torn down can die with it (ZeroMQ
        # does not retransmit), so retry like a real client until the new peer answers.
        assert _send_until_received(client, second, b"after") == [b"after"]


def _send_until_received(client: Any, server: Any, body: bytes) -> list[bytes]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        send_frames(client, [body], timeout=1)
        try:
            return receive_frames(server, timeout=0.1)
        except ReceiveTimeout:
            continue
    raise AssertionError("the client never reached the restarted peer")


def _bind_when_released(sock: Any, endpoint: str) -> None:
    # libzmq closes a listener in its I/O thread, a moment after close() returns.
    deadline = time.monotonic() + 5
    while True:
        try:
            bind(sock, endpoint)
            return
        except AddressInUseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_address_in_use(make_socket: MakeSocket, short_dir: str) -> None:
    first = make_socket(zmq.DEALER)
    bound = bind(first, "tcp://127.0.0.1:0")
    with pytest.raises(AddressInUseError, match="already in use") as caught:
        bind(make_socket(zmq.DEALER), bound)
    assert isinstance(caught.value.__cause__, zmq.ZMQError)
    name = "inproc://taken"
    bind(make_socket(zmq.DEALER), name)
    with pytest.raises(AddressInUseError):
        bind(make_socket(zmq.DEALER), name)


def test_ipc_path_a_live_process_serves_is_not_taken_over(
    make_socket: MakeSocket, short_dir: str
) -> None:
    # libzmq itself would unlink the first socket's file and bind anew, leaving the first
    # listener running but unreachable.
    endpoint = f"ipc://{short_dir}/taken.sock"
    first = make_socket(zmq.PULL)
    bind(first, endpoint)
    with pytest.raises(AddressInUseError, match="another process is listening"):
        bind(make_socket(zmq.PULL), endpoint)
    client = make_socket(zmq.PUSH)
    connect(client, endpoint)
    send_frames(client, [b"still here"], timeout=1)
    assert receive_frames(first, timeout=5) == [b"still here"]


def test_ipc_path_closed_here_can_be_bound_again_at_once(
    make_socket: MakeSocket, short_dir: str
) -> None:
    # libzmq closes a listener in its I/O thread, a moment after close() returns: the check
    # for a live listener must not take that moment for another process.
    endpoint = f"ipc://{short_dir}/again.sock"
    for _ in range(20):
        first = make_socket(zmq.PULL)
        bind(first, endpoint)
        first.close(linger=0)
    bind(make_socket(zmq.PULL), endpoint)


def test_ipc_socket_file_left_by_a_dead_process_is_replaced(
    make_socket: MakeSocket, short_dir: str
) -> None:
    path = f"{short_dir}/stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(path)  # a socket file nobody listens on, as a killed process leaves it
    leftover.close()
    server = make_socket(zmq.PULL)
    bind(server, f"ipc://{path}")
    client = make_socket(zmq.PUSH)
    connect(client, f"ipc://{path}")
    send_frames(client, [b"hello"], timeout=1)
    assert receive_frames(server, timeout=5) == [b"hello"]


@pytest.mark.parametrize(
    "endpoint", ["udp://127.0.0.1:1", "tcp://127.0.0.1", "ipc://", "tcp://[::1:80"]
)
def test_bad_endpoints_never_reach_libzmq(make_socket: MakeSocket, endpoint: str) -> None:
    sock = make_socket(zmq.DEALER)
    with pytest.raises(EndpointError):
        bind(sock, endpoint)
    with pytest.raises(EndpointError):
        connect(sock, endpoint)


def test_connect_to_a_wildcard_is_refused(make_socket: MakeSocket) -> None:
    with pytest.raises(EndpointError, match="name a host and a port"):
        connect(make_socket(zmq.DEALER), "tcp://127.0.0.1:0")


def test_bind_to_an_address_not_on_this_host(make_socket: MakeSocket) -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never assigned, and bind sends nothing.
    with pytest.raises(ConnectError, match="not on this machine"):
        bind(make_socket(zmq.DEALER), "tcp://192.0.2.1:0")


def test_ipv6_loopback_when_available(make_socket: MakeSocket) -> None:
    server = make_socket(zmq.DEALER)
    try:
        bound = bind(server, "tcp://[::1]:0")
    except ConnectError as exc:
        pytest.skip(f"IPv6 loopback not available here: {exc}")
    client = make_socket(zmq.DEALER)
    connect(client, bound)
    send_frames(client, [b"six"])
    assert receive_frames(server, timeout=5) == [b"six"]


def test_router_mandatory_makes_unknown_peers_an_error(make_socket: MakeSocket) -> None:
    router = make_socket(zmq.ROUTER)
    bind(router, "inproc://mandatory")
    with pytest.raises(TransportError, match="routing id") as caught:
        send_frames(router, [b"nobody", b"hello"], timeout=0)
    assert caught.value.reason == "unroutable"


def test_closed_socket_is_a_closed_error(make_socket: MakeSocket) -> None:
    sock = make_socket(zmq.DEALER)
    sock.close(linger=0)
    with pytest.raises(ClosedError):
        send_frames(sock, [b"x"], timeout=0)


def test_options_are_applied_and_checked() -> None:
    options = SocketOptions(linger=0.25, send_hwm=7, receive_hwm=9, max_message_size=1000)
    sock = open_socket(zmq.DEALER, options)
    try:
        assert sock.getsockopt(zmq.LINGER) == 250
        assert sock.getsockopt(zmq.SNDHWM) == 7
        assert sock.getsockopt(zmq.RCVHWM) == 9
        assert sock.getsockopt(zmq.MAXMSGSIZE) == 1000
        assert sock.getsockopt(zmq.HEARTBEAT_IVL) == 5000
    finally:
        sock.close(linger=0)
    with pytest.raises(UsageError, match="linger"):
        SocketOptions(linger=-1)
    with pytest.raises(UsageError, match="high-water"):
        SocketOptions(send_hwm=-5)


def test_one_context_per_process_and_a_fresh_one_after_fork() -> None:
    assert shared_context() is shared_context()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report whether it got a different context object
        same = shared_context() is not None and id(shared_context()) == parent_id
        os.write(write_end, b"same" if same else b"new")
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    assert os.read(read_end, 10) == b"new"
    os.close(read_end)


parent_id = id(shared_context())


def test_shared_context_allows_more_sockets_than_libzmqs_default_when_files_allow() -> None:
    # libzmq stops at 1023 sockets by default: a node with a thousand direct links failed
    # on a machine whose open-files limit was far higher.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    if soft != resource.RLIM_INFINITY and soft < wanted + 100:
        if hard != resource.RLIM_INFINITY and hard < wanted + 100:
            pytest.fail(f"this test needs an open-files hard limit above {wanted + 100}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted + 100, hard))
    context = _SharedContext().get()
    sockets = []
    try:
        for _ in range(wanted):
            sockets.append(open_socket(zmq.DEALER, context=context))
        assert len(sockets) == wanted
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_too_many_sockets_is_a_clear_error() -> None:
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 2)
    sockets = [open_socket(zmq.DEALER, context=context) for _ in range(2)]
    try:
        with pytest.raises(ConnectError, match="ulimit -n"):
            open_socket(zmq.DEALER, context=context)
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()
