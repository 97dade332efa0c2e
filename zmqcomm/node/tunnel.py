"""End-to-end sessions between agents, tunnelled through a broker (pure, sans-I/O).

The node and the broker share a hop session; inside it, each pair of agents runs its own
Noise session, whose frames travel as the payload of FORWARD (to the broker, topic = the
recipient) and DELIVER (from the broker, topic = the sender) messages. The broker routes on
that clear topic and never holds a key that opens the inner frames.

Messages to a peer wait in a bounded queue while its session is set up. When the broker
answers UNREACHABLE (the peer is offline), queued messages become sealed mail (SealedBox to
the peer's key, signed by us), which the broker stores durably and delivers when the peer
connects; the peer acknowledges each piece of mail and drops repeats by id
(:mod:`zmqcomm.node.mail_room`, :attr:`Tunnels.mailroom`).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zmqcomm.access import Policy
from zmqcomm.crypto.audit import BaseAuditLog
from zmqcomm.crypto.channel import Delivered, Established, Event, SecureChannel, Transmit
from zmqcomm.crypto.channel_table import ChannelTable
from zmqcomm.crypto.handshake import RandomBytes
from zmqcomm.crypto.keys import Identity, PublicIdentity
from zmqcomm.crypto.session import RekeyPolicy, Session
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import (
    LocalProtocolError,
    QueueFullError,
    RemoteProtocolError,
    SecurityError,
    UnknownPeerError,
    UsageError,
)
from zmqcomm.node.held_mail import DEFAULT_MAX_HELD, DEFAULT_MAX_HELD_BYTES
from zmqcomm.node.mail_room import MAIL_MAX_AGE, MailRoom
from zmqcomm.node.messages import Incoming, unwrap
from zmqcomm.wire import Message, MessageType, WireCodec
from zmqcomm.wire.header import parse_header, peek_type
from zmqcomm.wire.message_types import FIRST_SECURITY_TYPE, LAST_SECURITY_TYPE
from zmqcomm.wire.payload import Buffer

_INTERNAL = frozenset({MessageType.TOPIC_KEY_REQUEST, MessageType.TOPIC_KEY})
_INIT = int(MessageType.HANDSHAKE_INIT)
_FINISH = int(MessageType.HANDSHAKE_FINISH)
#: Session frames remembered per peer, to send again if they bounce, and their bytes at most
#: (the payloads are kept alive: 4,096 messages of 1 MiB would be 4 GiB per peer).
_RECENT = 4096
_RECENT_BYTES = 64 * 1024 * 1024
#: A message as the application gave it: (kind, payload, topic).
_Item = tuple[int, object, str]


def _frame_key(frame: Buffer) -> tuple[int, int, int]:
    header, _ = parse_header(memoryview(frame))
    return header.session, header.epoch, header.counter


def _foreign_session(channel: SecureChannel | None, frame: bytes) -> bool:
    """Whether ``frame`` is data under a session we do not hold with its sender (no channel,
    a handshake of our own still under way, or another session). Handshake frames are the
    channel's business."""
    header, _ = parse_header(memoryview(frame))
    if FIRST_SECURITY_TYPE <= header.type <= LAST_SECURITY_TYPE:
        return channel is None and header.type != _INIT
    session = channel.session if channel is not None else None
    return session is None or header.session != session.session_id


def _is_sealed_data(frames: object) -> bool:
    """Whether bounced ``frames`` are an application message (not a handshake frame)."""
    if not isinstance(frames, list) or not frames or not isinstance(frames[0], bytes):
        return False
    try:
        header, _ = parse_header(memoryview(frames[0]))
    except RemoteProtocolError:
        return False
    return not FIRST_SECURITY_TYPE <= header.type <= LAST_SECURITY_TYPE


#: Peers whose last SESSION_RESET time is kept (for its once-a-second limit).
_RESETS_REMEMBERED = 4096


@dataclass(frozen=True)
class HopMessage:
    """A message for the broker, to be sealed under the hop session."""

    msg_type: int
    payload: object
    topic: str = ""
    #: The peer whose tunnel rekey this message finishes (a FORWARD of our FINISH), else
    #: "": the hop outbox tells :meth:`Tunnels.hold_finish` when it has to hold one.
    finish_for: str = ""


