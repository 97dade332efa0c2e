"""The peer table: presence events, stale and restarted sequences, bounds, deadlines."""

from __future__ import annotations

import random

import pytest

from zmqcomm.errors import UsageError
from zmqcomm.patterns.discovery import Beacon, PeerEvent, PeerTable

T0 = 1000.0


def _beacon(n: int, sequence: int = 1, ports: tuple[int, ...] = (5555,)) -> Beacon:
    # Unsigned, built by hand: the table trusts decode_beacon to have verified it.
    return Beacon(n.to_bytes(16, "big"), sequence, ports, bytes(32))


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
    table.observe(_beacon(1, 10), "a", now=T0)
    table.observe(_beacon(1, 11), "a", now=T0 + 1)
    assert _kinds(table.on_timer(now=T0 + 40)) == ["EXPIRED"]
    for sequence in (11, 10, 2):
        assert table.observe(_beacon(1, sequence), "evil", now=T0 + 41) == []
    assert table.stale == 3 and len(table) == 0
    # Its next beacon (it came back) is a new ENTER.
    assert _kinds(table.observe(_beacon(1, 12), "a", now=T0 + 42)) == ["ENTER"]


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
    assert _kinds(table.observe(_beacon(1, 2), "a", now=T0 + 101)) == ["ENTER"]


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
    table.observe(_beacon(1, 2), "a", now=T0 + 20)  # back, newest in the table
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
