"""HopOutbox: what a node sends through its broker, held in order while the link cannot
take it (zmqcomm/node/hop_outbox.py), against a fake broker link."""

from __future__ import annotations

from typing import Any, cast

import pytest

from zmqcomm.errors import ConnectError, LocalProtocolError, QueueFullError, SecurityError
from zmqcomm.node.hop_outbox import HELD_RETRY, KEEPALIVE, HopOutbox
from zmqcomm.node.tunnel import HopMessage
from zmqcomm.secure import SecureDealer
from zmqcomm.wire import MessageType, WireCodec


class FakeDealer:
    """What HopOutbox uses of a SecureDealer: ``established``, ``writable()`` and ``send``,
    which encodes with the real codec (so it refuses what a real link refuses)."""

    def __init__(self) -> None:
        self.established = True
        #: Whether the link has room (what ``writable()`` says).
        self.room = True
        self.codec = WireCodec()
        #: ``(msg_type, payload, topic)`` as sent.
        self.sent: list[tuple[int, object, str]] = []
        #: Raised by the next send (after the poll said yes), then cleared.
        self.fail_next: Exception | None = None

    def writable(self) -> bool:
        return self.room

    def send(self, payload: object, *, msg_type: int, topic: str = "", wait: bool = True) -> None:
        assert not wait, "the outbox never waits for room inside a pump"
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        self.codec.encode(msg_type, payload, topic=topic)  # LocalProtocolError if it cannot
        self.sent.append((msg_type, payload, topic))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(max_held: int = 10) -> tuple[HopOutbox, FakeDealer, Clock]:
    dealer, clock = FakeDealer(), Clock()
    outbox = HopOutbox(cast(SecureDealer, dealer), clock=clock, max_held=max_held)
    return outbox, dealer, clock


def forward(text: Any, peer: str = "peer") -> HopMessage:
    return HopMessage(MessageType.FORWARD, text, peer)


def payloads(dealer: FakeDealer) -> list[object]:
    return [payload for _, payload, _ in dealer.sent]


def test_messages_leave_at_once_in_order_while_the_link_is_up() -> None:
    outbox, dealer, clock = make()
    clock.now = 105.0
    outbox.put([forward("a"), forward("b")])
    outbox.put([HopMessage(MessageType.SUBSCRIBE, None, "alerts")])
    assert dealer.sent == [
        (MessageType.FORWARD, "a", "peer"),
        (MessageType.FORWARD, "b", "peer"),
        (MessageType.SUBSCRIBE, None, "alerts"),
    ]
    assert len(outbox) == 0
    assert outbox.last_sent == 105.0  # the keepalive counts from it


def test_held_while_the_link_has_no_session_then_sent_in_order() -> None:
    outbox, dealer, clock = make()
    dealer.established = False
    outbox.put([forward("a"), forward("b")])
    outbox.put([forward("c")])
    assert dealer.sent == [] and len(outbox) == 3
    clock.now = 107.0
    assert outbox.flush() == 0  # still down: nothing leaves, nothing is lost
    assert len(outbox) == 3 and outbox.last_sent == 100.0

    dealer.established = True
    # A new message does not overtake the held ones: they go first.
    outbox.put([forward("d")])
    assert payloads(dealer) == ["a", "b", "c", "d"]
    assert len(outbox) == 0 and outbox.last_sent == 107.0
    assert outbox.dropped == {}


def test_held_while_the_link_is_full_or_drops_during_the_send() -> None:
    outbox, dealer, _ = make()
    dealer.room = False
    outbox.put([forward("a")])
    assert dealer.sent == [] and len(outbox) == 1

    dealer.room = True
    dealer.fail_next = ConnectError("down since the poll", reason="link_down")
    assert outbox.flush() == 0
    assert len(outbox) == 1  # kept, not dropped

    assert outbox.flush() == 1
    assert payloads(dealer) == ["a"] and outbox.dropped == {}


def test_a_hop_session_past_its_key_limit_holds_messages_until_it_rekeys() -> None:
    """The session refuses to seal until its rekey completes: a passing state of the link,
    not a message that can never go. Nothing is dropped."""
    outbox, dealer, _ = make()
    dealer.fail_next = SecurityError("rekey first", reason="rekey_required")
    outbox.put([forward("a"), forward("b")])  # "a" is refused once, held, then sent
    assert payloads(dealer) == ["a", "b"]
    assert len(outbox) == 0 and outbox.dropped == {}


def test_check_room_raises_queue_full_at_max_held() -> None:
    outbox, dealer, _ = make(max_held=2)
    dealer.established = False
    outbox.check_room()
    outbox.put([forward("a")])
    outbox.check_room(1)
    with pytest.raises(QueueFullError):
        outbox.check_room(2)
    outbox.put([forward("b")])
    with pytest.raises(QueueFullError):
        outbox.check_room()
    assert len(outbox) == 2  # check_room changes nothing


def test_what_does_not_fit_is_dropped_and_counted_as_hop_queue_full() -> None:
    outbox, dealer, _ = make(max_held=2)
    dealer.established = False
    outbox.put([forward("a"), forward("b"), forward("c")])
    outbox.put([HopMessage(MessageType.PING, None)])
    assert len(outbox) == 2
    assert outbox.dropped == {"hop_queue_full": 2}

    dealer.established = True
    assert outbox.flush() == 2
    assert payloads(dealer) == ["a", "b"]  # the oldest are kept