class Tunnels:
    """Our end-to-end sessions with every peer reached through one broker."""

    def __init__(
        self,
        *,
        identity: Identity,
        trust: TrustStore,
        random_bytes: RandomBytes,
        now: float,
        policy: Policy | None = None,
        audit: BaseAuditLog | None = None,
        codec: WireCodec | None = None,
        rekey: RekeyPolicy | None = None,
        max_queue: int = 10_000,
        on_full: str = "raise",
        mail: bool = True,
        mail_max_age: float = MAIL_MAX_AGE,
        max_held_mail: int = DEFAULT_MAX_HELD,
        max_held_mail_bytes: int = DEFAULT_MAX_HELD_BYTES,
        record_mail: bool = False,
    ) -> None:
        if on_full not in ("raise", "drop"):
            raise UsageError(f"on_full is 'raise' or 'drop', got {on_full!r}")
        self.on_full = on_full
        self.identity = identity
        self.trust = trust
        self.policy = policy
        self.codec = codec if codec is not None else WireCodec()
        self.table = ChannelTable(
            identity=identity,
            trust=trust,
            random_bytes=random_bytes,
            now=now,
            audit=audit,
            codec=self.codec,
            policy=rekey,
        )
        self.audit = self.table.audit
        self.max_queue = max_queue
        self.mail = mail
        self._queues: dict[str, deque[_Item]] = {}
        self.dropped: Counter[str] = Counter()
        #: Mail we seal for offline peers, and the mail we get (held, seen, delivered once).
        self.mailroom = MailRoom(
            identity=identity,
            trust=trust,
            codec=self.codec,
            audit=self.audit,
            random_bytes=random_bytes,
            check_policy=self._check_policy,
            refuse=lambda peer, exc, now: self._refuse(peer, exc, now=now),
            dropped=self.dropped,
            max_age=mail_max_age,
            max_held=max_held_mail,
            max_held_bytes=max_held_mail_bytes,
            record=record_mail,
        )
        #: Messages sent again after the broker bounced them or the peer reset the session.
        self.resent = 0
        #: The broker's last word on something it would not take (a full mailbox, say).
        self.last_error: str | None = None
        #: Our messages the broker refused (an ERROR came back), by its reason.
        self.refused_by_broker: Counter[str] = Counter()
        #: Per peer: frame key -> (the messages in that frame, the frame's size in bytes).
        self._recent: dict[str, OrderedDict[tuple[int, int, int], tuple[list[_Item], int]]] = {}
        self._recent_bytes: Counter[str] = Counter()
        self._reset_sent: OrderedDict[str, float] = OrderedDict()
        #: Per peer, the session whose receive-key expiry waits for a held FINISH.
        self._finish_held: dict[str, Session] = {}

    # -- sending -----------------------------------------------------------------------------

    def send(
        self, peer: str, kind: int, payload: object, *, topic: str, now: float
    ) -> list[HopMessage]:
        """Encrypt for ``peer`` now, or queue until its session is up. A full queue
        (``max_queue``) raises QueueFullError, or with ``on_full="drop"`` drops the message
        and counts it in :attr:`dropped`."""
        channel = self.table.channel_to(peer)
        if channel is not None and channel.established:
            frames = channel.seal(kind, payload, topic=topic, now=now)
            self._remember(peer, frames, [(kind, payload, topic)])
            return [self._forward(peer, frames), *self._after_send(peer, now)]
        self._check_encodable(kind, payload, topic)
        queue = self._queues.setdefault(peer, deque())
        if len(queue) >= self.max_queue:
            self.dropped["queue_full"] += 1
            if self.on_full == "drop":
                return []  # counted; the caller chose drops over errors
            raise QueueFullError(
                f"{len(queue)} messages already wait for a session with {peer}; "
                "wait for it (receive/pump) or raise max_queue"
            )
        queue.append((kind, payload, topic))
        route = peer.encode()
        if route in self.table.channels:
            return []  # a handshake is under way
        return [self._forward(peer, self.table.connect(route, now=now, expect_peer=peer))]

    def send_many(
        self, peer: str, kind: int, payloads: Sequence[object], *, topic: str, now: float
    ) -> list[HopMessage]:
        """Several messages in one encrypted batch frame (one AEAD call, one FORWARD)."""
        channel = self.table.channel_to(peer)
        if channel is not None and channel.established and payloads:
            frames = channel.seal_many(kind, payloads, topic=topic, now=now)
            self._remember(peer, frames, [(kind, payload, topic) for payload in payloads])
            return [self._forward(peer, frames), *self._after_send(peer, now)]
        room = self.max_queue - len(self._queues.get(peer, ()))
        if len(payloads) > room and self.on_full == "raise":
            # All or nothing, so the caller knows exactly what was sent.
            self.dropped["queue_full"] += len(payloads)
            raise QueueFullError(
                f"{len(payloads)} messages do not fit the {room} places left in the queue "
                f"for {peer}; wait for its session (receive/pump) or raise max_queue"
            )
        for payload in payloads:  # all or nothing here too
            self._check_encodable(kind, payload, topic)
        out: list[HopMessage] = []
        for payload in payloads:
            out += self.send(peer, kind, payload, topic=topic, now=now)
        return out

    def _check_encodable(self, kind: int, payload: object, topic: str) -> None:
        """Refuse now (LocalProtocolError) what could not be sealed once the session is up:
        queued, it would fail later, inside pump(), and take the rest of the queue with it."""
        self.codec.encode(kind, payload, topic=topic)

    def _remember(self, peer: str, frames: Sequence[Any], items: list[_Item]) -> None:
        """Keep what went out on a session for a while: if the broker bounces it (the peer
        left) or the peer no longer knows the session (it restarted), it is sent again."""
        recent = self._recent.setdefault(peer, OrderedDict())
        size = sum(memoryview(frame).nbytes for frame in frames)
        recent[_frame_key(frames[0])] = (items, size)  # the key only: no copy of a large frame
        self._recent_bytes[peer] += size
        while len(recent) > _RECENT or self._recent_bytes[peer] > _RECENT_BYTES:
            _, (_, forgotten) = recent.popitem(last=False)
            self._recent_bytes[peer] -= forgotten

    def _recover(self, peer: str, frames: object, *, and_after: bool) -> list[_Item] | None:
        """The messages of frames we sent to ``peer`` and got back, and with ``and_after``
        those sent after them on the same session; None if not ours."""
        if not isinstance(frames, list) or not frames or not isinstance(frames[0], bytes):
            return None
        try:
            key = _frame_key(frames[0])
        except RemoteProtocolError:
            return None
        recent = self._recent.get(peer)
        if recent is None or key not in recent:
            return None
        if not and_after:
            items, size = recent.pop(key)
            self._recent_bytes[peer] -= size
            return items
        keys = list(recent)
        lost: list[_Item] = []
        for lost_key in keys[keys.index(key) :]:
            if lost_key[0] == key[0]:
                items, size = recent.pop(lost_key)
                self._recent_bytes[peer] -= size
                lost += items
        return lost

    def _after_send(self, peer: str, now: float) -> list[HopMessage]:
        channel = self.table.channel_to(peer)
        if channel is None:
            return []
        events = self.table.after_send(peer.encode(), channel, now=now)
        return self._transmit(peer, events) if events else []

    def _forward(self, peer: str, frames: Sequence[Any]) -> HopMessage:
        # Sealed frames (bytes, or bytearrays nothing writes to again) go as they are; a view
        # is copied, as what it shows could change while the hop message waits.
        kept = [f if isinstance(f, bytes | bytearray) else bytes(f) for f in frames]
        finish_for = peer if kept and peek_type(kept[0]) == _FINISH else ""
        return HopMessage(MessageType.FORWARD, kept, peer, finish_for)

    def _transmit(self, peer: str, events: list[Event]) -> list[HopMessage]:
        return [self._forward(peer, e.frames) for e in events if isinstance(e, Transmit)]

    def _flush(self, peer: str, *, now: float) -> list[HopMessage]:
        """Send what waited for the session, through :meth:`send` (which re-queues it, not
        drops it, should the session be gone again)."""
        out: list[HopMessage] = []
        for kind, payload, topic in self._queues.pop(peer, None) or ():
            out += self.send(peer, kind, payload, topic=topic, now=now)
        return out

    def hold_finish(self, peer: str, *, now: float) -> None:
        """The FINISH of our rekey with ``peer`` waits for the broker link (it is down or
        full). ``peer`` seals under the previous epoch until that FINISH reaches it: keep
        our key for that epoch open meanwhile (at most the policy's ``hard_max_age``), as a
        secure socket does for a FINISH it holds; else what ``peer`` sends once the link is
        back is refused as ``stale_epoch``, and lost."""
        channel = self.table.channel_to(peer)
        session = channel.session if channel is not None else None
        if session is not None:
            session.pause_expiry(now=now)
            self._finish_held[peer] = session
            self.table.note(peer.encode())

    def release_finish(self, peer: str, *, now: float) -> None:
        """The FINISH :meth:`hold_finish` was told of went to the broker: the key it kept
        open gets one grace period from ``now``. Nothing if that session is gone."""
        session = self._finish_held.pop(peer, None)
        channel = self.table.channel_to(peer)
        if session is not None and channel is not None and channel.session is session:
            session.resume_expiry(now=now)
            self.table.note(peer.encode())

    # -- receiving ---------------------------------------------------------------------------

    def on_hop(self, message: Message, *, now: float) -> tuple[list[HopMessage], list[Incoming]]:
        """Handle a message from the broker. Peer garbage raises a typed error (counted and
        audited by the caller); nothing is changed by it."""
        kind, topic = message.header.type, message.header.topic
        if kind == MessageType.DELIVER:
            return self._on_deliver(topic, message.payload, now=now)
        if kind == MessageType.UNREACHABLE:
            return self._on_unreachable(topic, message.payload, now=now), []
        if kind == MessageType.SESSION_RESET:
            return self._on_reset(topic, message.payload, now=now), []
        if kind == MessageType.MAIL_DELIVER:
            return self._on_mail(topic, message.payload, now=now)
        if kind == MessageType.MAIL_ACCEPTED:
            self.mailroom.accepted()
            return [], []
        if kind == MessageType.ERROR:
            self._on_refused(topic, message.payload, now=now)
            return [], []
        raise RemoteProtocolError(f"unexpected broker message {kind:#04x}", reason="bad_type")

    def _on_refused(self, topic: str, answer: object, *, now: float) -> None:
        """The broker refused one of our messages (its policy, a limit): counted by reason
        and kept as the last error, since only our owner can change what caused it."""
        if (
            not isinstance(answer, dict)
            or not isinstance(reason := answer.get("reason"), str)
            or type(kind := answer.get("type")) is not int
            or not 0 < len(reason) <= 64
        ):
            raise RemoteProtocolError("ERROR without a reason and type", reason="bad_error")
        try:
            name = MessageType(kind).name
        except ValueError:
            name = f"type {kind:#04x}"
        self.refused_by_broker[reason] += 1
        self.last_error = f"the broker refused {name} {topic!r}: {reason}"
        self.audit.record("reject", now=now, reason="broker_refused", refused=reason, type=kind)

    def _on_deliver(
        self, sender: str, frames: object, *, now: float
    ) -> tuple[list[HopMessage], list[Incoming]]:
        if (
            not isinstance(frames, list)
            or not frames
            or not all(isinstance(f, bytes) for f in frames)
        ):
            raise RemoteProtocolError("DELIVER without frames", reason="bad_deliver")
        route = sender.encode()
        if _foreign_session(self.table.channels.get(route), frames[0]):
            # A session we do not have (we restarted, and may already be handshaking anew):
            # tell the sender, at most once a second, so it sends again over a new session
            # instead of into the void.
            self.table.receive(route, frames, now=now)  # refused, counted and audited
            if now - self._reset_sent.get(sender, -math.inf) < 1.0:
                return [], []
            self._reset_sent[sender] = now
            self._reset_sent.move_to_end(sender)
            while len(self._reset_sent) > _RESETS_REMEMBERED:
                self._reset_sent.popitem(last=False)
            return [HopMessage(MessageType.SESSION_RESET, frames[:1], sender)], []
        events = self.table.receive(route, frames, now=now)
        out: list[HopMessage] = self._transmit(sender, events)
        incoming: list[Incoming] = []
        for event in events:
            if isinstance(event, Established) and event.epoch == 0:
                out += self._flush(sender, now=now)
            elif isinstance(event, Delivered):
                incoming += self._accept(event, now=now)
        return out, incoming

    def _accept(self, event: Delivered, *, now: float) -> list[Incoming]:
        channel = self.table.channel_to(event.agent_id)
        roles = channel.peer.roles if channel is not None and channel.peer else frozenset()
        header = event.message.header
        accepted = []
        for payload in event.message.payloads:
            try:
                incoming = unwrap(
                    event.agent_id, header.type, payload, topic=header.topic, roles=roles
                )
                self._check_policy(incoming)
            except (RemoteProtocolError, SecurityError) as exc:
                self._refuse(event.agent_id, exc, now=now)
                continue
            accepted.append(incoming)
        return accepted

    def _check_policy(self, incoming: Incoming) -> None:
        # Topic-key requests are the node's own; the publisher checks the topic itself.
        if self.policy is not None and incoming.kind not in _INTERNAL:
            self.policy.check_send(incoming.sender, incoming.roles, incoming.kind)

    def _refuse(self, peer: str, exc: Exception, *, now: float) -> None:
        reason = getattr(exc, "reason", "error")
        self.table.rejected[reason] += 1
        self.audit.record("reject", now=now, peer=peer, reason=reason)

    def _on_reset(self, peer: str, frames: object, *, now: float) -> list[HopMessage]:
        """The peer does not know the session these frames came from: start a new one and
        send again what went out since."""
        # The peer refused that frame and everything after it on the session.
        lost = self._recover(peer, frames, and_after=True)
        if lost is None:
            return []  # not frames we sent lately: nothing to redo
        self.table.drop(peer.encode())
        self._recent.pop(peer, None)
        self._recent_bytes.pop(peer, None)
        queue = self._queues.setdefault(peer, deque())
        queue.extendleft(reversed(lost))
        self.resent += len(lost)
        init = self.table.connect(peer.encode(), now=now, expect_peer=peer)
        return [self._forward(peer, init)]

    def _on_unreachable(self, peer: str, frames: object, *, now: float) -> list[HopMessage]:
        if isinstance(frames, str):
            # The broker refused our mail (the peer's mailbox is full, say): the message is
            # lost unless we try later, so it is counted, kept as the last error and audited.
            self.dropped["mail_refused"] += 1
            self.last_error = f"mail to {peer} refused by the broker: {frames}"
            self.audit.record("reject", now=now, peer=peer, reason="mail_refused")
            return []
        # Only this frame is known lost: a broker bounces one message for a slow consumer and
        # delivers the next. Each lost frame comes back on its own, so the others are
        # remembered until then (mailing them now would deliver them twice).
        lost = self._recover(peer, frames, and_after=False)
        if lost is None:
            lost = []
            if _is_sealed_data(frames):
                # A message sent too long ago to be remembered: it cannot be sent again.
                # (A bounced handshake frame is normal: the peer is offline.)
                self.dropped["bounced_unknown"] += 1
                self.audit.record("reject", now=now, peer=peer, reason="bounced_unknown")
        self.table.drop(peer.encode())
        queue = deque(lost)
        queue.extend(self._queues.pop(peer, deque()))
        if not queue:
            return []
        if not self.mail:
            self.dropped["unreachable"] += len(queue)
            return []
        try:
            public = self.trust.lookup(peer, now=now).public
        except UnknownPeerError:
            self.dropped["unreachable"] += len(queue)
            return []
        out = []
        for kind, payload, topic in queue:
            try:
                out.append(self.mail_message(peer, public, kind, payload, topic=topic, now=now))
            except UsageError:  # a large array: it travels in a session only
                self.dropped["unmailable"] += 1
                self.audit.record("reject", now=now, peer=peer, reason="unmailable")
        return out

    def mail_message(
        self,
        peer: str,
        public: PublicIdentity,
        kind: int,
        payload: object,
        *,
        topic: str,
        now: float,
    ) -> HopMessage:
        """Seal one message for an offline peer: the broker stores it until the peer acks."""
        return HopMessage(
            MessageType.MAIL, self.mailroom.seal(public, kind, payload, topic=topic, now=now), peer
        )

    def _on_mail(
        self, sender: str, payload: object, *, now: float
    ) -> tuple[list[HopMessage], list[Incoming]]:
        stored_id, incoming = self.mailroom.receive(sender, payload, now=now)
        return [HopMessage(MessageType.MAIL_ACK, stored_id)], incoming

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self, now: float | None = None) -> float | None:
        """When :meth:`on_timer` (and the mail room's ``retry_held``) next want to run;
        ``now`` lets the held mail's schedule see a clock set back."""
        if self._orphans():
            return 0.0  # queued messages and no handshake under way: now
        deadlines = [
            d for d in (self.table.next_deadline(), self.mailroom.deadline(now)) if d is not None
        ]
        return min(deadlines) if deadlines else None

    def on_timer(self, *, now: float) -> list[HopMessage]:
        out = []
        for route, event in self.table.on_timer(now=now):
            if isinstance(event, Transmit):
                out.append(self._forward(route.decode(), event.frames))
        for peer in self._orphans():
            # Its handshake was given up (timed out, or the channel closed): try again.
            init = self.table.connect(peer.encode(), now=now, expect_peer=peer)
            out.append(self._forward(peer, init))
        return out

    def _orphans(self) -> list[str]:
        return [
            peer
            for peer, queue in self._queues.items()
            if queue and peer.encode() not in self.table.channels
        ]

    def queued(self, peer: str | None = None) -> int:
        if peer is not None:
            return len(self._queues.get(peer, ()))
        return sum(len(queue) for queue in self._queues.values())

    def check_sendable(self, kind: int) -> None:
        if kind not in (MessageType.DATA, MessageType.REQUEST, MessageType.REPLY):
            raise LocalProtocolError(f"a node sends DATA, REQUEST or REPLY, not {kind:#04x}")
