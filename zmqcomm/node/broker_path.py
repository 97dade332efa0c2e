"""A node's way to its peers through a broker: one link, end-to-end tunnels through it.

Everything a node does for its broker link lives here: the hop session to the broker (a
:class:`SecureDealer`), the end-to-end sessions and mail tunnelled through it
(:class:`Tunnels`), the queue in front of it (:class:`HopOutbox`), publications and topic
keys (:class:`BrokerTopics`), the subscriptions said again on every new hop session, held
mail opened later, and the keepalive. The node hands it what the link delivered
(:meth:`BrokerPath.on_input`) and, on every pump, lets it do what is due
(:meth:`BrokerPath.run_due`); what is for the application comes back through ``deliver``.

With a mail store (:mod:`zmqcomm.node.mail_store`), what the tunnels changed in the held mail
and the seen mail ids is written to it before anything that depends on it happens: before
the acknowledgements go (the broker deletes what we acknowledged), and before what opened is
delivered (so that a restart cannot deliver it again). Anything that interrupts the tunnels
while they change their mail state, or the store while it writes it (a KeyboardInterrupt, a
MemoryError, a failed write), may leave memory and file disagreeing: the store is then lost
and the node refuses to go on until it is restarted, which recovers from the file.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from zmqcomm.access import Policy
from zmqcomm.crypto.audit import BaseAuditLog
from zmqcomm.crypto.channel import Delivered
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import LocalProtocolError, RemoteProtocolError, SecurityError, ZmqCommError
from zmqcomm.node.broker_topics import BrokerTopics, Deliver, Reject
from zmqcomm.node.hop_outbox import HopOutbox
from zmqcomm.node.mail_store import MailStore
from zmqcomm.node.messages import Incoming
from zmqcomm.node.topics import Topics
from zmqcomm.node.tunnel import HopMessage, Tunnels
from zmqcomm.secure import SecureDealer
from zmqcomm.wire import MessageType

#: After running its tunnels' timers, a node looks at them again no sooner than this: a
#: deadline that its timer did not move must not make every pump return at once.
TIMER_TICK = 0.005


class BrokerPath:
    """The broker link of a node, and all that travels over it."""

    def __init__(
        self,
        endpoint: str,
        *,
        identity: Identity,
        trust: TrustStore,
        policy: Policy | None,
        audit: BaseAuditLog,
        rekey: RekeyPolicy | None,
        max_queue: int,
        on_full: str,
        mail: bool,
        mail_max_age: float,
        max_held_mail: int,
        max_held_mail_bytes: int,
        mail_store: str | os.PathLike[str] | None,
        connect_timeout: float,
        link_options: dict[str, Any],
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        deliver: Deliver,
        reject: Reject,
    ) -> None:
        self.clock = clock
        self.wall_clock = wall_clock
        self._deliver = deliver
        self._reject = reject
        #: When (on ``clock``) the tunnels' timers last ran.
        self.timers_ran = -math.inf
        #: Held mail that opened, not delivered yet: released from the hold and marked seen,
        #: so a handler that raises must leave the rest here for the next pump.
        self.opened_mail: deque[Incoming] = deque()
        #: Topics subscribed through the broker: said again on every new hop session, since
        #: a restarted broker (or one that counted us gone) knows none of them.
        self.subscriptions: set[str] = set()
        self.tunnels = Tunnels(
            identity=identity,
            trust=trust,
            random_bytes=os.urandom,
            now=wall_clock(),
            policy=policy,
            audit=audit,
            rekey=rekey,
            max_queue=max_queue,
            on_full=on_full,
            mail=mail,
            mail_max_age=mail_max_age,
            max_held_mail=max_held_mail,
            max_held_mail_bytes=max_held_mail_bytes,
            record_mail=mail_store is not None,
        )
        self.topics = Topics(identity=identity, trust=trust, random_bytes=os.urandom, policy=policy)
        self._broker_topics = BrokerTopics(
            self.topics,
            self.tunnels,
            to_broker=self.to_broker_quietly,
            deliver=deliver,
            reject=reject,
            wall_clock=wall_clock,
        )
        #: Where held mail and seen mail ids outlive the process (None: in memory only).
        self.mail_store: MailStore | None = None
        if mail_store is not None:
            self.mail_store = MailStore(mail_store)
        try:
            if self.mail_store is not None:
                letters, seen = self.mail_store.load()
                self.tunnels.mailroom.restore(letters, seen, now=wall_clock())
                self.save_mail()  # letters the hold had no room for left the file too
            # Last: it waits (up to connect_timeout) for the hop session, and owns a socket.
            self.link = SecureDealer(
                endpoint, connect_timeout=connect_timeout, peer_label="broker", **link_options
            )
        except BaseException:
            if self.mail_store is not None:
                self.mail_store.close()  # its lock too: nobody else would release it
            raise
        #: What waits for the broker link.
        self.outbox = HopOutbox(
            self.link,
            clock=clock,
            on_finish_held=lambda peer: self.tunnels.hold_finish(peer, now=self.wall_clock()),
            on_finish_left=lambda peer: self.tunnels.release_finish(peer, now=self.wall_clock()),
        )

    # -- sending -----------------------------------------------------------------------------

    def send(self, peer: str, kind: int, inner: object, *, topic: str) -> bool:
        """Send to ``peer`` through its tunnel; False if ``on_full="drop"`` dropped it (counted
        as dropped, not as sent)."""
        self.check_room()
        dropped = self.tunnels.dropped["queue_full"]
        self.to_broker(self.tunnels.send(peer, kind, inner, topic=topic, now=self.wall_clock()))
        return self.tunnels.dropped["queue_full"] == dropped

    def send_many(self, peer: str, payloads: Sequence[object], *, topic: str) -> int:
        """Send ``payloads`` to ``peer`` as one batch; how many were not dropped."""
        self.check_room()
        dropped = self.tunnels.dropped["queue_full"]
        self.to_broker(
            self.tunnels.send_many(
                peer, MessageType.DATA, payloads, topic=topic, now=self.wall_clock()
            )
        )
        return len(payloads) - (self.tunnels.dropped["queue_full"] - dropped)

    def publish(self, topic: str, payload: object) -> None:
        """Publish through the broker, encrypted under our topic key and signed."""
        self.check_room()
        sealed = self.topics.publish(topic, payload, now=self.wall_clock())
        self.hop(sealed, MessageType.PUBLISH, topic)

    def subscription(self, kind: int, topic: str) -> None:
        """Tell the broker of a SUBSCRIBE or UNSUBSCRIBE, and remember it for the next hop
        session."""
        self.check_room()  # dropped for a full queue, it would vanish unseen
        if kind == MessageType.SUBSCRIBE:
            self.subscriptions.add(topic)
        else:
            self.subscriptions.discard(topic)
        self.hop(None, kind, topic)

    def to_broker(self, messages: list[HopMessage]) -> None:
        """Send through the broker, or hold while its link is down or full (never raises
        for the link's sake: the tunnels already counted these as sent). A message the link
        can never carry raises LocalProtocolError, for the application's own sends."""
        self.outbox.put(messages)

    def to_broker_quietly(self, messages: list[HopMessage]) -> None:
        """:meth:`to_broker` for what the node sends on its own inside pump(): a message
        that can never go is counted (hop_unsendable) and audited, not raised."""
        try:
            self.to_broker(messages)
        except LocalProtocolError as exc:
            self._reject("broker", exc)

    def hop(self, payload: object, msg_type: int, topic: str = "") -> None:
        """Send a message to the broker itself (not tunnelled to a peer)."""
        self.to_broker([HopMessage(msg_type, payload, topic)])

    def check_room(self) -> None:
        """QueueFullError, before anything is sealed or counted, while the broker link holds
        as many messages as it may."""
        self.outbox.check_room()

    def unsent(self) -> int:
        """Messages waiting for a peer's session, or for the broker link."""
        return self.tunnels.queued() + len(self.outbox)

    # -- receiving ---------------------------------------------------------------------------

    def save_mail(self) -> None:
        """Write what the tunnels changed in the held mail and the seen ids to the mail store,
        if there is one (StoreError if that fails: the node must be restarted)."""
        if self.mail_store is not None:
            self.mail_store.apply(self.tunnels.mailroom.take_changes())

    @property
    def store_lost(self) -> bool:
        """Whether the mail store refuses writes (the node must restart)."""
        return self.mail_store is not None and self.mail_store.lost

    def _lose_store(self, exc: BaseException) -> None:
        """``exc`` interrupted the tunnels while they changed their mail state: what they
        recorded may not match their memory, so nothing of it is written and the store
        refuses every later write (the node restarts from the file)."""
        if self.mail_store is not None:
            self.tunnels.mailroom.take_changes()
            self.mail_store.lose(f"interrupted while changing the mail state ({exc!r})")

    def check_store(self) -> None:
        """StoreError once a write to the mail store failed: the tunnels' memory is ahead of
        the file, so the node must stop (and be restarted) before it acknowledges more."""
        if self.mail_store is not None:
            self.mail_store.check()

    def on_input(self, delivered: Delivered) -> None:
        """What the broker link delivered: publications, tunnelled frames and mail."""
        self.check_store()
        for payload in delivered.message.payloads:
            message = delivered.message._replace(payloads=[payload])
            try:
                if message.header.type == MessageType.PUBLISH:
                    self._broker_topics.on_publication(message.header.topic, payload)
                    continue
                out, incoming = self.tunnels.on_hop(message, now=self.wall_clock())
                # Held mail and seen ids on disk first, in the same try: if this raises (or
                # anything interrupts us before it), nothing is delivered and no
                # acknowledgement goes, so the broker keeps the mail and hands it over again.
                self.save_mail()
            except (RemoteProtocolError, SecurityError) as exc:
                self._reject(delivered.agent_id, exc)  # nothing changed: nothing to save
                continue
            except BaseException as exc:
                if message.header.type == MessageType.MAIL_DELIVER:
                    self._lose_store(exc)
                raise
            try:
                # Delivered before the mail acknowledgements in ``out`` go: acknowledged mail
                # is deleted by the broker, and marked seen here.
                for item in incoming:
                    self._deliver_mail(item)
            finally:
                self.to_broker_quietly(out)

    def on_key_message(self, incoming: Incoming) -> None:
        """A peer's TOPIC_KEY_REQUEST or TOPIC_KEY, come through a tunnel."""
        self._broker_topics.on_key_message(incoming)

    def _deliver_mail(self, item: Incoming) -> None:
        """Deliver what came through the broker's tunnels (a session or mail)."""
        if item.kind == MessageType.PUBLISH:
            # Publications come from the broker's fan-out, which checked the publisher's
            # right to the topic; one sent to us alone did not pass.
            self._reject(item.sender, RemoteProtocolError("stray", reason="bad_type"))
            return
        self._deliver(item)

    # -- timers ------------------------------------------------------------------------------

    def next_due(self) -> float:
        """When (on ``clock``) :meth:`run_due` next has work: a tunnel's handshake retry or
        rekey, a retry of held mail, messages held for the link, the keepalive. -inf when
        opened mail a raising handler left behind waits; inf when nothing is due."""
        if self.opened_mail:
            return -math.inf
        due = math.inf
        wall = self.wall_clock()
        deadline = self.tunnels.next_deadline(wall)  # on the wall clock
        if deadline is not None:
            due = self.clock() + (deadline - wall)
            # Due again right after its timer ran (nothing moved it): wait a tick
            # rather than return at once, again and again.
            due = max(due, self.timers_ran + TIMER_TICK)
        if (retry := self.outbox.next_deadline()) is not None:
            due = min(due, retry)  # held messages are spaced by HELD_RETRY: no spin
        return due

    def run_due(self) -> None:
        """The broker link's share of a pump, after its input was read: resubscribe on a new
        hop session, send what is held, keep the link alive, run the tunnels' timers, and
        deliver mail that opened."""
        self.check_store()
        link, outbox = self.link, self.outbox
        if link.joined:  # a new hop session: the broker knows none of our topics
            link.joined.clear()
            # First in line and never dropped: a full queue must not lose them.
            outbox.put_first(
                [
                    HopMessage(MessageType.SUBSCRIBE, None, topic)
                    for topic in sorted(self.subscriptions)
                ]
            )
        outbox.flush()
        if outbox.keepalive_due():
            self.hop(None, MessageType.PING)  # so the broker knows we are still here
        now = self.wall_clock()
        deadline = self.tunnels.next_deadline(now)
        if deadline is not None and now >= deadline:
            self.timers_ran = self.clock()
            self.to_broker_quietly(self.tunnels.on_timer(now=now))
            # Mail held because it could not be opened yet: acknowledged long ago, so
            # what opens now goes the way of any other mail, once (marked seen and out of
            # the store before it is delivered).
            try:
                opened = self.tunnels.mailroom.retry_held(now=now)
                self.save_mail()  # before delivery: a failed write delivers nothing
            except BaseException as exc:
                self._lose_store(exc)
                raise
            self.opened_mail.extend(opened)
        while self.opened_mail:
            self._deliver_mail(self.opened_mail.popleft())

    # -- lifetime ----------------------------------------------------------------------------

    def say_goodbye(self) -> None:
        """BYE, so the broker forgets us now, not in 30 s; only when it can go at once."""
        link = self.link
        if link.established and not self.outbox and link.writable():
            # If the BYE cannot go at once (a broker gone: no connection to queue on), its
            # idle timeout covers it. Waiting send_timeout for it made close(timeout=0) take
            # a second.
            with contextlib.suppress(ZmqCommError):  # a link down, or past its key limit
                link.send(None, msg_type=MessageType.BYE)

    def close(self) -> None:
        """Count what is given up (in statistics()["dropped"]), then close the link."""
        self.outbox.discard()
        if self.tunnels.queued():
            # Still waiting for a session when the time ran out: counted, not vanished.
            self.tunnels.dropped["unsent_at_close"] += self.tunnels.queued()
        # Held mail lives in memory (the broker deleted it when we acknowledged it), and in
        # the mail store if there is one (a lost store still has what was acknowledged: the
        # write comes before the ack). Opened mail a raising handler left undelivered is
        # out of both: lost either way.
        held = self.tunnels.mailroom.held.clear()
        lost = len(self.opened_mail) + (held if self.mail_store is None else 0)
        self.opened_mail.clear()
        if lost:
            self.tunnels.dropped["held_at_close"] += lost
        try:
            self.link.close()
        finally:
            if self.mail_store is not None:
                self.mail_store.close()
