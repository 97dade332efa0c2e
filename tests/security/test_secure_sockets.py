"""SecureRouter and SecureDealer over real sockets on inproc, ipc and tcp."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zmqcomm.crypto.channel_table import ChannelTable
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import (
    ConnectError,
    LocalProtocolError,
    QueueFullError,
    ReceiveTimeout,
    SecurityError,
    SendTimeout,
    TransportError,
    UnknownPeerError,
    UsageError,
)
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.secure import dealer as dealer_module
from zmqcomm.transport import SocketOptions
from zmqcomm.wire import CompressionConfig, Limits, MessageType, WireCodec
from zmqcomm.wire.header import pack_header

from .conftest import Cast, establish

_inproc_names = itertools.count()


@contextlib.contextmanager
def _session(
    cast: Cast, endpoint: str, *, router: dict[str, Any] | None = None, **dealer: Any
) -> Iterator[tuple[SecureRouter, SecureDealer]]:
    """Bob's router and alice's dealer on ``endpoint``, with a session between them."""
    with (
        SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust, **(router or {})) as bound,
        SecureDealer(
            bound.endpoint,
            identity=cast.alice,
            trust=cast.alice_trust,
            connect_timeout=None,
            **dealer,
        ) as dialled,
    ):
        establish(bound, dialled)
        yield bound, dialled


def test_messages_flow_both_ways_on_every_transport(cast: Cast, endpoint: str) -> None:
    with (
        SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust) as router,
        SecureDealer(
            router.endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
        ) as dealer,
    ):
        establish(router, dealer)
        assert dealer.peer == cast.bob.agent_id
        dealer.send({"op": "ping"}, msg_type=MessageType.REQUEST)
        request = router.receive(timeout=5)
        assert request.agent_id == cast.alice.agent_id
        assert request.message.payload == {"op": "ping"}
        assert request.message.header.is_encrypted
        router.send(request.agent_id, {"op": "pong"}, msg_type=MessageType.REPLY)
        reply = dealer.receive(timeout=5)
        assert reply.agent_id == cast.bob.agent_id
        assert reply.message.payload == {"op": "pong"}
        assert router.peers == [cast.alice.agent_id]


def test_large_messages_and_arrays_cross_every_transport(cast: Cast, endpoint: str) -> None:
    """Frames of 64 KiB and more are sealed in place (bytearrays sent without a copy):
    whatever the path, each arrives whole, and so does the next one sealed after it."""
    big = os.urandom(1 << 20)
    array = np.arange(1 << 17, dtype=np.float32)
    with _session(cast, endpoint) as (router, dealer):
        dealer.send({"b": big, "a": array})
        dealer.send_many([big[:70_000], big[70_000:]])
        sender = dealer.batching_sender(max_delay=10.0)
        sender.send(MessageType.DATA, big[::-1])
        sender.flush()
        got = router.receive(timeout=5).message.payload
        assert got["b"] == big and np.array_equal(got["a"], array)
        assert router.receive(timeout=5).message.payloads == [big[:70_000], big[70_000:]]
        assert router.receive(timeout=5).message.payloads == [big[::-1]]
        router.send(cast.alice.agent_id, array)
        assert np.array_equal(dealer.receive(timeout=5).message.payload, array)


def test_rekey_mid_stream_under_load_loses_and_duplicates_nothing(
    cast: Cast, short_dir: str
) -> None:
    policy = RekeyPolicy(max_messages=200, hard_max_messages=100_000, window=4096)
    total, batch = 30_000, 10
    with (
        SecureRouter(
            f"ipc://{short_dir}/rekey.sock", identity=cast.bob, trust=cast.bob_trust, policy=policy
        ) as router,
        SecureDealer(
            router.endpoint,
            identity=cast.alice,
            trust=cast.alice_trust,
            policy=policy,
            connect_timeout=None,
        ) as dealer,
    ):
        establish(router, dealer)
        got: list[int] = []
        echoed: list[int] = []

        def serve() -> None:
            while len(got) < total:
                delivered = router.receive(timeout=10)
                got.extend(delivered.message.payloads)
                # Echo back as we go, so both directions rekey while loaded.
                router.send_many(delivered.agent_id, delivered.message.payloads)

        server = threading.Thread(target=serve)
        server.start()
        # Up to 20 batches in flight: load in both directions, but no backlog of thousands
        # of frames for a rekey's handshake messages to queue behind (with one, how many
        # rekeys complete depended on how far the sender raced ahead).
        sent, in_flight = 0, 20 * batch
        while len(echoed) < total:
            while sent < total and sent - len(echoed) < in_flight:
                dealer.send_many(list(range(sent, sent + batch)))
                sent += batch
            echoed.extend(dealer.receive(timeout=10).message.payloads)
        server.join(timeout=10)
        assert got == list(range(total))
        assert echoed == list(range(total))
        # 3000 frames each way at ~200 frames per epoch: many rekeys, some started at once
        # by both sides (the tie-break leaves one).
        assert router.table.rekeys >= 10 and dealer.table.rekeys >= 10
        assert router.table.rejected == {} and dealer.table.rejected == {}


@contextlib.contextmanager
def _rekey_started_by_one_frame(
    cast: Cast, *, grace_period: float = 30.0, wall_clock: Callable[[], float] = time.time
) -> Iterator[tuple[SecureRouter, SecureDealer]]:
    """A router whose policy rekeys after every frame, and a dealer, in this thread over
    inproc (sends land at once): the router's "hi" has started a rekey (its INIT went out
    behind the "hi") and the dealer has received the "hi" with a single receive()."""
    policy = RekeyPolicy(
        max_messages=1, hard_max_messages=1_000, jitter=0.0, grace_period=grace_period
    )
    with (
        SecureRouter(
            f"inproc://rekey-{next(_inproc_names)}",
            identity=cast.bob,
            trust=cast.bob_trust,
            policy=policy,
            wall_clock=wall_clock,
        ) as router,
        SecureDealer(
            router.endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
        ) as dealer,
    ):
        establish(router, dealer)
        router.send(cast.alice.agent_id, "hi")
        assert dealer.receive(timeout=5).message.payload == "hi"
        yield router, dealer


def _router_switches_keys(router: SecureRouter, dealer: SecureDealer) -> None:
    """After _rekey_started_by_one_frame: the dealer answers the INIT (REPLY) and the router
    completes its rekey; its FINISH waits for the dealer, which seals under epoch 0 until
    it reads it, and the router keeps epoch 0's receive key for the grace period."""
    dealer.pump(0.0)  # the REPLY goes out
    deadline = router.clock() + 5
    while router.table.rekeys == 0 and router.clock() < deadline:
        router.pump(0.01)
    assert router.table.rekeys == 1


