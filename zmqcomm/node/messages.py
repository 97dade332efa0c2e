"""What a node hands to the application, and how requests and replies are framed (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zmqcomm.errors import RemoteProtocolError, UsageError
from zmqcomm.wire import MessageType
from zmqcomm.wire.header import MAX_TOPIC_LEN

#: Inner message types agents exchange (the node handles topic keys and subscriptions).
APPLICATION_TYPES = frozenset(
    {
        MessageType.DATA,
        MessageType.REQUEST,
        MessageType.REPLY,
        MessageType.PUBLISH,
        MessageType.TOPIC_KEY_REQUEST,
        MessageType.TOPIC_KEY,
        MessageType.SUBSCRIBE,
        MessageType.UNSUBSCRIBE,
    }
)
#: How an incoming message reached us.
VIA_SESSION = "session"
VIA_MAIL = "mail"


@dataclass(frozen=True)
class Incoming:
    """One message from an authenticated peer.

    ``sender`` is the agent id the session (or the sealed message's signature) proved, never a
    claim from the message. ``request_id`` is set for REQUEST and REPLY; answer a request with
    :meth:`zmqcomm.node.Node.reply`.
    """

    sender: str
    kind: int
    payload: Any = field(repr=False)
    topic: str = ""
    request_id: int | None = None
    via: str = VIA_SESSION
    roles: frozenset[str] = frozenset()

    @property
    def is_request(self) -> bool:
        return self.kind == MessageType.REQUEST


def wrap(kind: int, payload: object, request_id: int | None) -> object:
    """The inner payload on the wire: REQUEST and REPLY carry ``[request_id, payload]``."""
    if kind in (MessageType.REQUEST, MessageType.REPLY):
        return [request_id, payload]
    return payload


def unwrap(
    sender: str,
    kind: int,
    payload: object,
    *,
    topic: str = "",
    via: str = VIA_SESSION,
    roles: frozenset[str] = frozenset(),
) -> Incoming:
    """Check the shape of a peer's inner message and make an :class:`Incoming` of it."""
    if kind not in APPLICATION_TYPES:
        raise RemoteProtocolError(f"message type {kind:#04x} between agents", reason="bad_type")
    if kind in (MessageType.REQUEST, MessageType.REPLY):
        if (
            not isinstance(payload, list)
            or len(payload) != 2
            or type(payload[0]) is not int
            or not 0 <= payload[0] < 2**63
        ):
            raise RemoteProtocolError("a request or reply without its id", reason="bad_request")
        return Incoming(sender, kind, payload[1], topic, payload[0], via, roles)
    return Incoming(sender, kind, payload, topic, None, via, roles)


def check_topic(topic: object) -> None:
    """UsageError unless ``topic`` is a str the wire header can carry."""
    try:
        size = len(topic.encode("utf-8")) if isinstance(topic, str) else None
    except UnicodeEncodeError:  # a lone surrogate
        size = None
    if size is None or size > MAX_TOPIC_LEN:
        raise UsageError(
            f"a topic is a string of at most {MAX_TOPIC_LEN} bytes of UTF-8, got {topic!r:.80}"
        )
