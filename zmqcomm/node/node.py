"""The Node: an agent's one object for talking to other agents.

A node holds an identity, a trust store and (optionally) a policy, and reaches peers either
through a broker (``Node(..., broker=endpoint)``: one connection, end-to-end sessions
tunnelled through it, mail for offline peers) or directly (``bind=`` to accept, and
:meth:`Node.connect` to dial). The API is the same both ways::

    with Node(identity, trust, broker="ipc:///run/zmqcomm/broker.sock") as node:
        node.send(peer_id, {"task": 7})
        answer = node.request(peer_id, {"op": "status"}, timeout=5)
        for message in node.messages(timeout=1.0):
            if message.is_request:
                node.reply(message, {"ok": True})

A node does its work in the calling thread, whenever it is called (send, request, receive,
messages, pump, run): there is no background thread to race with. Keep calling one of them
(``run`` does it for you) so that handshakes, rekeys and mail progress.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import zmq

from zmqcomm.access import Policy
from zmqcomm.checks import check_timeout
from zmqcomm.crypto.audit import BaseAuditLog, NullAuditLog
from zmqcomm.crypto.channel_table import HandshakeLimits
from zmqcomm.crypto.keys import Identity, sender_from_agent_id
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import (
    ClosedError,
    ConnectError,
    ReceiveTimeout,
    RemoteProtocolError,
    RequestTimeout,
    StoreError,
    TransportError,
    UsageError,
)
from zmqcomm.node import aio
from zmqcomm.node.broker_path import TIMER_TICK, BrokerPath
from zmqcomm.node.direct_links import DirectLinks, Link
from zmqcomm.node.direct_topics import CONTROL, DirectTopics
from zmqcomm.node.held_mail import DEFAULT_MAX_HELD, DEFAULT_MAX_HELD_BYTES
from zmqcomm.node.hop_outbox import HopOutbox
from zmqcomm.node.mail_room import MAIL_MAX_AGE
from zmqcomm.node.messages import Incoming, check_topic, wrap
from zmqcomm.node.requests import Requests
from zmqcomm.node.statistics import gather_statistics
from zmqcomm.node.topics import Topics
from zmqcomm.node.tunnel import Tunnels
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.secure_poller import SecurePoller
from zmqcomm.transport import SocketOptions
from zmqcomm.transport.endpoints import unreachable_endpoint_hint
from zmqcomm.transport.inbox import take_next
from zmqcomm.transport.sockets import DEFAULT_SOCKET_OPTIONS
from zmqcomm.wire import MessageType

Handler = Callable[[Incoming], object]
# TIMER_TICK lives with the broker path's timers; named here too, where it always was.
__all__ = ["TIMER_TICK", "Handler", "Node"]


class Node:
    """An agent on the bus. See the module docstring for the two ways of reaching peers.

    - ``identity``, ``trust``: who we are, and whom we accept (with their roles).
    - ``broker``: the broker's endpoint; or ``bind``: an endpoint to accept direct peers on.
    - ``policy``: what each role may send us (default: every trusted peer may do anything);
      its ``[unauthenticated]`` section sets the handshakes allowed per connection on ``bind``.
    - ``audit``: where rejections, handshakes and rekeys are written (default: nowhere).
    - ``rekey``: the session rekey policy (default: 1,000,000 messages or 24 hours).
    - ``max_queue``, ``on_full``: messages held per peer while its session is set up; when
      full, ``"raise"`` (QueueFullError) or ``"drop"`` (counted in ``statistics()``).
    - ``mail``: turn messages for offline peers into sealed mail the broker stores;
      ``mail_max_age``: older mail is refused (match a broker whose ``mail_ttl`` is longer
      than its 7-day default). ``max_held_mail``, ``max_held_mail_bytes``: mail that cannot
      be opened yet (its sender is not trusted yet, its clock runs ahead) is acknowledged
      and held, up to this many pieces and bytes, and opened again later (0: dropped).
    - ``mail_store``: a file (SQLite, created 0600) where held mail and the ids of mail
      already delivered outlive the process: a node restarted on it holds again what it
      held and refuses mail it delivered before. Written before mail is acknowledged or
      delivered; one node per file (locked). None (default): both live in memory only, and
      held mail still held at ``close()`` is lost (``held_at_close``). Needs ``broker``.
    - ``connect_timeout``: how long the constructor waits for the broker session.
    """

    def __init__(
        self,
        identity: Identity,
        trust: TrustStore,
        *,
        broker: str | None = None,
        bind: str | None = None,
        policy: Policy | None = None,
        audit: BaseAuditLog | None = None,
        rekey: RekeyPolicy | None = None,
        options: SocketOptions = DEFAULT_SOCKET_OPTIONS,
        context: zmq.Context[Any] | None = None,
        connect_timeout: float = 10.0,
        max_queue: int = 10_000,
        on_full: str = "raise",
        mail: bool = True,
        mail_max_age: float = MAIL_MAX_AGE,
        max_held_mail: int = DEFAULT_MAX_HELD,
        max_held_mail_bytes: int = DEFAULT_MAX_HELD_BYTES,
        mail_store: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if broker is None and bind is None:
            raise UsageError("a node needs broker= (an endpoint) or bind= (to accept peers)")
        if mail_store is not None and broker is None:
            raise UsageError("mail_store keeps mail that came through a broker: give broker= too")
        self.identity = identity
        self.trust = trust
        self.policy = policy
        self.audit = audit if audit is not None else NullAuditLog()
        self.clock = clock
        self.wall_clock = wall_clock
        self._options = options
        self._context = context
        self._rekey = rekey
        self.inbox: deque[Incoming] = deque()
        self._requests = Requests(first_id=1 + int.from_bytes(os.urandom(4), "big"))
        self.counters: Counter[str] = Counter()
        #: If set, called for each REQUEST as it arrives; its result is the reply.
        self.request_handler: Handler | None = None
        self._closed = False
        self._poller: SecurePoller[Link] = SecurePoller([], clock=clock)
        #: The broker link and all that travels over it (None in direct mode).
        self._broker_path: BrokerPath | None = None
        self._direct_topics = DirectTopics(policy)
        self._direct = DirectLinks(
            self._poller,
            self._direct_topics,
            send=self._send,
            deliver=self._deliver,
            reject=self._reject,
        )
        try:
            if bind is not None:
                limits = HandshakeLimits().with_policy(policy)
                self._direct.listen(SecureRouter(bind, limits=limits, **self._link_options()))
            if broker is not None:
                self._broker_path = BrokerPath(
                    broker,
                    identity=identity,
                    trust=trust,
                    policy=policy,
                    audit=self.audit,
                    rekey=rekey,
                    max_queue=max_queue,
                    on_full=on_full,
                    mail=mail,
                    mail_max_age=mail_max_age,
                    max_held_mail=max_held_mail,
                    max_held_mail_bytes=max_held_mail_bytes,
                    mail_store=mail_store,
                    connect_timeout=connect_timeout,
                    link_options=self._link_options(),
                    clock=clock,
                    wall_clock=wall_clock,
                    deliver=self._deliver,
                    reject=self._reject,
                )
                self._poller.add(self._broker_path.link)
        except BaseException:
            self.close(timeout=0)
            raise

    def __repr__(self) -> str:
        mode = "broker" if self._broker_path is not None else "direct"
        return f"Node({self.identity.agent_id!r}, {mode})"

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id

    @property
    def endpoint(self) -> str | None:
        """Where this node accepts direct connections (with ``bind=``)."""
        router = self._direct.router
        return router.endpoint if router is not None else None

    def _link_options(self) -> dict[str, Any]:
        """What every secure socket of this node is made with."""
        return {
            "identity": self.identity,
            "trust": self.trust,
            "audit": self.audit,
            "policy": self._rekey,
            "options": self._options,
            "context": self._context,
            "clock": self.clock,
            "wall_clock": self.wall_clock,
        }

    # -- the broker path's parts, for statistics() and for tests that reach in -------------

    @property
    def _broker(self) -> SecureDealer | None:
        return self._broker_path.link if self._broker_path is not None else None

    @property
    def _tunnels(self) -> Tunnels | None:
        return self._broker_path.tunnels if self._broker_path is not None else None

    @property
    def _outbox(self) -> HopOutbox | None:
        return self._broker_path.outbox if self._broker_path is not None else None

    @property
    def _topics(self) -> Topics | None:
        return self._broker_path.topics if self._broker_path is not None else None

    # -- direct links ------------------------------------------------------------------------

    def connect(
        self, endpoint: str, *, expect_peer: str | None = None, timeout: float = 10.0
    ) -> str:
        """Open a direct, authenticated link to the node at ``endpoint``; returns its id."""
        self._check_open()
        check_timeout(timeout, "connect timeout", allow_none=False)
        dealer = SecureDealer(
            endpoint, expect_peer=expect_peer, connect_timeout=None, **self._link_options()
        )
        deadline = self.clock() + timeout
        try:
            while not dealer.established:
                if self.clock() >= deadline:
                    raise ConnectError(
                        f"no authenticated session with {endpoint} within {timeout} s (is a "
                        "node listening there, and do both trust stores list each other?)"
                        f"{unreachable_endpoint_hint(endpoint)}"
                    )
                # Our other links are only looked at (no wait): the new dealer is not in the
                # poller yet, and waiting on them added 10 ms to each handshake step.
                self.pump(0.0)  # may raise: a request handler's error comes out here
                dealer.pump(min(0.01, max(deadline - self.clock(), 0.0)))
        except BaseException:
            dealer.close()  # not yet one of our links: nothing else would ever close it
            raise
        peer = self._direct.adopt(dealer)
        self._direct.greet(peer)
        # What came in behind the handshake (the peer's subscriptions, its first messages)
        # is in the dealer's inbox already, where no poll will report it.
        self._take(dealer)
        return peer

    # -- sending -----------------------------------------------------------------------------

    def send(self, peer: str, payload: object, *, topic: str = "") -> None:
        """Send ``payload`` to ``peer`` (an agent id), encrypted end to end."""
        self._check_recipient(peer)
        self._send(peer, MessageType.DATA, payload, topic=topic)

    def _check_recipient(self, peer: object) -> None:
        """Through a broker, a message to a malformed id or to ourselves would wait for a
        session that never comes: refuse it now (UsageError)."""
        if self._broker_path is None:
            return  # direct only: an unknown peer raises UnknownPeerError anyway
        if not isinstance(peer, str):
            raise UsageError(f"a peer is an agent id (a str), got {peer!r:.80}")
        sender_from_agent_id(peer)  # UsageError if it is not one
        if peer == self.agent_id:
            raise UsageError("a node does not send to itself")

    def send_many(self, peer: str, payloads: Sequence[object], *, topic: str = "") -> None:
        """Send several messages to ``peer`` as one encrypted batch: one AEAD call and one
        socket send for all of them, which is how small messages go fast."""
        self._check_open()
        self._check_recipient(peer)
        if self._direct.send_many(peer, payloads, topic=topic):
            self.counters["sent"] += len(payloads)
        elif self._broker_path is not None:
            self.counters["sent"] += self._broker_path.send_many(peer, payloads, topic=topic)
        else:
            raise self._direct.missing(peer)

    def request(self, peer: str, payload: object, *, timeout: float = 5.0) -> Any:
        """Send a request and wait for the reply's payload (RequestTimeout after ``timeout``)."""
        check_timeout(timeout, "request timeout", allow_none=False)  # before anything is sent
        request_id = self.start_request(peer, payload)
        try:
            deadline = self.clock() + timeout
            while (reply := self.take_reply(request_id)) is None:
                left = deadline - self.clock()
                if left <= 0:
                    raise RequestTimeout(f"no reply from {peer} within {timeout} s")
                self.pump(min(left, 0.05))
            return reply.payload
        finally:
            self.abandon_request(request_id)

    def start_request(self, peer: str, payload: object) -> int:
        """Send a request without waiting; collect the reply with :meth:`take_reply`."""
        self._check_recipient(peer)
        request_id = self._requests.start(peer)
        try:
            self._send(peer, MessageType.REQUEST, payload, request_id=request_id)
        except BaseException:
            self._requests.abandon(request_id)
            raise
        return request_id

    def take_reply(self, request_id: int) -> Incoming | None:
        """The reply to a started request, if it has arrived (pump to let it in). Once taken,
        the request is answered: a second reply to it counts as late."""
        return self._requests.take(request_id)

    def abandon_request(self, request_id: int) -> None:
        """Stop waiting: a reply arriving later is counted as late and dropped."""
        self._requests.abandon(request_id)

    @property
    def _waiting(self) -> dict[int, str]:
        """Request id -> the agent asked."""
        return self._requests.waiting

    @property
    def _replies(self) -> dict[int, Incoming]:
        """Request id -> its reply, until taken."""
        return self._requests.replies

    def reply(self, request: Incoming, payload: object) -> None:
        """Answer a request received from a peer."""
        self._reply(request, payload, wait=True)

    def _reply(self, request: Incoming, payload: object, *, wait: bool) -> None:
        if not request.is_request or request.request_id is None:
            raise UsageError("reply() answers a REQUEST; this message is not one")
        self._send(
            request.sender, MessageType.REPLY, payload, request_id=request.request_id, wait=wait
        )

    # -- topics ------------------------------------------------------------------------------

    def publish(self, topic: str, payload: object) -> None:
        """Publish on ``topic``: through the broker (encrypted under our topic key and
        signed), or directly to the connected peers that subscribed to it."""
        self._check_open()
        if self._broker_path is not None:
            self._broker_path.publish(topic, payload)
        else:
            self._direct.publish(topic, payload)
        self.counters["published"] += 1

    def subscribe(self, topic: str) -> None:
        """Receive publications on ``topic`` (exact, or a prefix ending in ``*``)."""
        self._subscription(MessageType.SUBSCRIBE, topic)

    def unsubscribe(self, topic: str) -> None:
        self._subscription(MessageType.UNSUBSCRIBE, topic)

    def _subscription(self, kind: int, topic: str) -> None:
        self._check_open()
        # Checked before it is stored: a topic the header cannot carry would otherwise fail
        # later, in the greeting of every peer that connects.
        check_topic(topic)
        if self._broker_path is not None:
            self._broker_path.subscription(kind, topic)
        else:
            self._direct.subscription(kind, topic)

    def subscribers(self, topic: str) -> list[str]:
        """Direct peers that subscribed to ``topic`` (through a broker, only it knows)."""
        return self._direct_topics.subscribers(topic)

    def _send_quietly(self, peer: str, send: Callable[[], None]) -> None:
        """A send the node makes on its own (an automatic reply) inside
        pump(): a peer that left meanwhile, or does not read (these sends never wait for
        room), must not turn into an exception for the caller."""
        try:
            send()
        except TransportError as exc:
            self._reject(peer, exc)

    def _send(
        self,
        peer: str,
        kind: int,
        payload: object,
        *,
        topic: str = "",
        request_id: int | None = None,
        wait: bool = True,
    ) -> None:
        self._check_open()
        inner = wrap(kind, payload, request_id)
        if self._direct.send(peer, inner, kind=kind, topic=topic, wait=wait):
            self.counters["sent"] += 1
        elif self._broker_path is not None:
            if self._broker_path.send(peer, kind, inner, topic=topic):
                self.counters["sent"] += 1  # on_full="drop": counted as dropped, not as sent
        else:
            raise self._direct.missing(peer)

    # -- receiving ---------------------------------------------------------------------------

    def sockets(self) -> list[zmq.Socket[Any]]:
        """The node's ZeroMQ sockets (for an event loop to watch), connection monitors
        included: a reconnect needs a pump as much as a message does."""
        return [sock for link in self._links() for sock in (link.socket, *link.side_sockets())]

    def _links(self) -> list[Link]:
        links = self._direct.links()
        if self._broker_path is not None:
            links.append(self._broker_path.link)
        return links

    def wait_time(self, timeout: float) -> float:
        """How long a wait for input may last: ``timeout`` seconds, cut short to when the
        node's own next timer is due (a tunnel's handshake retry or rekey, a retry of held
        mail, messages held for the broker link, the keepalive), so that it runs on time
        rather than up to one wait late. 0 when one is due now."""
        if timeout <= 0:
            return 0.0
        due = self._broker_path.next_due() if self._broker_path is not None else math.inf
        return min(timeout, max(due - self.clock(), 0.0))

    def pump(self, timeout: float = 0.0) -> int:
        """Do pending work (handshakes, rekeys, mail, incoming messages), waiting up to
        ``timeout`` seconds for input, or less when one of the node's own timers is due
        sooner (:meth:`wait_time`). Returns the number of ZeroMQ messages handled."""
        self._check_open()
        handled = 0
        # Everything that arrives is read and handled: the broker link carries the tunnels'
        # handshakes, key answers and mail behind application messages, so leaving it
        # unread to bound the inbox would stall the node's own traffic (and hide a broker
        # restart). The application bounds the inbox by taking what it holds.
        for link in self._poller.wait(self.wait_time(timeout)):
            if link.closed:  # replaced by a connect() from a handler during this pump
                continue
            handled += link.pump(0.0)
            self._take(link)
        self._direct.greet_newcomers()
        if self._broker_path is not None:
            self._broker_path.run_due()
        return handled

    def _take(self, link: Link) -> None:
        while link.inbox:
            delivered = link.inbox.popleft()
            if self._broker_path is not None and link is self._broker_path.link:
                self._broker_path.on_input(delivered)
            else:
                self._direct.on_input(link, delivered, policy=self.policy)

    def _deliver(self, incoming: Incoming) -> None:
        if incoming.kind in CONTROL:  # subscriptions travel to the broker, not between agents
            self._reject(incoming.sender, RemoteProtocolError("stray", reason="bad_type"))
            return
        if incoming.kind in (MessageType.TOPIC_KEY_REQUEST, MessageType.TOPIC_KEY):
            if self._broker_path is None:
                self._reject(incoming.sender, RemoteProtocolError("no topics", reason="bad_type"))
            else:
                self._broker_path.on_key_message(incoming)
            return
        self.counters["received"] += 1
        if incoming.kind == MessageType.REQUEST and self.request_handler is not None:
            # Answered at once, even while this node waits in request(): two nodes that
            # request from each other at the same moment do not deadlock.
            answer = self.request_handler(incoming)
            self._send_quietly(incoming.sender, lambda: self._reply(incoming, answer, wait=False))
            return
        if incoming.kind == MessageType.REPLY:
            try:
                if not self._requests.on_reply(incoming):
                    self.counters["late_replies"] += 1  # its request timed out; nobody waits
            except RemoteProtocolError as exc:  # from an agent not asked
                self._reject(incoming.sender, exc)
            return
        self.inbox.append(incoming)

    def _reject(self, peer: str, exc: Exception) -> None:
        reason = getattr(exc, "reason", "error")
        self.counters[f"rejected:{reason}"] += 1
        self.audit.record("reject", now=self.wall_clock(), peer=peer, reason=reason)

    def receive(self, timeout: float | None = None) -> Incoming:
        """The next message from a peer (ReceiveTimeout after ``timeout``; None waits)."""
        return take_next(self.inbox, self.pump, self.clock, timeout, what="message")

    def messages(self, timeout: float | None = None) -> Iterator[Incoming]:
        """Messages as they come; ends when none arrives within ``timeout`` (None: never)."""
        while True:
            try:
                yield self.receive(timeout)
            except ReceiveTimeout:
                return

    def run(self, handler: Handler, *, until: Callable[[], bool] | None = None) -> None:
        """Call ``handler`` for each message until ``until()`` is true (or forever); a
        request's handler result, if not None, is sent back as the reply."""
        while not self._closed and not (until is not None and until()):
            try:
                message = self.receive(0.05)
            except ReceiveTimeout:
                continue
            result = handler(message)
            if message.is_request and result is not None:
                self.reply(message, result)

    # -- lifetime ----------------------------------------------------------------------------

    @property
    def peers(self) -> list[str]:
        """Agents with a direct session to this node."""
        return self._direct.peers

    def statistics(self) -> dict[str, Any]:
        tables = [link.table for link in self._links()]
        if self._tunnels is not None:
            tables.append(self._tunnels.table)
        return gather_statistics(
            agent_id=self.agent_id,
            tables=tables,
            counters=self.counters,
            retired=self._direct.retired,
            tunnels=self._tunnels,
            topics=self._topics,
            outbox=self._outbox,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this node is closed")

    def close(self, *, timeout: float = 2.0) -> None:
        """Flush what is queued (for at most ``timeout`` seconds), then close every socket.
        Once the mail store is lost (a failed write), nothing is flushed: what is left is
        counted in ``statistics()["dropped"]`` and close() does not raise, so that it can
        run in a ``with`` block without hiding the error that got there."""
        if self._closed:
            return
        check_timeout(timeout, "close timeout", allow_none=False)
        deadline = self.clock() + timeout
        path = self._broker_path
        try:
            while self.clock() < deadline and self.unsent() and self._flush_step(0.01):
                pass
            if path is not None:
                path.say_goodbye()
        finally:
            self._closed = True
            self._direct.close()
            if path is not None:
                path.close()

    def _flush_step(self, timeout: float) -> bool:
        """One pump of a close; False (stop flushing) once the mail store is lost: every pump
        would raise StoreError again, and close() must still close."""
        if self._broker_path is not None and self._broker_path.store_lost:
            return False
        try:
            self.pump(timeout)
        except StoreError:
            return False
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def unsent(self) -> int:
        """Messages accepted and not yet handed to ZeroMQ: waiting for a peer's session, or
        for the broker link (what :meth:`close` waits for)."""
        return self._broker_path.unsent() if self._broker_path is not None else 0

    # -- asyncio -----------------------------------------------------------------------------

    async def areceive(self, timeout: float | None = None) -> Incoming:
        """Like :meth:`receive`, letting other tasks run while it waits."""
        return await aio.areceive(self, timeout)

    def amessages(self, timeout: float | None = None) -> AsyncIterator[Incoming]:
        """``async for message in node.amessages(timeout)``: ends after ``timeout`` of quiet."""
        return aio.amessages(self, timeout)

    async def arequest(self, peer: str, payload: object, *, timeout: float = 5.0) -> Any:
        """Like :meth:`request`, letting other tasks run while it waits."""
        return await aio.arequest(self, peer, payload, timeout=timeout)

    async def __aenter__(self) -> Node:
        return self

    async def aclose(self, *, timeout: float = 2.0) -> None:
        """Like :meth:`close`, letting other tasks run while it waits for what is queued."""
        await aio.aclose(self, timeout)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
