"""The peer table: presence events, stale and restarted sequences, bounds, deadlines."""

from __future__ import annotations

import random

import pytest

from zmqcomm.errors import UsageError
from zmqcomm.patterns.discovery import Beacon, PeerEvent, PeerTable
from zmqcomm.patterns.discovery.peers import MAX_INCARNATIONS

T0 = 1000.0


def _beacon(
    n: int, sequence: int = 1, ports: tuple[int, ...] = (5555,), incarnation: int = 0
) -> Beacon:
    # Unsigned, built by hand: the table trusts decode_beacon to have verified it.
    return Beacon(n.to_bytes(16, "big"), sequence, ports, bytes(32), incarnation=incarnation)


WALL = 1_800_000_000.0  # the receiver's wall clock, seconds since the epoch


def _us(wall: float) -> int:
    """A sequence number as a sender whose wall clock reads ``wall`` makes it."""
    return int(wall * 1_000_000)


def _kinds(events: list[PeerEvent]) -> list[str]:
    return [event.kind for event in events]


def test_enter_once_then_nothing_on_repeats() -> None:
    table = PeerTable()
    beacon = _beacon(1)
    events = table.observe(beacon, "10.0.0.1", now=T0)
    assert events == [PeerEvent("ENTER", beacon.agent_id, "10.0.0.1", (5555,))]
    assert table.observe(_beacon(1, 2), "10.0.0.1", now=T0 + 1) == []
    assert table.observe(_beacon(1, 3, (7000, 7001)), "10.0.0.2", now=T0 + 2) == []
    assert len(table) == 1
    (info,) = table.peers
    assert (info.address, info.ports, info.last_seen, info.state) == (
        "10.0.0.2",
        (7000, 7001),
        T0 + 2,
        "ALIVE",
    )


def test_evasive_once_then_expired_and_removed() -> None:
    table = PeerTable()
    table.observe(_beacon(1), "a", now=T0)
    assert table.on_timer(now=T0 + 4.9) == []
    assert _kinds(table.on_timer(now=T0 + 5.0)) == ["EVASIVE"]
    assert table.peers[0].state == "EVASIVE"
    assert table.on_timer(now=T0 + 6) == []
    assert table.on_timer(now=T0 + 29.9) == []
    events = table.on_timer(now=T0 + 30.0)
    assert _kinds(events) == ["EXPIRED"]
    assert events[0].address == "a"
    assert len(table) == 0
    assert table.on_timer(now=T0 + 100) == []


def test_late_timer_goes_straight_to_expired() -> None:
    table = PeerTable()
    table.observe(_beacon(1), "a", now=T0)
    assert _kinds(table.on_timer(now=T0 + 60)) == ["EXPIRED"]


def test_heard_again_while_evasive_is_alive_without_events() -> None:
    table = PeerTable()
    table.observe(_beacon(1, 1), "a", now=T0)
    assert _kinds(table.on_timer(now=T0 + 6)) == ["EVASIVE"]
    assert table.observe(_beacon(1, 2), "a", now=T0 + 7) == []
    assert table.peers[0].state == "ALIVE"
    assert table.on_timer(now=T0 + 11) == []
    # Silent again: a fresh EVASIVE, and it expires 30 s after the last beacon, not the first.
    assert _kinds(table.on_timer(now=T0 + 12)) == ["EVASIVE"]
    assert table.on_timer(now=T0 + 36) == []
    assert _kinds(table.on_timer(now=T0 + 37)) == ["EXPIRED"]


def test_stale_sequence_is_dropped_and_counted() -> None:
    table = PeerTable()
    table.observe(_beacon(1, 500), "a", now=T0)
    assert table.observe(_beacon(1, 500, (1,)), "evil", now=T0 + 4) == []
    assert table.observe(_beacon(1, 0, (1,)), "evil", now=T0 + 4) == []  # 500 - 0 <= gap
    assert table.stale == 2
    # A replayed old beacon must not keep the peer alive or change its address.
    assert table.peers[0].address == "a"
    assert _kinds(table.on_timer(now=T0 + 5)) == ["EVASIVE"]