def test_receive_answers_handshake_frames_queued_behind_its_message(cast: Cast) -> None:
    """A peer that only calls receive() still keeps rekeys moving: the INIT that arrived
    behind the message one call returned is answered by the next call, even one that finds
    no message (receive() reads one message at a time between timer ticks)."""
    with _rekey_started_by_one_frame(cast) as (router, dealer):
        with pytest.raises(ReceiveTimeout):
            dealer.receive(timeout=0)
        deadline = router.clock() + 5
        while router.table.rekeys == 0 and router.clock() < deadline:
            router.pump(0.01)  # the REPLY, if the dealer sent one; the dealer is not called
        assert router.table.rekeys == 1


def test_receive_opens_a_backlog_under_the_old_key_before_its_grace_ends(cast: Cast) -> None:
    """A slow consumer that just started a rekey still gets the data its peer queued under
    the old key: receive() handles the whole burst it finds, not only its first message,
    so nothing waits in libzmq until the old key's grace period is over."""
    wall = [1_000.0]
    slow_consumer = _rekey_started_by_one_frame(cast, grace_period=5.0, wall_clock=lambda: wall[0])
    with slow_consumer as (router, dealer):
        dealer.pump(0.0)  # the dealer has answered the INIT (REPLY) by now
        assert router.table.rekeys == 0
        for n in range(5):
            dealer.send(n)  # still under epoch 0: the dealer switches on FINISH
        got = []
        for _ in range(5):
            got.append(router.receive(timeout=5).message.payload)
            wall[0] += 2.0  # the consumer works 2 s per message: the grace ends mid-backlog
        assert got == [0, 1, 2, 3, 4]
        assert router.table.rekeys == 1
        assert router.table.rejected == {}


def test_a_slow_consumer_gets_a_backlog_under_a_key_in_its_grace_period(cast: Cast) -> None:
    """receive() reads one message at a time, but a call that finds the timers due (a
    consumer slower than a timer tick) reads all that waits behind that message: the data
    its peer sealed under the old key is opened before the key's grace period ends
    mid-backlog, even with no handshake frame in front of it."""
    wall = [1_000.0]
    slow_consumer = _rekey_started_by_one_frame(cast, grace_period=5.0, wall_clock=lambda: wall[0])
    with slow_consumer as (router, dealer):
        _router_switches_keys(router, dealer)
        for n in range(5):
            dealer.send(n)  # under epoch 0: the dealer has not read the FINISH
        got = []
        for _ in range(5):
            time.sleep(0.01)  # slower than a timer tick
            got.append(router.receive(timeout=5).message.payload)
            wall[0] += 2.0  # the grace period ends after the third message
        assert got == [0, 1, 2, 3, 4]
        assert router.table.rejected == {}


def test_a_backlog_under_a_superseded_key_is_read_between_timer_ticks_too(cast: Cast) -> None:
    """Found in review: receive() read everything waiting only when the timers were due,
    and the grace period is enforced by the clock, not by erasing the key. A backlog
    under the old key behind a message taken between two ticks, by a consumer that then
    worked past the grace period, was refused (stale_epoch). While a session holds a
    superseded key, every receive() now reads all that waits."""
    wall = [1_000.0]
    slow_consumer = _rekey_started_by_one_frame(cast, grace_period=5.0, wall_clock=lambda: wall[0])
    with slow_consumer as (router, dealer):
        _router_switches_keys(router, dealer)  # epoch 0 stays open 5 s more
        time.sleep(0.01)
        router.pump(0.0)  # a timer tick: the next one is 5 ms away
        for n in range(3):
            dealer.send(n)  # under epoch 0: the dealer has not read the FINISH
        assert router.receive(timeout=5).message.payload == 0
        assert router.clock() < router._next_timer_check  # no tick came in between
        wall[0] += 10.0  # the consumer works 10 s: the grace period is over
        assert [router.receive(timeout=1).message.payload for _ in range(2)] == [1, 2]
        assert router.table.rejected == {}


def test_a_receive_served_from_the_inbox_reads_a_superseded_key_backlog_too(cast: Cast) -> None:
    """Found in review: a receive() that found its message in the inbox returned it
    without reading the socket, even while a session held a superseded key; frames under
    that key kept arriving and waited there past the grace period."""
    wall = [1_000.0]
    slow_consumer = _rekey_started_by_one_frame(cast, grace_period=5.0, wall_clock=lambda: wall[0])
    with slow_consumer as (router, dealer):
        _router_switches_keys(router, dealer)
        assert router.table.in_grace
        dealer.send(0)
        dealer.send(1)  # both under epoch 0: the dealer has not read the FINISH
        assert router.receive(timeout=5).message.payload == 0  # reads 1 into the inbox
        assert [d.message.payload for d in router.inbox] == [1]
        dealer.send(2)  # under epoch 0, arriving meanwhile
        assert router.receive(timeout=5).message.payload == 1  # from the inbox
        wall[0] += 10.0  # the consumer works past the grace period
        assert router.receive(timeout=1).message.payload == 2
        assert router.table.rejected == {}


def test_receive_counts_no_full_inbox_when_it_left_nothing_unread(cast: Cast) -> None:
    """Found in review: with max_inbox=1, the pump a receive() ran on a timer tick found
    the message it had just read still in the inbox, counted the inbox full and read
    nothing."""
    with (
        SecureRouter(
            f"inproc://one-slot-{next(_inproc_names)}",
            identity=cast.bob,
            trust=cast.bob_trust,
            max_inbox=1,
        ) as router,
        SecureDealer(
            router.endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
        ) as dealer,
    ):
        establish(router, dealer)
        for n in range(5):
            dealer.send(n)
            time.sleep(0.01)  # every receive finds the timers due
            assert router.receive(timeout=5).message.payload == n
        assert router.statistics()["inbox_full"] == 0


def test_dealer_re_handshakes_after_the_router_restarts(cast: Cast, short_dir: str) -> None:
    endpoint = f"ipc://{short_dir}/restart.sock"
    options = SocketOptions(reconnect_interval=0.05, reconnect_interval_max=0.2)
    router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust)
    dealer = SecureDealer(
        endpoint, identity=cast.alice, trust=cast.alice_trust, options=options, connect_timeout=None
    )
    try:
        establish(router, dealer)
        dealer.send("before")
        assert router.receive(timeout=5).message.payload == "before"
        first_session = dealer.table.channels[b""].session
        router.close()
        router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust)
        deadline = dealer.clock() + 10
        while dealer.reconnects < 1 or not dealer.established:
            assert dealer.clock() < deadline, "the dealer never re-handshook"
            dealer.pump(0.05)
            router.pump(0.0)
        assert dealer.table.channels[b""].session is not first_session
        dealer.send("after")
        assert router.receive(timeout=5).message.payload == "after"
    finally:
        dealer.close()
        router.close()


