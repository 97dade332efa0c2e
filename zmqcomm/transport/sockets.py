"""One socket factory with safe defaults, and the boundary where pyzmq errors are translated.

Every zmqcomm socket comes from :func:`open_socket` on the process's one shared
:class:`zmq.Context`. Bind, connect, send and receive go through the functions here so that a
:class:`zmq.ZMQError` never reaches the caller: it becomes a :mod:`zmqcomm.errors` exception
with the original chained and a message that says what to do.
"""

from __future__ import annotations

import errno
import math
import os
import resource
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import zmq

from zmqcomm.checks import check_count, check_seconds, check_timeout
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
from zmqcomm.transport.endpoints import (
    parse_endpoint,
    prepare_ipc_directory,
    refuse_live_ipc_socket,
    unresolved_host_hint,
)
from zmqcomm.wire.limits import DEFAULT_LIMITS
from zmqcomm.wire.payload import Buffer

#: The largest single ZeroMQ frame a zmqcomm socket accepts: the largest frame the wire format
#: allows (an out-of-band tensor frame). Bigger frames are dropped by libzmq before they are
#: buffered, which bounds memory per peer.
DEFAULT_MAX_MESSAGE_SIZE = max(DEFAULT_LIMITS.max_frame_size, DEFAULT_LIMITS.max_extra_frame_size)


#: About 24 days: what a 32-bit ``int`` of milliseconds holds (socket options, zmq_poll).
_LONGEST_POLL_MS = 2**31 - 1
_LONGEST_S = _LONGEST_POLL_MS / 1000


@dataclass(frozen=True)
class SocketOptions:
    """Options applied to every socket :func:`open_socket` makes. Times are in seconds."""

    #: How long close() may wait to deliver queued messages. Short, so a process exits
    #: promptly even when a peer is gone; zmqcomm flushes its own queues before closing.
    linger: float = 1.0
    #: High-water marks in messages (libzmq's default is 1000). Together with
    #: ``max_message_size`` they bound the memory a slow peer can hold.
    send_hwm: int = 10_000
    receive_hwm: int = 10_000
    #: Largest frame accepted from a peer; bigger ones are dropped by libzmq. ``-1`` disables.
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    reconnect_interval: float = 0.1
    reconnect_interval_max: float = 5.0
    #: ZMTP heartbeats, applied to tcp connections (ipc and inproc peers die with their
    #: process, which libzmq notices by itself).
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    #: Allow IPv6 on this socket. Set automatically when an endpoint is an IPv6 address.
    ipv6: bool = False
    #: ROUTER only: raise instead of silently dropping a message to an unknown peer.
    router_mandatory: bool = True

    def __post_init__(self) -> None:
        # libzmq takes these as int milliseconds; the heartbeat timeout also goes out as the
        # peer's TTL, which ZMTP carries in deciseconds in 16 bits (6553.5 s at most).
        for name, longest in (
            ("linger", _LONGEST_S),
            ("reconnect_interval", _LONGEST_S),
            ("reconnect_interval_max", _LONGEST_S),
            ("heartbeat_interval", _LONGEST_S),
            ("heartbeat_timeout", 6553.0),
        ):
            check_seconds(getattr(self, name), f"socket option {name}", maximum=longest)
        for name in ("send_hwm", "receive_hwm"):
            check_count(getattr(self, name), f"the {name} high-water mark (0 means no limit)")

    def with_changes(self, **changes: Any) -> SocketOptions:
        return replace(self, **changes)


DEFAULT_SOCKET_OPTIONS = SocketOptions()


class _SharedContext:
    """Holds the process's one Context, replaced after ``fork()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._context: zmq.Context[Any] | None = None
        self._pid = -1

    def get(self) -> zmq.Context[Any]:
        pid = os.getpid()
        with self._lock:
            if self._context is None or self._pid != pid or self._context.closed:
                self._context = zmq.Context()
                self._context.set(zmq.MAX_SOCKETS, socket_budget(self._context))
                self._pid = pid
            return self._context


def socket_budget(context: zmq.Context[Any]) -> int:
    """How many sockets the shared context allows: libzmq's default of 1023 would stop a
    node with a thousand direct links long before the process runs out of descriptors.
    Every socket holds at least one descriptor, so the open-files limit (``ulimit -n``)
    bounds it, as does libzmq's own ceiling."""
    default = int(context.get(zmq.MAX_SOCKETS))
    ceiling = int(context.get(zmq.SOCKET_LIMIT))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = ceiling if soft == resource.RLIM_INFINITY else soft
    return max(default, min(ceiling, files))


