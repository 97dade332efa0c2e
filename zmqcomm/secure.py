"""Secure sockets: a thin blocking driver around :class:`ChannelTable` on ROUTER and DEALER.

:class:`SecureRouter` binds and accepts authenticated peers; :class:`SecureDealer` connects to
one router. Every message on every transport (inproc included) is end-to-end encrypted and
authenticated by the session the two agents agreed; a ZeroMQ routing id is only a return
address. The protocol logic lives in the pure table; this module moves frames, reads the
clock and the OS random source, and watches for reconnects so the dealer re-handshakes::

    with SecureRouter("ipc:///tmp/zc/a.sock", identity=server, trust=trust) as router, \
         SecureDealer(router.endpoint, identity=client, trust=trust) as dealer:
        dealer.send({"op": "ping"})
        delivered = router.receive(timeout=1.0)
        router.send(delivered.agent_id, {"op": "pong"})
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import zmq
from zmq.backend import zmq_poll
from zmq.utils.monitor import parse_monitor_message

from zmqcomm.checks import check_count, check_seconds, check_timeout
from zmqcomm.crypto.audit import BaseAuditLog
from zmqcomm.crypto.channel import (
    Delivered,
    Established,
    Event,
    SecureChannel,
    Transmit,
    TrustChecker,
)
from zmqcomm.crypto.channel_table import ChannelTable, HandshakeLimits
from zmqcomm.crypto.envelope import Sealed
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.errors import (
    ClosedError,
    ConnectError,
    QueueFullError,
    ReceiveTimeout,
    SendTimeout,
    TransportError,
    UnknownPeerError,
)
from zmqcomm.held_finishes import HeldFinishes
from zmqcomm.transport.batching import BatchingSender
from zmqcomm.transport.endpoints import unresolved_host_hint
from zmqcomm.transport.sockets import (
    DEFAULT_SOCKET_OPTIONS,
    SocketOptions,
    bind,
    connect,
    open_socket,
    poll_ms,
    send_frames,
)
from zmqcomm.wire import Body, MessageType, WireCodec
from zmqcomm.wire.header import peek_type
from zmqcomm.wire.payload import Buffer

Clock = Callable[[], float]
_DEALER_ROUTE = b""
#: Messages handled per pump before timers get a turn.
_MAX_BURST = 10_000
#: Granularity of handshake retries, rekey timers and key expiry.
_TIMER_TICK = 0.005
#: Deliveries a secure socket holds for its caller before pump() stops reading. Past it,
#: what arrives waits in ZeroMQ's queues, whose high-water marks (10,000 by default too) push
#: back on the senders: a fast peer cannot grow this process without bound.
DEFAULT_MAX_INBOX = 10_000


# Plain ints: pyzmq turns enum arguments and results into enum members, which costs
# microseconds on a path that runs for every message.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)


def _readable(sock: zmq.Socket[Any]) -> bool:
    return bool(cast(int, sock.get(_EVENTS)) & _POLLIN)


def _check_send_timeout(send_timeout: float | None) -> None:
    if send_timeout is not None:
        check_seconds(send_timeout, "send_timeout (None blocks until queued)")


def _wait_readable(sock: zmq.Socket[Any], timeout: float) -> bool:
    """Whether a message waits, after waiting up to ``timeout`` s for one. The backend's
    ``zmq_poll`` costs less than ``Socket.poll`` (a Poller per call) or an ``EVENTS`` read (an
    enum conversion per call)."""
    return bool(zmq_poll([(sock, _POLLIN)], poll_ms(timeout)))


class _SecureSocket:
    """What both ends share: the receive pump, timers, the inbox and statistics."""

    def __init__(
        self,
        sock: zmq.Socket[Any],
        *,
        identity: Identity,
        trust: TrustChecker,
        audit: BaseAuditLog | None,
        codec: WireCodec | None,
        policy: RekeyPolicy | None,
        limits: HandshakeLimits | None,
        clock: Clock,
        wall_clock: Clock,
        random_bytes: Callable[[int], bytes],
        send_timeout: float | None,
        max_inbox: int,
    ) -> None:
        check_count(max_inbox, "max_inbox", minimum=1)
        self.socket = sock
        #: Monotonic, for waits and timeouts; ``wall_clock`` (epoch seconds) is what the
        #: security core gets as ``now``: certificates, trust entries and audit lines are
        #: dated in epoch time.
        self.clock = clock
        self.wall_clock = wall_clock
        self.send_timeout = send_timeout
        # Set once: changing SNDTIMEO around every send costs more than the send itself.
        sock.setsockopt(zmq.SNDTIMEO, -1 if send_timeout is None else poll_ms(send_timeout))
        self.table = ChannelTable(
            identity=identity,
            trust=trust,
            random_bytes=random_bytes,
            now=wall_clock(),
            audit=audit,
            codec=codec,
            policy=policy,
            limits=limits,
        )
        self.inbox: deque[Delivered] = deque()
        self.max_inbox = max_inbox
        #: Pumps that left frames unread because the inbox held ``max_inbox`` deliveries.
        self.inbox_full = 0
        #: New sessions (a peer connected or reconnected), for drivers that track peers.
        self.joined: deque[Established] = deque(maxlen=100_000)
        self.sent = 0
        self.received = 0
        #: Peers forgotten because they left before an answer could reach them.
        self.gone = 0
        self._closed = False
        self._next_timer_check = -1.0
        #: Rekey FINISH frames that found the peer's queue full (zmqcomm.held_finishes).
        self._finishes = HeldFinishes()
        #: What a waiting pump polls when there are side sockets (set by subclasses that have
        #: some); empty: it polls the socket alone, the cheaper call.
        self._side_waits: list[tuple[zmq.Socket[Any], int]] = []

    # -- the pump ----------------------------------------------------------------------------

    def _transmit(self, route: bytes, frames: Sequence[Buffer], *, wait: bool = True) -> None:
        """Send ``frames`` to ``route``; ``wait=False`` never blocks (QueueFullError)."""
        raise NotImplementedError

    def _route_and_frames(self, raw: list[bytes]) -> tuple[bytes, list[bytes]]:
        raise NotImplementedError

    def _extra_sockets(self) -> list[zmq.Socket[Any]]:
        return []

    def _on_extra(self, sock: zmq.Socket[Any]) -> None:
        raise NotImplementedError

    def side_sockets(self) -> list[zmq.Socket[Any]]:
        """Sockets besides :attr:`socket` that a caller waiting on several secure sockets
        should wake for (a dealer's connection events); hand a readable one to
        :meth:`on_side_ready`. A pump also looks at them, on its timer ticks."""
        return self._extra_sockets()

    def on_side_ready(self, side: zmq.Socket[Any]) -> None:
        """Handle what waits on ``side`` (one of :meth:`side_sockets`): a reconnect starts
        its handshake now. Nothing once closed."""
        if not self._closed:
            self._on_extra(side)

    def _handle(self, route: bytes, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Transmit):
                self._transmit_reply(route, event.frames)
            elif isinstance(event, Delivered):
                self.received += 1
                self.inbox.append(event)
            elif isinstance(event, Established) and event.epoch == 0:
                self.joined.append(event)

    def _transmit_reply(self, route: bytes, frames: Sequence[Buffer]) -> None:
        """Send what the protocol answers (handshakes, rekeys, retries) without blocking; it
        never raises for a peer's sake. A peer that left while we answered is forgotten: one
        client that disconnects mid-handshake must not stop a router serving all the others.
        A peer that does not read (its queue is full) loses the answer, counted as
        ``reply_queue_full`` in :attr:`ChannelTable.rejected`: blocking for ``send_timeout``
        would stall everyone this socket serves, and the handshake's initiator retries on its
        timer."""
        # Except a FINISH: its sender uses the new keys from now on, and a peer that never
        # got it would refuse (drop) all that follows, unseen. One that finds no room is
        # held, and goes before the next data to that peer (_transmit_data): it used to wait
        # for room here and raise SendTimeout out of pump(), which stopped a whole broker
        # for one slow agent.
        finish = bool(frames) and peek_type(frames[0]) == MessageType.HANDSHAKE_FINISH
        session = self.table.channels.get(route)
        if finish and self._finishes.waiting(route, session):
            self._finishes.hold(route, session, frames)  # behind the one already waiting
            return
        try:
            self._transmit(route, frames, wait=False)
        except (QueueFullError, SendTimeout):
            if finish:
                self._finishes.hold(route, session, frames)
            else:
                self._reply_dropped()
        except TransportError as exc:
            if exc.reason != "unroutable":
                raise
            self._forget_route(route)

    def _forget_route(self, route: bytes) -> None:
        self.table.drop(route)
        self._finishes.forget(route)
        self.gone += 1

    def _transmit_data(self, route: bytes, frames: Sequence[Buffer], *, wait: bool = True) -> None:
        """Send data (waiting for room as ``send_timeout`` says, or not at all), after any
        FINISH held for ``route``: the data is sealed under the keys that FINISH puts in
        force at the peer."""
        finishes = self._finishes
        if finishes and finishes.waiting(route, self.table.channels.get(route)):
            finishes.release(route, functools.partial(self._transmit, route, wait=wait))
        self._transmit(route, frames, wait=wait)

    def _release_held_finishes(self) -> None:
        for route in self._finishes.routes():
            if not self._finishes.waiting(route, self.table.channels.get(route)):
                continue  # the session it belonged to is gone: dropped
            try:
                self._finishes.release(route, functools.partial(self._transmit, route, wait=False))
            except (QueueFullError, SendTimeout):
                continue  # still no room: next tick
            except TransportError as exc:
                if exc.reason != "unroutable":
                    raise
                self._forget_route(route)

    def _reply_dropped(self) -> None:
        self.table.rejected["reply_queue_full"] += 1

    def pump(self, timeout: float = 0.0) -> int:
        """Handle what has arrived (waiting up to ``timeout`` s for something); returns the
        number of ZeroMQ messages handled. Handshakes and rekeys progress only while some
        call pumps."""
        self._check_open()
        handled = 0
        sock = self.socket
        inbox, room = self.inbox, self.max_inbox
        if len(inbox) >= room:
            # The caller is behind: what arrives stays in ZeroMQ's bounded queues (handshake
            # frames too, until the caller takes some deliveries). Timers and connection
            # events still run; the wait still happens, so a loop that pumps without taking
            # does not spin.
            self.inbox_full += 1
            self._timers()
            if timeout > 0:
                time.sleep(timeout)
            return 0
        # Drain while libzmq says a message is waiting: cheaper than a NOBLOCK recv raising
        # zmq.Again at the end of every burst.
        if timeout > 0 and self._side_waits:
            ready = self._wait_any(timeout)
        else:
            ready = _wait_readable(sock, timeout)
        while ready and handled < _MAX_BURST and len(inbox) < room:
            raw = sock.recv_multipart(_NOBLOCK)
            handled += 1
            route, frames = self._route_and_frames(raw)
            self._handle(route, self.table.receive(route, frames, now=self.wall_clock()))
            ready = bool(zmq_poll([(sock, _POLLIN)], 0))
        self._timers()
        return handled

    def _wait_any(self, timeout: float) -> bool:
        """Wait on the socket and the side sockets together; handle side events at once (a
        connection event starts a handshake: waiting the pump's timeout first would add it to
        every connect). Returns whether the socket itself has a message."""
        readable = False
        for sock, _ in zmq_poll(self._side_waits, poll_ms(timeout)):
            if sock is self.socket:
                readable = True
            else:
                self._on_extra(sock)
        return readable

    def _timers(self) -> None:
        tick = self.clock()
        # The table's deadline scan is O(peers): look again only every _TIMER_TICK.
        if tick < self._next_timer_check:
            return
        self._next_timer_check = tick + _TIMER_TICK
        if self._finishes:
            self._release_held_finishes()
        for extra in self._extra_sockets():
            # Side sockets (connection events) are also looked at on timer ticks: a pump that
            # does not wait (timeout 0) sees them here.
            if _readable(extra):
                self._on_extra(extra)
        now = self.wall_clock()
        deadline = self.table.next_deadline()
        if deadline is not None and now >= deadline:
            for route, event in self.table.on_timer(now=now):
                self._handle(route, [event])

    def receive(self, timeout: float | None = None) -> Delivered:
        """The next authenticated message, waiting up to ``timeout`` s (None: forever)."""
        check_timeout(timeout, "receive timeout")
        deadline = None if timeout is None else self.clock() + timeout
        while not self.inbox:
            left = 0.1 if deadline is None else deadline - self.clock()
            # Pump at least once, even with no time left: receive(timeout=0) returns a message
            # that is already waiting. pump() drains the whole burst even once a message is
            # in: frames behind it (rekey handshakes, data under a key in its grace period)
            # must not wait for the caller's next receive(), which may come after that key
            # expired.
            self.pump(min(max(left, 0.0), 0.1))
            if not self.inbox and deadline is not None and self.clock() >= deadline:
                raise ReceiveTimeout(f"no authenticated message within {timeout} s")
        return self.inbox.popleft()

    # -- sending -----------------------------------------------------------------------------

    def _send_on(
        self,
        route: bytes,
        channel: SecureChannel,
        payloads: Sequence[object],
        msg_type: int,
        topic: str,
        *,
        wait: bool = True,
    ) -> None:
        now = self.wall_clock()
        if len(payloads) == 1:
            frames = channel.seal(msg_type, payloads[0], topic=topic, now=now)
        else:
            frames = channel.seal_many(msg_type, payloads, topic=topic, now=now)
        self._transmit_data(route, frames, wait=wait)
        self.sent += len(payloads)
        # The message-count rekey trigger: a few comparisons, so check on every send. The data
        # send above decides the outcome: its message is queued, so nothing after it may
        # raise (a caller retrying would duplicate it). An INIT that does not fit is dropped
        # by _transmit_reply and resent by the handshake's retry timer.
        for event in channel.on_timer(now=now):
            self._handle(route, [event])

    def _batching_sender(
        self, route: bytes, channel: SecureChannel, **options: Any
    ) -> BatchingSender:
        def frame_batch(msg_type: int, body: Body, topic: str) -> list[Sealed]:
            self._check_sender(route, channel)
            now = self.wall_clock()
            frames = channel.seal_body(msg_type, body, topic=topic, now=now)
            # Handshake frames a due rekey produces go out before this batch; the batch is
            # sealed under the keys current now, which the peer still holds.
            for event in channel.on_timer(now=now):
                self._handle(route, [event])
            return frames

        def send(frames: Sequence[Buffer]) -> None:
            self._check_sender(route, channel)  # a batch kept from before a reconnect
            self._transmit_data(route, frames)

        return BatchingSender(send, self.table.codec, frame_batch=frame_batch, **options)

    def _check_sender(self, route: bytes, channel: SecureChannel) -> None:
        """Refuse to seal or send for a session that is over: a sender taken before the peer
        reconnected would seal under the dead session, and the peer would drop every batch
        (``wrong_session``) while flush() reported success."""
        self._check_open()
        if self.table.channels.get(route) is not channel:
            raise ConnectError(
                "the session this sender was made for has ended (the peer reconnected or "
                "was dropped): take a new batching_sender()",
                reason="session_ended",
            )

    # -- lifetime ----------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "received": self.received,
            "peers": len(self.table.peers),
            "handshakes": self.table.handshakes,
            "rekeys": self.table.rekeys,
            "gone": self.gone,
            "inbox_full": self.inbox_full,
            "finish_held": self._finishes.held,
            "rejected": dict(self.table.rejected),
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this secure socket is closed")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for extra in self._extra_sockets():
                extra.close(linger=0)
            self.socket.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
        # Queue nothing without a connection: handshake retries made while the router is down
        # would all arrive when it comes up, spend its per-connection handshake budget and get
        # the live INIT refused (rate_limited). Each connection starts its handshake instead
        # (_on_extra). inproc ignores this (its pipe exists from connect on).
        sock.setsockopt(zmq.IMMEDIATE, 1)
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
        #: A handshake frame could not be queued (no connection yet, or a full queue): the
        #: next connection starts a fresh handshake rather than wait for the retry timer.
        self._handshake_lost = False
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
        # Sent now, it waits in the connection's pipe until the transport is up (inproc has
        # no transport handshake to wait for, and no monitor events).
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
                # No room. With IMMEDIATE a connection that just dropped looks the same, and
                # waiting send_timeout on it would only end in SendTimeout: look at the
                # connection events first (they are otherwise read on a pump).
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
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                # Whatever is sent now would be sealed for a session a restarted router will
                # not know: it would be lost without a word. Sends fail instead until a new
                # session is up (callers may hold and resend).
                self.disconnected = True
                continue
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.disconnected = False
                self._connections += 1
                self.reconnects = self._connections - 1
                channel = self.table.channels.get(_DEALER_ROUTE)
                if self._connections == 1 and (
                    not self._handshake_lost or (channel is not None and channel.established)
                ):
                    continue  # the first connection carries the INIT sent at construction
                # A reconnect: whatever session the router had went with the old connection.
                # Or the first connection, whose INIT was not queued before it came up (the
                # router started after us, or the transport was still connecting).
                frames = self.table.connect(
                    _DEALER_ROUTE, now=self.wall_clock(), expect_peer=self.expect_peer
                )
                self._transmit_reply(_DEALER_ROUTE, frames)

    def _transmit_reply(self, route: bytes, frames: Sequence[Buffer]) -> None:
        self._handshake_lost = False  # the latest handshake frame is what counts
        super()._transmit_reply(route, frames)

    def _reply_dropped(self) -> None:
        self._handshake_lost = True
        if (self._connections or self._always_linked) and not self.disconnected:
            # Without a connection there is nothing to count: IMMEDIATE refuses every send.
            super()._reply_dropped()

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
        if self.disconnected:
            raise ConnectError(
                f"the connection to {self.endpoint} is down; once it is back "
                "(wait_established()), take a new batching_sender()",
                reason="link_down",
            )
        super()._check_sender(route, channel)

    def _timers(self) -> None:
        super()._timers()
        if _DEALER_ROUTE not in self.table.channels and not self._closed:
            # The channel closed itself (too many refused frames) or its handshake was
            # abandoned: start a new session rather than stay silent.
            self._transmit_reply(
                _DEALER_ROUTE,
                self.table.connect(
                    _DEALER_ROUTE, now=self.wall_clock(), expect_peer=self.expect_peer
                ),
            )

    def writable(self) -> bool:
        """Whether a send would be queued at once (the connection has room), without waiting."""
        return bool(zmq_poll([(self.socket, _POLLOUT)], 0))

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
                    f"within {timeout} s: {self._why_no_session()}"
                    f"{unresolved_host_hint(self.endpoint)}"
                )
            self.pump(min(left, 0.05))
        assert self.peer is not None
        return self.peer

    def _why_no_session(self) -> str:
        rejected = dict(self.table.rejected)
        if "unknown_peer" in rejected:
            return (
                f"this side refused the {self.peer_label}'s key (not in this trust store: "
                f"copy the {self.peer_label}'s .pub file into it); refused here: {rejected}"
            )
        if rejected:
            return f"refused here: {rejected}"
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
