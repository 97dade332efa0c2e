"""Per-peer outgoing queues bounded in bytes, with four priority classes.

Pure: no sockets, no clock. A driver pushes encoded items (bytes) for a peer with a class,
and later takes them in priority order to build frames:

    CONTROL (IHave, IWant, Graft, Prune, Adopt) > OWN (our publishes) > FORWARD (relays)
    > REPAIR (IWant replies)

When a push does not fit, items of *strictly lower* classes are evicted, oldest first, until it
does; a higher or equal class is never evicted for a lower one, so the new item is refused
instead ("tail drop" within a class). Every refused or evicted item is counted per
``reason_class`` (``evicted_repair``, ``full_forward``, ``too_big_own``, ...).

Sending is two-step so that a socket refusing a frame (ZeroMQ's EAGAIN at the high-water mark)
loses nothing: :meth:`PeerQueue.peek` returns the next items without removing them, and
:meth:`PeerQueue.commit` removes them once the frame was accepted.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable, Iterator
from enum import IntEnum
from typing import Any

from zmqcomm.errors import UsageError


class Priority(IntEnum):
    """Lower value = more important (popped first, evicted last)."""

    CONTROL = 0
    OWN = 1
    FORWARD = 2
    REPAIR = 3


CLASSES = tuple(Priority)
#: Drop reasons counted by the queues (the driver adds its own, e.g. ``unreachable``).
EVICTED = "evicted"
FULL = "full"
TOO_BIG = "too_big"


def drop_key(reason: str, priority: Priority) -> str:
    return f"{reason}_{priority.name.lower()}"


class PeerQueue:
    """One peer's queue: a FIFO per class, all of them together at most ``max_bytes``."""

    __slots__ = ("_lanes", "bytes", "drops", "max_bytes", "pushed", "sent")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise UsageError(f"a queue needs max_bytes >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self._lanes: tuple[deque[bytes], ...] = tuple(deque() for _ in CLASSES)
        self.bytes = 0
        self.drops: Counter[str] = Counter()
        self.pushed: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes)

    def __bool__(self) -> bool:
        return self.bytes > 0 or any(self._lanes)

    def count(self, priority: Priority) -> int:
        return len(self._lanes[priority])

    def push(self, item: bytes, priority: Priority) -> bool:
        """Queue ``item``; False (and a drop counted) when it cannot fit."""
        size = len(item)
        if size > self.max_bytes:
            self.drops[drop_key(TOO_BIG, priority)] += 1
            return False
        if self.bytes + size > self.max_bytes and not self._make_room(size, priority):
            self.drops[drop_key(FULL, priority)] += 1
            return False
        self._lanes[priority].append(item)
        self.bytes += size
        self.pushed[priority.name.lower()] += 1
        return True

    def _make_room(self, size: int, priority: Priority) -> bool:
        # First check that evicting every lower item would be enough: never evict in vain.
        lower = range(len(CLASSES) - 1, priority, -1)
        freeable = sum(len(item) for p in lower for item in self._lanes[p])
        if self.bytes - freeable + size > self.max_bytes:
            return False
        for p in lower:
            lane = self._lanes[p]
            while lane and self.bytes + size > self.max_bytes:
                self.bytes -= len(lane.popleft())
                self.drops[drop_key(EVICTED, Priority(p))] += 1
            if self.bytes + size <= self.max_bytes:
                break
        return True

    def _in_order(self) -> Iterator[tuple[Priority, bytes]]:
        for priority, lane in zip(CLASSES, self._lanes, strict=True):
            for item in lane:
                yield priority, item

    def peek(self, *, max_bytes: int, max_items: int) -> list[bytes]:
        """The next items in priority order, at most ``max_bytes`` in total (but always at least
        one item if any is queued) and ``max_items`` of them; nothing is removed."""
        items: list[bytes] = []
        total = 0
        for _, item in self._in_order():
            if items and (total + len(item) > max_bytes or len(items) >= max_items):
                break
            items.append(item)
            total += len(item)
        return items

    def commit(self, count: int) -> None:
        """Remove the first ``count`` items (the ones :meth:`peek` returned, now sent)."""
        for priority, lane in zip(CLASSES, self._lanes, strict=True):
            while count and lane:
                self.bytes -= len(lane.popleft())
                self.sent[priority.name.lower()] += 1
                count -= 1
            if not count:
                return

    def clear(self, reason: str) -> int:
        """Drop everything queued, counting each item under ``reason``; returns how many."""
        dropped = 0
        for priority, lane in zip(CLASSES, self._lanes, strict=True):
            if lane:
                self.drops[drop_key(reason, priority)] += len(lane)
                dropped += len(lane)
                lane.clear()
        self.bytes = 0
        return dropped


