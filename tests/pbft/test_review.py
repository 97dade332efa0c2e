"""Adversarial review of the pure PBFT core: each test reproduces one bug found in review
(int-like ``replica`` fields, a censoring primary, a client that skips the primary, unbounded
primary bookkeeping) and must pass now that it is fixed."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import replace
from typing import Any

import pytest

from zmqcomm.actions import Send
from zmqcomm.patterns.pbft import (
    Checkpoint,
    Client,
    Commit,
    KeyValueStore,
    MemoryStore,
    Prepare,
    PrePrepare,
    Replica,
    Reply,
    Request,
    Result,
    batch_digest,
    encode_op,
    material,
)
from zmqcomm.patterns.pbft.viewchange import check_view_change

from .adversary import resign
from .harness import Cluster, FakeKeys, build

ONE_AS_FLOAT: Any = 1.0  # what msgpack decodes from a float field; typed Any on purpose


class _Wrapper:
    """A replica machine that hides some incoming messages (a Byzantine filter)."""

    def __init__(self, inner: Replica, drop_from: Hashable) -> None:
        self.inner = inner
        self.drop_from = drop_from

    def on_message(self, sender: Hashable, message: Any, *, now: float) -> list[Any]:
        if sender == self.drop_from:
            return []
        return self.inner.on_message(sender, message, now=now)

    def on_timer(self, *, now: float) -> list[Any]:
        return self.inner.on_timer(now=now)

    def next_deadline(self) -> float | None:
        return self.inner.next_deadline()


def _vc_reason(cluster: Cluster, i: int) -> str | None:
    """Would the other replicas accept the VIEW-CHANGE replica ``i`` sends for view + 1?"""
    r = cluster.replica(i)
    vc = r._make_view_change(r.view + 1)
    return check_view_change(r.config, r.verify, vc, window=r.window, max_batch=r.max_batch)


def test_bool_replica_field_in_checkpoint_cannot_block_view_changes() -> None:
    cluster = build(4, seed=1, checkpoint_interval=4, batch_delay=0.0)
    sim = cluster.sim
    sign0 = cluster.keys.signer(0)

    def poison(sender: Hashable, to: Hashable, message: Any, rng: Any) -> list[Any]:
        if isinstance(message, Checkpoint):  # False == 0: passes "replica == sender"
            message = resign(replace(message, replica=False), sign0)
        return [(to, message)]

    sim.set_byzantine(0, poison)
    cluster.byzantine.add(0)
    for k in range(8):
        cluster.put("c0", f"k{k}", "v")
    cluster.run_until_results(8, until=5.0)
    sim.run(until=sim.now + 0.5)
    # The faulty primary now stops: the correct replicas must be able to replace it.
    sim.crash(0)
    for k in range(3):
        cluster.put("c0", f"after{k}", "v")
    cluster.run_until_results(11, until=sim.now + 20.0)
    cluster.check_safety()
    assert len(cluster.results("c0")) == 11
    assert [_vc_reason(cluster, i) for i in (1, 2, 3)] == [None, None, None]


def test_float_replica_field_in_prepare_cannot_invalidate_correct_view_changes() -> None:
    cluster = build(4, seed=3, batch_delay=0.0)
    sim = cluster.sim
    sign1 = cluster.keys.signer(1)

    def poison(sender: Hashable, to: Hashable, message: Any, rng: Any) -> list[Any]:
        if isinstance(message, Prepare):  # 1.0 == 1: passes "replica == sender"
            message = resign(replace(message, replica=ONE_AS_FLOAT), sign1)
        return [(to, message)]

    sim.set_byzantine(1, poison)
    cluster.byzantine.add(1)
    for k in range(3):
        cluster.put("c0", f"k{k}", "v")
    cluster.run_until_results(3, until=5.0)
    cluster.check_safety()
    # Correct replicas 2 and 3 hold certificates with replica 1's prepare in them.
    assert [_vc_reason(cluster, i) for i in (0, 2, 3)] == [None, None, None]


def test_censoring_primary_is_replaced_while_it_orders_other_requests() -> None:
    cluster = build(4, seed=2, clients=2, batch_delay=0.0)
    sim = cluster.sim
    sim.replace_machine(0, _Wrapper(cluster.replica(0), "c1"))  # primary ignores c1
    cluster.byzantine.add(0)
    for k in range(40):  # c0 keeps the primary busy for 4 s, one request per 0.1 s
        cluster.put("c0", f"a{k}", "v", at=0.1 * k)
    cluster.put("c1", "x", "v", at=0.05)
    # Client retransmission (0.5 s) + request timer (T = 0.5 s) + view change: well under 3 s.
    sim.run(until=3.0)
    cluster.check_safety()
    assert len(cluster.results("c1")) == 1


def _client_signer(name: str) -> Any:
    key = hashlib.blake2b(b"client " + name.encode(), digest_size=32).digest()
    return lambda data: hashlib.blake2b(data, key=key, digest_size=32).digest()


def _verify_client(client: Hashable, data: bytes, signature: bytes) -> bool:
    return isinstance(client, str) and _client_signer(client)(data) == signature


def test_faulty_client_cannot_force_a_view_change_per_request() -> None:
    cluster = build(4, seed=4, verify_client=_verify_client)
    sim = cluster.sim
    sign = _client_signer("c0")
    for k in range(4):

        def send(s: Any, k: int = k) -> None:
            request = Request("c0", 1000 + k, f"op{k}".encode())
            request = replace(request, signature=sign(material(request)))
            primary = cluster.replica(1).view % 4
            for r in range(4):
                if r != primary:  # never to the replica the client knows is the primary
                    s.inject("c0", r, request)

        sim.call_at(0.1 + 2.0 * k, send)
    sim.run(until=8.5)
    cluster.check_safety()
    assert all(len(cluster.executed(i)) == 4 for i in range(4))
    assert max(cluster.replica(i).view for i in range(4)) == 0


def test_primary_bookkeeping_stays_bounded_in_a_long_view() -> None:
    cluster = build(4, seed=5, batch_delay=0.0, checkpoint_interval=4)
    for k in range(60):
        cluster.put("c0", f"k{k}", "v")
    cluster.run_until_results(60, until=10.0)
    cluster.check_safety()
    primary = cluster.replica(0)
    assert primary.view == 0 and primary.last_executed >= 60
    assert len(primary.proposed) <= len(cluster.clients)


# -- the same fixes, one machine at a time ------------------------------------------------------

KEYS = FakeKeys(4)
OP = encode_op("put", b"k", b"v")


def _replica(i: int, **options: Any) -> Replica:
    return Replica(
        i,
        4,
        state_machine=KeyValueStore(),
        store=MemoryStore(),
        sign=KEYS.signer(i),
        verify=KEYS.verifier(),
        now=0.0,
        view_change_timeout=1.0,
        batch_delay=0.0,
        **options,
    )


def _order(r: Replica, sequence: int, batch: tuple[Request, ...], now: float) -> None:
    """Feed backup ``r`` (replica 1) what it needs to commit and execute ``batch`` in view 0."""
    pp = resign(PrePrepare(0, sequence, batch_digest(batch), batch, 0), KEYS.signer(0))
    r.on_message(0, pp, now=now)
    for i in (2, 3):
        r.on_message(i, resign(Prepare(0, sequence, pp.digest, i), KEYS.signer(i)), now=now)
    for i in (0, 2, 3):
        r.on_message(i, Commit(0, sequence, pp.digest, i), now=now)
    assert r.last_executed == sequence


@pytest.mark.parametrize("fake", [False, True, ONE_AS_FLOAT, 3.0])
def test_replica_fields_must_be_exact_ints(fake: Any) -> None:
    r = _replica(2)
    sender = int(fake)
    messages = [
        resign(Checkpoint(16, b"d" * 32, fake), KEYS.signer(sender)),
        resign(Prepare(0, 1, b"d" * 32, fake), KEYS.signer(sender)),
        Commit(0, 1, b"d" * 32, fake),
    ]
    for message in messages:
        assert r.on_message(sender, message, now=0.1) == []
    assert r.rejected == {"sender_mismatch": 3}
    assert r.log.size() == 0 and r.checkpoints.size() == 0


def test_client_counts_replies_only_from_exact_int_replicas() -> None:
    client = Client("c0", 4, now=0.0)
    (send,) = client.request(b"op", now=0.0)
    ts = send.message.timestamp
    assert client.on_message(1, Reply(0, ts, "c0", ONE_AS_FLOAT, b"a"), now=0.1) == []
    assert client.on_message(0, Reply(0, ts, "c0", False, b"a"), now=0.1) == []
    assert client.rejected == {"sender_mismatch": 2}
    assert client.on_message(1, Reply(0, ts, "c0", 1, b"a"), now=0.1) == []
    assert client.on_message(0, Reply(0, ts, "c0", 0, b"a"), now=0.1) == [Result(ts, b"a")]


def test_request_timer_times_one_request_until_it_is_executed() -> None:
    r = _replica(1)
    a1, b1 = Request("c0", 1, OP), Request("c1", 1, OP)
    r.on_message("c0", a1, now=0.0)
    r.on_message("c1", b1, now=0.3)
    assert (r.timed_client, r.request_deadline) == ("c0", 1.0)
    _order(r, 1, (b1,), now=0.5)  # another request: the timed one still waits
    _order(r, 2, (), now=0.6)  # a null request changes nothing either
    assert (r.timed_client, r.request_deadline) == ("c0", 1.0)
    _order(r, 3, (a1,), now=0.7)  # the timed one ran and nothing else waits: stopped
    assert r.request_deadline is None and r.timed_client is None
    a2, b2 = Request("c0", 2, OP), Request("c1", 2, OP)
    r.on_message("c0", a2, now=0.8)
    r.on_message("c1", b2, now=0.9)
    _order(r, 4, (a2,), now=1.0)  # the timed one ran: restart for the one still waiting
    assert (r.timed_client, r.request_deadline) == ("c1", 2.0)
    assert not r.changing
    asked = r.on_timer(now=2.0)  # first it asks, in case it is the one behind
    assert {type(a.message).__name__ for a in asked} == {"Status"} and not r.changing
    r.on_timer(now=2.25)  # a quarter timeout later, nothing executed: suspect the primary
    assert r.changing and r.view == 1


def _client_signed(request: Request) -> Request:
    return replace(request, signature=_client_signer(str(request.client))(material(request)))


def test_backups_relay_signed_requests_to_the_primary() -> None:
    request = _client_signed(Request("c0", 1, OP))
    backup = _replica(1, verify_client=_verify_client)
    assert backup.on_message("c0", request, now=0.0) == [Send(0, request)]
    assert backup.on_message("c0", request, now=0.1) == []  # a retransmission: once only
    # Only the primary takes relayed requests: no timers started by a faulty replica.
    assert backup.on_message(2, replace(request, timestamp=2), now=0.1) == []
    assert backup.rejected == {"sender_mismatch": 1} and backup.waiting == {"c0": request}
    primary = _replica(0, verify_client=_verify_client)
    forged = replace(request, op=b"other")
    assert primary.on_message(1, forged, now=0.0) == []
    assert primary.rejected == {"bad_client_signature": 1}
    out = primary.on_message(1, request, now=0.0)
    (pp,) = {a.message for a in out if isinstance(a.message, PrePrepare)}
    assert pp.requests == (request,) and primary.proposed == {"c0": 1}


def test_without_client_signatures_nobody_relays_and_relays_are_refused() -> None:
    request = Request("c0", 1, OP)
    assert _replica(1).on_message("c0", request, now=0.0) == []
    primary = _replica(0)
    assert primary.on_message(1, request, now=0.0) == []
    assert primary.rejected == {"sender_mismatch": 1} and not primary.waiting


def test_a_relayed_request_with_a_cached_reply_is_answered_to_the_client() -> None:
    primary = _replica(0, verify_client=_verify_client)
    request = _client_signed(Request("c0", 1, OP))
    out = primary.on_message(1, request, now=0.0)
    (pp,) = {a.message for a in out if isinstance(a.message, PrePrepare)}
    for i in (1, 2):
        primary.on_message(i, resign(Prepare(0, 1, pp.digest, i), KEYS.signer(i)), now=0.1)
    for i in (1, 2):
        primary.on_message(i, Commit(0, 1, pp.digest, i), now=0.1)
    assert primary.last_executed == 1 and primary.proposed == {}
    (answer,) = primary.on_message(2, request, now=0.2)
    assert isinstance(answer, Send) and answer.to == "c0"
    assert isinstance(answer.message, Reply) and answer.message.timestamp == 1