def _router_sends_then_closes(router: SecureRouter, dealer: SecureDealer, count: int) -> None:
    """The router sends ``count`` messages and closes once they wait, unread, in the dealer's
    socket; returns once the dealer's connection events say the connection is gone."""
    (peer,) = router.peers
    for n in range(count):
        router.send(peer, n)
    assert dealer.socket.poll(5000)  # they reached the dealer (not read: nothing pumps)
    router.close()
    assert dealer.side_sockets()[0].poll(5000)  # the disconnect is reported
    # libzmq tears the connection's queue down just after it reports the disconnect; with
    # ZMQ_IMMEDIATE that queue took the unread messages with it, every time, by here.
    time.sleep(0.3)


#: Reconnects every 20 to 50 ms, so a test's sleeps of 0.15 s and more span some.
_QUICK_RECONNECTS = SocketOptions(reconnect_interval=0.02, reconnect_interval_max=0.05)


def _quick_dealer(cast: Cast, endpoint: str) -> SecureDealer:
    return SecureDealer(
        endpoint,
        identity=cast.alice,
        trust=cast.alice_trust,
        options=_QUICK_RECONNECTS,
        connect_timeout=None,
    )


def _restart_unseen(cast: Cast, router: SecureRouter, dealer: SecureDealer) -> SecureRouter:
    """The router sends 0..4 and closes; a new one binds its endpoint, and the dealer
    reconnects to it without pumping. Returns the new router."""
    _router_sends_then_closes(router, dealer, 5)
    router = SecureRouter(dealer.endpoint, identity=cast.bob, trust=cast.bob_trust)
    time.sleep(0.3)
    return router


def _interrupt_third_read(dealer: SecureDealer, trigger: Callable[[], object]) -> None:
    """Run ``trigger`` with the dealer's third message read raising KeyboardInterrupt."""
    take_in = dealer._take_in
    calls = itertools.count()

    def interrupted_once(sock: Any) -> None:
        if next(calls) == 2:
            raise KeyboardInterrupt
        take_in(sock)

    dealer._take_in = interrupted_once  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            trigger()
    finally:
        dealer._take_in = take_in  # type: ignore[method-assign]


def _pump_until_session(router: SecureRouter, dealer: SecureDealer) -> None:
    deadline = time.monotonic() + 10
    while not (dealer.established and router.peers):
        assert time.monotonic() < deadline, f"no session: {dealer.statistics()}"
        dealer.pump(0.01)
        router.pump(0.0)


def test_what_arrived_before_the_router_closed_is_still_delivered(
    cast: Cast, short_dir: str
) -> None:
    """A router that sends and then closes (or dies): what reached the dealer is delivered
    even when the dealer reads it only after the connection is gone. With ZMQ_IMMEDIATE set
    on the dealer, libzmq discarded it (benchmarks/dealer_close_race.py)."""
    endpoint = f"ipc://{short_dir}/last-words.sock"
    router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust)
    with SecureDealer(
        endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
    ) as dealer:
        try:
            establish(router, dealer)
            _router_sends_then_closes(router, dealer, 5)
        finally:
            router.close()
        assert [dealer.receive(timeout=5).message.payload for _ in range(5)] == list(range(5))
        assert dealer.disconnected and not dealer.established
        assert dealer.table.rejected == {}


def test_what_the_old_connection_brought_is_delivered_across_a_reconnect(
    cast: Cast, short_dir: str
) -> None:
    """The router restarts before the dealer reads its last messages. The dealer reads them
    under the old session before the reconnect's handshake replaces it (after, they could
    never be opened), then handshakes with the new router."""
    endpoint = f"ipc://{short_dir}/reconnect-unread.sock"
    router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust)
    dealer = _quick_dealer(cast, endpoint)
    try:
        establish(router, dealer)
        router = _restart_unseen(cast, router, dealer)
        _pump_until_session(router, dealer)
        assert dealer.reconnects == 1
        assert [dealer.receive(timeout=5).message.payload for _ in range(5)] == list(range(5))
        assert dealer.table.rejected == {}
        assert router.table.rejected == {}
        dealer.send("after")
        assert router.receive(timeout=5).message.payload == "after"
    finally:
        dealer.close()
        router.close()


def test_a_reconnect_interrupted_while_reading_the_old_messages_still_completes(
    cast: Cast, short_dir: str
) -> None:
    """An exception (an interrupt) while the dealer reads what the old connection left must
    not leave it counted as down on a live connection, with no handshake started: the
    next timer tick finishes the reconnect."""
    endpoint = f"ipc://{short_dir}/interrupted.sock"
    router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust)
    dealer = _quick_dealer(cast, endpoint)
    try:
        establish(router, dealer)
        router = _restart_unseen(cast, router, dealer)
        _interrupt_third_read(dealer, lambda: dealer.pump(1.0))
        _pump_until_session(router, dealer)
        assert [dealer.receive(timeout=5).message.payload for _ in range(5)] == list(range(5))
        dealer.send("after")
        assert router.receive(timeout=5).message.payload == "after"
    finally:
        dealer.close()
        router.close()


def test_a_pending_reconnect_is_not_started_on_a_connection_gone_since(
    cast: Cast, short_dir: str
) -> None:
    """A reconnect interrupted while reading (as above) is finished by a later pump; if that
    connection has dropped too by then, its DISCONNECTED waiting unread, no handshake may
    start on it: its INIT would stay queued and reach the next router ahead of the live
    one, which would answer it for nothing."""
    endpoint = f"ipc://{short_dir}/pending-gone.sock"
    router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust)
    dealer = _quick_dealer(cast, endpoint)
    try:
        establish(router, dealer)
        router = _restart_unseen(cast, router, dealer)
        _interrupt_third_read(dealer, lambda: dealer.on_side_ready(dealer.side_sockets()[0]))
        router.close()  # the connection the pending start was for goes too
        assert dealer.side_sockets()[0].poll(5000)
        time.sleep(0.1)
        dealer._next_timer_check = dealer.clock() + 60  # no timer tick reads the events
        dealer.pump(0.0)
        assert dealer.disconnected and not dealer.established
        router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust)
        _pump_until_session(router, dealer)
        for _ in range(10):  # anything else queued for the live router, and its answers
            router.pump(0.01)
            dealer.pump(0.01)
        assert dealer.table.rejected == {} and router.table.rejected == {}
        assert [dealer.receive(timeout=5).message.payload for _ in range(5)] == list(range(5))
    finally:
        dealer.close()
        router.close()