def test_any_lower_sequence_is_stale_however_far_below() -> None:
    # Version 1 took a drop of more than 1000 for a restart: replays of old enough beacons
    # kept a dead peer alive and moved it to the replayer's address.
    table = PeerTable()
    table.observe(_beacon(1, 5000), "a", now=T0)
    assert table.observe(_beacon(1, 3), "evil", now=T0 + 1) == []
    assert table.stale == 1
    assert table.peers[0].address == "a"
    assert _kinds(table.on_timer(now=T0 + 5)) == ["EVASIVE"]


def test_a_restart_numbered_higher_is_taken_at_once() -> None:
    # Senders number beacons by wall-clock microseconds: a restarted agent carries on above.
    table = PeerTable()
    table.observe(_beacon(1, 1_000_000), "a", now=T0)
    assert table.observe(_beacon(1, 9_000_000), "b", now=T0 + 8) == []
    assert (table.stale, table.peers[0].address, table.peers[0].state) == (0, "b", "ALIVE")


def test_old_beacons_replayed_after_expiry_do_not_bring_the_peer_back() -> None:
    table = PeerTable()
    table.observe(_beacon(1, _us(WALL)), "a", now=T0)
    table.observe(_beacon(1, _us(WALL + 1)), "a", now=T0 + 1)
    assert _kinds(table.on_timer(now=T0 + 40)) == ["EXPIRED"]
    for wall in (WALL + 1, WALL, WALL - 8):
        assert table.observe(_beacon(1, _us(wall)), "evil", now=T0 + 41) == []
    assert table.stale == 3 and len(table) == 0
    # Its next beacon (it came back; its clock moved on as ours did) is a new ENTER.
    assert _kinds(table.observe(_beacon(1, _us(WALL + 42)), "a", now=T0 + 42)) == ["ENTER"]


def test_a_recording_of_the_live_incarnation_replayed_later_is_refused() -> None:
    """Beacons of the current life this table never took (sent during a partition, say)
    are newer than its last, but their numbers lag our clock by the time since: replayed
    long after they were sent, they must not bring a dead agent back at another address."""
    table = PeerTable(restart_window=10)
    table.observe(_beacon(1, _us(WALL)), "a", now=T0)
    assert _kinds(table.on_timer(now=T0 + 40)) == ["EXPIRED"]
    recorded = _beacon(1, _us(WALL + 5))  # sent 5 s in, never reached us
    assert table.observe(recorded, "evil", now=T0 + 3600) == []
    assert (table.not_fresh, len(table)) == (1, 0)
    # A lag within the window is forgiven (delays, a slow clock): the agent is back ...
    back = _beacon(1, _us(WALL + 3597))
    assert _kinds(table.observe(back, "b", now=T0 + 3600)) == ["ENTER"]
    # ... and, alive, is not moved by a recording older than the window either.
    assert table.observe(_beacon(1, _us(WALL + 3598)), "evil", now=T0 + 3700) == []
    assert table.peers[0].address == "b" and table.not_fresh == 2


def test_a_live_peer_whose_clock_was_set_back_is_still_heard() -> None:
    """Its numbers then lag our clock for good (a sender never numbers downwards), but they
    are fresh by our wall clock: refusing them would leave it unheard until it restarts."""
    table = PeerTable(restart_window=10)
    table.observe(_beacon(1, _us(WALL + 20)), "a", now=T0, wall=WALL)  # its clock 20 s ahead
    # Its clock set right, and a few beacons lost: the next lags ours by 15 s.
    later = _beacon(1, _us(WALL + 20) + 1)
    assert table.observe(later, "b", now=T0 + 15, wall=WALL + 15) == []
    assert (table.not_fresh, table.peers[0].address) == (0, "b")
    # Without our wall clock to judge by, a lag beyond the window is refused.
    assert table.observe(_beacon(1, _us(WALL + 21)), "c", now=T0 + 30) == []
    assert (table.not_fresh, table.peers[0].address) == (1, "b")


