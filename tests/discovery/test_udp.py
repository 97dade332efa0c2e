"""BeaconService over real UDP on loopback: discovery, trust, garbage, usage errors, timers.

Loopback only: every datagram goes to 127.255.255.255 on a random high port.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import UsageError, ZmqCommError
from zmqcomm.patterns.discovery.beacon import MAX_BEACON_LEN, decode_beacon, encode_beacon
from zmqcomm.patterns.discovery.peers import PeerEvent, PeerTable
from zmqcomm.patterns.discovery.udp import BeaconService, broadcast_address

INTERVAL = 0.1
BROADCAST = "127.255.255.255"
_counter = itertools.count()


def _port() -> int:
    rng = random.Random(os.getpid() * 1000 + next(_counter) + int(time.time() * 1000))
    return rng.randint(40000, 60000)


@pytest.fixture
def port() -> int:
    return _port()


@pytest.fixture
def identities() -> list[Identity]:
    return [Identity.generate(f"node{i}") for i in range(3)]


@pytest.fixture
def services(identities: list[Identity], port: int) -> Iterator[list[BeaconService]]:
    made = [BeaconService(i, port=port, interval=INTERVAL, ports=(7000 + n,)) for n, i in
            enumerate(identities)]  # fmt: skip
    try:
        yield made
    finally:
        for service in made:
            service.close()


def _run(
    services: list[BeaconService], seconds: float, seen: list[list[PeerEvent]] | None = None
) -> list[list[PeerEvent]]:
    """Step all services for ``seconds``; append each one's events to ``seen``."""
    events = seen if seen is not None else [[] for _ in services]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for n, service in enumerate(services):
            events[n] += service.step(0.005)
    return events


def _entered(events: list[PeerEvent]) -> set[str]:
    return {e.agent_id for e in events if e.kind == "ENTER"}


def _run_until_all_entered(
    services: list[BeaconService], expected: list[set[str]], seconds: float
) -> tuple[list[list[PeerEvent]], float]:
    events: list[list[PeerEvent]] = [[] for _ in services]
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        _run(services, 0.01, events)
        if all(_entered(e) >= want for e, want in zip(events, expected, strict=True)):
            break
    return events, time.monotonic() - start


def test_broadcast_address_of_loopback() -> None:
    assert broadcast_address("lo") == BROADCAST


def test_three_services_find_each_other(
    services: list[BeaconService], identities: list[Identity]
) -> None:
    ids = [i.agent_id for i in identities]
    expected = [set(ids) - {me} for me in ids]
    # A bound, not a speed target: they beacon every INTERVAL and usually meet in two.
    events, _ = _run_until_all_entered(services, expected, 50 * INTERVAL)
    for n, service_events in enumerate(events):
        enters = [e for e in service_events if e.kind == "ENTER"]
        assert {e.agent_id for e in enters} == expected[n]
        assert len(enters) == 2  # exactly once each, never for itself
        for e in enters:
            assert e.address == "127.0.0.1"
            assert e.ports == (7000 + ids.index(e.agent_id),)
    # Keep going a little: no duplicate ENTER, nothing dropped, no errors.
    more = _run(services, 3 * INTERVAL)
    assert all(e == [] for e in more)
    for service in services:
        assert service.dropped == Counter()
        assert service.errors == Counter()
        assert service.sent >= 3
        assert {p.agent_id for p in service.table.peers} == set(ids) - {service.identity.agent_id}


def test_trust_store_admits_only_trusted_peer(
    tmp_path: Path, identities: list[Identity], port: int
) -> None:
    a, b, c = identities
    store = TrustStore(tmp_path / "trust")
    store.add(b.public, roles=["peer"])
    store.add(a.public)  # itself: its own looped-back beacons are then not counted as unknown
    with (
        BeaconService(a, port=port, interval=INTERVAL, trust=store) as sa,
        BeaconService(b, port=port, interval=INTERVAL) as sb,
        BeaconService(c, port=port, interval=INTERVAL) as sc,
    ):
        events = _run([sa, sb, sc], 5 * INTERVAL)
        assert _entered(events[0]) == {b.agent_id}
        assert len(sa.table) == 1
        assert set(sa.dropped) == {"unknown_peer"}
        assert sa.dropped["unknown_peer"] >= 3  # c's beacons
        assert sc.sent >= sa.dropped["unknown_peer"] - 1
        # The untrusting ones still see everyone.
        assert _entered(events[1]) == {a.agent_id, c.agent_id}
        assert _entered(events[2]) == {a.agent_id, b.agent_id}


