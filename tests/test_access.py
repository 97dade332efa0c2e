"""Access control: default deny, role grants, topic patterns, token buckets, bad files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from zmqcomm.access import Policy, RateLimiter, TokenBucket, topic_matches
from zmqcomm.broker.server import Broker
from zmqcomm.crypto.channel_table import HandshakeLimits
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import NotPermittedError, UsageError
from zmqcomm.node import Node
from zmqcomm.wire import MessageType

POLICY = """
[limits]
rate = 100.0
burst = 10

[unauthenticated]
rate = 2.0
burst = 3

[roles.worker]
send = ["DATA", "REQUEST", "reply"]
publish = ["telemetry/*"]
subscribe = ["tasks/*", "status"]

[roles.admin]
send = ["*"]
publish = ["*"]
subscribe = ["*"]
rate = 5000.0
burst = 9000
"""


@pytest.fixture
def policy() -> Policy:
    return Policy.from_toml(POLICY)


def test_default_deny(policy: Policy) -> None:
    assert not policy.may_send([], MessageType.DATA)
    assert not policy.may_send(["stranger"], MessageType.DATA)
    assert not policy.may_publish(["stranger"], "telemetry/x")
    assert not policy.may_subscribe([], "status")
    assert not Policy().may_send(["worker"], MessageType.DATA)


def test_role_grants(policy: Policy) -> None:
    assert policy.may_send(["worker"], MessageType.REQUEST)
    assert policy.may_send(["worker"], MessageType.REPLY)
    assert not policy.may_send(["worker"], MessageType.PUBLISH)
    assert policy.may_publish(["worker"], "telemetry/agent-7/cpu")
    assert not policy.may_publish(["worker"], "telemetryx")
    assert not policy.may_publish(["worker"], "tasks/1")
    assert policy.may_subscribe(["worker"], "status")
    assert not policy.may_subscribe(["worker"], "status/sub")
    assert policy.may_send(["admin"], 200)
    assert policy.may_publish(["admin"], "anything")


def test_several_roles_merge(policy: Policy) -> None:
    decision = policy.decide(["worker", "admin", "unknown"])
    assert decision.send_any
    assert decision.rate == 5000.0
    assert policy.decide(["worker"]).rate == 100.0  # the [limits] default
    assert policy.decide(["worker"]) is policy.decide(("worker",))  # cached


def test_denials_raise_not_permitted_with_the_peer_and_action(policy: Policy) -> None:
    with pytest.raises(NotPermittedError, match="agent-x may not send PUBLISH") as caught:
        policy.check_send("agent-x", ["worker"], MessageType.PUBLISH)
    assert caught.value.reason == "denied"
    with pytest.raises(NotPermittedError, match="'secret'"):
        policy.check_publish("agent-x", ["worker"], "secret")
    with pytest.raises(NotPermittedError):
        policy.check_subscribe("agent-x", [], "status")
    policy.check_send("agent-x", ["worker"], MessageType.DATA)  # allowed: no exception


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("[roles.w]\nsend = 'DATA'", "list of strings"),
        ("[roles.w]\nsend = ['SHOUT']", "unknown message type 'SHOUT'"),
        ("[roles.w]\npublish = ['a*b']", "may only end in '*'"),
        ("[roles.w]\nwrite = ['x']", "unknown setting 'write'"),
        ("[limits]\nrate = -1", "positive number"),
        ("[limits]\nrate = true", "positive number"),
        # NaN passed "<= 0" and bursts below 1 passed too; the token bucket then refused them
        # on the first message, inside the broker's handle(), which must never raise.
        ("[limits]\nrate = nan", "positive number"),
        ("[roles.w]\nrate = nan", "positive number"),
        ("[limits]\nburst = 0.5", "number >= 1"),
        ("[roles.w]\nburst = 0.5", "number >= 1"),
        ("[unauthenticated]\nburst = nan", "number >= 1"),
        ("roles = 3", "must be a table"),
        ("[roles]\nw = 1", "must be a table"),
        ("[extra]", "unknown setting 'extra'"),
        ("[roles.w", "not valid TOML"),
    ],
)
def test_bad_policy_files_say_what_to_fix(text: str, hint: str) -> None:
    with pytest.raises(UsageError) as caught:
        Policy.from_toml(text, source="p.toml")
    assert hint in str(caught.value)
    assert "p.toml" in str(caught.value)


def test_a_policy_file_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    """It raised UnicodeDecodeError, which a broker's SIGHUP reload did not catch."""
    path = tmp_path / "policy.toml"
    path.write_bytes("# caf\u00e9\n[limits]\nrate = 5.0\n".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8"):
        Policy.load(path)


def test_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    assert Policy.load(path).unauthenticated_burst == 3.0
    with pytest.raises(UsageError, match="cannot read policy file"):
        Policy.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [("a", "a", True), ("a", "ab", False), ("a*", "ab", True), ("a/*", "a", False),
     ("*", "", True), ("", "", True), ("", "x", False)],
)  # fmt: skip
def test_topic_patterns(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=5, now=0.0)
    assert [bucket.take(now=0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.take(now=0.05)  # half a token
    assert bucket.take(now=0.1)
    assert not bucket.take(now=0.1)
    assert bucket.take(now=100.0, cost=5)  # refills to burst, not beyond
    assert not bucket.take(now=100.0)
    assert not bucket.take(now=50.0)  # a clock going backwards adds nothing


def test_rate_limiter_is_per_key_and_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_keys=3)
    assert limiter.allow("a", now=0) and limiter.allow("a", now=0)
    assert not limiter.allow("a", now=0)
    assert limiter.allow("b", now=0)
    assert limiter.denied == 1
    for key in range(1000):  # a flood of distinct keys
        limiter.allow(key, now=0)
    assert len(limiter) == 3
    assert limiter.allow("vip", now=0, rate=100.0, burst=50)
    assert sum(limiter.allow("vip", now=0) for _ in range(100)) == 49


def test_bad_rate_settings() -> None:
    with pytest.raises(UsageError):
        TokenBucket(rate=0, burst=1, now=0)
    with pytest.raises(UsageError):
        RateLimiter(rate=1, burst=0)
    with pytest.raises(UsageError):
        RateLimiter(rate=1, burst=1, max_keys=0)


def test_an_infinite_rate_never_limits_even_at_one_instant() -> None:
    # Documented as "no limit", yet with a finite burst calls sharing one `now` (a fake or
    # coarse clock) ran out; and an infinite burst made full_at() NaN.
    bucket = TokenBucket(rate=math.inf, burst=1, now=0.0)
    assert all(bucket.take(now=0.0) for _ in range(5))
    unlimited = TokenBucket(rate=math.inf, burst=math.inf, now=0.0)
    assert unlimited.full_at() == 0.0


def test_a_clock_stepped_back_delays_no_refill_beyond_the_step() -> None:
    """A wall clock stepped back an hour (NTP) must not stop refills for an hour."""
    bucket = TokenBucket(rate=1.0, burst=2, now=10_000.0)
    assert bucket.take(now=10_000.0) and bucket.take(now=10_000.0)
    assert not bucket.take(now=6_400.0)  # the step itself adds nothing
    assert bucket.take(now=6_401.0)  # a second after it, a token is back


def test_several_roles_get_one_roles_rate_and_burst_together() -> None:
    policy = Policy.from_toml(
        """
[roles.slow]
send = ["DATA"]
rate = 500.0
burst = 1
[roles.bursty]
send = ["DATA"]
rate = 0.001
burst = 100000
"""
    )
    decision = policy.decide(frozenset({"slow", "bursty"}))
    assert (decision.rate, decision.burst) == (500.0, 1.0)  # never 500/s with 100,000 at once


def test_a_number_too_large_for_a_float_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="rate is too large"):
        Policy.from_toml("[roles.r]\nsend = []\nrate = " + "9" * 400)