_shared = _SharedContext()


def shared_context() -> zmq.Context[Any]:
    """The process's one :class:`zmq.Context`, created on first use.

    A Context must not cross ``fork()``: a child gets a fresh one instead of the parent's.
    """
    return _shared.get()


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def poll_ms(seconds: float) -> int:
    """A wait in seconds as ``zmq_poll`` milliseconds: rounded up, so a wait of 0.4 ms blocks
    for 1 ms instead of returning at once (a caller waiting for a deadline would spin); 0 for
    a negative wait (a deadline already passed), which ``zmq_poll`` would take as "forever";
    -1, forever, for an infinite one."""
    if math.isnan(seconds):
        raise UsageError("a timeout cannot be NaN: give seconds, or None to wait forever")
    if seconds == math.inf:
        return -1
    if seconds <= 0:
        return 0
    return min(math.ceil(seconds * 1000), _LONGEST_POLL_MS)


def open_socket(
    kind: int,
    options: SocketOptions = DEFAULT_SOCKET_OPTIONS,
    *,
    context: zmq.Context[Any] | None = None,
) -> zmq.Socket[Any]:
    """Make a socket of ``kind`` (``zmq.DEALER``, ``zmq.ROUTER``, ...) with ``options`` applied."""
    ctx = context if context is not None else shared_context()
    try:
        sock: zmq.Socket[Any] = ctx.socket(kind)
    except zmq.ZMQError as exc:
        raise translate_zmq_error(exc, "open a socket") from exc
    sock.setsockopt(zmq.LINGER, _ms(options.linger))
    sock.setsockopt(zmq.SNDHWM, options.send_hwm)
    sock.setsockopt(zmq.RCVHWM, options.receive_hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, options.max_message_size)
    sock.setsockopt(zmq.RECONNECT_IVL, _ms(options.reconnect_interval))
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, _ms(options.reconnect_interval_max))
    sock.setsockopt(zmq.HEARTBEAT_IVL, _ms(options.heartbeat_interval))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _ms(options.heartbeat_timeout))
    sock.setsockopt(zmq.HEARTBEAT_TTL, _ms(options.heartbeat_timeout))
    if options.ipv6:
        sock.setsockopt(zmq.IPV6, 1)
    if kind == zmq.ROUTER and options.router_mandatory:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    return sock


def bind(sock: zmq.Socket[Any], endpoint: str) -> str:
    """Bind ``sock`` and return the endpoint actually bound (with the real port for port 0)."""
    parsed = parse_endpoint(endpoint)
    prepare_ipc_directory(parsed)
    refuse_live_ipc_socket(parsed)
    if parsed.is_ipv6:
        sock.setsockopt(zmq.IPV6, 1)
    try:
        sock.bind(str(parsed))
    except zmq.ZMQError as exc:
        error = translate_zmq_error(exc, f"bind to {endpoint}")
        hint = unresolved_host_hint(endpoint) if type(error) is ConnectError else ""
        if hint:
            error = ConnectError(f"cannot bind to {endpoint}{hint}")
        raise error from exc
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    bound = last.decode() if isinstance(last, bytes) else str(last)
    return bound or str(parsed)


def connect(sock: zmq.Socket[Any], endpoint: str) -> str:
    """Connect ``sock`` to ``endpoint``; ZeroMQ connects (and reconnects) in the background."""
    parsed = parse_endpoint(endpoint)
    if parsed.scheme == "tcp" and (parsed.address == "*" or parsed.port == 0):
        raise EndpointError(f"cannot connect to {endpoint!r}: name a host and a port")
    if parsed.is_ipv6:
        sock.setsockopt(zmq.IPV6, 1)
    try:
        sock.connect(str(parsed))
    except zmq.ZMQError as exc:
        raise translate_zmq_error(exc, f"connect to {endpoint}") from exc
    return str(parsed)