def test_own_beacons_are_not_counted_as_unknown_peers(
    tmp_path: Path, identities: list[Identity], port: int
) -> None:
    a, b, _ = identities
    store = TrustStore(tmp_path / "trust")
    store.add(b.public)
    with (
        BeaconService(a, port=port, interval=INTERVAL, trust=store) as sa,
        BeaconService(b, port=port, interval=INTERVAL) as sb,
    ):
        events = _run([sa, sb], 4 * INTERVAL)
        assert _entered(events[0]) == {b.agent_id}
        assert sa.dropped == Counter()


def _garbage(identity: Identity, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    valid = encode_beacon(identity, sequence=7, ports=(1, 2, 3))
    datagrams = [rng.randbytes(rng.randint(0, 400)) for _ in range(440)]
    datagrams += [valid[: rng.randint(0, len(valid) - 1)] for _ in range(40)]
    datagrams += [valid + rng.randbytes(rng.randint(1, 60)) for _ in range(10)]
    datagrams += [b"ZRE\x01" + rng.randbytes(18) for _ in range(10)]
    rng.shuffle(datagrams)
    assert len(datagrams) == 500
    return datagrams


def _expected_reasons(datagrams: list[bytes]) -> Counter[str]:
    reasons: Counter[str] = Counter()
    for datagram in datagrams:
        # The service reads at most MAX_BEACON_LEN + 1 bytes: longer datagrams are truncated.
        with pytest.raises(ZmqCommError) as info:
            decode_beacon(datagram[: MAX_BEACON_LEN + 1])
        reasons[info.value.reason] += 1
    return reasons


def test_garbage_is_dropped_by_reason_and_discovery_goes_on(
    services: list[BeaconService], identities: list[Identity], port: int
) -> None:
    ids = [i.agent_id for i in identities]
    expected_peers = [set(ids) - {me} for me in ids]
    events = _run(services, 2 * INTERVAL + 0.1)
    assert [_entered(e) for e in events] == expected_peers
    stranger = Identity.generate("stranger")
    datagrams = _garbage(stranger, seed=os.getpid())
    expected = _expected_reasons(datagrams)
    assert {"beacon_size", "bad_magic", "bad_length"} <= set(expected)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for start in range(0, len(datagrams), 20):
            for datagram in datagrams[start : start + 20]:
                sender.sendto(datagram, (BROADCAST, port))
            _run(services, 0.01, events)  # read as we go: no kernel buffer overflow
    finally:
        sender.close()
    _run(services, 3 * INTERVAL, events)
    for n, service in enumerate(services):
        assert service.dropped == expected
        assert service.errors == Counter()
        assert [e.kind for e in events[n]] == ["ENTER", "ENTER"]  # nobody left, no stranger
        assert {p.agent_id for p in service.table.peers} == expected_peers[n]
        assert all(p.state == "ALIVE" for p in service.table.peers)


def test_unknown_interface_is_a_usage_error_listing_known_ones(port: int) -> None:
    with pytest.raises(UsageError) as info:
        BeaconService(Identity.generate("x"), port=port, interfaces=["no-such-if0"])
    message = str(info.value)
    assert "no-such-if0" in message
    assert "lo" in message.split("known:")[1]


@pytest.mark.parametrize("interval", [0, 0.0, -1, 61])
def test_bad_interval_is_a_usage_error(port: int, interval: float) -> None:
    with pytest.raises(UsageError):
        BeaconService(Identity.generate("x"), port=port, interval=interval)


def test_no_interfaces_is_a_usage_error(port: int) -> None:
    with pytest.raises(UsageError):
        BeaconService(Identity.generate("x"), port=port, interfaces=[])


def test_evasive_then_expired_when_a_peer_stops(identities: list[Identity], port: int) -> None:
    a, b, _ = identities
    table = PeerTable(evasive_after=0.3, expired_after=0.6)
    with BeaconService(a, port=port, interval=INTERVAL, table=table) as sa:
        sb = BeaconService(b, port=port, interval=INTERVAL)
        try:
            events = _run([sa, sb], 3 * INTERVAL)
        finally:
            sb.close()
        assert [(e.kind, e.agent_id) for e in events[0]] == [("ENTER", b.agent_id)]
        stopped = time.monotonic()
        timeline: list[tuple[float, PeerEvent]] = []
        while time.monotonic() < stopped + 1.2:
            timeline += [(time.monotonic() - stopped, e) for e in sa.step(0.01)]
        assert [(e.kind, e.agent_id) for _, e in timeline] == [
            ("EVASIVE", b.agent_id),
            ("EXPIRED", b.agent_id),
        ]
        # When exactly is the table's business, tested on a fake clock in test_peers.py: a
        # wall-time window here would only measure how loaded the machine is.
        (evasive_at, _), (expired_at, _) = timeline
        assert evasive_at < expired_at
        assert len(table) == 0


def test_the_peer_table_ignores_wall_clock_steps(identities: list[Identity], port: int) -> None:
    # Both clocks are the test's: the table must follow `clock` (monotonic) and use
    # `wall_clock` only for trust. A +60 s wall step must not expire a live peer, and a
    # step back must not keep a silent one.
    a, b, _ = identities
    mono, wall = [100.0], [1.7e9]
    table = PeerTable(evasive_after=5.0, expired_after=30.0)
    sa = BeaconService(
        a, port=port, interval=INTERVAL, table=table,
        clock=lambda: mono[0], wall_clock=lambda: wall[0],
    )  # fmt: skip
    sb = BeaconService(b, port=port, interval=INTERVAL)
    try:
        events: list[PeerEvent] = []
        for _ in range(400):  # until b's beacon is in (a bounded number of reads, no timing)
            sb.step(0.0)
            events += sa.step(0.01)
            if b.agent_id in table:
                break
        assert [(e.kind, e.agent_id) for e in events] == [("ENTER", b.agent_id)]
        sb.close()
        wall[0] += 60.0
        assert sa.step(0.0) == [] and b.agent_id in table
        wall[0] -= 3600.0
        mono[0] += 31.0
        assert [(e.kind, e.agent_id) for e in sa.step(0.0)] == [("EXPIRED", b.agent_id)]
    finally:
        sa.close()
        sb.close()


def test_beacons_are_numbered_upward_across_restarts(identities: list[Identity], port: int) -> None:
    # Version 1 numbered beacons from 1 again after a restart: tables took them for replays
    # until the new count passed the old, and reported a live peer EVASIVE, then EXPIRED.
    b = identities[1]
    wall = [1_700_000_000.0]

    def sequences(steps: list[float]) -> list[int]:
        seen = []
        with BeaconService(b, port=port, interval=INTERVAL, wall_clock=lambda: wall[0]) as sb:
            for step in steps:
                wall[0] += step
                sb._beacon()
                seen.append(sb.last_sequence)
        return seen

    first = sequences([0.0, 0.001, -5.0])  # the last: a wall clock stepped back
    assert first[0] == 1_700_000_000_000_000
    assert first[1] == first[0] + 1000 and first[2] == first[1] + 1
    restarted = sequences([10.0])  # restarted once the clock is past its earlier life
    assert restarted[0] > first[-1]


def test_a_restart_with_the_wall_clock_set_back_is_heard_at_once(
    identities: list[Identity], port: int
) -> None:
    # Version 2 numbered beacons by wall clock alone: b's second life, its clock a minute
    # behind its first life's beacons, was dropped as stale until its clock caught up.
    a, b, _ = identities
    wall = [1_800_000_000.0]  # one wall clock for everyone: a's, and b's second life's
    table = PeerTable()
    sa = BeaconService(a, port=port, interval=INTERVAL, table=table, wall_clock=lambda: wall[0])
    try:

        def run_until(done: Callable[[], bool], sb: BeaconService) -> list[PeerEvent]:
            events: list[PeerEvent] = []
            for _ in range(400):  # a bounded number of reads, no timing
                sb.step(0.0)
                events += sa.step(0.01)
                if done():
                    break
            return events

        def ahead() -> float:  # the first life's clock: a minute ahead
            return wall[0] + 60.0

        with BeaconService(b, port=port, interval=INTERVAL, ports=(7000,), wall_clock=ahead) as sb1:
            first = run_until(lambda: b.agent_id in table, sb1)
        assert [(e.kind, e.agent_id, e.ports) for e in first] == [("ENTER", b.agent_id, (7000,))]
        # Restarted at once, its clock now right: a minute behind its first life's beacons.
        with BeaconService(
            b, port=port, interval=INTERVAL, ports=(7001,), wall_clock=lambda: wall[0]
        ) as sb2:
            second = run_until(lambda: table.peers[0].ports == (7001,), sb2)
        assert second == []  # no EXPIRED, no second ENTER: it never went away
        assert table.peers[0].ports == (7001,)
        assert table.peers[0].state == "ALIVE"
        assert sb1.incarnation != sb2.incarnation
        assert sa.dropped == Counter()
    finally:
        sa.close()


def test_replayed_earlier_lives_are_dropped_counted_and_audited(
    identities: list[Identity], port: int
) -> None:
    # An attacker on the host replays b's beacons, signed and valid, over loopback.
    a, b, _ = identities
    wall = [1_800_000_000.0]
    table = PeerTable(restart_window=10)
    audit = MemoryAuditLog()
    sa = BeaconService(
        a, port=port, interval=INTERVAL, table=table, wall_clock=lambda: wall[0], audit=audit
    )
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)

    def deliver(incarnation: int, at: float, ports: tuple[int, ...]) -> list[PeerEvent]:
        datagram = encode_beacon(
            b, sequence=int(at * 1_000_000), ports=ports, incarnation=incarnation
        )
        sender.sendto(datagram, (BROADCAST, port))
        counts = (table.stale, table.not_fresh, len(table.peers), table.restarts)
        events: list[PeerEvent] = []
        for _ in range(400):  # until the table took or refused it: a bounded number of reads
            events += sa.step(0.01)
            if (table.stale, table.not_fresh, len(table.peers), table.restarts) != counts:
                break
            if table.peers and table.peers[0].ports == ports:
                break
        return events

    try:
        w = wall[0]
        assert [e.kind for e in deliver(1, w + 60, (7000,))] == ["ENTER"]  # a clock ahead
        assert deliver(2, w, (7001,)) == []  # restarted, clock set right: heard at once
        assert (table.restarts, table.peers[0].ports) == (1, (7001,))
        assert deliver(1, w + 60, (6666,)) == []  # the first life's beacon again
        wall[0] += 30
        assert deliver(1, w + 61, (6666,)) == []  # a first-life beacon never heard: 31 s off
        assert deliver(3, w + 2, (6666,)) == []  # a life never heard, 28 s old
        assert (table.stale, table.not_fresh, table.restarts) == (1, 2, 1)
        assert table.peers[0].ports == (7001,)
        assert sa.dropped == Counter()  # all were valid beacons: the table refused them
        assert [(r["reason"], r["peer"], r["pattern"]) for r in audit.events("reject")] == [
            ("stale", b.agent_id, "beacon"),
            ("not_fresh", b.agent_id, "beacon"),
        ]  # the second not_fresh within the second: one line per peer and reason per second
    finally:
        sender.close()
        sa.close()


