"""ZeroMQ transport: endpoints, the socket factory, loops, a connection pool, batching.

Everything here moves frames; it knows nothing of encryption. pyzmq errors are translated to
:mod:`zmqcomm.errors` at this boundary.
"""

from zmqcomm.transport.aio import AsyncLoop
from zmqcomm.transport.batching import BatchingSender
from zmqcomm.transport.endpoints import Endpoint, parse_endpoint
from zmqcomm.transport.loop import Loop
from zmqcomm.transport.pool import ConnectionPool
from zmqcomm.transport.sockets import (
    DEFAULT_SOCKET_OPTIONS,
    SocketOptions,
    bind,
    connect,
    open_socket,
    receive_frames,
    send_frames,
    shared_context,
)

__all__ = [
    "DEFAULT_SOCKET_OPTIONS",
    "AsyncLoop",
    "BatchingSender",
    "ConnectionPool",
    "Endpoint",
    "Loop",
    "SocketOptions",
    "bind",
    "connect",
    "open_socket",
    "parse_endpoint",
    "receive_frames",
    "send_frames",
    "shared_context",
]