def test_a_backlog_queued_for_a_dropped_connection_does_not_hold_up_the_next_session(
    cast: Cast, short_dir: str
) -> None:
    """Sends queued while the router had stopped reading outlive the connection and reach
    its successor, which refuses them (no_session). The reconnect's INIT, behind them,
    finds the queue full; the dealer starts a new one as soon as there is room rather than
    on the handshake retry timer. The dealer's wall clock stands still here, so that timer
    never fires: only the room can bring the session back."""
    endpoint = f"ipc://{short_dir}/backlog.sock"
    frozen = time.time()
    options = SocketOptions(reconnect_interval=0.02, reconnect_interval_max=0.05)
    router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust, options=options)
    dealer = SecureDealer(
        endpoint,
        identity=cast.alice,
        trust=cast.alice_trust,
        options=options,
        connect_timeout=None,
        wall_clock=lambda: frozen,
    )
    try:
        establish(router, dealer)
        block = bytes(1000)
        for _ in range(100_000):  # the router reads nothing: the dealer's queue fills
            try:
                dealer.send(block, wait=False)
            except QueueFullError:
                break
        else:
            pytest.fail("the dealer's queue never filled")
        router.close()
        router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust, options=options)
        deadline = time.monotonic() + 20
        while not (dealer.established and router.peers):
            assert time.monotonic() < deadline, f"no new session: {dealer.statistics()}"
            dealer.pump(0.01)
            router.pump(0.0)
        assert dealer.reconnects == 1
        assert dealer.table.rejected.get("reply_queue_full", 0) >= 1  # the INIT, behind it
        assert router.table.rejected.get("no_session", 0) > 0  # the backlog, refused
        dealer.send("after")
        assert router.receive(timeout=5).message.payload == "after"
    finally:
        dealer.close()
        router.close()


def test_connections_that_came_and_went_unseen_start_no_handshake(
    cast: Cast, short_dir: str
) -> None:
    """The router restarts several times while the dealer is busy (neither pumping nor
    sending). Its connection events are read together: a connection whose DISCONNECTED
    follows is gone already, so only the live one gets an INIT. One INIT per event used to
    queue stale INITs ahead of the live one, and the live router answered them all (a DH
    and a REPLY each, from its handshake budget)."""
    endpoint = f"ipc://{short_dir}/flap.sock"
    router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust)
    dealer = _quick_dealer(cast, endpoint)
    try:
        establish(router, dealer)
        router.close()
        for _ in range(4):
            time.sleep(0.15)
            passing = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust)
            time.sleep(0.15)  # the dealer connects to this one, unseen
            passing.close()
        time.sleep(0.15)
        router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust)
        time.sleep(0.15)
        _pump_until_session(router, dealer)
        assert dealer.reconnects >= 2  # the test's premise: connections came and went
        for _ in range(10):  # whatever else was queued for the live router, and its answers
            router.pump(0.01)
            dealer.pump(0.01)
        assert router.table.rejected == {}
        assert dealer.table.rejected == {}  # no REPLY to a stale INIT came back
        assert router.statistics()["handshakes"] == 1
    finally:
        dealer.close()
        router.close()


