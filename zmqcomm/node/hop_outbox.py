"""What a node sends through its broker, held in order while the link cannot take it.

Every message a node gives its broker (tunnelled frames, mail and its acknowledgements,
subscriptions, publications, key requests) passes through one bounded queue. It leaves as
soon as the broker link has a session and room; while the link is down (the broker
restarts) or full, it waits here instead of raising out of ``pump()`` after the tunnels
already counted it as sent, which lost it. End-to-end frames stay valid across a new hop
session, so nothing needs sealing again.

A tunnel's rekey FINISH is never dropped for a full queue (its sender already switched
keys: the peer would refuse all that follows), and the tunnels hear when one is held and
when it leaves, so that the key it superseded stays open meanwhile
(:meth:`~zmqcomm.node.tunnel.Tunnels.hold_finish`).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence

from zmqcomm.errors import LocalProtocolError, QueueFullError, ZmqCommError
from zmqcomm.node.tunnel import HopMessage
from zmqcomm.secure import SecureDealer

#: Messages held for the broker at most; beyond it a send from the application raises
#: QueueFullError and the node's own messages (retried by their timers) are dropped; a
#: tunnel's rekey FINISH is held regardless (one per peer at most: its rekey waits for it).
MAX_HELD = 10_000
#: While the link is up but cannot take what is held (its queue is full, or its session must
#: rekey first), held messages are offered again this many seconds later: nothing wakes a
#: poll when room comes back, and polling for room would spin while a rekey is due.
HELD_RETRY = 0.005
#: Seconds of silence towards the broker after which a node sends PING.
KEEPALIVE = 10.0


def _ignore(peer: str) -> None:
    pass


class HopOutbox:
    """An ordered, bounded queue in front of the node's broker dealer."""

    def __init__(
        self,
        dealer: SecureDealer,
        *,
        clock: Callable[[], float],
        max_held: int = MAX_HELD,
        on_finish_held: Callable[[str], None] = _ignore,
        on_finish_left: Callable[[str], None] = _ignore,
    ) -> None:
        """``on_finish_held(peer)`` and ``on_finish_left(peer)``: a tunnel's rekey FINISH
        (:attr:`HopMessage.finish_for`) had to be held, and left the hold (sent, or dropped
        as one the link can never carry)."""
        self.dealer = dealer
        self._on_finish_held = on_finish_held
        self._on_finish_left = on_finish_left
        self.clock = clock
        self.max_held = max_held
        self._held: deque[HopMessage] = deque()
        #: When something last left for the broker (the keepalive counts from it).
        self.last_sent = clock()
        #: Node messages given up because the queue was full, by kind.
        self.dropped: Counter[str] = Counter()
        #: When held messages are next offered to the link (see :meth:`next_deadline`).
        self._retry_at = clock()

    def __len__(self) -> int:
        return len(self._held)

    def check_room(self, count: int = 1) -> None:
        """Raise QueueFullError unless ``count`` more messages fit (checked before an
        application send touches any state, so a refusal leaves nothing half done)."""
        if len(self._held) + count > self.max_held:
            raise QueueFullError(
                f"{len(self._held)} messages already wait for the broker link (it is down or "
                "slow); keep pumping until it is back, or send later"
            )

    def put(self, messages: Sequence[HopMessage]) -> None:
        """Queue ``messages`` and send what the link takes now. Never raises for the link's
        sake (what does not fit is dropped and counted); a message the link can never carry
        (too large, say) is dropped and counted, the others still go, and then its
        LocalProtocolError is raised when nothing waited before it."""
        refused: LocalProtocolError | None = None
        for message in messages:
            if not self._held:
                try:
                    if self._send_now(message):
                        continue
                except LocalProtocolError as exc:
                    self.dropped["hop_unsendable"] += 1
                    refused = refused or exc
                    continue
            if len(self._held) >= self.max_held and not message.finish_for:
                self.dropped["hop_queue_full"] += 1
                continue
            self._hold(message)
        self.flush()
        if refused is not None:
            raise refused

    def put_first(self, messages: Sequence[HopMessage]) -> None:
        """Queue ``messages`` ahead of everything held, whatever the bound (they are few and
        must not be lost: a new hop session's resubscriptions), and send what the link takes."""
        for message in reversed(messages):
            self._hold(message, first=True)
        self.flush()

    def _hold(self, message: HopMessage, *, first: bool = False) -> None:
        if first:
            self._held.appendleft(message)
        else:
            self._held.append(message)
        if message.finish_for:
            self._on_finish_held(message.finish_for)

    def flush(self) -> int:
        """Send held messages, oldest first, while the link has a session and room; how many
        left."""
        held, sent = self._held, 0
        while held:
            try:
                if not self._send_now(held[0]):
                    break  # down or full: try again at the next pump
                sent += 1
            except LocalProtocolError:
                self.dropped["hop_unsendable"] += 1  # it would block the rest for ever
            message = held.popleft()
            if message.finish_for:
                self._on_finish_left(message.finish_for)
        if held:
            self._retry_at = self.clock() + HELD_RETRY
        return sent

    def next_deadline(self) -> float | None:
        """When (on ``clock``) held messages want another :meth:`flush`, or else the
        keepalive is due; None while the link has no session (its session coming up is
        input, which wakes the node's pump anyway)."""
        if not self.dealer.established:
            return None
        return self._retry_at if self._held else self.last_sent + KEEPALIVE

    def keepalive_due(self) -> bool:
        """Whether the node should PING: a session, and nothing sent for KEEPALIVE seconds.
        Not while messages are held: they end the silence when they leave, and a PING
        queued behind them on every pump would pile up."""
        return (
            not self._held
            and self.dealer.established
            and self.clock() - self.last_sent >= KEEPALIVE
        )

    def _send_now(self, message: HopMessage) -> bool:
        """Send if the link can take it now; False when it cannot (down, full, its session
        past its key limit until the rekey completes). LocalProtocolError when the message
        itself can never go (too large)."""
        dealer = self.dealer
        if not dealer.established or not dealer.writable():
            return False
        try:
            # Never waits: writable() saw room for one frame, but a held rekey FINISH may
            # take it first.
            dealer.send(message.payload, msg_type=message.msg_type, topic=message.topic, wait=False)
        except LocalProtocolError:
            raise
        except ZmqCommError:
            return False  # it went down, filled up or must rekey first: try again later
        self.last_sent = self.clock()
        return True

    def discard(self) -> int:
        """Give up what is held (the node closes); how many."""
        count = len(self._held)
        self._held.clear()
        if count:
            self.dropped["unsent_at_close"] += count
        return count