def test_the_memory_of_gone_peers_is_bounded() -> None:
    table = PeerTable(max_peers=3)
    for n in range(10):
        table.observe(_beacon(n, 5), "a", now=T0)
        table.leave(_beacon(n).agent_id, now=T0)
    assert len(table._gone) == 3
    # The oldest were forgotten: their old beacons are new again (bounded memory's price).
    assert _kinds(table.observe(_beacon(0, 5), "a", now=T0 + 1)) == ["ENTER"]
    assert table.observe(_beacon(9, 5), "a", now=T0 + 1) == []


def test_leave_emits_leave_and_removes() -> None:
    table = PeerTable()
    beacon = _beacon(1)
    table.observe(beacon, "a", now=T0)
    assert table.leave(beacon.agent_id, now=T0 + 1) == [
        PeerEvent("LEAVE", beacon.agent_id, "a", (5555,))
    ]
    assert beacon.agent_id not in table
    assert table.leave(beacon.agent_id, now=T0 + 2) == []
    assert table.on_timer(now=T0 + 100) == []
    # Heard again after the goodbye (a newer beacon): a new ENTER.
    assert _kinds(table.observe(_beacon(1, 1 + 101_000_000), "a", now=T0 + 101)) == ["ENTER"]


def test_max_peers_bounds_the_table() -> None:
    table = PeerTable(max_peers=3)
    for n in range(5):
        table.observe(_beacon(n), "a", now=T0)
    assert len(table) == 3
    assert table.ignored == 2
    # Known peers are still updated when full.
    assert table.observe(_beacon(0, 2), "b", now=T0 + 1) == []
    assert table.ignored == 2
    table.leave(_beacon(0).agent_id, now=T0 + 2)
    assert _kinds(table.observe(_beacon(9), "a", now=T0 + 2)) == ["ENTER"]


def test_next_deadline() -> None:
    table = PeerTable(evasive_after=5, expired_after=30)
    assert table.next_deadline() is None
    table.observe(_beacon(1), "a", now=T0)
    table.observe(_beacon(2), "a", now=T0 + 2)
    assert table.next_deadline() == T0 + 5
    table.on_timer(now=T0 + 5)  # peer 1 evasive: its next step is expiry at T0 + 30
    assert table.next_deadline() == T0 + 7
    table.on_timer(now=T0 + 7)
    assert table.next_deadline() == T0 + 30
    table.observe(_beacon(1, 1 + 20_000_000), "a", now=T0 + 20)  # back, newest in the table
    assert table.next_deadline() == T0 + 25
    table.on_timer(now=T0 + 25)
    assert table.next_deadline() == T0 + 32
    table.on_timer(now=T0 + 32)
    assert table.next_deadline() == T0 + 50
    table.on_timer(now=T0 + 50)
    assert table.next_deadline() is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"evasive_after": 0},
        {"evasive_after": -1},
        {"evasive_after": float("nan")},
        {"expired_after": float("inf")},
        {"evasive_after": 30, "expired_after": 30},
        {"evasive_after": 31, "expired_after": 30},
        {"max_peers": 0},
        {"max_peers": 1.5},
        {"evasive_after": "5"},
        {"restart_window": 0},
        {"restart_window": -1},
        {"restart_window": float("inf")},
        {"restart_window": "10"},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        PeerTable(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(20))