def test_reading_before_a_reconnect_stops_at_what_the_old_connection_can_have_left(
    cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that sends without pause on the new connection must not hold the dealer in
    that read for as long as it sends: it stops after the receive high-water mark (all the
    old connection can have left) and one pump's burst."""
    with SecureDealer(
        f"inproc://bounded-{next(_inproc_names)}",
        identity=cast.alice,
        trust=cast.alice_trust,
        options=SocketOptions(receive_hwm=50),
        connect_timeout=None,
    ) as dealer:
        monkeypatch.setattr(dealer_module, "_MAX_BURST", 20)
        monkeypatch.setattr(dealer_module, "_readable", lambda sock: True)  # never runs dry
        taken = itertools.count(1)

        def take_in(sock: Any) -> None:
            if next(taken) > 1000:
                raise AssertionError("the read did not stop")

        monkeypatch.setattr(dealer, "_take_in", take_in)
        dealer._read_before_reconnect()
        assert next(taken) == 50 + 20 + 1


def test_untrusted_dealer_gets_no_session_and_is_audited(cast: Cast, short_dir: str) -> None:
    with SecureRouter(
        f"ipc://{short_dir}/untrusted.sock",
        identity=cast.bob,
        trust=cast.bob_trust,
        audit=cast.audit,
    ) as router:
        stop = threading.Event()
        pumping = threading.Thread(
            target=lambda: [router.pump(0.02) for _ in iter(stop.is_set, True)]
        )
        pumping.start()
        try:
            with pytest.raises(ConnectError, match="does its trust store hold this identity"):
                SecureDealer(
                    router.endpoint,
                    identity=cast.mallory,
                    trust=cast.alice_trust,
                    connect_timeout=1.0,
                )
        finally:
            stop.set()
            pumping.join()
        assert router.peers == []
        assert router.table.rejected["unknown_peer"] >= 1
        assert [e["reason"] for e in cast.audit.events("reject")][:1] == ["unknown_peer"]
        with pytest.raises(UnknownPeerError):
            router.send(cast.mallory.agent_id, "anything")


def test_a_client_that_leaves_mid_handshake_is_forgotten_not_raised(
    cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"inproc://left-{next(_inproc_names)}"
    with SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust) as router:
        quitter = SecureDealer(
            endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
        )
        quitter.close()
        assert router.socket.poll(5000)  # its INIT waits at the router

        # Whether libzmq has torn down the route by the time the router answers is a race;
        # when it has, a ROUTER_MANDATORY send fails like this.
        def route_gone(route: bytes, frames: object, **_: object) -> None:
            raise TransportError("no connected peer has that routing id", reason="unroutable")

        monkeypatch.setattr(router, "_transmit", route_gone)
        router.pump(0)
        assert router.statistics()["gone"] == 1
        assert router.peers == [] and len(router.table) == 0
        monkeypatch.undo()
        # The router goes on serving: the same agent connects again.
        with SecureDealer(
            endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
        ) as dealer:
            establish(router, dealer)
            dealer.send("back")
            assert router.receive(timeout=5).message.payload == "back"


def test_a_peer_that_stops_reading_never_stalls_the_pump(cast: Cast) -> None:
    """An established peer floods rekey INITs and never reads. The router's REPLYs fill that
    peer's queue; pump() drops them (counted) instead of blocking for send_timeout and
    raising SendTimeout to whoever pumps, and goes on serving the other peers."""
    endpoint = f"inproc://stall-{next(_inproc_names)}"
    cast.bob_trust.add(cast.mallory.public, roles=["server"])
    with (
        SecureRouter(
            endpoint,
            identity=cast.bob,
            trust=cast.bob_trust,
            options=SocketOptions(send_hwm=1),
            send_timeout=0.05,  # the old code raised after this long
        ) as router,
        SecureDealer(
            endpoint,
            identity=cast.alice,
            trust=cast.alice_trust,
            options=SocketOptions(receive_hwm=1),
            connect_timeout=None,
        ) as staller,
    ):
        establish(router, staller)
        channel = staller.table.channels[b""]
        session = channel.session
        assert session is not None
        for _ in range(200):
            init = channel._initiate(
                session.session_id, session.epoch + 1, now=time.time(), delay=2.0
            )
            staller.socket.send_multipart(init)  # and never reads
            router.pump(0.01)
            if router.statistics()["rejected"].get("reply_queue_full"):
                break
        assert router.statistics()["rejected"]["reply_queue_full"] >= 1
        with SecureDealer(
            endpoint, identity=cast.mallory, trust=cast.alice_trust, connect_timeout=None
        ) as other:
            establish(router, other)
            other.send("served")
            assert router.receive(timeout=5).message.payload == "served"


def test_send_raises_only_when_its_message_was_not_queued(cast: Cast) -> None:
    """The message-count rekey starts right after the send that reaches the count. When that
    send took the last slot of the queue, its INIT does not fit: the send must still return
    (its message is queued, a retry would duplicate it) and the INIT is left to the
    handshake's retry timer."""
    router_options = SocketOptions(receive_hwm=5)
    dealer_options = SocketOptions(send_hwm=5)

    @contextlib.contextmanager
    def pair(policy: RekeyPolicy | None) -> Iterator[tuple[SecureRouter, SecureDealer]]:
        endpoint = f"inproc://dup-{next(_inproc_names)}"
        with (
            SecureRouter(
                endpoint,
                identity=cast.bob,
                trust=cast.bob_trust,
                options=router_options,
                policy=policy,
            ) as router,
            SecureDealer(
                endpoint,
                identity=cast.alice,
                trust=cast.alice_trust,
                options=dealer_options,
                policy=policy,
                send_timeout=0.05,
                connect_timeout=None,
            ) as dealer,
        ):
            establish(router, dealer)
            router.pump(0.0)  # the CONFIRM's answer, if any: the pipe starts empty
            yield router, dealer

    with pair(None) as (_, dealer):  # how many messages fit while the router does not read
        capacity = 0
        with pytest.raises(SendTimeout):
            while capacity < 1000:
                dealer.send(capacity)
                capacity += 1
    assert 1 < capacity < 1000
    with pair(RekeyPolicy(max_messages=capacity, jitter=0.0)) as (router, dealer):
        for n in range(capacity):
            dealer.send(n)  # the last one fills the queue and starts the rekey
        assert dealer.statistics()["rejected"]["reply_queue_full"] == 1
        got = [router.receive(timeout=5).message.payload for _ in range(capacity)]
        assert got == list(range(capacity))


def test_a_batching_sender_from_before_a_reconnect_refuses_to_send(
    cast: Cast, short_dir: str
) -> None:
    """A sender seals under the session it was taken for. Once the connection drops, and after
    the dealer's new session is up, it raises ConnectError instead of sealing under the dead
    session (the restarted router would drop every batch while flush() reported success)."""
    endpoint = f"ipc://{short_dir}/stale.sock"
    options = SocketOptions(linger=0, reconnect_interval=0.05, reconnect_interval_max=0.2)
    router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust, options=options)
    dealer = SecureDealer(
        endpoint, identity=cast.alice, trust=cast.alice_trust, options=options, connect_timeout=None
    )
    try:
        establish(router, dealer)
        sender = dealer.batching_sender(max_delay=10.0)
        sender.send(MessageType.DATA, "before")
        assert sender.flush() == 1
        assert router.receive(timeout=5).message.payloads == ["before"]
        router.close()
        deadline = dealer.clock() + 10
        while not dealer.disconnected:
            assert dealer.clock() < deadline, "the dealer never saw the disconnect"
            dealer.pump(0.05)
        sender.send(MessageType.DATA, "while down")
        with pytest.raises(ConnectError) as down:
            sender.flush()
        assert down.value.reason == "link_down"
        router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust, options=options)
        deadline = dealer.clock() + 10
        while dealer.reconnects < 1 or not dealer.established or not router.peers:
            assert dealer.clock() < deadline, "the dealer never re-handshook"
            dealer.pump(0.05)
            router.pump(0.0)
        with pytest.raises(ConnectError) as ended:
            # The batch kept from the failed flush goes first, so send() itself may raise.
            sender.send(MessageType.DATA, "after")
            sender.flush()
        assert ended.value.reason == "session_ended"
        fresh = dealer.batching_sender(max_delay=10.0)
        fresh.send(MessageType.DATA, "fresh")
        assert fresh.flush() == 1
        assert router.receive(timeout=5).message.payloads == ["fresh"]
        assert router.table.rejected == {}
    finally:
        dealer.close()
        router.close()


def test_receive_with_no_timeout_left_returns_a_message_already_waiting(cast: Cast) -> None:
    endpoint = f"inproc://zero-{next(_inproc_names)}"
    with (
        SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust) as router,
        SecureDealer(
            endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
        ) as dealer,
    ):
        establish(router, dealer)
        dealer.send({"n": 1})
        assert router.socket.poll(5000)  # the message waits in the router's socket
        assert router.receive(timeout=0).message.payload == {"n": 1}
        with pytest.raises(ReceiveTimeout):
            router.receive(timeout=0)


def test_a_dealer_started_before_its_router_handshakes_once_it_is_up(
    cast: Cast, short_dir: str
) -> None:
    """Handshake retries made while the router is down are not queued for it: when it comes up
    it sees one live INIT, not a burst of stale ones that spend its per-connection budget and
    get the live one refused (rate_limited), which left the session waiting for the next retry
    (up to 30 s). The dealer's clock runs fast: minutes of retries while the router is down."""
    endpoint = f"ipc://{short_dir}/late.sock"
    options = SocketOptions(reconnect_interval=0.05, reconnect_interval_max=0.1)
    offset = [0.0]
    with SecureDealer(
        endpoint,
        identity=cast.alice,
        trust=cast.alice_trust,
        options=options,
        connect_timeout=None,
        wall_clock=lambda: time.time() + offset[0],
    ) as dealer:
        for _ in range(12):  # retries at 2, 4, 8, 16, 30, 30, ... s
            offset[0] += 31.0
            dealer.pump(0.01)
        with SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust) as router:
            deadline = router.clock() + 10
            while not (dealer.established and router.peers) and not router.table.rejected:
                assert router.clock() < deadline, "no session and nothing refused"
                router.pump(0.01)
                dealer.pump(0.01)
            assert router.table.rejected == {}
            assert dealer.table.rejected == {}
            assert router.table.handshakes == 1
            dealer.send("up")
            assert router.receive(timeout=5).message.payload == "up"


