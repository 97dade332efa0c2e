"""A node's direct links: the sockets it holds to peers it reaches without a broker.

There are two kinds: one router that accepts the peers who dial in (``bind=``), and one
dealer per peer this node dialled itself (:meth:`Node.connect`). This module keeps them,
finds the link to a given agent, sends over it, tells a new peer our subscriptions, checks
what peers send (:meth:`DirectLinks.on_input`) before the node delivers it, and cleans up
after a peer that has gone: its session on the router and the subscriptions it had told us
about. It is the direct counterpart of :class:`BrokerPath`. Waiting for a new dealer's
handshake stays in the node, which pumps everything else meanwhile.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from zmqcomm.access import Policy
from zmqcomm.crypto.channel import Delivered
from zmqcomm.errors import (
    ConnectError,
    RemoteProtocolError,
    SecurityError,
    TransportError,
    UnknownPeerError,
    ZmqCommError,
)
from zmqcomm.node.direct_topics import CONTROL, DirectTopics
from zmqcomm.node.messages import Incoming, unwrap
from zmqcomm.node.statistics import table_counts
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.secure_poller import SecurePoller
from zmqcomm.wire import MessageType

Link = SecureRouter | SecureDealer
#: How the node counts and audits a refusal (a send to a peer that left, a message refused).
Reject = Callable[[str, Exception], None]
#: How the node hands a checked message on (to the application, a request handler, ...).
Deliver = Callable[[Incoming], None]


class Send(Protocol):
    """How the node sends one message to a peer: counted, over whichever link reaches it."""

    def __call__(
        self, peer: str, kind: int, payload: object, *, topic: str = "", wait: bool = True
    ) -> None: ...


class DirectLinks:
    """The router accepting direct peers, if any, and the dealers this node dialled."""

    def __init__(
        self,
        poller: SecurePoller[Link],
        topics: DirectTopics,
        *,
        send: Send,
        deliver: Deliver,
        reject: Reject,
    ) -> None:
        self.router: SecureRouter | None = None
        #: Agent id -> the dealer we dialled it with (one per agent; a new one replaces it).
        self.dealers: dict[str, SecureDealer] = {}
        #: What links closed before the node did had counted, so statistics() keeps it.
        self.retired: Counter[str] = Counter()
        self._poller = poller
        self._topics = topics
        self._send = send
        self._deliver = deliver
        self._reject = reject

    def listen(self, router: SecureRouter) -> None:
        self.router = router
        self._poller.add(router)

    def adopt(self, dealer: SecureDealer) -> str:
        """Make an established dealer the link to its peer; returns the peer's agent id."""
        assert dealer.peer is not None
        replaced = self.dealers.get(dealer.peer)
        if replaced is not None:  # a new link to the same agent takes the old one's place
            self._poller.remove(replaced)
            replaced.close()
            self.retired.update(table_counts(replaced.table))
        self.dealers[dealer.peer] = dealer
        self._poller.add(dealer)
        return dealer.peer

    @property
    def peers(self) -> list[str]:
        """Agents with a direct session to this node."""
        found = set(self.dealers)
        if self.router is not None:
            found.update(self.router.peers)
        return sorted(found)

    def links(self) -> list[Link]:
        """Every direct socket: the dealers, then the router."""
        links: list[Link] = list(self.dealers.values())
        if self.router is not None:
            links.append(self.router)
        return links

    def find(self, peer: str) -> tuple[Link, str] | None:
        """The link that reaches ``peer`` now (an established dealer first), if any."""
        dealer = self.dealers.get(peer)
        if dealer is not None and dealer.established:
            return dealer, peer
        if self.router is not None and self.router.table.route_of(peer) is not None:
            return self.router, peer
        return None

    def send(self, peer: str, inner: object, *, kind: int, topic: str, wait: bool = True) -> bool:
        """Send over the direct link to ``peer``; False if there is none. ``wait=False``:
        QueueFullError at once, rather than waiting for room, when the peer does not read."""
        return self.send_many(peer, [inner], kind=kind, topic=topic, wait=wait)

    def send_many(
        self,
        peer: str,
        payloads: Sequence[object],
        *,
        kind: int = MessageType.DATA,
        topic: str,
        wait: bool = True,
    ) -> bool:
        """Send to ``peer`` as one frame (a batch when there are several); False if there is
        no direct link."""
        direct = self.find(peer)
        if direct is None:
            return False
        link, agent = direct
        if isinstance(link, SecureRouter):
            with self._forgetting(link, agent):
                link.send_many(agent, list(payloads), msg_type=kind, topic=topic, wait=wait)
        else:
            link.send_many(list(payloads), msg_type=kind, topic=topic, wait=wait)
        return True

    def publish(self, topic: str, payload: object) -> None:
        """Publish to the connected peers that subscribed to ``topic``."""
        self.to_each(self._topics.subscribers(topic), MessageType.PUBLISH, payload, topic)

    def subscription(self, kind: int, topic: str) -> None:
        """Note a SUBSCRIBE or UNSUBSCRIBE of ours, and tell every connected peer."""
        if kind == MessageType.SUBSCRIBE:
            self._topics.mine.add(topic)
        else:
            self._topics.mine.discard(topic)
        # Waits for room (send_timeout) like the caller's own sends: a subscription is state
        # the peer must get, unlike one copy of a publication.
        self.to_each(self.peers, kind, None, topic, wait=True)

    def greet(self, peer: str) -> None:
        """Tell a newly connected direct peer what we subscribe to."""
        for topic in sorted(self._topics.mine):
            # Sent inside pump(): a peer that left meanwhile, or does not read (this never
            # waits for room), must not turn into an exception for the caller.
            try:
                self._send(peer, MessageType.SUBSCRIBE, None, topic=topic, wait=False)
            except TransportError as exc:
                self._reject(peer, exc)

    def greet_newcomers(self) -> None:
        """Greet the peers whose sessions on our router came up since the last pump."""
        router = self.router
        if router is not None:
            while router.joined:
                self.greet(router.joined.popleft().agent_id)

    def to_each(
        self, peers: Sequence[str], kind: int, payload: object, topic: str, *, wait: bool = False
    ) -> None:
        """Send to several direct peers, skipping any that left or whose queue is full (by
        default one that does not read must not hold up the others): counted and audited
        as a refusal, and a peer that left is forgotten once no link to it is left, never an
        error that robs the others."""
        for peer in peers:
            try:
                self._send(peer, kind, payload, topic=topic, wait=wait)
            except (TransportError, UnknownPeerError) as exc:
                self._reject(peer, exc)
                # A dialled link that is down comes back by itself: keep what it subscribed.
                if self.find(peer) is None and peer not in self.dealers:
                    self._topics.forget(peer)

    @contextlib.contextmanager
    def _forgetting(self, router: SecureRouter, peer: str) -> Iterator[None]:
        """A send on our router that finds the peer gone drops its session and its
        subscriptions (the router would otherwise list it, and fail on it, forever)."""
        try:
            yield
        except TransportError as exc:
            route = router.table.route_of(peer)
            if exc.reason == "unroutable" and route is not None:
                router.table.drop(route)
                router.gone += 1
                self._topics.forget(peer)
            raise

    def missing(self, peer: str) -> ZmqCommError:
        """The error for a send to ``peer`` that no link can carry."""
        dealer = self.dealers.get(peer)
        if dealer is not None and not dealer.established:
            return ConnectError(
                f"the link to {peer} is down or still setting up its session; it reconnects "
                "by itself: send again once it is back",
                reason="link_down",
            )
        return UnknownPeerError(f"no link to {peer}: connect() to it first, or use a broker")

    def on_input(self, link: Link, delivered: Delivered, *, policy: Policy | None) -> None:
        """What a direct peer sent: its subscriptions are noted, publications we no longer
        subscribe to dropped, the rest checked against ``policy`` (the node's, as it is now)
        and delivered; a refusal is rejected, and the next message looked at."""
        roles = self.roles_of(link, delivered.agent_id)
        header = delivered.message.header
        for payload in delivered.message.payloads:
            try:
                incoming = unwrap(
                    delivered.agent_id, header.type, payload, topic=header.topic, roles=roles
                )
                if incoming.kind in CONTROL:
                    self._topics.on_control(incoming.sender, roles, incoming.kind, incoming.topic)
                    continue
                if incoming.kind == MessageType.PUBLISH:
                    if not self._topics.accept(incoming.sender, roles, incoming.topic):
                        continue  # sent before our unsubscribe arrived: not for us now
                elif policy is not None:
                    policy.check_send(incoming.sender, roles, incoming.kind)
            except (RemoteProtocolError, SecurityError) as exc:
                self._reject(delivered.agent_id, exc)
                continue
            self._deliver(incoming)

    @staticmethod
    def roles_of(link: Link, agent: str) -> frozenset[str]:
        """The roles the trust store gives ``agent``, as the session on ``link`` recorded."""
        channel = link.table.channel_to(agent) if isinstance(link, SecureRouter) else None
        if channel is None:
            channel = link.table.channels.get(b"")
        return channel.peer.roles if channel is not None and channel.peer else frozenset()

    def close(self) -> None:
        for link in self.links():
            link.close()