def test_random_schedules_keep_the_event_invariants(seed: int) -> None:
    rng = random.Random(seed)
    table = PeerTable(evasive_after=5, expired_after=30, max_peers=6)
    sequences: dict[int, int] = {}
    present: set[str] = set()  # entered and not yet expired or left
    evasive: set[str] = set()
    counts: dict[str, int] = {}
    now = T0
    for _ in range(400):
        now += rng.choice([0.0, 0.5, 1.0, 3.0, 7.0, 20.0])
        action = rng.random()
        if action < 0.55:
            n = rng.randrange(10)
            step = rng.choice([1, 1, 1, 0, -1, -5000])  # mostly fresh, some stale, far below
            sequences[n] = max(0, sequences.get(n, 100_000) + step)
            events = table.observe(_beacon(n, sequences[n]), f"h{n}", now=now)
        elif action < 0.65:
            events = table.leave(_beacon(rng.randrange(10)).agent_id, now=now)
        else:
            deadline = table.next_deadline()
            events = table.on_timer(now=now)
            # Nothing is ever due before next_deadline().
            assert (deadline is not None and deadline <= now) or not events
        for event in events:
            counts[event.kind] = counts.get(event.kind, 0) + 1
            if event.kind == "ENTER":
                assert event.agent_id not in present
                present.add(event.agent_id)
            elif event.kind == "EVASIVE":
                assert event.agent_id in present
                assert event.agent_id not in evasive  # once per silence
                evasive.add(event.agent_id)
            else:  # EXPIRED or LEAVE: at most one per ENTER
                assert event.agent_id in present
                present.discard(event.agent_id)
                evasive.discard(event.agent_id)
        # A beacon makes an evasive peer alive again, silently.
        evasive &= {p.agent_id for p in table.peers if p.state == "EVASIVE"}
        assert present == {p.agent_id for p in table.peers}
        assert len(table) <= 6
    for kind in ("ENTER", "EVASIVE", "EXPIRED", "LEAVE"):
        assert counts.get(kind, 0) > 0, f"the schedule never produced {kind}"
    assert table.stale > 0
    assert counts.get("ENTER", 0) >= counts.get("EXPIRED", 0) + counts.get("LEAVE", 0)


# -- incarnations: a restart is heard at once, whatever the sender's clock did -----------------


def test_a_restart_with_its_clock_behind_is_heard_at_once() -> None:
    # Version 2 numbered beacons by wall clock alone: an agent restarted with its clock
    # behind its earlier life's last beacon was `stale` until its clock passed that point.
    table = PeerTable()
    table.observe(_beacon(1, _us(WALL + 60), (7000,), incarnation=1), "a", now=T0, wall=WALL)
    table.observe(_beacon(1, _us(WALL + 61), (7000,), incarnation=1), "a", now=T0 + 1, wall=WALL)
    # It restarts, its clock now right (a minute behind its earlier life): a new incarnation.
    fresh = _beacon(1, _us(WALL + 2), (7001,), incarnation=2)
    assert table.observe(fresh, "b", now=T0 + 2, wall=WALL + 2) == []  # no event: never gone
    (info,) = table.peers
    assert (info.address, info.ports, info.state, info.last_seen) == ("b", (7001,), "ALIVE", T0 + 2)
    assert (table.restarts, table.stale, table.not_fresh) == (1, 0, 0)
    # Its next beacons are its current incarnation's: taken while they go up.
    assert (
        table.observe(_beacon(1, _us(WALL + 3), (7002,), 2), "b", now=T0 + 3, wall=WALL + 3) == []
    )
    assert table.peers[0].ports == (7002,)
    assert table.restarts == 1
    assert _kinds(table.on_timer(now=T0 + 7)) == []  # heard at T0 + 3: not evasive yet


def test_a_restart_after_expiry_is_a_new_enter_even_with_its_clock_behind() -> None:
    table = PeerTable()
    table.observe(_beacon(1, _us(WALL + 60), incarnation=1), "a", now=T0, wall=WALL)
    assert _kinds(table.on_timer(now=T0 + 30)) == ["EXPIRED"]
    back = _beacon(1, _us(WALL + 31), incarnation=2)
    assert _kinds(table.observe(back, "a", now=T0 + 31, wall=WALL + 31)) == ["ENTER"]
    assert (table.restarts, table.stale, table.not_fresh) == (1, 0, 0)


