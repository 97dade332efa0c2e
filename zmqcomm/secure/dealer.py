"""The secure socket that connects: a DEALER with one session to one router, which starts
a new handshake when its connection comes back (:mod:`zmqcomm.secure` has the overview)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq
from zmq.backend import zmq_poll
from zmq.utils.monitor import parse_monitor_message

from zmqcomm.checks import check_timeout
from zmqcomm.crypto.audit import BaseAuditLog
from zmqcomm.crypto.channel import Established, Event, SecureChannel, TrustChecker
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import ConnectError, QueueFullError
from zmqcomm.secure.base import (
    _MAX_BURST,
    _POLLIN,
    _POLLOUT,
    DEFAULT_MAX_INBOX,
    Clock,
    _check_send_timeout,
    _readable,
    _SecureSocket,
)
from zmqcomm.transport.batching import BatchingSender
from zmqcomm.transport.endpoints import unreachable_endpoint_hint
from zmqcomm.transport.sockets import (
    DEFAULT_SOCKET_OPTIONS,
    SocketOptions,
    connect,
    open_socket,
    send_frames,
)
from zmqcomm.wire import MessageType, WireCodec
from zmqcomm.wire.payload import Buffer

#: A dealer has one peer: its channel's key in the table.
_DEALER_ROUTE = b""


class SecureDealer(_SecureSocket):
    """Connects to one :class:`SecureRouter` and keeps a session with it across reconnects."""

    def __init__(
        self,
        endpoint: str,
        *,
        identity: Identity,
        trust: TrustChecker,
        expect_peer: str | None = None,
        audit: BaseAuditLog | None = None,
        codec: WireCodec | None = None,
        policy: RekeyPolicy | None = None,
        options: SocketOptions = DEFAULT_SOCKET_OPTIONS,
        context: zmq.Context[Any] | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        random_bytes: Callable[[int], bytes] = os.urandom,
        send_timeout: float | None = 1.0,
        connect_timeout: float | None = 5.0,
        max_inbox: int = DEFAULT_MAX_INBOX,
        peer_label: str = "router",
    ) -> None:
        """``peer_label``: what to call the other end in error messages ("broker")."""
        self.peer_label = peer_label
        check_timeout(connect_timeout, "connect_timeout")
        _check_send_timeout(send_timeout)
        sock = open_socket(zmq.DEALER, options, context=context)
        # No ZMQ_IMMEDIATE: with it, libzmq (4.3.5) discards what arrived from the router but
        # was not read yet as soon as the connection drops (benchmarks/dealer_close_race.py).
        # Without it the queue outlives the connection, so this class itself holds back
        # handshake frames while there is no connection (_transmit_reply).
        # Connection events tell us when a reconnect needs a new handshake, and when the
        # connection is down (see ``established``).
        self._monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        super().__init__(
            sock,
            identity=identity,
            trust=trust,
            audit=audit,
            codec=codec,
            policy=policy,
            limits=None,
            clock=clock,
            wall_clock=wall_clock,
            random_bytes=random_bytes,
            send_timeout=send_timeout,
            max_inbox=max_inbox,
        )
        self._side_waits = [(sock, _POLLIN), (self._monitor, _POLLIN)]
        self.expect_peer = expect_peer
        self.peer: str | None = None
        self.reconnects = 0
        self._connections = 0
        #: A handshake frame was held back (no connection) or found no room: a connection
        #: event, or a timer tick once there is room, starts a fresh handshake rather than
        #: wait for the retry timer (seconds).
        self._handshake_lost = False
        #: A connection came up and its handshake has not been started yet (the reads
        #: before it were interrupted): the next timer tick finishes the job.
        self._connection_pending = False
        #: inproc has no connection events: its pipe is up from connect() on.
        self._always_linked = endpoint.startswith("inproc:")
        #: The connection dropped and has not come back yet.
        self.disconnected = False
        try:
            connect(sock, endpoint)
        except BaseException:
            self.close()
            raise
        self.endpoint = endpoint
        if self._always_linked:
            # inproc sends the INIT at once: its pipe is up from connect() on, and it has no
            # connection events. ipc and tcp start on their first connection event (an
            # INIT made now would be held back, and its key pair thrown away).
            self._transmit_reply(
                _DEALER_ROUTE,
                self.table.connect(_DEALER_ROUTE, now=self.wall_clock(), expect_peer=expect_peer),
            )
        if connect_timeout is not None:
            try:
                self.wait_established(connect_timeout)
            except BaseException:
                self.close()  # a dealer that never came up must not keep its sockets
                raise

    def _transmit(self, route: bytes, frames: Sequence[Buffer], *, wait: bool = True) -> None:
        if wait:
            try:
                send_frames(self.socket, frames, timeout=0)
                return
            except QueueFullError:
                # No room. A connection that dropped fills up the same way (its queue waits
                # for the next one), and waiting send_timeout on it would only end in
                # SendTimeout: look at the connection events first.
                connections = self._connections
                self._on_extra(self._monitor)
                if self.disconnected or self._connections != connections:
                    raise ConnectError(
                        f"the connection to {self.endpoint} dropped; it comes back by itself: "
                        "send again once established (wait_established())",
                        reason="link_down",
                    ) from None
        send_frames(self.socket, frames, timeout=None if wait else 0)

    def _route_and_frames(self, raw: list[bytes]) -> tuple[bytes, list[bytes]]:
        return _DEALER_ROUTE, raw

    def _extra_sockets(self) -> list[zmq.Socket[Any]]:
        return [self._monitor]

    def _on_extra(self, sock: zmq.Socket[Any]) -> None:
        while True:
            try:
                event = parse_monitor_message(sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            if event["event"] == zmq.EVENT_DISCONNECTED:
                # Whatever is sent now would be sealed for a session a restarted router will
                # not know: it would be lost without a word. Sends fail instead until a new
                # session is up (callers may hold and resend).
                self.disconnected = True
                self._connection_pending = False  # that connection is gone too
                continue
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connections += 1
                self.reconnects = self._connections - 1
                # Started below, once all events are read: a DISCONNECTED behind this one
                # means that connection is gone already (no keygen, no stale INIT for it).
                self._connection_pending = True
        if self._connection_pending:
            self._start_on_connection()

    def _start_on_connection(self) -> None:
        """A connection is up: start a session on it. Every connection gets a fresh
        handshake: a reconnect's router forgot the old session with the old connection, and
        the first connection's INIT was held back until it came up. Until the INIT is
        handed over, the dealer still counts as down (``disconnected`` from the drop, or
        no connection yet), so nothing answered while reading goes out on the new one."""
        if self._connections > 1:
            self._read_before_reconnect()
        self._connection_pending = False
        self.disconnected = False
        frames = self.table.connect(
            _DEALER_ROUTE, now=self.wall_clock(), expect_peer=self.expect_peer
        )
        self._transmit_reply(_DEALER_ROUTE, frames)

    def _read_before_reconnect(self) -> None:
        """Read what the old connection brought and is still queued, under the session it
        was sealed for, before a new handshake replaces that session. It all arrived before
        anything from the new connection (one queue, in order), and the router sends nothing
        there before our INIT. The inbox may go past ``max_inbox`` here, as far as ZeroMQ's
        high-water mark (what the old connection can have left) and one pump's burst: what is
        not read now could never be opened. The bound keeps a peer that sends at once on the
        new connection from holding this call for as long as it sends."""
        sock = self.socket
        for _ in range(max(int(sock.getsockopt(zmq.RCVHWM)), 0) + _MAX_BURST):
            if not _readable(sock):
                return
            self._take_in(sock)

    def _linked(self) -> bool:
        """Whether a connection is up, as far as the connection events read so far tell."""
        return self._always_linked or (self._connections > 0 and not self.disconnected)

    def _transmit_reply(self, route: bytes, frames: Sequence[Buffer]) -> None:
        if not self._linked():
            # Held back: queued now, handshake retries made while the router is down would
            # all arrive when it comes up, spend its per-connection handshake budget and get
            # the live INIT refused (rate_limited). The next connection starts afresh.
            self._handshake_lost = True
            return
        self._handshake_lost = False  # the latest handshake frame is what counts
        super()._transmit_reply(route, frames)

    def _reply_dropped(self) -> None:
        self._handshake_lost = True
        super()._reply_dropped()

    def _look_at_link(self) -> None:
        """Read the connection events before a send: a dealer that only sends would
        otherwise queue for a connection that is gone, for its next one, where a new router
        refuses all of it (no_session). About a microsecond a look."""
        if _readable(self._monitor):
            self._on_extra(self._monitor)

    def close(self) -> None:
        try:
            if not self._closed:
                # Raises ContextTerminated once term() has begun: the socket must still be
                # closed, or term() waits for it for ever.
                self.socket.disable_monitor()
        except zmq.ZMQError:
            pass
        finally:
            super().close()

    def _handle(self, route: bytes, events: list[Event]) -> None:
        super()._handle(route, events)
        for event in events:
            if isinstance(event, Established) and event.epoch == 0:
                self.peer = event.agent_id

    def _check_sender(self, route: bytes, channel: SecureChannel) -> None:
        self._look_at_link()
        if self.disconnected:
            raise ConnectError(
                f"the connection to {self.endpoint} is down; once it is back "
                "(wait_established()), take a new batching_sender()",
                reason="link_down",
            )
        super()._check_sender(route, channel)

    def _timers(self) -> None:
        tick = self.clock() >= self._next_timer_check  # the base runs its timers on ticks
        super()._timers()
        if self._closed:
            return
        if self._connection_pending:
            self._look_at_link()  # a DISCONNECTED behind it cancels it
            if self._connection_pending:
                self._start_on_connection()  # interrupted on the connection event
            return
        channel = self.table.channels.get(_DEALER_ROUTE)
        if channel is None:
            # Off a timer tick the events may be stale: a connection that dropped must not
            # get an INIT (nor a key pair), and one that came up starts its own here.
            self._look_at_link()
            channel = self.table.channels.get(_DEALER_ROUTE)
        if (channel is None and self._linked()) or (
            channel is not None
            and tick
            and self._handshake_lost
            and self._linked()
            and not channel.established
            and zmq_poll([(self.socket, _POLLOUT)], 0)
        ):
            # The channel closed itself (too many refused frames) or its handshake was
            # abandoned (with no connection, the next one starts a session); or the INIT
            # found the queue full (a backlog for a connection that dropped, which the new
            # router is refusing) and there is room now: start a new session rather than
            # wait for the retry timer.
            self._transmit_reply(
                _DEALER_ROUTE,
                self.table.connect(
                    _DEALER_ROUTE, now=self.wall_clock(), expect_peer=self.expect_peer
                ),
            )

    def next_deadline(self) -> float | None:
        """When the timers next need a pump, in wall-clock seconds; None when only input
        can make work. Due now: a connection came up and its handshake is not started, or
        a connection is up with no session on it. With no connection and no session nothing
        is due: the connection event makes a side socket readable (:meth:`side_sockets`)."""
        channel = self.table.channels.get(_DEALER_ROUTE)
        if self._connection_pending or (channel is None and self._linked()):
            return self.wall_clock()
        if channel is None:
            return None
        return self.table.next_deadline()

    def writable(self) -> bool:
        """Whether a send would be queued at once for a connection that is up (it has room),
        without waiting."""
        self._look_at_link()
        return self._linked() and bool(zmq_poll([(self.socket, _POLLOUT)], 0))

    @property
    def established(self) -> bool:
        """A session is up and its connection is not known to be down."""
        channel = self.table.channels.get(_DEALER_ROUTE)
        return channel is not None and channel.established and not self.disconnected

    def wait_established(self, timeout: float | None) -> str:
        """Pump until the session is up (None: however long it takes); returns the router's
        agent id."""
        check_timeout(timeout, "connect timeout")
        deadline = math.inf if timeout is None else self.clock() + timeout
        while not self.established:
            left = deadline - self.clock()
            if left <= 0:
                raise ConnectError(
                    f"no authenticated session with the {self.peer_label} at {self.endpoint} "
                    f"within {timeout} s: {self.why_no_session()}"
                    f"{unreachable_endpoint_hint(self.endpoint)}"
                )
            self.pump(min(left, 0.05))
        assert self.peer is not None
        return self.peer

    def why_no_session(self) -> str:
        """What this side knows of why there is no session yet, with what to check."""
        rejected = dict(self.table.rejected)
        trust = self.table.trust
        if (
            "unknown_peer" in rejected
            and isinstance(trust, TrustStore)
            and not (len(trust) or trust.problems or trust.revoked())
        ):
            # Most often a misspelt path: TrustStore makes a missing directory, empty.
            return (
                f"this side's trust store {trust.directory} holds no keys at all: is that "
                f"the right directory? (refused here: {rejected})"
            )
        if "unknown_peer" in rejected:
            return (
                f"this side refused the {self.peer_label}'s key (not in this trust store: "
                f"copy the {self.peer_label}'s .pub file into it); refused here: {rejected}"
            )
        if rejected:
            return f"refused here: {rejected}"
        if self._connections == 0 and not self._always_linked:
            return (
                f"no connection to {self.endpoint} was ever made: is the {self.peer_label} "
                "running, and listening at that address?"
            )
        return (
            f"nothing was refused here: is the {self.peer_label} running, and does its trust "
            f"store hold this identity's .pub ({self.table.identity.agent_id})?"
        )

    def send(
        self,
        payload: object,
        *,
        msg_type: int = MessageType.DATA,
        topic: str = "",
        wait: bool = True,
    ) -> None:
        self.send_many([payload], msg_type=msg_type, topic=topic, wait=wait)

    def send_many(
        self,
        payloads: Sequence[object],
        *,
        msg_type: int = MessageType.DATA,
        topic: str = "",
        wait: bool = True,
    ) -> None:
        """Send several payloads as one batch frame: one AEAD call, one socket send. An error
        (:class:`SendTimeout` when the router's queue stays full for ``send_timeout``, at
        once :class:`QueueFullError` with ``wait=False``, :class:`ConnectError` when the
        connection is down) means nothing was queued."""
        self._check_open()
        self._look_at_link()
        if self.disconnected:
            raise ConnectError(
                f"the connection to {self.endpoint} is down; it comes back by itself: send "
                "again once established (wait_established())",
                reason="link_down",
            )
        channel = self.table.channels.get(_DEALER_ROUTE)
        if channel is None or not channel.established:
            raise ConnectError("no session with the router yet: call wait_established()")
        self._send_on(_DEALER_ROUTE, channel, payloads, msg_type, topic, wait=wait)

    def batching_sender(self, **options: Any) -> BatchingSender:
        """A :class:`BatchingSender` whose batches are encrypted for the router (options:
        ``max_items``, ``max_bytes``, ``max_delay``). A reconnect makes a new session: once the
        connection drops, this sender raises :class:`ConnectError` (``link_down``, then
        ``session_ended``); take a new sender after :meth:`wait_established`."""
        self._check_open()
        channel = self.table.channels.get(_DEALER_ROUTE)
        if channel is None or not channel.established:
            raise ConnectError("no session with the router yet: call wait_established()")
        return self._batching_sender(_DEALER_ROUTE, channel, **options)