def test_a_dealer_with_no_connection_has_no_timer_due_until_one_comes_up(
    cast: Cast, short_dir: str
) -> None:
    """A loop that pumps at next_deadline() must not spin while the router is down (an ipc
    or tcp dealer makes no session before its first connection): the connection event wakes
    it instead, and its handshake is due at once."""
    endpoint = f"ipc://{short_dir}/due.sock"
    with SecureDealer(
        endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
    ) as dealer:
        dealer.pump(0.05)
        assert dealer.next_deadline() is None
        with SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust) as router:
            (events,) = dealer.side_sockets()
            assert events.poll(5000)  # the connection event
            dealer.on_side_ready(events)
            deadline = dealer.next_deadline()
            assert deadline is not None  # the handshake's retry timer
            establish(router, dealer)
            assert dealer.next_deadline() is not None  # now the rekey timer


def test_an_ipc_dealer_makes_one_key_pair_for_its_first_session(
    cast: Cast, short_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first INIT waits for the connection event; one made at construction would be
    held back and thrown away, with its ephemeral key pair."""
    started: list[bytes] = []
    connect = ChannelTable.connect

    def counting(self: ChannelTable, route: bytes, **kwargs: Any) -> Any:
        started.append(route)
        return connect(self, route, **kwargs)

    monkeypatch.setattr(ChannelTable, "connect", counting)
    endpoint = f"ipc://{short_dir}/one-pair.sock"
    with (
        SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust) as router,
        SecureDealer(
            endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
        ) as dealer,
    ):
        establish(router, dealer)
        assert started == [b""]


def test_a_waiting_pump_wakes_for_the_connection_and_starts_the_handshake(
    cast: Cast, short_dir: str
) -> None:
    """The dealer's INIT goes out when its connection comes up (a monitor event). A pump that
    waits for data must wake for that event: it used to sleep out its whole timeout first, and
    every connect took at least 50 ms (wait_established pumps 0.05 s at a time). The bound
    below is far from both: the connect takes milliseconds, the old wait was 10 s."""
    endpoint = f"ipc://{short_dir}/wake.sock"
    with (
        SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust) as router,
        SecureDealer(
            endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
        ) as dealer,
    ):
        started = time.monotonic()
        dealer.pump(10.0)  # only the connection event can end it early (the router is idle)
        assert time.monotonic() - started < 5, "the INIT waited for the pump's timeout"
        assert router.socket.poll(5000)  # and the INIT is on its way
        establish(router, dealer)
        assert dealer.table.rejected == {}


def test_a_send_after_the_connection_dropped_says_so_at_once(cast: Cast, short_dir: str) -> None:
    """The dealer learns of a dropped connection from its monitor. A send that did not look
    at it first was queued for a connection that is gone (or, with ZMQ_IMMEDIATE, waited its
    whole send_timeout, here made 20 s, and raised SendTimeout); it now looks first."""
    endpoint = f"ipc://{short_dir}/dropped.sock"
    router = SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust)
    with SecureDealer(
        endpoint,
        identity=cast.alice,
        trust=cast.alice_trust,
        connect_timeout=None,
        send_timeout=20.0,
    ) as dealer:
        establish(router, dealer)
        router.close()
        # The connection is gone (its event waits in the monitor); the dealer has not
        # pumped since.
        assert dealer.side_sockets()[0].poll(5000)
        assert not dealer.writable()  # room in the queue, but no connection behind it
        with pytest.raises(ConnectError) as caught:
            dealer.send("lost")
        assert caught.value.reason == "link_down"
        assert dealer.statistics()["sent"] == 0


def test_a_finish_held_for_a_session_since_replaced_is_dropped_not_sent(cast: Cast) -> None:
    """After a reconnect the route has a new session: a FINISH still held for the old one
    must not go out first (the router would refuse it), nor hold up the new one's."""
    with _session(cast, f"inproc://stale-finish-{next(_inproc_names)}") as (router, dealer):
        stale = pack_header(MessageType.HANDSHAKE_FINISH, 0, b"", 0)
        dealer._finishes.hold(b"", None, [stale])  # held for a channel that is gone
        dealer.send("new session data")
        assert router.receive(timeout=5).message.payload == "new session data"
        assert not dealer._finishes
        assert router.table.rejected == {}


@contextlib.contextmanager
def _small_rekeying_session(
    cast: Cast, name: str, offset: list[float]
) -> Iterator[tuple[SecureRouter, SecureDealer]]:
    """A session whose router rekeys every 30 messages, never waits to send, and queues 20
    frames at most each way; both sides' wall clocks run ``offset[0]`` seconds ahead."""
    small = SocketOptions(send_hwm=20, receive_hwm=20)

    def clock() -> float:
        return time.time() + offset[0]

    policy = RekeyPolicy(max_messages=30, jitter=0.0)
    with _session(
        cast,
        f"inproc://{name}-{next(_inproc_names)}",
        router={"options": small, "send_timeout": 0.0, "policy": policy, "wall_clock": clock},
        options=small,
        wall_clock=clock,
    ) as pair:
        yield pair


def _hold_a_finish(router: SecureRouter, dealer: SecureDealer, alice: str) -> int:
    """With a router whose policy rekeys after 30 messages and whose send_timeout is 0:
    send those 30 (the last starts the rekey), let the dealer answer, fill its queue under
    the old keys, then take the REPLY in, so the FINISH finds no room and is held. Returns
    how many fill messages were queued (``"fill 0"``, ``"fill 1"``, ...)."""
    for index in range(30):  # the 30th send starts the router's rekey (its INIT)
        router.send(alice, index)
    deadline = time.monotonic() + 5
    while not router.socket.poll(0):  # the dealer takes the data and the INIT, answers
        assert time.monotonic() < deadline, "no REPLY from the dealer"
        dealer.pump(0.01)
    filled = 0
    with pytest.raises(SendTimeout):  # send_timeout 0: no waiting
        while True:  # the dealer's queue fills up under the old keys
            router.send(alice, f"fill {filled}")
            filled += 1
    router.pump(0.05)  # the REPLY comes in: its FINISH finds no room
    assert router.statistics()["finish_held"] == 1
    return filled


def test_a_finish_that_finds_no_room_is_held_and_goes_before_the_next_data(
    cast: Cast,
) -> None:
    """The FINISH of a rekey the router started switches it to the new keys: dropped, the
    peer would refuse all that follows, unseen. It used to wait for room and raise out of
    pump(): with send_timeout=0 (the broker's), one agent with a full queue at that moment
    stopped the broker. Now it is held, and sent before the next data to that peer."""
    small = SocketOptions(send_hwm=20, receive_hwm=20)
    offset = [0.0]
    with _session(
        cast,
        f"inproc://finish-{next(_inproc_names)}",
        router={
            "options": small,
            "send_timeout": 0.0,
            "policy": RekeyPolicy(max_messages=30, jitter=0.0),
        },
        options=small,
        wall_clock=lambda: time.time() + offset[0],
    ) as (router, dealer):
        alice = cast.alice.agent_id
        filled = _hold_a_finish(router, dealer, alice)
        with pytest.raises(SendTimeout):
            router.send(alice, "no room yet")  # nothing may overtake the FINISH
        # The dealer answered the rekey and waits for its FINISH longer than its handshake
        # timeout: it used to forget the rekey then, and refuse the FINISH and everything
        # sealed after it, for good.
        offset[0] += 60.0
        assert dealer.table.on_timer(now=dealer.wall_clock()) == []
        received: list[object] = []
        deadline = time.monotonic() + 10
        while len(received) < 30 + filled:
            assert time.monotonic() < deadline, f"{len(received)} of {30 + filled} arrived"
            dealer.pump(0.01)
            router.pump(0.0)
            received += [p for d in dealer.inbox for p in d.message.payloads]
            dealer.inbox.clear()
        for index in range(10):
            router.send(alice, f"after {index}")
        while len(received) < 40 + filled:
            assert time.monotonic() < deadline, "data under the new keys was lost"
            dealer.pump(0.01)
            router.pump(0.0)
            received += [p for d in dealer.inbox for p in d.message.payloads]
            dealer.inbox.clear()
        assert received[-10:] == [f"after {index}" for index in range(10)]
        assert router.table.rekeys == 1
        assert dealer.table.rejected == {}


def test_the_peers_old_keys_stay_open_while_our_finish_waits(cast: Cast) -> None:
    """The initiator of a rekey switches keys as its FINISH goes out; its peer seals under
    the previous epoch until that FINISH reaches it. A FINISH held for want of room longer
    than the grace period (30 s) used to let the previous receive key expire, and all the
    peer sent meanwhile was refused (stale_epoch). The key now stays open until the FINISH
    goes, and for a grace period from then."""
    offset = [0.0]
    with _small_rekeying_session(cast, "finish-grace", offset) as (router, dealer):
        alice = cast.alice.agent_id
        _hold_a_finish(router, dealer, alice)
        deadline = time.monotonic() + 5
        offset[0] += 60.0  # twice the grace period, the FINISH still held
        dealer.send("sealed under the previous epoch")
        assert router.receive(timeout=5).message.payload == "sealed under the previous epoch"
        assert router.table.rejected == {}
        # Once the FINISH goes, the previous key lives one grace period more, then goes.
        route = router.table.route_of(alice)
        assert route is not None
        session = router.table.channels[route].session
        assert session is not None and session.open_epochs == [0, 1]
        while True:
            dealer.pump(0.01)
            dealer.inbox.clear()
            try:
                router.send(alice, "after")  # the held FINISH goes first
                break
            except SendTimeout:
                assert time.monotonic() < deadline + 10, "the dealer never made room"
        assert not router._finishes
        offset[0] += 20.0
        router.pump(0.0)
        assert session.open_epochs == [0, 1]
        offset[0] += 11.0
        router._next_timer_check = -1.0  # let this pump's timers run at once
        router.pump(0.0)
        assert session.open_epochs == [1]


def test_a_full_inbox_leaves_the_rest_in_zeromq_and_loses_nothing(
    cast: Cast, tmp_path: Path
) -> None:
    """A caller that pumps but does not take its deliveries holds at most ``max_inbox`` of
    them in Python; the rest wait in ZeroMQ's bounded queues and come out, in order, once it
    takes some. A new peer's handshake waits there too and completes afterwards."""
    endpoint = f"inproc://full-{next(_inproc_names)}"
    cast.bob_trust.add(cast.mallory.public, roles=["agent"])
    mallory_trust = TrustStore(tmp_path / "mallory-trust")
    mallory_trust.add(cast.bob.public, roles=["server"])
    with (
        SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust, max_inbox=5) as router,
        SecureDealer(
            endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
        ) as dealer,
    ):
        establish(router, dealer)
        for n in range(40):
            dealer.send(n)
        deadline = time.monotonic() + 5
        while len(router.inbox) < 5 and time.monotonic() < deadline:
            router.pump(0.01)
        with SecureDealer(
            endpoint, identity=cast.mallory, trust=mallory_trust, connect_timeout=None
        ) as late:
            for _ in range(10):
                router.pump(0.01)
                late.pump(0.01)
            assert len(router.inbox) == 5
            assert router.statistics()["inbox_full"] > 0
            assert not late.established  # its INIT waits behind alice's messages
            got = [router.receive(timeout=5).message.payload for _ in range(40)]
            assert got == list(range(40))
            establish(router, late)
            assert sorted(router.peers) == sorted([cast.alice.agent_id, cast.mallory.agent_id])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_inbox_must_be_a_positive_whole_number(cast: Cast, bad: object) -> None:
    with pytest.raises(UsageError, match="max_inbox"):
        SecureRouter(
            f"inproc://bad-{next(_inproc_names)}",
            identity=cast.bob,
            trust=cast.bob_trust,
            max_inbox=bad,  # type: ignore[arg-type]
        )


