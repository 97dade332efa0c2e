"""Byzantine replicas and forged messages: every bad message is counted by reason, changes
no state, and never breaks agreement."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import msgpack
import pytest

from zmqcomm.patterns.pbft import (
    NULL_DIGEST,
    Checkpoint,
    Client,
    Commit,
    KeyValueStore,
    MemoryStore,
    NewView,
    Prepare,
    PrePrepare,
    Replica,
    Reply,
    Request,
    StateSnapshot,
    ViewChange,
    batch_digest,
    decode_result,
    material,
)
from zmqcomm.patterns.pbft.checkpoint import state_bytes, state_digest

from .adversary import equivocating, mutating
from .harness import FakeKeys, build

KEYS = FakeKeys(4)
REQ = Request("c0", 5, b"op")


def fresh(i: int = 1, n: int = 4) -> tuple[Replica, MemoryStore]:
    store = MemoryStore()
    keys = FakeKeys(n)
    replica = Replica(
        i,
        n,
        state_machine=KeyValueStore(),
        store=store,
        sign=keys.signer(i),
        verify=keys.verifier(),
        now=0.0,
        checkpoint_interval=4,
        watermark_window=8,
    )
    return replica, store


def sign(message: Any, replica: int) -> Any:
    return replace(message, signature=KEYS.signer(replica)(material(message)))


def snapshot(replica: Replica, store: MemoryStore) -> tuple[Any, ...]:
    return (
        replica.view,
        replica.changing,
        replica.log.size(),
        replica.last_executed,
        dict(replica.view_changes),
        store.writes,
        replica.checkpoints.size(),
    )


def good_pp(view: int = 0, seq: int = 1) -> PrePrepare:
    return sign(PrePrepare(view, seq, batch_digest((REQ,)), (REQ,), view % 4), view % 4)


def certified_state(machine_snapshot: bytes, sequence: int = 4) -> StateSnapshot:
    """A state snapshot with a valid quorum proof, whatever the machine's bytes are."""
    blob = state_bytes(machine_snapshot, {})
    digest = state_digest(blob)
    proof = tuple(sign(Checkpoint(sequence, digest, r), r) for r in range(3))
    return StateSnapshot(sequence, digest, proof, blob, 2)