class QueueSet:
    """The queues of all peers, created on first push, with totals that survive removals."""

    def __init__(self, max_bytes_per_peer: int) -> None:
        PeerQueue(max_bytes_per_peer)  # validates the bound up front
        self.max_bytes_per_peer = max_bytes_per_peer
        self._queues: dict[Hashable, PeerQueue] = {}
        self._retired_drops: Counter[str] = Counter()
        self._retired_sent: Counter[str] = Counter()

    def get(self, peer: Hashable) -> PeerQueue:
        queue = self._queues.get(peer)
        if queue is None:
            queue = self._queues[peer] = PeerQueue(self.max_bytes_per_peer)
        return queue

    def push(self, peer: Hashable, item: bytes, priority: Priority) -> bool:
        queue = self.get(peer)
        if queue.push(item, priority):
            return True
        self.discard_empty(peer)  # a refused first item must not leave an empty queue behind
        return False

    def free_bytes(self, peer: Hashable) -> int:
        """Room left in ``peer``'s queue without evicting anything (no queue is created)."""
        queue = self._queues.get(peer)
        return self.max_bytes_per_peer if queue is None else queue.max_bytes - queue.bytes

    def refuse(self, peer: Hashable, priority: Priority, reason: str = FULL) -> None:
        """Count an item for ``peer`` that the caller did not even try to push."""
        self._retired_drops[drop_key(reason, priority)] += 1

    def pending(self) -> list[Hashable]:
        """Peers with something queued."""
        return [peer for peer, queue in self._queues.items() if queue]

    def remove(self, peer: Hashable, reason: str) -> int:
        """Forget ``peer``'s queue, counting what it still held under ``reason``."""
        queue = self._queues.pop(peer, None)
        if queue is None:
            return 0
        dropped = queue.clear(reason)
        self._retired_drops.update(queue.drops)
        self._retired_sent.update(queue.sent)
        return dropped

    def discard_empty(self, peer: Hashable) -> bool:
        """Forget ``peer``'s queue if it holds nothing (keeping its totals); True if it did.

        Queues are created for anyone we answer, strangers included: drained ones must go."""
        queue = self._queues.get(peer)
        if queue is None or queue:
            return False
        del self._queues[peer]
        self._retired_drops.update(queue.drops)
        self._retired_sent.update(queue.sent)
        return True

    def __contains__(self, peer: object) -> bool:
        return peer in self._queues

    @property
    def bytes(self) -> int:
        return sum(queue.bytes for queue in self._queues.values())

    def drops(self) -> Counter[str]:
        total = Counter(self._retired_drops)
        for queue in self._queues.values():
            total.update(queue.drops)
        return total

    def statistics(self) -> dict[str, Any]:
        sent = Counter(self._retired_sent)
        for queue in self._queues.values():
            sent.update(queue.sent)
        return {
            "bytes": self.bytes,
            "max_peer_bytes": max((q.bytes for q in self._queues.values()), default=0),
            "items": sum(len(q) for q in self._queues.values()),
            "sent": dict(sent),
            "drops": dict(self.drops()),
        }