def test_a_message_the_peer_would_drop_for_its_size_is_refused_at_send(cast: Cast) -> None:
    """The body fits ``max_body_size`` but the sealed frame (header, tag) would exceed
    ``max_frame_size``: send() raises, spends no counter, and the next message goes."""
    limits = Limits(max_body_size=1 << 20, max_frame_size=1 << 20)
    with _session(
        cast,
        f"inproc://limits-{next(_inproc_names)}",
        router={"codec": WireCodec(limits=limits)},
        codec=WireCodec(limits=limits, compression=CompressionConfig(enabled=False)),
    ) as (router, dealer):
        with pytest.raises(LocalProtocolError, match="max_frame_size"):
            dealer.send(b"x" * ((1 << 20) - 30))
        dealer.send("next")
        assert router.receive(timeout=5).message.payload == "next"
        assert dealer.statistics()["sent"] == 1
        assert router.table.rejected == {}


def test_a_pump_with_a_full_inbox_still_waits_its_timeout(cast: Cast) -> None:
    """Nothing can be read, but a loop of pump(timeout) that does not take deliveries must
    not spin: the wait is kept."""
    with _session(cast, f"inproc://full-wait-{next(_inproc_names)}", router={"max_inbox": 1}) as (
        router,
        dealer,
    ):
        dealer.send(1)
        dealer.send(2)
        deadline = time.monotonic() + 5
        while not router.inbox and time.monotonic() < deadline:
            router.pump(0.01)
        pumps = 0
        started = time.monotonic()
        while time.monotonic() - started < 0.2:
            router.pump(0.05)
            pumps += 1
        assert pumps <= 5  # about 0.2 / 0.05; a spinning pump makes thousands
        assert [router.receive(timeout=5).message.payload for _ in range(2)] == [1, 2]


