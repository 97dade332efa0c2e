"""Numbers from a caller: NaN, infinities and out-of-range values get a clear UsageError.

Each case below used to hang, spin the CPU, fail deep inside with an unrelated exception, or
quietly disable something (a NaN burst refused every handshake; a NaN rate lifted the limit).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import zmq

from zmqcomm.access import TokenBucket
from zmqcomm.checks import check_count, check_seconds, check_timeout
from zmqcomm.cli.main import EXIT_USAGE, main
from zmqcomm.crypto.channel_table import HandshakeLimits
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import ConnectError, UsageError
from zmqcomm.node import Node
from zmqcomm.patterns.discovery.membership_config import MembershipConfig
from zmqcomm.patterns.discovery.udp import BeaconService
from zmqcomm.patterns.gossip.driver import GossipAgent, GossipConfig
from zmqcomm.patterns.gossip.group import GossipGroup
from zmqcomm.patterns.pbft.client import Client
from zmqcomm.patterns.pbft.cluster import LocalOptions, run_local
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.swarm.demo import SwarmOptions
from zmqcomm.transport import AsyncLoop, BatchingSender, Loop, SocketOptions
from zmqcomm.wording import counted

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("value", [0, 0.5, 3, 1e9])
def test_check_seconds_takes_finite_non_negative_numbers(value: float) -> None:
    assert check_seconds(value, "x") == value


@pytest.mark.parametrize("value", [-0.001, NAN, INF, -INF, "1", None, True])
def test_check_seconds_refuses_the_rest(value: Any) -> None:
    with pytest.raises(UsageError, match="x must be a finite number of seconds >= 0"):
        check_seconds(value, "x")


def test_check_seconds_bounds() -> None:
    with pytest.raises(UsageError, match="> 0"):
        check_seconds(0, "x", allow_zero=False)
    with pytest.raises(UsageError, match="at most 10"):
        check_seconds(11, "x", maximum=10)


@pytest.mark.parametrize("value", [None, -1, 0, 2.5, INF])
def test_check_timeout_takes_none_and_any_number_but_nan(value: Any) -> None:
    check_timeout(value, "t")


@pytest.mark.parametrize("value", [NAN, "5", True])
def test_check_timeout_refuses_nan_and_non_numbers(value: Any) -> None:
    with pytest.raises(UsageError, match="t must be a number of seconds or None"):
        check_timeout(value, "t")


@pytest.mark.parametrize("value", [1.5, NAN, -1, True])
def test_check_count_wants_whole_numbers(value: Any) -> None:
    with pytest.raises(UsageError, match="whole number"):
        check_count(value, "n")


@pytest.fixture
def alice(tmp_path: Path) -> tuple[Identity, TrustStore]:
    return Identity.generate("alice"), TrustStore(tmp_path / "trust")


def test_secure_socket_timeouts(alice: tuple[Identity, TrustStore], tmp_path: Path) -> None:
    identity, trust = alice
    for bad in (-1, NAN, INF):
        with pytest.raises(UsageError, match="send_timeout"):
            SecureRouter(
                f"ipc://{tmp_path}/bad.sock", identity=identity, trust=trust, send_timeout=bad
            )
    with SecureRouter(f"ipc://{tmp_path}/ok.sock", identity=identity, trust=trust) as router:
        with pytest.raises(UsageError, match="receive timeout"):
            router.receive(NAN)  # used to spin at full CPU forever
        with pytest.raises(UsageError, match="NaN"):
            router.pump(NAN)


def test_node_timeouts(alice: tuple[Identity, TrustStore], tmp_path: Path) -> None:
    identity, trust = alice
    with Node(identity, trust, bind=f"ipc://{tmp_path}/node.sock") as node:
        with pytest.raises(UsageError, match="connect timeout"):
            node.connect("ipc:///nowhere.sock", timeout=NAN)  # used to hang
        with pytest.raises(UsageError, match="close timeout"):
            node.close(timeout=NAN)


def test_loops_refuse_a_nan_run_timeout_and_burst() -> None:
    with Loop() as loop, pytest.raises(UsageError, match="run timeout"):
        loop.run(timeout=NAN)  # used to hang
    with pytest.raises(UsageError, match="max_burst"):
        Loop(max_burst=NAN)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="max_burst"):
        AsyncLoop(max_burst=0)


Maker = Callable[[], object]


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda: BatchingSender(lambda frames: None, max_delay=NAN), "max_delay"),
        (lambda: SocketOptions(linger=NAN), "linger"),
        (lambda: SocketOptions(reconnect_interval=INF), "reconnect_interval"),
        (lambda: SocketOptions(heartbeat_interval=3e6), "heartbeat_interval"),
        (lambda: SocketOptions(send_hwm=1.5), "send_hwm"),  # type: ignore[arg-type]
        (lambda: TokenBucket(NAN, 10, now=0.0), "rate limit"),
        (lambda: TokenBucket(1.0, NAN, now=0.0), "rate limit"),
        (lambda: HandshakeLimits(burst=NAN), "rate limit"),
        (lambda: HandshakeLimits(per_route_rate=NAN), "rate limit"),
        (lambda: RekeyPolicy(max_age=NAN), "max_age"),
        (lambda: RekeyPolicy(hard_max_age=NAN), "hard_max_age"),
        (lambda: RekeyPolicy(grace_period=NAN), "grace_period"),
        (lambda: Client("c", 4, now=0.0, timeout=NAN), "client timeout"),
        (lambda: MembershipConfig(suspicion_mult=NAN), "suspicion_mult"),
        (lambda: MembershipConfig(join_backoff_max=NAN), "join_backoff_max"),
    ],
)
def test_settings_refuse_nan_and_infinity(make: Maker, what: str) -> None:
    with pytest.raises(UsageError, match=what):
        make()


def test_a_refused_gossip_setting_leaves_the_endpoint_free(tmp_path: Path) -> None:
    identity = Identity.generate("gossiper")
    endpoint = f"ipc://{tmp_path}/gossip.sock"
    with pytest.raises(UsageError, match="heartbeat"):
        GossipAgent(identity, endpoint, verify_keys={}, config=GossipConfig(heartbeat=NAN))
    with GossipAgent(identity, endpoint, verify_keys={}) as agent:  # not "address in use"
        assert agent.endpoint.startswith("ipc://")


def test_beacon_port_out_of_range() -> None:
    with pytest.raises(UsageError, match="1 to 65535"):
        BeaconService(Identity.generate("b"), port=70_000)


@pytest.mark.parametrize("when", [INF, NAN, -1.0])
def test_pbft_local_refuses_a_kill_time_it_cannot_keep(when: float) -> None:
    with pytest.raises(UsageError, match="--kill-primary-at"):
        run_local(LocalOptions(ops=10, kill_primary_at=when))


def test_more_run_lengths_refuse_nan() -> None:
    group = GossipGroup()
    with pytest.raises(UsageError, match="run_for"):
        group.run_for(NAN)  # used to return at once, having run nothing
    with pytest.raises(UsageError, match="run_until"):
        group.run_until(lambda: False, timeout=NAN)
    with pytest.raises(UsageError, match="--rate"):
        SwarmOptions(rate=NAN).check()


@pytest.mark.parametrize("duration", ["nan", "-1", "inf"])
def test_peers_refuses_a_duration_it_cannot_keep(
    duration: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["peers", "--duration", duration]) == EXIT_USAGE
    assert "--duration must be a finite number of seconds" in capsys.readouterr().err


def test_an_infinite_rate_limit_still_means_no_limit() -> None:
    # Policy files may say rate = inf; only NaN is refused.
    bucket = TokenBucket(INF, INF, now=0.0)
    assert all(bucket.take(now=1.0) for _ in range(10_000))
    HandshakeLimits(rate=INF, burst=INF)


def test_real_numbers_of_other_types_are_durations() -> None:
    assert SocketOptions(linger=Fraction(1, 2)).linger == Fraction(1, 2)
    assert check_seconds(Fraction(3, 4), "x") == 0.75
    assert check_count(Fraction(4, 1).numerator, "n") == 4


def test_the_heartbeat_timeout_fits_zmtp_ttl() -> None:
    SocketOptions(heartbeat_timeout=6553)
    with pytest.raises(UsageError, match=r"heartbeat_timeout .*at most 6553"):
        SocketOptions(heartbeat_timeout=10_000)  # libzmq: a raw "Invalid argument"


def test_a_wait_that_cannot_be_none_says_so(
    alice: tuple[Identity, TrustStore], tmp_path: Path
) -> None:
    identity, trust = alice
    with (
        Node(identity, trust, bind=f"ipc://{tmp_path}/n.sock") as node,
        pytest.raises(UsageError, match=r"connect timeout must be a number of seconds, got"),
    ):
        node.connect("ipc:///nowhere.sock", timeout=None)  # type: ignore[arg-type]


def _terminates(context: zmq.Context[Any]) -> bool:
    """Whether ``context.term()`` returns: it blocks while any socket is open."""
    done = threading.Event()
    threading.Thread(target=lambda: (context.term(), done.set()), daemon=True).start()
    return done.wait(5.0)


def test_a_dealer_that_fails_to_start_leaves_no_socket_open(
    alice: tuple[Identity, TrustStore], tmp_path: Path
) -> None:
    identity, trust = alice
    refused: zmq.Context[Any] = zmq.Context()
    with pytest.raises(UsageError, match="connect_timeout"):
        SecureDealer(
            f"ipc://{tmp_path}/x.sock",
            identity=identity,
            trust=trust,
            context=refused,
            connect_timeout=NAN,
        )
    assert _terminates(refused)
    unanswered: zmq.Context[Any] = zmq.Context()
    with pytest.raises(ConnectError):
        SecureDealer(
            f"ipc://{tmp_path}/nobody.sock",
            identity=identity,
            trust=trust,
            context=unanswered,
            connect_timeout=0.05,
        )
    assert _terminates(unanswered)


def test_a_refused_peer_entry_leaves_the_gossip_endpoint_free(tmp_path: Path) -> None:
    identity = Identity.generate("gossiper")
    endpoint = f"ipc://{tmp_path}/gossip-peers.sock"
    with pytest.raises(UsageError, match="agent id"):
        GossipAgent(identity, endpoint, verify_keys={}, peers={"bob": "ipc:///nowhere"})
    with GossipAgent(identity, endpoint, verify_keys={}) as agent:
        assert agent.endpoint.startswith("ipc://")


def test_a_count_of_one_is_singular() -> None:
    assert [counted(n, "peer") for n in (0, 1, 2, 1000)] == [
        "0 peers", "1 peer", "2 peers", "1,000 peers",
    ]  # fmt: skip