def test_an_unsendable_held_message_is_dropped_without_blocking_the_rest() -> None:
    outbox, dealer, _ = make()
    dealer.established = False
    outbox.put([forward("a"), forward(object()), forward("c")])  # msgpack cannot encode it
    assert len(outbox) == 3

    dealer.established = True
    assert outbox.flush() == 2
    assert payloads(dealer) == ["a", "c"]
    assert len(outbox) == 0
    assert outbox.dropped == {"hop_unsendable": 1}


def test_an_unsendable_message_with_nothing_before_it_raises_at_once() -> None:
    outbox, dealer, _ = make()
    with pytest.raises(LocalProtocolError):
        outbox.put([forward(object())])
    assert len(outbox) == 0 and dealer.sent == []
    outbox.put([forward("b")])  # the link is not stuck
    assert payloads(dealer) == ["b"]


def test_an_unsendable_message_among_others_does_not_take_them_with_it() -> None:
    """The tunnels gave several messages at once (a FORWARD and a rekey frame, say): the
    others go, the bad one is counted, and its error is raised once they have."""
    outbox, dealer, _ = make()
    with pytest.raises(LocalProtocolError):
        outbox.put([forward("a"), forward(object()), forward("c")])
    assert payloads(dealer) == ["a", "c"]
    assert outbox.dropped == {"hop_unsendable": 1}


def test_discard_gives_up_what_is_held_and_counts_it_unsent_at_close() -> None:
    outbox, dealer, _ = make()
    dealer.established = False
    outbox.put([forward("a"), forward("b"), forward("c")])
    assert outbox.discard() == 3
    assert len(outbox) == 0
    assert outbox.dropped == {"unsent_at_close": 3}
    assert outbox.discard() == 0
    assert outbox.dropped == {"unsent_at_close": 3}

    dealer.established = True
    assert outbox.flush() == 0 and dealer.sent == []  # nothing left to send


def test_put_first_goes_ahead_of_a_full_queue_and_is_never_dropped() -> None:
    """A new hop session's resubscriptions must not be lost to a queue full of messages
    held through the outage."""
    outbox, dealer, _ = make(max_held=2)
    dealer.established = False
    outbox.put([forward("a"), forward("b")])
    outbox.put_first([HopMessage(MessageType.SUBSCRIBE, None, "x")])
    assert len(outbox) == 3 and outbox.dropped == {}
    dealer.established = True
    outbox.flush()
    assert payloads(dealer) == [None, "a", "b"]


def test_next_deadline_is_a_retry_while_the_link_is_up_but_full() -> None:
    outbox, dealer, clock = make()
    assert outbox.next_deadline() == clock.now + KEEPALIVE  # nothing held: the keepalive
    dealer.room = False
    outbox.put([forward("a")])
    assert outbox.next_deadline() == clock.now + HELD_RETRY
    clock.now += 1.0
    outbox.flush()  # still full: offered again a retry later, not at once
    assert outbox.next_deadline() == clock.now + HELD_RETRY
    dealer.established = False
    # No session: its coming up is input that wakes the pump; no timer to spin on meanwhile.
    assert outbox.next_deadline() is None
    dealer.established = dealer.room = True
    outbox.flush()
    assert outbox.next_deadline() == clock.now + KEEPALIVE
    assert payloads(dealer) == ["a"]


def test_keepalive_is_due_after_a_silence_unless_messages_are_held() -> None:
    outbox, dealer, clock = make()
    clock.now += KEEPALIVE
    assert outbox.keepalive_due()
    dealer.room = False
    outbox.put([forward("a")])
    assert not outbox.keepalive_due()  # what is held ends the silence when it leaves
    dealer.room = True
    outbox.flush()
    assert not outbox.keepalive_due()
    dealer.established = False
    clock.now += KEEPALIVE
    assert not outbox.keepalive_due()  # no session to keep alive


def test_a_tunnel_finish_is_held_past_max_held_and_reported_when_held_and_sent() -> None:
    """A tunnel's rekey FINISH may not be dropped (its sender already uses the new keys),
    and the tunnels must hear when it waits and when it leaves (they keep the old key open
    in between); a FINISH that goes at once is nobody's concern."""
    held: list[str] = []
    sent: list[str] = []
    dealer, clock = FakeDealer(), Clock()
    outbox = HopOutbox(
        cast(SecureDealer, dealer),
        clock=clock,
        max_held=2,
        on_finish_held=held.append,
        on_finish_left=sent.append,
    )
    finish = HopMessage(MessageType.FORWARD, "finish", "bob", finish_for="bob")
    outbox.put([finish])
    assert (payloads(dealer), held, sent) == (["finish"], [], [])

    dealer.established = False
    outbox.put([forward("a"), forward("b"), forward("c"), finish])
    assert outbox.dropped["hop_queue_full"] == 1  # "c", never the FINISH
    assert (len(outbox), held, sent) == (3, ["bob"], [])

    dealer.established = True
    outbox.flush()
    assert payloads(dealer) == ["finish", "a", "b", "finish"]
    assert (held, sent) == (["bob"], ["bob"])