def test_earlier_lives_replayed_later_are_refused() -> None:
    table = PeerTable(restart_window=10)
    old = [_beacon(1, _us(WALL + t), (7000,), incarnation=1) for t in range(5)]
    for t, beacon in enumerate(old[:3]):  # old[3:] were sent but never reached this table
        table.observe(beacon, "a", now=T0 + t, wall=WALL + t)
    table.observe(_beacon(1, _us(WALL + 3), (7001,), incarnation=2), "b", now=T0 + 3, wall=WALL + 3)
    # What the table took from the earlier life is never taken again, however fresh.
    assert table.observe(old[2], "evil", now=T0 + 4, wall=WALL + 4) == []
    assert (table.stale, table.not_fresh) == (1, 0)
    # What it never took (numbered above all it took, too), replayed more than
    # restart_window after it was sent: refused.
    assert table.observe(old[4], "evil", now=T0 + 15, wall=WALL + 14.001) == []
    assert (table.stale, table.not_fresh) == (1, 1)
    # A life it never heard of at all, as long after: refused too.
    unknown = _beacon(1, _us(WALL), (6666,), incarnation=3)
    assert table.observe(unknown, "evil", now=T0 + 15, wall=WALL + 10.5) == []
    assert (table.stale, table.not_fresh) == (1, 2)
    (info,) = table.peers
    assert (info.address, info.ports, info.last_seen) == ("b", (7001,), T0 + 3)
    assert _kinds(table.on_timer(now=T0 + 8)) == ["EVASIVE"]  # nothing above kept it alive
    # An earlier life replayed after expiry does not bring the peer back.
    assert _kinds(table.on_timer(now=T0 + 33)) == ["EXPIRED"]
    assert table.observe(old[3], "evil", now=T0 + 40, wall=WALL + 40) == []
    assert table.not_fresh == 3 and len(table) == 0


def test_the_residual_risk_is_bounded_by_the_restart_window() -> None:
    # Documented: a beacon of an earlier life that the table never took, replayed within
    # restart_window of its sending, is taken; the live incarnation's next beacon wins back.
    table = PeerTable(restart_window=10)
    missed = _beacon(1, _us(WALL + 1), (7000,), incarnation=1)
    table.observe(_beacon(1, _us(WALL), (7000,), incarnation=1), "a", now=T0, wall=WALL)
    table.observe(_beacon(1, _us(WALL + 2), (7001,), incarnation=2), "b", now=T0 + 2, wall=WALL + 2)
    assert table.observe(missed, "evil", now=T0 + 3, wall=WALL + 3) == []
    assert table.peers[0].address == "evil"
    table.observe(_beacon(1, _us(WALL + 4), (7001,), incarnation=2), "b", now=T0 + 4, wall=WALL + 4)
    assert (table.peers[0].address, table.peers[0].ports) == ("b", (7001,))
    # And the same replay twice is stale: each unseen beacon serves at most once.
    assert table.observe(missed, "evil", now=T0 + 5, wall=WALL + 5) == []
    assert (table.stale, table.restarts, table.peers[0].address) == (1, 3, "b")


def test_without_a_wall_clock_a_restart_must_be_numbered_above_all_earlier() -> None:
    table = PeerTable()
    table.observe(_beacon(1, 100, incarnation=1), "a", now=T0)
    assert table.observe(_beacon(1, 50, incarnation=2), "b", now=T0 + 1) == []
    assert (table.not_fresh, table.peers[0].address) == (1, "a")
    # Nor with a broken one.
    assert table.observe(_beacon(1, 50, incarnation=2), "b", now=T0 + 1, wall=float("nan")) == []
    assert (table.not_fresh, table.peers[0].address) == (2, "a")
    assert table.observe(_beacon(1, 101, incarnation=2), "b", now=T0 + 2) == []
    assert (table.restarts, table.peers[0].address) == (1, "b")


