"""A node's direct links: the sockets it holds to peers it reaches without a broker.

There are two kinds: one router that accepts the peers who dial in (``bind=``), and one
dealer per peer this node dialled itself (:meth:`Node.connect`). This module keeps them,
finds the link to a given agent, sends over it, and cleans up after a peer that has gone:
its session on the router and the subscriptions it had told us about. Waiting for a new
dealer's handshake stays in the node, which pumps everything else meanwhile.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from zmqcomm.errors import ConnectError, TransportError, UnknownPeerError, ZmqCommError
from zmqcomm.node.direct_topics import DirectTopics
from zmqcomm.node.statistics import table_counts
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.secure_poller import SecurePoller
from zmqcomm.wire import MessageType

Link = SecureRouter | SecureDealer
#: How the node counts and audits a refusal (here: a send to a peer that left).
Reject = Callable[[str, Exception], None]


class DirectLinks:
    """The router accepting direct peers, if any, and the dealers this node dialled."""

    def __init__(self, poller: SecurePoller[Link], topics: DirectTopics) -> None:
        self.router: SecureRouter | None = None
        #: Agent id -> the dealer we dialled it with (one per agent; a new one replaces it).
        self.dealers: dict[str, SecureDealer] = {}
        #: What links closed before the node did had counted, so statistics() keeps it.
        self.retired: Counter[str] = Counter()
        self._poller = poller
        self._topics = topics

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

    def to_each(self, peers: Sequence[str], send: Callable[[str], None], reject: Reject) -> None:
        """``send`` to several direct peers: one that left is skipped (``reject`` counts and
        audits it), and forgotten once no link to it is left, never an error that robs the
        others."""
        for peer in peers:
            try:
                send(peer)
            except (TransportError, UnknownPeerError) as exc:
                reject(peer, exc)
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
