"""Publish/subscribe through a broker: the node's plumbing around :class:`Topics`.

Publications come from the broker in the clear hop layer (their payload is sealed and
signed); the topic keys that open them are asked for and answered in end-to-end sessions
through the broker (:class:`Tunnels`), so the broker never sees one.
"""

from __future__ import annotations

from collections.abc import Callable

from zmqcomm.errors import (
    NotPermittedError,
    QueueFullError,
    RemoteProtocolError,
    SecurityError,
)
from zmqcomm.node.messages import Incoming
from zmqcomm.node.topics import Topics, refusal
from zmqcomm.node.tunnel import HopMessage, Tunnels
from zmqcomm.wire import MessageType

#: What the node does with what comes out: send it to the broker, hand it to the application,
#: count and audit a refusal.
ToBroker = Callable[[list[HopMessage]], None]
Deliver = Callable[[Incoming], None]
Reject = Callable[[str, Exception], None]


class BrokerTopics:
    """Routes publications and topic-key messages between :class:`Topics` and the tunnels."""

    def __init__(
        self,
        topics: Topics,
        tunnels: Tunnels,
        *,
        to_broker: ToBroker,
        deliver: Deliver,
        reject: Reject,
        wall_clock: Callable[[], float],
    ) -> None:
        self.topics = topics
        self.tunnels = tunnels
        self._to_broker = to_broker
        self._deliver = deliver
        self._reject = reject
        self._wall_clock = wall_clock

    def on_publication(self, topic: str, payload: object) -> None:
        """A publication the broker fanned out to us (RemoteProtocolError or SecurityError if
        it is refused): ask for its key, or deliver what it opened."""
        asks, opened = self.topics.on_publication(topic, payload, now=self._wall_clock())
        for publisher, request in asks:
            self._send(publisher, MessageType.TOPIC_KEY_REQUEST, request)
        for incoming in opened:
            self._deliver(incoming)

    def on_key_message(self, incoming: Incoming) -> None:
        """A peer's TOPIC_KEY_REQUEST (answered) or TOPIC_KEY (opens what it held)."""
        try:
            if incoming.kind == MessageType.TOPIC_KEY_REQUEST:
                try:
                    answer = self.topics.grant(incoming.sender, incoming.roles, incoming.payload)
                except NotPermittedError as exc:
                    # Said out loud, or the asker holds the topic's publications until its
                    # request is pushed out by others.
                    self._reject(incoming.sender, exc)
                    answer = refusal(incoming.payload)
                self._send(incoming.sender, MessageType.TOPIC_KEY, answer)
                return
            for opened in self.topics.on_key(
                incoming.sender, incoming.payload, now=self._wall_clock()
            ):
                self._deliver(opened)
        except (RemoteProtocolError, SecurityError) as exc:
            self._reject(incoming.sender, exc)

    def _send(self, peer: str, kind: int, payload: object) -> None:
        try:
            out = self.tunnels.send(peer, kind, payload, topic="", now=self._wall_clock())
        except QueueFullError as exc:
            # A publisher that never completes our handshake, yet publishes under ever new
            # key ids, fills the queue towards it: a refusal here, never an error out of
            # pump() for the peer's sake.
            self._reject(peer, exc)
            return
        self._to_broker(out)