def test_a_restart_on_a_skewed_clock_is_heard_when_numbered_above_all_earlier() -> None:
    # A sender an hour ahead of this table: its new life is not fresh here, but above its
    # earlier one, as every restart was under version 2.
    table = PeerTable(restart_window=10)
    table.observe(_beacon(1, _us(WALL + 3600), incarnation=1), "a", now=T0, wall=WALL)
    restart = _beacon(1, _us(WALL + 3605), incarnation=2)
    assert table.observe(restart, "b", now=T0 + 5, wall=WALL + 5) == []
    assert (table.restarts, table.peers[0].address) == (1, "b")
    # Restarted again with its clock set back an hour, but still far off: not fresh.
    behind = _beacon(1, _us(WALL - 3600), incarnation=3)
    assert table.observe(behind, "c", now=T0 + 6, wall=WALL + 6) == []
    assert (table.not_fresh, table.peers[0].address) == (1, "b")


def test_the_memory_of_incarnations_is_bounded() -> None:
    table = PeerTable(restart_window=10)
    firsts = [_beacon(1, _us(WALL + n), incarnation=100 + n) for n in range(10)]
    for n, beacon in enumerate(firsts):
        table.observe(beacon, f"h{n}", now=T0 + n, wall=WALL + n)
    assert table.restarts == 9
    assert len(table._peers[firsts[0].agent_id].lives.last) == MAX_INCARNATIONS
    # The remembered ones are stale however fresh; a forgotten one is refused once not fresh.
    assert (
        table.observe(firsts[9 - MAX_INCARNATIONS + 1], "evil", now=T0 + 10, wall=WALL + 10) == []
    )
    assert table.observe(firsts[0], "evil", now=T0 + 10, wall=WALL + 10.5) == []
    assert (table.stale, table.not_fresh, table.peers[0].address) == (1, 1, "h9")


@pytest.mark.parametrize("seed", range(20))
def test_random_restarts_are_heard_and_replays_older_than_the_window_never(seed: int) -> None:
    # One agent beacons every second and restarts now and then with its clock anywhere within
    # half the window of the table's (behind its earlier life half the time). An attacker
    # replays any beacon it ever sent. Every genuine beacon is taken; a replay is taken only
    # if its number is within the window of the table's clock, and never changes the peer
    # for longer than until the next genuine beacon.
    rng = random.Random(seed)
    window = 10.0
    table = PeerTable(restart_window=window, evasive_after=5, expired_after=30)
    sent: list[Beacon] = []
    incarnation, offset, sequence = rng.getrandbits(64), 0.0, 0
    behind = 0
    for t in range(300):
        now, wall = T0 + t, WALL + t
        if rng.random() < 0.1:  # a restart
            incarnation = rng.getrandbits(64)
            new_offset = rng.uniform(-window / 2, window / 2)
            behind += new_offset < offset
            offset, sequence = new_offset, 0
        sequence = max(sequence + 1, _us(wall + offset))
        genuine = _beacon(1, sequence, (t % 60000 + 1,), incarnation)
        sent.append(genuine)
        events = table.observe(genuine, "live", now=now, wall=wall)
        assert _kinds(events) == ([] if t else ["ENTER"])
        assert (table.peers[0].address, table.peers[0].ports) == ("live", genuine.ports)
        for replay in rng.sample(sent, min(3, len(sent))):
            dropped = table.stale + table.not_fresh
            assert table.observe(replay, "evil", now=now, wall=wall) == []
            if table.stale + table.not_fresh == dropped:  # taken
                assert abs(replay.sequence / 1e6 - wall) <= window
                assert replay.incarnation != incarnation  # the live life's are all taken
            assert len(table) == 1
    assert behind > 0, "the schedule never restarted with the clock behind"
    assert table.stale > 0 and table.not_fresh + table.stale >= 600
