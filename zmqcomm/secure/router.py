"""The secure socket that binds: a ROUTER that accepts authenticated peers and sends to
each by agent id (:mod:`zmqcomm.secure` has the overview)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from zmqcomm.crypto.audit import BaseAuditLog
from zmqcomm.crypto.channel import TrustChecker
from zmqcomm.crypto.channel_table import HandshakeLimits
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.errors import UnknownPeerError
from zmqcomm.secure.base import (
    DEFAULT_MAX_INBOX,
    Clock,
    _check_send_timeout,
    _SecureSocket,
)
from zmqcomm.transport.batching import BatchingSender
from zmqcomm.transport.endpoints import IpcSocketFile
from zmqcomm.transport.sockets import (
    DEFAULT_SOCKET_OPTIONS,
    SocketOptions,
    bind,
    open_socket,
    send_frames,
)
from zmqcomm.wire import MessageType, WireCodec
from zmqcomm.wire.payload import Buffer


class SecureRouter(_SecureSocket):
    """Binds, authenticates every peer, and sends to peers by agent id."""

    def __init__(
        self,
        endpoint: str,
        *,
        identity: Identity,
        trust: TrustChecker,
        audit: BaseAuditLog | None = None,
        codec: WireCodec | None = None,
        policy: RekeyPolicy | None = None,
        limits: HandshakeLimits | None = None,
        options: SocketOptions = DEFAULT_SOCKET_OPTIONS,
        context: zmq.Context[Any] | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        random_bytes: Callable[[int], bytes] = os.urandom,
        send_timeout: float | None = 1.0,
        max_inbox: int = DEFAULT_MAX_INBOX,
    ) -> None:
        _check_send_timeout(send_timeout)
        sock = open_socket(zmq.ROUTER, options.with_changes(router_mandatory=True), context=context)
        try:
            self.endpoint = bind(sock, endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        made = IpcSocketFile.made_by_bind(self.endpoint, asked=endpoint)
        try:
            super().__init__(
                sock,
                identity=identity,
                trust=trust,
                audit=audit,
                codec=codec,
                policy=policy,
                limits=limits,
                clock=clock,
                wall_clock=wall_clock,
                random_bytes=random_bytes,
                send_timeout=send_timeout,
                max_inbox=max_inbox,
            )
        except BaseException:
            sock.close(linger=0)
            if made is not None:
                made.remove()  # refused settings must not leave a socket file behind
            raise
        if made is not None:
            self._bound_files.append(made)

    def bind(self, endpoint: str) -> str:
        """Listen on another endpoint as well; returns it as bound (the real port for 0)."""
        self._check_open()
        bound = bind(self.socket, endpoint)
        made = IpcSocketFile.made_by_bind(bound, asked=endpoint)
        if made is not None:
            self._bound_files.append(made)
        return bound

    def _transmit(self, route: bytes, frames: Sequence[Buffer], *, wait: bool = True) -> None:
        send_frames(self.socket, [route, *frames], timeout=None if wait else 0)

    def _route_and_frames(self, raw: list[bytes]) -> tuple[bytes, list[bytes]]:
        return raw[0], raw[1:]

    def send(
        self,
        agent_id: str,
        payload: object,
        *,
        msg_type: int = MessageType.DATA,
        topic: str = "",
        wait: bool = True,
    ) -> None:
        """Encrypt ``payload`` for the connected agent ``agent_id`` and send it."""
        self.send_many(agent_id, [payload], msg_type=msg_type, topic=topic, wait=wait)

    def send_many(
        self,
        agent_id: str,
        payloads: Sequence[object],
        *,
        msg_type: int = MessageType.DATA,
        topic: str = "",
        wait: bool = True,
    ) -> None:
        """Send several payloads as one batch frame: one AEAD call, one socket send. An error
        (:class:`SendTimeout` when the peer's queue stays full for ``send_timeout``, or at
        once :class:`QueueFullError` with ``wait=False``) means nothing was queued."""
        self._check_open()
        route = self.table.route_of(agent_id)
        channel = self.table.channels.get(route) if route is not None else None
        if route is None or channel is None:
            raise UnknownPeerError(f"no session with {agent_id}: it has not connected")
        self._send_on(route, channel, payloads, msg_type, topic, wait=wait)

    @property
    def peers(self) -> list[str]:
        return self.table.peers

    def batching_sender(self, agent_id: str, **options: Any) -> BatchingSender:
        """A :class:`BatchingSender` whose batches are encrypted for ``agent_id`` (options:
        ``max_items``, ``max_bytes``, ``max_delay``). Call its ``on_timer`` from your loop and
        ``close`` it to flush; :meth:`pump` still has to run for rekeys to complete. Once
        that session ends (the peer reconnected), the sender raises :class:`ConnectError`
        (``session_ended``): take a new one."""
        route = self.table.route_of(agent_id)
        channel = self.table.channels.get(route) if route is not None else None
        if route is None or channel is None:
            raise UnknownPeerError(f"no session with {agent_id}: it has not connected")
        return self._batching_sender(route, channel, **options)
