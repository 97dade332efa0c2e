"""A :class:`~zmqcomm.patterns.gossip.driver.GossipAgent`'s sending side: :class:`Outbox`.

Encoded items wait in one byte-bounded priority queue per peer (:mod:`.queues`); a flush
coalesces each peer's items into frames of at most ``frame_bytes`` and ``frame_items`` and
hands them to the links (:mod:`.links`), whose answer decides what happens to the items:

- ``SENT``: they leave the queue; a drained queue is discarded, so no queue is kept for peers
  (or strangers) at rest.
- ``BLOCKED`` (the peer's high-water mark): they stay queued, which is the backpressure, and
  are retried ``retry_interval`` seconds later; when the queue fills up, lower-priority items
  are evicted first.
- ``UNREACHABLE`` (not connected yet, or gone): they stay queued and are retried, for up to
  ``unreachable_grace`` seconds; then the peer's queue is dropped (counted ``unreachable``)
  and the agent is told, to forget a peer it only learned from a Graft.
- ``REFUSED`` (secure: the peer's key was revoked or expired): the agent is told, and drops
  the peer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from zmqcomm.patterns.gossip.codec import build_frame
from zmqcomm.patterns.gossip.config import GossipConfig
from zmqcomm.patterns.gossip.links import BLOCKED, REFUSED, SENT, PlainLinks, SecureLinks
from zmqcomm.patterns.gossip.machine import Message
from zmqcomm.patterns.gossip.queues import Priority, QueueSet

#: Encoded size of a Publish item beyond its payload and origin (msgpack headers, sequence,
#: hops, a 64-byte signature), rounded up: enough to judge whether a reply fits a queue.
_PUBLISH_OVERHEAD = 96


class Outbox:
    """Per-peer queues flushed over ``links``; sends are counted in the agent's ``counters``.

    ``refused(peer)`` is called when the links refuse ``peer`` (no longer trusted), and
    ``lost(peer)`` when its frames were dropped after ``unreachable_grace``.
    """

    def __init__(
        self,
        links: PlainLinks | SecureLinks,
        config: GossipConfig,
        counters: Counter[str],
        *,
        refused: Callable[[str], None],
        lost: Callable[[str], None],
    ) -> None:
        self.links = links
        self.config = config
        self.counters = counters
        self.queues = QueueSet(config.queue_bytes)
        #: When the next flush is due (a peer to retry, or something new queued); None: idle.
        self.retry_at: float | None = None
        self._refused = refused
        self._lost = lost
        self._unreachable_since: dict[str, float] = {}

    def push(self, to: str, item: bytes, priority: Priority) -> None:
        if not self.queues.push(to, item, priority):
            self.counters["queue_refused"] += 1

    def room_for_repair(self, to: str, message: Message) -> bool:
        """Whether a repair (an IWant reply) carrying ``message`` fits ``to``'s queue. A repair
        evicts nothing: when it cannot fit it is refused (counted) here, before it is packed."""
        size = len(message.payload) + len(str(message.origin)) + _PUBLISH_OVERHEAD
        if size > self.queues.free_bytes(to):
            self.queues.refuse(to, Priority.REPAIR)
            self.counters["queue_refused"] += 1
            return False
        return True

    def forget(self, peer: str, reason: str) -> None:
        """Drop what is queued for ``peer`` (counted as ``reason``) and its unreachable time."""
        self.queues.remove(peer, reason)
        self._unreachable_since.pop(peer, None)

    def flush(self, now: float) -> None:
        self.retry_at = None
        c = self.config
        for peer in self.queues.pending():
            queue = self.queues.get(peer)
            while queue:
                items = queue.peek(max_bytes=c.frame_bytes, max_items=c.frame_items)
                frame = build_frame(items)
                result = self.links.send(str(peer), frame)
                if result == SENT:
                    queue.commit(len(items))
                    if not queue:  # drained: keep no queue for peers (or strangers) at rest
                        self.queues.discard_empty(peer)
                    self._unreachable_since.pop(str(peer), None)
                    self.counters["sent_frames"] += 1
                    self.counters["sent_items"] += len(items)
                    continue
                if result == BLOCKED:
                    self.counters["hwm_blocked"] += 1
                elif result == REFUSED:  # secure: the peer's key was revoked or expired
                    self._refused(str(peer))
                    break
                else:
                    since = self._unreachable_since.setdefault(str(peer), now)
                    if now - since >= c.unreachable_grace:
                        self.queues.remove(peer, "unreachable")
                        del self._unreachable_since[str(peer)]
                        self._lost(str(peer))
                        break
                self.retry_at = now + c.retry_interval
                break