CASES: dict[str, tuple[Any, Any, str]] = {
    "pp_from_wrong_sender": (2, good_pp(), "sender_mismatch"),
    "pp_bad_signature": (0, replace(good_pp(), signature=b"x" * 32), "bad_pre_prepare"),
    "pp_wrong_digest": (0, sign(replace(good_pp(), digest=NULL_DIGEST), 0), "bad_pre_prepare"),
    # The signature covers the digest only, so it still verifies here: the digest check
    # is what refuses a batch swapped under a signed pre-prepare.
    "pp_requests_swapped": (
        0,
        replace(good_pp(), requests=(Request("c0", 6, b"other"),)),
        "bad_pre_prepare",
    ),
    "pp_beyond_high_watermark": (0, good_pp(seq=9), "outside_window"),
    "vc_for_view_zero": (2, sign(ViewChange(0, 0, (), (), 2), 2), "malformed"),
    "vc_view_jump": (2, sign(ViewChange(10**6, 0, (), (), 2), 2), "view_jump"),
    "vc_bad_signature": (
        2,
        replace(sign(ViewChange(1, 0, (), (), 2), 2), signature=b"y" * 32),
        "bad_signature",
    ),
    "vc_without_checkpoint_proof": (
        2,
        sign(ViewChange(1, 4, (), (), 2), 2),
        "bad_checkpoint_proof",
    ),
    "prepare_from_primary": (0, sign(Prepare(0, 1, NULL_DIGEST, 0), 0), "prepare_from_primary"),
    "commit_negative_sequence": (2, Commit(0, -1, NULL_DIGEST, 2), "malformed"),
    "checkpoint_sequence_zero": (2, sign(Checkpoint(0, b"d" * 32, 2), 2), "malformed"),
    "checkpoint_off_interval": (2, sign(Checkpoint(3, b"d" * 32, 2), 2), "malformed"),
    "commit_from_a_client": ("c0", Commit(0, 1, NULL_DIGEST, 2), "not_a_replica"),
    "unknown_type": (2, "hello", "unknown_type"),
    "request_timestamp_zero": ("c0", Request("c0", 0, b"op"), "malformed_request"),
    "request_for_another_client": ("c1", REQ, "sender_mismatch"),
    # Certified, but not in this key-value store's format (another version's sorted pairs).
    "state_in_another_format": (
        2,
        certified_state(msgpack.packb([[b"k", b"v"]])),
        "unrestorable_state",
    ),
    "new_view_without_view_changes": (3, sign(NewView(3, (), (), 3), 3), "new_view_small_set"),
    "new_view_not_from_primary": (2, sign(NewView(3, (), (), 2), 2), "malformed"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_message_is_counted_and_changes_nothing(case: str) -> None:
    replica, store = fresh()
    before = snapshot(replica, store)
    sender, message, reason = CASES[case]
    assert replica.on_message(sender, message, now=1.0) == []
    assert replica.rejected == {reason: 1}
    assert snapshot(replica, store) == before


def test_a_valid_pre_prepare_is_accepted_for_contrast() -> None:
    replica, store = fresh()
    out = replica.on_message(0, good_pp(), now=1.0)
    assert {type(a.message) for a in out} == {Prepare}
    assert store.votes == {(0, 1, "prepare"): batch_digest((REQ,))}  # written before sending
    assert replica.rejected == {}


def test_conflicting_pre_prepare_for_the_same_sequence_is_refused() -> None:
    replica, _ = fresh()
    replica.on_message(0, good_pp(), now=1.0)
    other = sign(PrePrepare(0, 1, NULL_DIGEST, (), 0), 0)
    assert replica.on_message(0, other, now=1.0) == []
    assert replica.rejected["conflicting_pre_prepare"] == 1
    assert replica.log.entries[1].pre_prepare == good_pp()


def test_conflicting_prepare_and_commit_from_one_replica_count_once() -> None:
    replica, _ = fresh()
    replica.on_message(0, good_pp(), now=1.0)
    digest = batch_digest((REQ,))
    replica.on_message(2, sign(Prepare(0, 1, digest, 2), 2), now=1.0)
    replica.on_message(2, sign(Prepare(0, 1, NULL_DIGEST, 2), 2), now=1.0)
    replica.on_message(3, Commit(0, 1, digest, 3), now=1.0)
    replica.on_message(3, Commit(0, 1, NULL_DIGEST, 3), now=1.0)
    assert replica.rejected == {"conflicting_prepare": 1, "conflicting_commit": 1}
    entry = replica.log.entries[1]
    assert entry.prepares[2].digest == digest and entry.commits[3].digest == digest


def test_forged_view_change_in_another_replicas_name() -> None:
    cluster = build(4, seed=40)
    sim = cluster.sim
    forged = sign(ViewChange(1, 0, (), (), 1), 2)  # says replica 1, signed by replica 2
    for sender in (1, 2):
        for to in (0, 3):
            sim.inject(sender, to, forged)
    sim.run(until=0.5)
    for i in (0, 3):
        assert cluster.replica(i).rejected == {"sender_mismatch": 1, "bad_signature": 1}
        assert cluster.replica(i).view == 0


@pytest.mark.parametrize("seed", range(4))
def test_equivocating_primary_cannot_break_agreement(seed: int) -> None:
    cluster = build(4, seed=41 + seed, clients=2)
    cluster.sim.set_byzantine(0, equivocating(cluster.keys.signer(0)))
    cluster.byzantine.add(0)
    for c in cluster.clients:
        for k in range(3):
            cluster.put(c, f"{c}{k}", "v")
    cluster.run_until_results(3, until=30.0)
    assert all(len(cluster.results(c)) == 3 for c in cluster.clients)
    rejected = sum(
        (cluster.replica(i).rejected for i in (1, 2, 3)), start=__import__("collections").Counter()
    )
    assert (
        rejected["conflicting_prepare"]
        + rejected["conflicting_vote"]
        + sum(cluster.replica(i).view for i in (1, 2, 3))
        > 0
    )
    cluster.check_safety()


@pytest.mark.parametrize("seed", range(6))
def test_backup_sending_conflicting_prepares_and_commits(seed: int) -> None:
    n = 7
    cluster = build(n, seed=50 + seed, clients=2)
    for bad in (3, 5):  # f = 2
        cluster.sim.set_byzantine(bad, mutating(cluster.keys.signer(bad), 1.0))
        cluster.byzantine.add(bad)
    cluster.load_and_check(3, until=30.0)


def test_primary_that_skips_sequence_numbers_is_replaced() -> None:
    """A gap can never be executed past: the backups' timers fire, and the new view fills
    the gap with a null request (or the re-proposed batch)."""
    cluster = build(4, seed=60)
    sign0 = cluster.keys.signer(0)

    def skip(sender: Any, to: Any, message: Any, rng: Any) -> list[Any]:
        if isinstance(message, PrePrepare) and message.view == 0:
            message = replace(message, sequence=message.sequence + 1)
            message = replace(message, signature=sign0(material(message)))
        return [(to, message)]

    cluster.sim.set_byzantine(0, skip)
    cluster.byzantine.add(0)
    cluster.put("c0", "k", "v")
    cluster.run_until_results(1, until=10.0)
    assert len(cluster.results("c0")) == 1
    assert all(cluster.replica(i).view >= 1 for i in (1, 2, 3))
    cluster.check_safety()


def test_primary_that_reuses_a_sequence_number_is_refused() -> None:
    cluster = build(4, seed=61, batch_delay=0.0)
    sign0 = cluster.keys.signer(0)

    def reuse(sender: Any, to: Any, message: Any, rng: Any) -> list[Any]:
        if isinstance(message, PrePrepare) and message.view == 0 and message.sequence > 1:
            message = replace(message, sequence=1)
            message = replace(message, signature=sign0(material(message)))
        return [(to, message)]

    cluster.sim.set_byzantine(0, reuse)
    cluster.byzantine.add(0)
    cluster.put("c0", "a", "1")
    cluster.run_until_results(1, until=5.0)
    cluster.put("c0", "b", "2")
    cluster.run_until_results(2, until=15.0)
    assert len(cluster.results("c0")) == 2
    assert sum(cluster.replica(i).rejected["conflicting_pre_prepare"] for i in (1, 2, 3)) >= 3
    cluster.check_safety()


@pytest.mark.parametrize("seed", range(5))
def test_small_mutations_of_honest_messages_never_break_agreement(seed: int) -> None:
    """Every message of one replica per run is mutated with probability 1/2: sequence or
    view +-1, replayed old digests, altered batches, far view numbers, lying replies."""
    rng = random.Random(seed)
    n = rng.choice((4, 7))
    cluster = build(n, seed=70 + seed, clients=2, checkpoint_interval=2)
    for bad in rng.sample(range(n), (n - 1) // 3):
        cluster.sim.set_byzantine(bad, mutating(cluster.keys.signer(bad), 0.5))
        cluster.byzantine.add(bad)
    cluster.load_and_check(4, until=30.0)


def test_client_signatures_stop_a_primary_from_inventing_requests() -> None:
    """With ``verify_client``, a request inside a pre-prepare must carry its client's
    signature: the primary's forged request is refused and the primary replaced."""
    client_keys = FakeKeys(1, salt=b"clients")
    sign_client = client_keys.signer(0)

    def verify_client(client: Any, data: bytes, signature: bytes) -> bool:
        return client == "c0" and client_keys.verifier()(0, data, signature)

    cluster = build(4, seed=62, verify_client=verify_client)
    sim = cluster.sim
    sim.replace_machine("c0", factory=lambda: Client("c0", 4, now=sim.now, sign=sign_client))
    sim.restart("c0")
    sign0 = cluster.keys.signer(0)

    def invent(sender: Any, to: Any, message: Any, rng: Any) -> list[Any]:
        if isinstance(message, PrePrepare) and message.view == 0:
            forged = Request("c0", 10**12, b"transfer everything")
            batch = (*message.requests, forged)
            message = replace(message, requests=batch, digest=batch_digest(batch))
            message = replace(message, signature=sign0(material(message)))
        return [(to, message)]

    sim.set_byzantine(0, invent)
    cluster.byzantine.add(0)
    cluster.put("c0", "k", "v")
    cluster.run_until_results(1, until=10.0)
    assert len(cluster.results("c0")) == 1
    assert all(cluster.replica(i).rejected["bad_client_signature"] >= 1 for i in (1, 2, 3))
    assert all(
        e.request.op != b"transfer everything" for i in (1, 2, 3) for e in cluster.executed(i)
    )
    # An unsigned request straight from a client is refused too.
    sim.inject("c0", 1, Request("c0", 10**13, b"unsigned"))
    sim.run(until=sim.now + 0.5)
    assert cluster.replica(1).rejected["bad_client_signature"] >= 2
    cluster.check_safety()


@pytest.mark.parametrize("fault", ["silent", "lying"])
def test_a_faulty_designated_replier_costs_a_client_one_timeout_not_one_per_request(
    fault: str,
) -> None:
    """In view 0 of n = 4, replicas 0 and 1 are the f + 1 designated repliers. Replica 1
    drops (or falsifies) its replies: the client's first request times out and goes to all
    four, the two others then answer it, and the following requests go to all four at once,
    so they complete without another timeout."""
    cluster = build(4, seed=70)

    def spoil(sender: Any, to: Any, message: Any, rng: Any) -> list[Any]:
        if isinstance(message, Reply):
            if fault == "silent":
                return []
            message = replace(message, result=b"forged")
        return [(to, message)]

    cluster.sim.set_byzantine(1, spoil)
    cluster.byzantine.add(1)
    for k in range(3):
        cluster.put("c0", f"k{k}", "v")
    cluster.run_until_results(3, until=10.0)
    results = cluster.results("c0")
    assert [decode_result(r.result) for r in results] == [["ok", None]] * 3
    assert cluster.client("c0").retransmissions == 1
    assert cluster.client("c0").broadcast_left == 32 - 2  # the two after the timeout went to all
    cluster.check_safety()
