"""BatchingSender: when batches leave, and that nothing queued is lost or reordered."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from zmqcomm.errors import ClosedError, QueueFullError, SendTimeout, UsageError
from zmqcomm.transport.batching import BatchingSender
from zmqcomm.wire import Body, MessageType, WireCodec
from zmqcomm.wire.payload import Buffer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Wire:
    """Collects frames sent and decodes them back, like a receiver would."""

    def __init__(self) -> None:
        self.codec = WireCodec()
        self.frames: list[Sequence[Buffer]] = []
        self.refuse = 0  # how many next sends fail as if the queue were full

    def __call__(self, frames: Sequence[Buffer]) -> None:
        if self.refuse:
            self.refuse -= 1
            raise QueueFullError("full")
        self.frames.append(frames)

    def received(self) -> list[tuple[int, str, object]]:
        out = []
        for frames in self.frames:
            message = self.codec.decode(frames)
            out.extend((message.header.type, message.header.topic, p) for p in message.payloads)
        return out


def make(wire: Wire, clock: FakeClock, **kwargs: object) -> BatchingSender:
    return BatchingSender(wire, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_batch_leaves_when_max_items_reached() -> None:
    wire, clock = Wire(), FakeClock()
    sender = make(wire, clock, max_items=3)
    sender.send(MessageType.DATA, 1)
    sender.send(MessageType.DATA, 2)
    assert wire.frames == []
    sender.send(MessageType.DATA, 3)
    assert [p for _, _, p in wire.received()] == [1, 2, 3]
    assert len(wire.frames) == 1
    assert sender.messages_sent == 3 and sender.frames_sent == 1


def test_batch_leaves_when_max_bytes_reached() -> None:
    wire, clock = Wire(), FakeClock()
    sender = make(wire, clock, max_bytes=100)
    sender.send(MessageType.DATA, b"x" * 60)
    assert wire.frames == []
    sender.send(MessageType.DATA, b"y" * 60)
    assert len(wire.frames) == 1
    assert len(sender) == 0


def test_partial_batch_leaves_after_max_delay() -> None:
    wire, clock = Wire(), FakeClock()
    sender = make(wire, clock, max_delay=0.005)
    assert sender.next_deadline() is None
    sender.send(MessageType.DATA, "a")
    assert sender.next_deadline() == pytest.approx(100.005)
    clock.now = 100.004
    assert sender.on_timer() == 0
    assert wire.frames == []
    clock.now = 100.005
    assert sender.on_timer() == 1
    assert wire.received() == [(MessageType.DATA, "", "a")]
    assert sender.next_deadline() is None


def test_type_or_topic_change_flushes_to_keep_order() -> None:
    wire, clock = Wire(), FakeClock()
    sender = make(wire, clock)
    sender.send(MessageType.DATA, 1, topic="a")
    sender.send(MessageType.DATA, 2, topic="a")
    sender.send(MessageType.DATA, 3, topic="b")
    sender.send(MessageType.REQUEST, 4, topic="b")
    sender.close()
    assert wire.received() == [
        (MessageType.DATA, "a", 1),
        (MessageType.DATA, "a", 2),
        (MessageType.DATA, "b", 3),
        (MessageType.REQUEST, "b", 4),
    ]
    assert len(wire.frames) == 3


def test_close_flushes_everything_and_then_refuses() -> None:
    wire, clock = Wire(), FakeClock()
    sender = make(wire, clock)
    for index in range(10):
        sender.send(MessageType.DATA, index)
    sender.close()
    sender.close()  # idempotent
    assert [p for _, _, p in wire.received()] == list(range(10))
    with pytest.raises(ClosedError):
        sender.send(MessageType.DATA, 11)


def test_refused_batch_is_kept_and_retried_in_order() -> None:
    wire, clock = Wire(), FakeClock()
    sender = make(wire, clock, max_items=2)
    sender.send(MessageType.DATA, 1)
    wire.refuse = 1
    with pytest.raises(QueueFullError):
        sender.send(MessageType.DATA, 2)  # fills the batch; the socket refuses it
    assert len(sender) == 2
    assert sender.next_deadline() == clock.now  # retry at once
    sender.send(MessageType.DATA, 3)  # retries the refused batch first
    sender.close()
    assert [p for _, _, p in wire.received()] == [1, 2, 3]
    assert sender.messages_sent == 3


class FlakyFraming:
    """A ``frame_batch`` that fails the next ``refuse`` calls, as a secure session does when
    the rekey it must start first cannot be sent."""

    def __init__(self, codec: WireCodec) -> None:
        self.codec = codec
        self.refuse = 0

    def __call__(self, msg_type: int, body: Body, topic: str) -> list[Buffer]:
        if self.refuse:
            self.refuse -= 1
            raise SendTimeout("the rekey INIT could not be queued")
        return self.codec.assemble(msg_type, body, topic=topic)


def test_a_batch_whose_framing_fails_is_kept_and_sent_exactly_once() -> None:
    wire, clock = Wire(), FakeClock()
    framing = FlakyFraming(wire.codec)
    sender = make(wire, clock, max_delay=10.0, frame_batch=framing)
    sender.send(MessageType.DATA, "a")
    sender.send(MessageType.DATA, "b")
    framing.refuse = 1
    with pytest.raises(SendTimeout):
        sender.flush()
    assert len(sender) == 2 and wire.frames == []
    assert sender.next_deadline() == clock.now  # retry at once
    assert sender.flush() == 2
    assert sender.flush() == 0
    assert [p for _, _, p in wire.received()] == ["a", "b"]
    assert sender.messages_sent == 2 and sender.frames_sent == 1


def test_a_batch_whose_framing_fails_keeps_its_place_before_later_sends() -> None:
    wire, clock = Wire(), FakeClock()
    framing = FlakyFraming(wire.codec)
    sender = make(wire, clock, max_items=2, frame_batch=framing)
    sender.send(MessageType.DATA, 1)
    framing.refuse = 2
    with pytest.raises(SendTimeout):
        sender.send(MessageType.DATA, 2)  # fills the batch; framing it fails
    with pytest.raises(SendTimeout):
        sender.on_timer()  # the retry fails too: still kept
    assert len(sender) == 2
    sender.send(MessageType.DATA, 3)  # frames and sends the kept batch first
    sender.close()
    assert [p for _, _, p in wire.received()] == [1, 2, 3]
    assert sender.messages_sent == 3 and len(sender) == 0


def test_frame_counter_increases_per_batch() -> None:
    wire, clock = Wire(), FakeClock()
    sender = make(wire, clock, max_items=1, sender=b"\x07" * 16)
    for index in range(3):
        sender.send(MessageType.DATA, index)
    headers = [wire.codec.decode(frames).header for frames in wire.frames]
    assert [h.counter for h in headers] == [0, 1, 2]
    assert all(h.sender == b"\x07" * 16 for h in headers)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(UsageError):
        BatchingSender(Wire(), max_delay=-1)
    with pytest.raises(UsageError):
        BatchingSender(Wire(), max_items=0)
