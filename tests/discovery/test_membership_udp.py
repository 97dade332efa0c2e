"""SWIM membership on real UDP sockets (127.0.0.1 only): ten threads, garbage, the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmqcomm.cli.main import main
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import UsageError
from zmqcomm.patterns.discovery.membership import Membership
from zmqcomm.patterns.discovery.membership_config import MembershipConfig
from zmqcomm.patterns.discovery.membership_udp import MembershipService, parse_address
from zmqcomm.patterns.discovery.membership_wire import (
    ACK,
    MAX_DATAGRAM,
    PING,
    decode_packet,
    encode_packet,
)

FAST = MembershipConfig(period=0.2, ping_timeout=0.1, join_backoff_max=1.0, sync_every=3)


class Runner:
    """Steps services in their own threads until stopped."""

    def __init__(self, services: list[MembershipService]) -> None:
        self.services = services
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.threads = [threading.Thread(target=self._loop, args=(s,)) for s in services]

    def _loop(self, service: MembershipService) -> None:
        try:
            while not self.stop.is_set():
                service.step(0.02)
        except BaseException as exc:  # reported by the test, never swallowed
            self.failures.append(exc)

    def __enter__(self) -> Runner:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)
        for service in self.services:
            service.close()


def _wait(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def swarm() -> Iterator[list[MembershipService]]:
    seed = MembershipService(Identity.generate("seed"), config=FAST, rng=random.Random(0))
    services = [seed] + [
        MembershipService(
            Identity.generate(f"n{i}"),
            seeds=[seed.address],
            ports=(5000 + i,),
            config=FAST,
            rng=random.Random(i + 1),
        )
        for i in range(9)
    ]
    yield services
    for service in services:
        service.close()


def test_ten_threads_and_one_seed_find_each_other_without_broadcast(
    swarm: list[MembershipService],
) -> None:
    ports = {s.port for s in swarm}
    assert len(ports) == 10
    for service in swarm:
        assert service.address[0] == "127.0.0.1"
        assert service._sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 0
    with Runner(swarm) as runner:
        assert _wait(lambda: all(len(s.machine) == 9 for s in swarm), 15)
        assert not runner.failures
    by_id = {s.machine.agent_id: s for s in swarm}
    for service in swarm:
        for member in service.machine.members:
            other = by_id[member.agent_id]
            assert (member.host, member.port) == other.address
            assert member.ports == other.machine.record.ports
        assert service.dropped == {} and service.sent > 0


def test_garbage_datagrams_leave_the_node_running(swarm: list[MembershipService]) -> None:
    pair = swarm[:2]
    rng = random.Random(5)
    with Runner(pair) as runner:
        assert _wait(lambda: all(len(s.machine) == 1 for s in pair), 10)
        target = pair[0]
        real = b""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            attacker.settimeout(1.0)
            for i in range(300):
                kind = i % 4
                if kind == 0:
                    data = os.urandom(rng.randrange(0, 1500))
                elif kind == 1:
                    data = b"ZCM\x01" + os.urandom(rng.randrange(0, 1200))
                else:
                    # A real packet, captured by asking the machine for one, then damaged.
                    if not real:
                        send = pair[1].machine._packet(
                            PING, 1, target.machine.record.sender_id, target.address
                        )
                        real = encode_packet(send.message)
                    damaged = bytearray(real)
                    damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
                    data = bytes(damaged[: rng.randrange(len(damaged))] if kind == 3 else damaged)
                attacker.sendto(bytes(data), target.address)
                time.sleep(0.001)  # paced: a full socket buffer would drop them uncounted
        assert _wait(lambda: sum(target.dropped.values()) >= 290, 10), target.dropped
        count = len(target.machine)
        probes = target.machine.stats["acks"]
        assert _wait(lambda: target.machine.stats["acks"] > probes + 5, 10)  # still probing
        assert not runner.failures
    assert count == 1
    assert all(m.state == "ALIVE" for m in target.machine.members)
    assert target.machine.incarnation == 0
    assert set(target.dropped) <= {
        "datagram_size", "bad_magic", "unsupported_version", "bad_msgpack", "malformed",
        "non_canonical", "bad_signature",
    }  # fmt: skip


def test_leave_is_seen_over_udp(swarm: list[MembershipService]) -> None:
    pair = swarm[:2]
    with Runner(pair[:1]) as runner:
        # The leaver is stepped here, so its thread does not race the leave() call.
        deadline = time.monotonic() + 10
        while len(pair[0].machine) != 1 or len(pair[1].machine) != 1:
            assert time.monotonic() < deadline
            pair[1].step(0.02)
        pair[1].leave()
        assert _wait(lambda: len(pair[0].machine) == 0, 5)
        assert not runner.failures
    assert pair[0].machine.is_dead(pair[1].machine.agent_id)
    assert pair[1].machine.next_deadline() is None  # stopped for good


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:7946") == ("127.0.0.1", 7946)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("localhost:7946", "127.0.0.1", "127.0.0.1:http", "1.2.3.4:70000"):
        with pytest.raises(UsageError):
            parse_address(bad)
    assert len(b"x" * MAX_DATAGRAM) == 1200


def test_cli_peers_with_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    seed = MembershipService(Identity.generate("seed"), config=FAST)
    with Runner([seed]):
        code = main(
            [
                "peers", "--seed", f"127.0.0.1:{seed.port}", "--listen", "127.0.0.1:0",
                "--interval", "0.2", "--duration", "1.5", "--json",
            ]
        )  # fmt: skip
        assert _wait(lambda: len(seed.machine) == 0, 5)  # the CLI said LEAVE on its way out
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["event"] == "UP" and lines[0]["address"].startswith("127.0.0.1:")
    assert {"event": "ENTER", "agent_id": seed.machine.agent_id}.items() <= lines[1].items()
    assert lines[-1]["event"] == "SUMMARY"
    assert [p["agent_id"] for p in lines[-1]["peers"]] == [seed.machine.agent_id]


def test_cli_refuses_interface_with_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["peers", "--seed", "127.0.0.1:9", "--interface", "lo"]) == 2
    assert "--interface is for beacons" in capsys.readouterr().err
    assert main(["peers", "--seed", "localhost:9"]) == 2
    assert "IP literal" in capsys.readouterr().err


def test_trust_is_checked_at_wall_clock_time_whatever_the_service_clock(tmp_path: Path) -> None:
    me, peer, stale = Identity.generate("me"), Identity.generate("peer"), Identity.generate("old")
    trust = TrustStore(tmp_path / "trust")
    trust.add(peer.public, expires=time.time() + 3600)
    trust.add(stale.public, expires=time.time() - 3600)
    # A monotonic clock far past every expiry: only the wall clock may decide.
    far = time.monotonic() + 1e10
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(2.0)
        with MembershipService(
            me, trust=trust, config=FAST, rng=random.Random(1), clock=lambda: far
        ) as service:
            for n, identity in enumerate((peer, stale), start=1):
                sender = Membership.from_identity(
                    identity, address=listener.getsockname(), rng=random.Random(n)
                )
                ping = sender._packet(PING, n, me.sender_id, service.address).message
                listener.sendto(encode_packet(ping), service.address)
                deadline = time.monotonic() + 3.0
                while service.received < n and time.monotonic() < deadline:
                    service.step(0.05)
            assert service.received == 2
            assert peer.agent_id in service.machine
            assert stale.agent_id not in service.machine
            assert service.dropped["unknown_sender"] == 1
            assert decode_packet(listener.recvfrom(MAX_DATAGRAM)[0]).kind == ACK


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"listen": ("127.0.0.1", 70000)}, "port of listen"),
        ({"listen": ("127.0.0.1", "7946")}, "port of listen"),
        ({"listen": ("127.0.0.1", -1)}, "port of listen"),
        ({"listen": ("127.0.0.1", True)}, "port of listen"),
        ({"listen": "127.0.0.1:7946"}, "listen must be an"),
        ({"listen": ("localhost", 0)}, "not a name"),
        ({"listen": ("0.0.0.0", 0)}, "needs advertise"),
        ({"advertise": "localhost"}, "not a name"),
        ({"seeds": [("localhost", 7946)]}, "not a name"),
        ({"seeds": [("127.0.0.1", 0)]}, "port of a seed"),
        ({"seeds": [("127.0.0.1", "7946")]}, "port of a seed"),
        ({"seeds": "127.0.0.1:7946"}, "list of"),
        ({"seeds": [("192.0.2.1", 7946)]}, "out of reach"),  # refused, never sent to
        ({"seeds": [("::1", 7946)]}, "out of reach"),
    ],
)
def test_bad_addresses_are_usage_errors_and_leak_no_socket(
    kwargs: dict[str, object], match: str
) -> None:
    identity = Identity.generate("bad")
    before = _open_sockets()
    with pytest.raises(UsageError, match=match) as raised:
        MembershipService(identity, **kwargs)  # type: ignore[arg-type]
    del raised  # the traceback would keep a leaked socket referenced, hence open
    assert _open_sockets() == before


def _open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, gone already
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def test_cli_peers_accepts_a_period_above_the_join_backoff_cap(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # --duration 0: the service is built (config checked) and closed, nothing is sent.
    code = main(["peers", "--seed", "127.0.0.1:7", "--interval", "45", "--duration", "0"])
    assert code == 0, capsys.readouterr().err
    assert "join_backoff_max" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--seed", "127.0.0.1:0"], "not 0"),
        (["--seed", "127.0.0.1:9", "--port", "5671"], "--port is the beacon port"),
        (["--listen", "127.0.0.1:0", "--port", "5671"], "--port is the beacon port"),
    ],
)
def test_cli_peers_refuses_what_membership_would_ignore(
    arguments: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["peers", *arguments, "--duration", "0"]) == 2
    assert expected in capsys.readouterr().err