def test_a_flood_of_made_up_identities_costs_few_audit_lines(
    identities: list[Identity], port: int
) -> None:
    # Without a trust store anyone can mint identities: each refused newcomer must not be
    # its own audit line, since the agent id it carries is the sender's choice.
    a = identities[0]
    audit = MemoryAuditLog()
    table = PeerTable(max_peers=1)
    frozen = 1000.0  # one second of the service's clock, whatever the machine's speed
    sa = BeaconService(a, port=port, interval=60, table=table, clock=lambda: frozen, audit=audit)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    try:
        for n in range(12):
            made_up = Identity.generate(f"made-up-{n}")
            sender.sendto(encode_beacon(made_up, sequence=n + 1, ports=(1,)), (BROADCAST, port))
        for _ in range(400):  # a bounded number of reads until all were handled
            sa.step(0.01)
            if table.ignored == 11:
                break
        assert (len(table), table.ignored) == (1, 11)
        assert [r["reason"] for r in audit.events("reject")] == ["table_full"]
    finally:
        sender.close()
        sa.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interfaces": "eth0"}, "list of names"),  # not the interfaces e, t, h, 0
        ({"interfaces": [""]}, "interface is a name"),
        ({"interval": "1"}, "beacon interval"),
        ({"interval": True}, "beacon interval"),
        ({"interval": float("nan")}, "beacon interval"),
        ({"ports": 5555}, "list of ints"),
        ({"ports": "5555"}, "list of ints"),
    ],
)
def test_bad_arguments_are_clear_usage_errors(
    port: int, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(UsageError, match=match):
        BeaconService(Identity.generate("x"), port=port, **kwargs)  # type: ignore[arg-type]
