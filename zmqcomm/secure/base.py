"""What a secure router and a secure dealer share: the receive pump, timers, the inbox,
statistics, sending with held rekey FINISH frames first, and side sockets (connection
events) a caller may wait on. :mod:`zmqcomm.secure` has the overview."""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import zmq
from zmq.backend import zmq_poll

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
    SendTimeout,
    TransportError,
)
from zmqcomm.secure.held_finishes import HeldFinishes
from zmqcomm.transport.batching import BatchingSender
from zmqcomm.transport.endpoints import IpcSocketFile
from zmqcomm.transport.inbox import MAX_WAIT, take_next
from zmqcomm.transport.sockets import (
    poll_ms,
)
from zmqcomm.wire import Body, MessageType, WireCodec
from zmqcomm.wire.header import peek_type
from zmqcomm.wire.payload import Buffer

Clock = Callable[[], float]
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
_RCVMORE = int(zmq.RCVMORE)


def _receive_message(sock: zmq.Socket[Any]) -> list[bytes]:
    """Every part of the next message, which must be there: ``recv_multipart`` without its
    enum conversion of ``RCVMORE`` per part."""
    parts: list[bytes] = [sock.recv(_NOBLOCK)]
    while sock.get(_RCVMORE):
        parts.append(sock.recv(_NOBLOCK))
    return parts


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
        #: ipc socket files this socket's binds made, removed when it closes.
        self._bound_files: list[IpcSocketFile] = []
        self._next_timer_check = -1.0
        #: Rekey FINISH frames that found the peer's queue full (zmqcomm.secure.held_finishes).
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
            self._hold_finish(route, session, frames)  # behind the one already waiting
            return
        try:
            self._transmit(route, frames, wait=False)
        except (QueueFullError, SendTimeout):
            if finish:
                self._hold_finish(route, session, frames)
            else:
                self._reply_dropped()
        except TransportError as exc:
            if exc.reason != "unroutable":
                raise
            self._forget_route(route)

    def _hold_finish(
        self, route: bytes, channel: SecureChannel | None, frames: Sequence[Buffer]
    ) -> None:
        self._finishes.hold(route, channel, frames)
        if channel is not None and channel.session is not None:
            # The peer seals under the previous epoch until this FINISH reaches it.
            channel.session.pause_expiry(now=self.wall_clock())
            self.table.note(route)

    def _release_finishes(self, route: bytes, *, wait: bool) -> None:
        """Send the FINISH frames held for ``route`` (raising, with them still held, when
        they cannot go); then the peer's previous keys get their grace period."""
        self._finishes.release(route, functools.partial(self._transmit, route, wait=wait))
        channel = self.table.channels.get(route)
        if channel is not None and channel.session is not None:
            channel.session.resume_expiry(now=self.wall_clock())
            self.table.note(route)

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
            self._release_finishes(route, wait=wait)
        self._transmit(route, frames, wait=wait)

    def _release_held_finishes(self) -> None:
        for route in self._finishes.routes():
            if not self._finishes.waiting(route, self.table.channels.get(route)):
                continue  # the session it belonged to is gone: dropped
            try:
                self._release_finishes(route, wait=False)
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
        ready = self._wait_for_input(timeout)
        take_in = self._take_in
        while ready and handled < _MAX_BURST and len(inbox) < room:
            take_in(sock)
            handled += 1
            # Drain while libzmq says a message is waiting: an EVENTS read costs less than
            # a zmq_poll (2 to 4 us less per message of a request/reply exchange, hot) and
            # than a NOBLOCK recv raising zmq.Again at the end of every burst.
            ready = _readable(sock)
        self._timers()
        return handled

    def _take_in(self, sock: zmq.Socket[Any]) -> None:
        """Read and handle the message that waits on ``sock`` (the socket itself)."""
        route, frames = self._route_and_frames(_receive_message(sock))
        events = self.table.receive(route, frames, now=self.wall_clock())
        if len(events) == 1 and type(events[0]) is Delivered:  # data: most messages
            self.received += 1
            self.inbox.append(events[0])
        else:
            self._handle(route, events)

    def _wait_for_input(self, timeout: float) -> bool:
        """Whether a message waits on the socket, after waiting up to ``timeout`` s, with the
        side sockets too when there are some (a wait of 0 looks at the socket alone)."""
        if timeout > 0 and self._side_waits:
            return self._wait_any(timeout)
        return _wait_readable(self.socket, timeout)

    def _wait_any(self, timeout: float) -> bool:
        """Wait on the socket and the side sockets together; handle side events at once (a
        connection event starts a handshake: waiting the pump's timeout first would add it to
        every connect). Returns whether the socket itself has a message."""
        readable = side_handled = False
        for sock, _ in zmq_poll(self._side_waits, poll_ms(timeout)):
            if sock is self.socket:
                readable = True
            else:
                self._on_extra(sock)
                side_handled = True
        if readable and side_handled:
            # The side event may have read what waited (a dealer reads its old connection's
            # messages before a reconnect's handshake).
            readable = _readable(self.socket)
        return readable

    def _timers(self) -> None:
        tick = self.clock()
        # Timers run at most every _TIMER_TICK: a pump per message need not look each time.
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

    def next_deadline(self) -> float | None:
        """When the timers next need a pump (handshake retries, rekeys, key expiry), in
        wall-clock seconds; None when only input can make work."""
        return self.table.next_deadline()

    def receive(self, timeout: float | None = None) -> Delivered:
        """The next authenticated message, waiting up to ``timeout`` s (None: forever)."""
        inbox = self.inbox
        if inbox:
            oldest = inbox.popleft()
            if self.table.in_grace and not self._closed:
                # Frames under a superseded key may be queued behind: read them now, as
                # below, before the caller goes off to work past their grace period.
                self._read_all_waiting(oldest)
            return oldest
        check_timeout(timeout, "receive timeout")
        # One wait and one read: a caller taking one message at a time (request/reply)
        # mostly finds none waiting. Anything else (nothing came, a handshake frame) goes
        # on in take_next, which pumps.
        started = self.clock()
        wait = MAX_WAIT if timeout is None else min(timeout, MAX_WAIT)
        self._check_open()
        sock = self.socket
        ready = self._wait_for_input(wait)
        if ready:
            self._take_in(sock)
            first = inbox.popleft() if inbox else None  # before a pump: it needs the room
            # What waits behind this message stays in ZeroMQ's queue for the next call:
            # looking for more after every message (an EVENTS read, as libzmq catches up
            # on its commands) cost 4 us per message, hot. All that waits is read now
            # while a session holds a superseded key (frames sealed under it must be
            # opened before its grace period ends, however long the caller then takes),
            # and when the timers are due (the pump runs them after reading). A rekey
            # handshake behind this message is answered by the next call.
            if self.table.in_grace or self.clock() >= self._next_timer_check:
                self._read_all_waiting(first)
            if first is not None:
                return first
        return take_next(
            inbox,
            self.pump,
            self.clock,
            timeout,
            what="authenticated message",
            waited=self.clock() - started,
        )

    def _read_all_waiting(self, taken: Delivered | None) -> None:
        """Pump, for a receive() that already took ``taken`` out of the inbox; were the pump
        to raise (an interrupt), ``taken`` goes back in front, where it was."""
        try:
            self.pump()
        except BaseException:
            if taken is not None:
                self.inbox.appendleft(taken)
            raise

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
        try:
            if self._finishes:
                self._transmit_data(route, frames, wait=wait)
            else:
                self._transmit(route, frames, wait=wait)
        except BaseException:
            # The seal counted this message though it was not queued: a rekey that count
            # asks for must start all the same (no timer looks at counts), its INIT going
            # on its retry timer. Else sends that keep failing would reach the hard limit
            # with no rekey under way, and be refused until the age deadline.
            self.table.after_send(route, channel, now=now)
            raise
        self.sent += len(payloads)
        # The message-count rekey trigger: a few comparisons, so check on every send. The data
        # send above decides the outcome: its message is queued, so nothing after it may
        # raise (a caller retrying would duplicate it). An INIT that does not fit is dropped
        # by _transmit_reply and resent by the handshake's retry timer.
        if channel.rekey_due(now=now):
            self._handle(route, self.table.after_send(route, channel, now=now))

    def _batching_sender(
        self, route: bytes, channel: SecureChannel, **options: Any
    ) -> BatchingSender:
        def frame_batch(msg_type: int, body: Body, topic: str) -> list[Sealed]:
            self._check_sender(route, channel)
            now = self.wall_clock()
            frames = channel.seal_body(msg_type, body, topic=topic, now=now)
            # Handshake frames a due rekey produces go out before this batch; the batch is
            # sealed under the keys current now, which the peer still holds.
            events = self.table.after_send(route, channel, now=now)
            if events:
                self._handle(route, events)
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
            for made in self._bound_files:
                made.remove()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
