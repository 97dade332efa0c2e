"""Per-peer byte-bounded priority queues: order, bounds, eviction and counters."""

from __future__ import annotations

import pytest

from zmqcomm.errors import UsageError
from zmqcomm.patterns.gossip.queues import PeerQueue, Priority, QueueSet


def item(tag: str, size: int = 10) -> bytes:
    return tag.encode().ljust(size, b".")


def test_pop_order_is_by_priority_then_fifo() -> None:
    q = PeerQueue(1000)
    pushes = [
        ("r1", Priority.REPAIR),
        ("f1", Priority.FORWARD),
        ("o1", Priority.OWN),
        ("c1", Priority.CONTROL),
        ("f2", Priority.FORWARD),
        ("c2", Priority.CONTROL),
    ]
    for tag, priority in pushes:
        assert q.push(item(tag), priority)
    taken = q.peek(max_bytes=1000, max_items=100)
    assert [t.rstrip(b".") for t in taken] == [b"c1", b"c2", b"o1", b"f1", b"f2", b"r1"]
    assert len(q) == 6 and q.bytes == 60  # peek removes nothing
    q.commit(3)
    assert [t.rstrip(b".") for t in q.peek(max_bytes=1000, max_items=100)] == [b"f1", b"f2", b"r1"]
    assert q.sent == {"control": 2, "own": 1} and q.bytes == 30


def test_peek_respects_bytes_and_items_but_always_returns_one() -> None:
    q = PeerQueue(1000)
    for i in range(5):
        q.push(item(f"o{i}", 100), Priority.OWN)
    assert len(q.peek(max_bytes=250, max_items=10)) == 2
    assert len(q.peek(max_bytes=1000, max_items=3)) == 3
    assert len(q.peek(max_bytes=10, max_items=10)) == 1  # one oversize item still goes alone


def test_full_queue_evicts_lower_classes_oldest_first() -> None:
    q = PeerQueue(40)
    assert q.push(item("r1"), Priority.REPAIR)
    assert q.push(item("r2"), Priority.REPAIR)
    assert q.push(item("f1"), Priority.FORWARD)
    assert q.push(item("f2"), Priority.FORWARD)
    assert q.push(item("o1"), Priority.OWN)  # evicts r1 (lowest class, oldest)
    assert q.count(Priority.REPAIR) == 1 and q.drops["evicted_repair"] == 1
    assert q.push(item("c1", 20), Priority.CONTROL)  # needs 20: evicts r2 then f1
    assert q.drops["evicted_repair"] == 2 and q.drops["evicted_forward"] == 1
    remaining = [t.rstrip(b".") for t in q.peek(max_bytes=100, max_items=100)]
    assert remaining == [b"c1", b"o1", b"f2"] and q.bytes == 40 <= q.max_bytes


def test_never_evicts_equal_or_higher_priority() -> None:
    q = PeerQueue(30)
    for tag in ("o1", "o2", "o3"):
        assert q.push(item(tag), Priority.OWN)
    assert not q.push(item("o4"), Priority.OWN)
    assert not q.push(item("f1"), Priority.FORWARD)
    assert not q.push(item("r1"), Priority.REPAIR)
    assert q.drops == {"full_own": 1, "full_forward": 1, "full_repair": 1}
    assert q.count(Priority.OWN) == 3 and q.bytes == 30


def test_no_eviction_in_vain_when_lower_items_would_not_make_room() -> None:
    q = PeerQueue(30)
    assert q.push(item("c1", 20), Priority.CONTROL)
    assert q.push(item("r1", 10), Priority.REPAIR)
    assert not q.push(item("o1", 20), Priority.OWN)  # dropping r1 frees only 10
    assert q.count(Priority.REPAIR) == 1 and q.drops == {"full_own": 1}


def test_item_larger_than_the_queue_is_refused_and_counted() -> None:
    q = PeerQueue(16)
    assert not q.push(b"x" * 17, Priority.CONTROL)
    assert q.drops == {"too_big_control": 1} and len(q) == 0 and not q


def test_clear_and_queue_set_totals_survive_removal() -> None:
    qs = QueueSet(100)
    assert qs.push("a", item("o1"), Priority.OWN)
    assert qs.push("a", item("f1"), Priority.FORWARD)
    assert qs.push("b", item("c1"), Priority.CONTROL)
    assert sorted(qs.pending()) == ["a", "b"] and qs.bytes == 30
    qs.get("b").commit(1)
    assert qs.pending() == ["a"]
    assert qs.remove("a", "unreachable") == 2
    assert "a" not in qs and qs.bytes == 0
    stats = qs.statistics()
    assert stats["drops"] == {"unreachable_own": 1, "unreachable_forward": 1}
    assert stats["sent"] == {"control": 1} and stats["items"] == 0


def test_bounds_are_checked() -> None:
    with pytest.raises(UsageError, match="max_bytes"):
        PeerQueue(0)
    with pytest.raises(UsageError):
        QueueSet(0)


def test_drained_queue_is_discarded_with_its_totals_kept() -> None:
    qs = QueueSet(100)
    assert qs.push("a", item("c1"), Priority.CONTROL)
    assert not qs.discard_empty("a")  # still holds an item
    assert not qs.discard_empty("nobody")
    qs.get("a").commit(1)
    assert qs.discard_empty("a")
    assert "a" not in qs
    stats = qs.statistics()
    assert stats["sent"] == {"control": 1} and stats["drops"] == {} and stats["items"] == 0


def test_refused_pushes_leave_no_empty_queue_but_are_counted() -> None:
    qs = QueueSet(30)
    assert not qs.push("a", item("big", 31), Priority.OWN)
    assert "a" not in qs
    assert qs.free_bytes("a") == 30
    assert qs.push("b", item("f1", 25), Priority.FORWARD)
    assert qs.free_bytes("b") == 5
    assert not qs.push("b", item("r1"), Priority.REPAIR)
    assert "b" in qs  # not empty: kept
    qs.refuse("c", Priority.REPAIR)  # the driver skipped a reply that could not fit
    assert "c" not in qs
    assert qs.statistics()["drops"] == {"too_big_own": 1, "full_repair": 2}