def send_frames(
    sock: zmq.Socket[Any], frames: Sequence[Buffer], *, timeout: float | None = None
) -> None:
    """Send one multipart message.

    ``timeout=None`` blocks until the message is queued; ``0`` never blocks and raises
    :class:`QueueFullError` when the high-water mark is reached (so does a negative one: it has
    already run out); a positive timeout raises :class:`SendTimeout` after that many seconds.
    """
    if timeout is not None:
        check_timeout(timeout, "send timeout")  # NaN would otherwise pass as "never block"
    if timeout is None or timeout > 0:
        if timeout is not None:
            # Put back afterwards: the socket's own send timeout (a SecureDealer's
            # send_timeout) must outlive one call that asked for another.
            previous = sock.getsockopt(zmq.SNDTIMEO)
            sock.setsockopt(zmq.SNDTIMEO, poll_ms(timeout))
        try:
            _send_parts(sock, frames, 0)
        except zmq.Again as exc:
            waited = f"{timeout} s" if timeout is not None else "the socket's SNDTIMEO"
            raise SendTimeout(
                f"could not queue a message within {waited}: the peer is not reading "
                "or not connected; raise the timeout or the high-water mark"
            ) from exc
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, "send") from exc
        finally:
            if timeout is not None:
                sock.setsockopt(zmq.SNDTIMEO, previous)
        return
    try:
        _send_parts(sock, frames, _NOBLOCK)
    except zmq.Again as exc:
        raise QueueFullError(
            "the send queue is full (high-water mark reached): the peer is slow or gone; "
            "back off and retry, or raise send_hwm"
        ) from exc
    except zmq.ZMQError as exc:
        raise translate_zmq_error(exc, "send") from exc


def receive_frames(sock: zmq.Socket[Any], *, timeout: float | None = None) -> list[bytes]:
    """Receive one multipart message, waiting at most ``timeout`` seconds (None: forever)."""
    if timeout is not None:
        try:
            ready = sock.poll(poll_ms(timeout), zmq.POLLIN)
        except zmq.ZMQError as exc:
            raise translate_zmq_error(exc, "receive") from exc
        if not ready:
            raise ReceiveTimeout(f"no message arrived within {timeout} s")
    try:
        frames: list[bytes] = sock.recv_multipart(copy=True)
    except zmq.ZMQError as exc:
        raise translate_zmq_error(exc, "receive") from exc
    return frames


#: pyzmq copies frames below this size anyway; above it zero-copy avoids a memcpy of the
#: payload (pyzmq measured the crossover near 64 KiB).
ZERO_COPY_THRESHOLD = 65536


_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)


def _send_parts(sock: zmq.Socket[Any], frames: Sequence[Buffer], flags: int) -> None:
    # pyzmq's send_multipart checks and converts every part in Python, which costs more than
    # the send itself for small messages; a multipart message is atomic in libzmq once its
    # first part is queued, so a plain loop keeps the same guarantees.
    last = len(frames) - 1
    if last < 0:
        raise UsageError("a message needs at least one frame")
    send = sock.send
    for index, frame in enumerate(frames):
        size = len(frame) if isinstance(frame, bytes) else memoryview(frame).nbytes
        copy = size < ZERO_COPY_THRESHOLD
        send(frame, flags if index == last else flags | _SNDMORE, copy=copy)


def translate_zmq_error(exc: zmq.ZMQError, action: str) -> TransportError:
    """Map a pyzmq error to the zmqcomm tree; the caller chains the original."""
    code = exc.errno
    if code == errno.EMFILE:
        return ConnectError(
            f"cannot {action}: too many sockets or files open in this process; close some, "
            "or raise the open-files limit (ulimit -n)"
        )
    if code == errno.EADDRINUSE:
        return AddressInUseError(
            f"cannot {action}: the address is already in use; stop the other process, pick "
            "another address, or use port 0 for a free port"
        )
    if code in (zmq.ETERM, errno.ENOTSOCK) or (code == errno.EINTR and "closed" in str(exc)):
        return ClosedError(f"cannot {action}: the socket or its context is closed")
    if code == zmq.EHOSTUNREACH:
        return TransportError(
            f"cannot {action}: no connected peer has that routing id", reason="unroutable"
        )
    if code == errno.EADDRNOTAVAIL:
        return ConnectError(
            f"cannot {action}: the address is not on this machine (for loopback use 127.0.0.1)"
        )
    if code in (errno.ENODEV, errno.EINVAL, errno.EPROTONOSUPPORT, errno.ENOENT):
        return ConnectError(f"cannot {action}: {exc.strerror}")
    return ConnectError(f"cannot {action}: {exc.strerror} (errno {code})")