def test_the_unauthenticated_section_sets_the_handshake_bucket_per_connection() -> None:
    """It was parsed and then used by nothing: a policy that asked for fewer handshakes per
    connection got the built-in 2 per second, burst 8."""
    defaults = HandshakeLimits()
    assert defaults.with_policy(None) == defaults
    assert defaults.with_policy(Policy.from_toml("")) == defaults
    strict = HandshakeLimits(rate=50.0).with_policy(
        Policy.from_toml("[unauthenticated]\nrate = 0.5\nburst = 1")
    )
    assert (strict.per_route_rate, strict.per_route_burst, strict.rate) == (0.5, 1.0, 50.0)
    burst_only = defaults.with_policy(Policy.from_toml("[unauthenticated]\nburst = 3"))
    assert (burst_only.per_route_rate, burst_only.per_route_burst) == (defaults.per_route_rate, 3)


def test_a_broker_and_a_listening_node_take_the_policy_handshake_bucket(tmp_path: Path) -> None:
    policy = Policy.from_toml("[unauthenticated]\nrate = 0.5\nburst = 1")
    identity = Identity.generate("server")
    trust = TrustStore(tmp_path / "trust")
    broker = Broker([f"ipc://{tmp_path}/b.sock"], identity=identity, trust=trust, policy=policy)
    node = Node(identity, trust, bind=f"ipc://{tmp_path}/n.sock", policy=policy)
    try:
        routers = [broker.router, node._direct.router]
        for router in routers:
            assert router is not None
            assert (router.table.limits.per_route_rate, router.table.limits.per_route_burst) == (
                0.5,
                1.0,
            )
    finally:
        node.close(timeout=0)
        broker.close()