def test_a_session_that_never_comes_says_which_side_refused(
    cast: Cast, short_dir: str, tmp_path: Path
) -> None:
    endpoint = f"ipc://{short_dir}/why.sock"
    with SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust) as router:
        serving = threading.Event()

        def serve() -> None:
            while not serving.is_set():
                router.pump(0.01)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            # Alice does not trust bob's key: the refusal is hers, and she is told so.
            others_only = TrustStore(tmp_path / "others")
            others_only.add(Identity.generate("dave").public)
            with pytest.raises(ConnectError) as caught:
                SecureDealer(
                    endpoint,
                    identity=cast.alice,
                    trust=others_only,
                    connect_timeout=1.0,
                    peer_label="broker",
                )
            message = str(caught.value)
            assert "this side refused the broker's key" in message
            assert "copy the broker's .pub" in message
            # An empty store is most often a misspelt path (TrustStore makes it): say so.
            with pytest.raises(ConnectError) as caught:
                SecureDealer(
                    endpoint,
                    identity=cast.alice,
                    trust=TrustStore(tmp_path / "trsut"),
                    connect_timeout=1.0,
                    peer_label="broker",
                )
            assert f"trust store {tmp_path / 'trsut'} holds no keys at all" in str(caught.value)
            # Carol is not in bob's trust store: nothing refused here, and she is asked
            # whether the other end lists her key.
            carol = Identity.generate("carol")
            with pytest.raises(ConnectError) as caught:
                SecureDealer(endpoint, identity=carol, trust=cast.alice_trust, connect_timeout=1.0)
            assert f"does its trust store hold this identity's .pub ({carol.agent_id})" in str(
                caught.value
            )
        finally:
            serving.set()
            thread.join()
    # With the router gone, no connection is made: the question is whether it runs at all.
    with pytest.raises(ConnectError) as caught:
        SecureDealer(endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=0.3)
    assert f"no connection to {endpoint} was ever made: is the router running" in str(caught.value)


def _index_agrees(*sockets: SecureRouter | SecureDealer) -> None:
    for sock in sockets:
        assert sock.table.next_deadline() == sock.table.scan_deadline()


def test_the_deadline_index_follows_sends_that_rekey_and_held_finishes(cast: Cast) -> None:
    """The table answers ``next_deadline`` from an index that the sockets update after what
    they do to a channel themselves: a send whose ``on_timer`` starts a rekey (plain and
    batched), a held FINISH pausing the old key's expiry, its release resuming it. Missed,
    a lost INIT would never be retried, or an old key would outlive its grace period."""
    offset = [0.0]
    with _small_rekeying_session(cast, "deadline-index", offset) as (router, dealer):
        alice = cast.alice.agent_id
        for index in range(30):  # the 30th send starts a rekey: its INIT's retry is due
            router.send(alice, index)
            _index_agrees(router, dealer)
        route = router.table.route_of(alice)
        channel = router.table.channels[route] if route is not None else None
        assert channel is not None and channel.handshaking

    with _small_rekeying_session(cast, "deadline-index-held", offset) as (router, dealer):
        _hold_a_finish(router, dealer, alice)
        _index_agrees(router, dealer)  # the hold paused the old key's expiry
        assert router._finishes
        while router._finishes:  # the dealer makes room; a timer tick sends the FINISH
            dealer.pump(0.01)
            dealer.inbox.clear()
            router._next_timer_check = -1.0
            router.pump(0.0)
        _index_agrees(router, dealer)  # its release gave the old key one grace period
        for _ in range(200):
            dealer.pump(0.0)
            router.pump(0.0)
            dealer.inbox.clear()
        sender = router.batching_sender(alice, max_items=1)
        route = router.table.route_of(alice)
        channel = router.table.channels[route] if route is not None else None
        assert channel is not None and not channel.handshaking
        for index in range(30):  # the 30th batch of this epoch starts the next rekey
            sender.send(MessageType.DATA, index)
            _index_agrees(router, dealer)
            dealer.pump(0.0)
            dealer.inbox.clear()
        assert channel.handshaking
        sender.close()


def test_a_send_refused_for_a_full_queue_still_starts_the_rekey_its_count_asks_for(
    cast: Cast,
) -> None:
    """A seal counts its message before the send is tried. When the send that reaches the
    rekey count finds the peer's queue full, the rekey must start anyway (its INIT goes on
    the retry timer): only sends look at the count, so with every send failing the count
    would reach the hard limit, and every send would be refused, until the age deadline."""
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    tiny = SocketOptions(send_hwm=2, receive_hwm=2)
    policy = RekeyPolicy(max_messages=30, hard_max_messages=30, jitter=0.0)
    router_options = {"options": tiny, "send_timeout": 0.0, "policy": policy, "wall_clock": clock}
    name = f"inproc://count-refused-{next(_inproc_names)}"
    with _session(cast, name, router=router_options, options=tiny, wall_clock=clock) as pair:
        router, dealer = pair
        alice = cast.alice.agent_id
        route = router.table.route_of(alice)
        channel = router.table.channels[route] if route is not None else None
        assert channel is not None
        refused = 0
        while not channel.handshaking:  # the dealer reads nothing: most find no room
            try:
                router.send(alice, refused)
            except SendTimeout:
                refused += 1
            except SecurityError:
                pytest.fail("sends refused at the hard limit, and no rekey under way")
        assert refused > 0
        _index_agrees(router, dealer)

        offset[0] += channel.handshake_timeout  # the INIT's retry is due
        deadline = time.monotonic() + 5
        while router.table.rekeys == 0:
            assert time.monotonic() < deadline, "the rekey never completed"
            dealer.pump(0.01)
            dealer.inbox.clear()
            router._next_timer_check = -1.0
            router.pump(0.01)
        router.send(alice, "under the new keys")
        assert dealer.receive(timeout=5).message.payload == "under the new keys"


def test_in_grace_lasts_as_long_as_a_superseded_key(cast: Cast) -> None:
    wall = [1_000.0]
    rekeyed = _rekey_started_by_one_frame(cast, grace_period=5.0, wall_clock=lambda: wall[0])
    with rekeyed as (router, dealer):
        assert not router.table.in_grace  # the rekey has started, no key is superseded yet
        _router_switches_keys(router, dealer)
        assert router.table.in_grace
        wall[0] += 6.0  # the grace period is over: the timer erases the key
        time.sleep(0.01)
        router.pump(0.0)
        assert not router.table.in_grace


def test_a_pump_that_raises_inside_receive_keeps_the_message_it_read(cast: Cast) -> None:
    with (
        SecureRouter(
            f"inproc://keeps-{next(_inproc_names)}", identity=cast.bob, trust=cast.bob_trust
        ) as router,
        SecureDealer(
            router.endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
        ) as dealer,
    ):
        establish(router, dealer)
        dealer.send("kept")
        time.sleep(0.01)  # the timers are due: receive() pumps after its read

        def interrupted(timeout: float = 0.0) -> int:
            raise KeyboardInterrupt

        router.pump = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            router.receive(timeout=5)
        assert [d.message.payload for d in router.inbox] == ["kept"]
