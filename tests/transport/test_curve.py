"""CURVE as an extra hop: allowed and unlisted clients, wrong server keys, inproc refused, keys.

Every test uses its own zmq.Context, because a context has exactly one ZAP handler and the
authenticator of one test must not answer for another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from zmqcomm.errors import EndpointError, ReceiveTimeout, UsageError
from zmqcomm.transport import SocketOptions, bind, curve, open_socket, receive_frames, send_frames
from zmqcomm.transport.curve import (
    CurveAuthenticator,
    CurveKeys,
    bind_curve,
    check_curve_endpoint,
    connect_curve,
    curve_available,
    enable_curve_client,
    enable_curve_server,
)

pytestmark = pytest.mark.skipif(
    not curve_available(), reason="libzmq lacks the 'curve' feature (zmq.has('curve') is False)"
)

#: How long a test waits to be sure that nothing gets through.
QUIET = 0.3

MakeSocket = Callable[[int], zmq.Socket[Any]]


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.term()  # every socket and authenticator is closed by the fixtures that depend on this


@pytest.fixture
def make_socket(context: zmq.Context[Any]) -> Iterator[MakeSocket]:
    opened: list[zmq.Socket[Any]] = []

    def make(kind: int) -> zmq.Socket[Any]:
        sock = open_socket(kind, SocketOptions(linger=0), context=context)
        opened.append(sock)
        return sock

    yield make
    for sock in opened:
        sock.close(linger=0)


@pytest.fixture
def server_keys() -> CurveKeys:
    return CurveKeys.generate()


@pytest.fixture
def client_keys() -> CurveKeys:
    return CurveKeys.generate()


@pytest.fixture
def authenticator(
    context: zmq.Context[Any], client_keys: CurveKeys, make_socket: MakeSocket
) -> Iterator[CurveAuthenticator]:
    # Depends on make_socket so that it stops before the sockets close and the context ends.
    with CurveAuthenticator(context, [client_keys.public]) as auth:
        yield auth


def _server(make_socket: MakeSocket, keys: CurveKeys, endpoint: str = "tcp://127.0.0.1:0") -> Any:
    server = make_socket(zmq.ROUTER)
    return server, bind_curve(server, endpoint, keys)


def _client(make_socket: MakeSocket, endpoint: str, keys: CurveKeys, server_public: bytes) -> Any:
    client = make_socket(zmq.DEALER)
    connect_curve(client, endpoint, keys, server_public)
    return client


def _wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_allowed_client_exchanges_messages(
    transport: str,
    short_dir: str,
    make_socket: MakeSocket,
    authenticator: CurveAuthenticator,
    server_keys: CurveKeys,
    client_keys: CurveKeys,
) -> None:
    endpoint = "tcp://127.0.0.1:0" if transport == "tcp" else f"ipc://{short_dir}/curve.sock"
    server, bound = _server(make_socket, server_keys, endpoint)
    client = _client(make_socket, bound, client_keys, server_keys.public)
    assert server.getsockopt(zmq.MECHANISM) == zmq.CURVE
    assert client.getsockopt(zmq.MECHANISM) == zmq.CURVE

    send_frames(client, [b"ping"])
    routing_id, body = receive_frames(server, timeout=2.0)
    assert body == b"ping"
    send_frames(server, [routing_id, b"pong"])
    assert receive_frames(client, timeout=2.0) == [b"pong"]
    assert authenticator.denied == 0


def test_unlisted_client_gets_nothing_through_and_is_counted(
    make_socket: MakeSocket, authenticator: CurveAuthenticator, server_keys: CurveKeys
) -> None:
    server, bound = _server(make_socket, server_keys)
    stranger = _client(make_socket, bound, CurveKeys.generate(), server_keys.public)
    send_frames(stranger, [b"let me in"])
    with pytest.raises(ReceiveTimeout):
        receive_frames(server, timeout=QUIET)
    assert _wait_for(lambda: authenticator.denied >= 1)


def test_allow_and_deny_at_runtime_apply_to_new_connections(
    make_socket: MakeSocket,
    authenticator: CurveAuthenticator,
    server_keys: CurveKeys,
    client_keys: CurveKeys,
) -> None:
    server, bound = _server(make_socket, server_keys)
    late = CurveKeys.generate()
    refused = _client(make_socket, bound, late, server_keys.public)
    send_frames(refused, [b"hello"], timeout=0)
    assert _wait_for(lambda: authenticator.denied >= 1)
    refused.close(linger=0)
    before = authenticator.denied

    # libzmq does not retry a refused connection (4.3): the client connects again.
    authenticator.allow(late.public)
    admitted = _client(make_socket, bound, late, server_keys.public)
    send_frames(admitted, [b"hello again"])
    assert receive_frames(server, timeout=2.0)[1] == b"hello again"

    authenticator.deny(client_keys.public)
    denied_now = _client(make_socket, bound, client_keys, server_keys.public)
    send_frames(denied_now, [b"still me"], timeout=0)
    assert _wait_for(lambda: authenticator.denied > before)


def test_wrong_server_key_gets_nothing_through(
    make_socket: MakeSocket,
    authenticator: CurveAuthenticator,
    server_keys: CurveKeys,
    client_keys: CurveKeys,
) -> None:
    server, bound = _server(make_socket, server_keys)
    impostor_public = CurveKeys.generate().public
    client = _client(make_socket, bound, client_keys, impostor_public)
    send_frames(client, [b"secret"])
    with pytest.raises(ReceiveTimeout):
        receive_frames(server, timeout=QUIET)


def test_server_without_authenticator_refuses_everyone(
    make_socket: MakeSocket, server_keys: CurveKeys, client_keys: CurveKeys
) -> None:
    # libzmq alone would let any client in (no ZAP handler = allow); ZAP_ENFORCE_DOMAIN stops it.
    server, bound = _server(make_socket, server_keys)
    assert server.getsockopt(zmq.ZAP_ENFORCE_DOMAIN) == 1
    client = _client(make_socket, bound, client_keys, server_keys.public)
    send_frames(client, [b"anyone home?"])
    with pytest.raises(ReceiveTimeout):
        receive_frames(server, timeout=QUIET)


def test_inproc_is_refused(make_socket: MakeSocket, server_keys: CurveKeys) -> None:
    with pytest.raises(UsageError, match="ipc:// or tcp://"):
        check_curve_endpoint("inproc://hop")
    sock = make_socket(zmq.ROUTER)
    with pytest.raises(UsageError, match="inproc"):
        bind_curve(sock, "inproc://hop", server_keys)
    with pytest.raises(UsageError, match="inproc"):
        connect_curve(sock, "inproc://hop", server_keys, server_keys.public)
    assert sock.getsockopt_string(zmq.LAST_ENDPOINT) == ""  # refused before binding

    bound = make_socket(zmq.ROUTER)
    bind(bound, "inproc://already-bound")
    with pytest.raises(UsageError, match="inproc"):
        enable_curve_server(bound, server_keys)
    with pytest.raises(UsageError, match="inproc"):
        enable_curve_client(bound, server_keys, server_keys.public)


def test_checked_endpoints_pass_through() -> None:
    assert check_curve_endpoint("tcp://127.0.0.1:0").scheme == "tcp"
    assert check_curve_endpoint("ipc:///tmp/x.sock").scheme == "ipc"
    with pytest.raises(EndpointError):
        check_curve_endpoint("udp://127.0.0.1:1")


def test_repr_hides_the_secret() -> None:
    keys = CurveKeys.generate()
    for text in (repr(keys), str(keys), f"{keys}"):
        assert keys.secret.decode() not in text
        assert keys.public.decode() in text
        assert "hidden" in text


def test_keys_round_trip_from_secret() -> None:
    keys = CurveKeys.generate()
    assert CurveKeys.from_secret(keys.secret) == keys
    assert CurveKeys.generate() != keys


def test_bad_keys_are_refused_without_echoing_them() -> None:
    keys, other = CurveKeys.generate(), CurveKeys.generate()
    with pytest.raises(UsageError, match="does not belong") as info:
        CurveKeys(public=other.public, secret=keys.secret)
    assert keys.secret.decode() not in str(info.value)
    for bad in (b"short", b"~" * 40, keys.secret.decode()):
        with pytest.raises(UsageError, match="40 bytes of Z85"):
            CurveKeys.from_secret(bad)  # type: ignore[arg-type]


def test_allow_and_deny_edit_the_list(context: zmq.Context[Any]) -> None:
    first, second = CurveKeys.generate().public, CurveKeys.generate().public
    auth = CurveAuthenticator(context, [first])
    auth.allow(second)
    auth.deny(first)
    auth.deny(first)  # denying an unlisted key is not an error
    assert auth.allowed == {second}
    with pytest.raises(UsageError):
        auth.allow(b"not a key")
    with pytest.raises(UsageError, match="domain"):
        CurveAuthenticator(context, [], domain="")


def test_one_authenticator_per_context(context: zmq.Context[Any]) -> None:
    with CurveAuthenticator(context) as auth:
        with pytest.raises(UsageError, match="already running"):
            auth.start()
        with pytest.raises(UsageError, match="one"), CurveAuthenticator(context):
            pass
    auth.stop()  # stopping twice is harmless


def test_missing_curve_is_named(monkeypatch: pytest.MonkeyPatch, context: zmq.Context[Any]) -> None:
    monkeypatch.setattr(curve, "curve_available", lambda: False)
    with pytest.raises(UsageError, match="'curve' feature"):
        CurveKeys.generate()
    with pytest.raises(UsageError, match="'curve' feature"):
        CurveAuthenticator(context).start()


def test_an_authenticator_restarts_at_once_after_stop(
    context: zmq.Context[Any],
    make_socket: MakeSocket,
    server_keys: CurveKeys,
    client_keys: CurveKeys,
) -> None:
    """libzmq releases the ZAP endpoint asynchronously: start() right after stop() waits
    for it instead of taking the old handler for another authenticator."""
    auth = CurveAuthenticator(context, [client_keys.public])
    for _ in range(50):
        auth.start()
        auth.stop()
    replacement = CurveAuthenticator(context, [client_keys.public])
    with replacement:  # a new authenticator on the context, right after the stop
        server, bound = _server(make_socket, server_keys)
        client = _client(make_socket, bound, client_keys, server_keys.public)
        send_frames(client, [b"ping"])
        assert receive_frames(server, timeout=2.0)[1:] == [b"ping"]
        assert replacement.denied == 0


def test_concurrent_starts_run_one_handler(context: zmq.Context[Any]) -> None:
    auth = CurveAuthenticator(context)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            auth.start()
        except UsageError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(errors) == 1 and "already running" in str(errors[0])
    finally:
        auth.stop()
    auth.start()  # stopped cleanly: it can run again
    auth.stop()
