"""PBFT in the simulator, normal case: the three-phase message pattern, batching,
checkpoints and garbage collection, state transfer and exactly-once execution."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from zmqcomm.patterns.pbft import (
    Executed,
    Prepare,
    PrePrepare,
    Request,
    StateSnapshot,
    batch_digest,
    decode_result,
    encode_op,
    material,
)
from zmqcomm.patterns.pbft.messages import DOMAIN
from zmqcomm.sim import LinkModel, Network, fixed, uniform

from .harness import build


@pytest.mark.parametrize("reply_all", [False, True])
@pytest.mark.parametrize("n", [4, 7, 10])
def test_normal_case_message_counts_follow_the_three_phases(n: int, reply_all: bool) -> None:
    """One request, one batch. The paper's pattern, counted per message type:
    1 REQUEST (client to primary), n-1 PRE-PREPAREs (primary to backups),
    (n-1)*(n-1) PREPAREs (each backup to every other replica), n*(n-1) COMMITs (every
    replica to every other), f+1 REPLYs from the designated repliers (n, as in the paper,
    with ``reply_all``); no view change, no retransmission."""
    f = (n - 1) // 3
    cluster = build(n, seed=n, checkpoint_interval=64, reply_all=reply_all)
    cluster.count_messages()
    cluster.put("c0", "k", "v")
    cluster.run_until_results(1, until=5.0)
    cluster.sim.run(until=cluster.sim.now + 2.0)  # let every reply and timer settle
    assert dict(cluster.sent) == {
        "Request": 1,
        "PrePrepare": n - 1,
        "Prepare": (n - 1) * (n - 1),
        "Commit": n * (n - 1),
        "Reply": n if reply_all else f + 1,
    }
    (result,) = cluster.results("c0")
    assert decode_result(result.result) == ["ok", None]
    for i in range(n):
        assert [e.sequence for e in cluster.executed(i)] == [1]
        assert cluster.replica(i).rejected == {}
    cluster.check_safety()


def test_normal_case_with_ed25519_signatures() -> None:
    cluster = build(4, seed=1, ed25519=True)
    for k in range(5):
        cluster.put("c0", f"k{k}", "v")
    cluster.run_until_results(5, until=5.0)
    assert len(cluster.results("c0")) == 5
    assert all(cluster.replica(i).last_executed == 5 for i in range(4))
    cluster.check_safety()


def test_primary_batches_concurrent_requests() -> None:
    clients = 12
    cluster = build(4, seed=2, clients=clients, max_batch=5, batch_delay=0.005)
    for c in cluster.clients:
        cluster.put(c, c, "v")
    cluster.run_until_results(1, until=5.0)
    batches = {}
    for e in cluster.executed(1):
        batches.setdefault(e.sequence, []).append(e.request.client)
    assert sum(len(b) for b in batches.values()) == clients
    assert all(len(b) <= 5 for b in batches.values())
    assert len(batches) == 3  # 12 requests in batches of at most 5
    cluster.check_safety()


def test_an_idle_primary_proposes_at_once_a_busy_one_waits_to_fill_a_batch() -> None:
    # batch_delay only pays off when a batch is already running; alone, a request would just
    # wait. Links take 1 ms, so the five hops of an operation take about 5 ms.
    delay = 0.2
    cluster = build(4, seed=4, clients=2, batch_delay=delay)
    cluster.put("c0", "a", "1")
    cluster.run_until_results(1, until=5.0, clients=["c0"])
    assert cluster.sim.now < delay / 4
    # c1's request reaches the primary while c0's second one is still being agreed on.
    started = cluster.sim.now
    cluster.put("c0", "b", "2")
    cluster.put("c1", "c", "3", at=started + 0.0015)
    cluster.run_until_results(1, until=5.0, clients=["c1"])
    assert cluster.sim.now - started >= delay
    sequences = {e.request.client: e.sequence for e in cluster.executed(1)[1:]}
    assert sequences["c0"] != sequences["c1"]
    cluster.check_safety()


def test_checkpoints_keep_the_log_and_the_store_bounded() -> None:
    cluster = build(4, seed=3, checkpoint_interval=4, watermark_window=8, batch_delay=0.0)
    sizes = []
    for k in range(60):
        cluster.put("c0", f"k{k}", "v", at=0.01 * k)
    for t in range(1, 40):
        cluster.sim.run(until=0.05 * t)
        sizes.append(max(cluster.replica(i).log_size() for i in range(4)))
    cluster.run_until_results(60, until=10.0)
    assert len(cluster.results("c0")) == 60
    for i in range(4):
        replica = cluster.replica(i)
        assert replica.stable.sequence == 60 - 60 % 4
        assert replica.log.low == replica.stable.sequence
        store = cluster.stores[i]
        assert all(seq > replica.stable.sequence for _, seq, _ in store.votes)
        assert all(seq > replica.stable.sequence for seq, _ in store.entries)
        assert store.checkpoint is not None and store.checkpoint.sequence == 60
    # Within the window L = 8: at most ~(pre-prepare + n prepares + n commits) per sequence.
    assert max(sizes) <= 8 * (1 + 4 + 4) + 3 * 4 + 16
    cluster.check_safety()


def test_state_transfer_brings_back_a_partitioned_replica() -> None:
    cluster = build(4, seed=4, checkpoint_interval=4, watermark_window=8, batch_delay=0.0)
    sim = cluster.sim
    sim.network.partition([[0, 1, 2, "c0"], [3]])
    for k in range(30):
        cluster.put("c0", f"k{k}", f"v{k}")
    cluster.run_until_results(30, until=10.0)
    assert cluster.replica(3).last_executed == 0
    sim.network.heal()
    for k in range(10):
        cluster.put("c0", f"late{k}", "v")
    cluster.run_until_results(40, until=20.0)
    sim.run(until=sim.now + 2.0)
    lagging, other = cluster.replica(3), cluster.replica(0)
    assert cluster.transferred(3), "replica 3 should have fetched a checkpoint"
    assert lagging.last_executed == other.last_executed == 40
    assert lagging.sm.snapshot() == other.sm.snapshot()  # type: ignore[attr-defined]
    assert lagging.replies == other.replies
    cluster.check_safety()


def test_a_state_snapshot_that_does_not_match_the_certified_digest_is_refused() -> None:
    cluster = build(4, seed=5, checkpoint_interval=4, watermark_window=8, batch_delay=0.0)
    sim = cluster.sim
    sim.network.partition([[0, 1, 2, "c0"], [3]])

    def corrupt(sender: Any, to: Any, message: Any, rng: Any) -> list[Any]:
        if isinstance(message, StateSnapshot):
            return [(to, replace(message, snapshot=message.snapshot + b"x"))]
        return [(to, message)]

    sim.set_byzantine(0, corrupt)
    cluster.byzantine.add(0)
    for k in range(20):
        cluster.put("c0", f"k{k}", "v")
    cluster.run_until_results(20, until=10.0)
    sim.network.heal()
    for k in range(8):
        cluster.put("c0", f"late{k}", "v")
    cluster.run_until_results(28, until=20.0)
    sim.run(until=sim.now + 3.0)
    lagging = cluster.replica(3)
    assert lagging.rejected["wrong_state_digest"] >= 1
    assert lagging.last_executed == cluster.replica(1).last_executed  # fetched elsewhere
    cluster.check_safety()


def test_retransmitted_request_is_answered_from_the_reply_cache() -> None:
    cluster = build(4, seed=6)
    cluster.put("c0", "k", "v", at=1.0)
    cluster.run_until_results(1, until=5.0)
    sim = cluster.sim
    sim.run(until=sim.now + 1.0)
    (done,) = cluster.results("c0")
    request = Request("c0", done.timestamp, encode_op("put", b"k", b"v"))
    cluster.count_messages()
    for i in range(4):
        sim.inject("c0", i, request)
    sim.run(until=sim.now + 1.0)
    assert dict(cluster.sent) == {"Reply": 4}  # answered from the cache, nothing else
    for i in range(4):
        assert len(cluster.executed(i)) == 1  # executed once only
    # An older timestamp is dropped without a reply.
    sim.inject("c0", 1, Request("c0", done.timestamp - 1, b"old"))
    sim.run(until=sim.now + 1.0)
    assert cluster.replica(1).rejected["old_request"] == 1
    cluster.check_safety()


def test_duplicate_request_in_two_batches_executes_once() -> None:
    """A faulty primary proposing the same request twice cannot make it run twice."""
    cluster = build(4, seed=7, batch_delay=0.0)
    seen: list[PrePrepare] = []
    sign = cluster.keys.signer(0)

    def duplicate(sender: Any, to: Any, message: Any, rng: Any) -> list[Any]:
        if isinstance(message, PrePrepare) and message.sequence == 2 and seen:
            batch = seen[0].requests + message.requests
            changed = replace(message, requests=batch, digest=batch_digest(batch))
            return [(to, replace(changed, signature=sign(material(changed))))]
        if isinstance(message, PrePrepare) and not seen:
            seen.append(message)
        return [(to, message)]

    cluster.sim.set_byzantine(0, duplicate)
    cluster.byzantine.add(0)
    cluster.put("c0", "a", "1")
    cluster.run_until_results(1, until=5.0)
    cluster.put("c0", "b", "2")
    cluster.run_until_results(2, until=10.0)
    cluster.sim.run(until=cluster.sim.now + 3.0)
    for i in (1, 2, 3):
        keys = [(e.request.client, e.request.timestamp) for e in cluster.executed(i)]
        assert len(keys) == len(set(keys)) == 2
    cluster.check_safety()


def test_a_faulty_operation_gives_an_error_result_not_a_crash() -> None:
    cluster = build(4, seed=8)
    cluster.request("c0", b"\xc1 not msgpack")
    cluster.put("c0", "k", "v")
    cluster.run_until_results(2, until=5.0)
    first, second = cluster.results("c0")
    assert decode_result(first.result)[0] == "error"
    assert decode_result(second.result) == ["ok", None]
    assert all(isinstance(e, Executed) for e in cluster.executed(0))


def test_lossy_reordering_network_still_commits_everything() -> None:
    network = Network(LinkModel(latency=uniform(0.001, 0.05), loss=0.05, duplicate=0.05))
    cluster = build(7, seed=9, clients=3, network=network)
    cluster.load_and_check(5, until=30.0)


def test_same_seed_same_run() -> None:
    def run() -> str:
        network = Network(LinkModel(latency=fixed(0.002), loss=0.1))
        cluster = build(4, seed=10, network=network, trace=True)
        for k in range(5):
            cluster.put("c0", f"k{k}", "v")
        cluster.run_until_results(5, until=10.0)
        return cluster.sim.trace_digest()

    assert run() == run()


def test_the_primary_bounds_a_batch_by_bytes_as_well_as_by_count() -> None:
    # Batches were bounded by count only: one client's large operations filled PRE-PREPAREs
    # of tens of MiB, past the frame limit, and stalled the cluster in view changes.
    cluster = build(
        4,
        seed=12,
        clients=6,
        max_batch=16,
        batch_delay=0.05,
        max_request_bytes=200,
        max_batch_bytes=300,
    )
    proposed: list[PrePrepare] = []

    def watch(sender: Any, to: Any, message: Any, rng: Any) -> list[Any]:
        if isinstance(message, PrePrepare) and to == 1:
            proposed.append(message)
        return [(to, message)]

    cluster.sim.set_byzantine(0, watch)  # an honest primary, watched
    for client in cluster.clients:
        cluster.put(client, "k", "v" * 100)
    cluster.run_until_results(1, until=10.0)
    assert len(proposed) >= 3
    assert all(sum(len(r.op) for r in pp.requests) <= 300 for pp in proposed)
    cluster.check_safety()


def test_a_request_over_the_size_limit_is_refused_and_a_large_batch_too() -> None:
    cluster = build(4, seed=13, max_request_bytes=64, max_batch_bytes=128)
    cluster.put("c0", "k", "v" * 100)
    cluster.sim.run(until=1.0)
    # The primary at once, then everyone when the client retransmits to all.
    assert all(cluster.replica(i).rejected["request_too_large"] >= 1 for i in range(4))
    assert cluster.results("c0") == [] and not any(cluster.executed(i) for i in range(4))
    backup = cluster.replica(1)
    requests = tuple(Request(f"x{n}", 1, encode_op("put", b"k", b"v" * 40)) for n in range(3))
    oversized = PrePrepare(0, 1, batch_digest(requests), requests, 0)
    oversized = replace(oversized, signature=cluster.keys.signer(0)(material(oversized)))
    assert backup.on_message(0, oversized, now=cluster.sim.now) == []
    assert backup.rejected["batch_too_large"] == 1


#: What the signed bytes of every PREPARE start with: the domain, then the kind.
PREPARE_DOMAIN = DOMAIN + b"Prepare\x00"


def _count_prepare_checks(cluster: Any) -> list[int]:
    """Wrap every replica's verifier; the list counts, per replica, checks of PREPAREs."""
    counts = [0] * cluster.n
    for i in range(cluster.n):
        replica = cluster.replica(i)
        inner = replica.verify

        def verify(sender: int, data: bytes, signature: bytes, i: int = i, inner: Any = inner):
            if data.startswith(PREPARE_DOMAIN):
                counts[i] += 1
            return inner(sender, data, signature)

        replica.verify = verify
    return counts


def test_a_prepare_after_the_certificate_is_complete_is_not_verified() -> None:
    """n = 4, one request: each backup is prepared by its own PREPARE and one other, the
    primary by two; the third PREPARE each receives changes nothing, so its signature is
    not checked (old code: all 9 PREPAREs were verified)."""
    cluster = build(4, seed=5, checkpoint_interval=64)
    checks = _count_prepare_checks(cluster)
    cluster.put("c0", "k", "v")
    cluster.run_until_results(1, until=5.0)
    cluster.sim.run(until=cluster.sim.now + 1.0)
    assert sum(checks) == 5  # 9 prepares sent, 4 of them after a certificate
    assert [cluster.replica(i).surplus_prepares for i in range(4)] == [1, 1, 1, 1]
    for i in range(4):
        entry = cluster.replica(i).log.entries[1]
        assert entry.committed and len(cluster.replica(i).log.matching_prepares(entry, 0)) == 2
        assert cluster.replica(i).rejected == {}
    cluster.check_safety()


def test_a_surplus_prepare_retransmitted_still_gets_our_echo() -> None:
    """A replica retransmitting its PREPARE for an entry we committed gets our own messages
    back, although its PREPARE came after our certificate and was never stored."""
    cluster = build(4, seed=5, checkpoint_interval=64)
    cluster.put("c0", "k", "v")
    cluster.run_until_results(1, until=5.0)
    backup = cluster.replica(1)
    entry = backup.log.entries[1]
    (late,) = [r for r in (2, 3) if r not in entry.prepares]
    assert entry.pre_prepare is not None
    prepare = Prepare(0, 1, entry.pre_prepare.digest, late)
    prepare = replace(prepare, signature=cluster.keys.signer(late)(material(prepare)))
    assert late in entry.surplus  # its first copy came during the run, unanswered
    actions = backup.on_message(late, prepare, now=cluster.sim.now + 1.0)
    echoed = [type(a.message).__name__ for a in actions if a.to == late]
    assert echoed == ["Prepare", "Commit"]
    assert late not in entry.prepares and backup.rejected == {}


def test_a_late_prepare_in_a_loss_free_run_is_not_answered() -> None:
    """Replica 3's PREPARE reaches replica 1 after 1 committed. Nothing was lost, so 1 must
    not answer it: echoing a first surplus copy made replicas send about a fifth more
    messages whenever latency varied (and the echoes drew echoes back)."""
    network = Network(LinkModel(latency=fixed(0.001)))
    network.set_link(3, 1, LinkModel(latency=fixed(0.05)))
    cluster = build(4, seed=5, network=network, checkpoint_interval=64)
    cluster.count_messages()
    cluster.put("c0", "k", "v")
    cluster.run_until_results(1, until=5.0)
    cluster.sim.run(until=cluster.sim.now + 0.2)  # well inside the retransmission timer
    assert cluster.replica(1).surplus_prepares == 1
    assert cluster.sent["Prepare"] == 9 and cluster.sent["Commit"] == 12
    assert all(cluster.replica(i).rejected == {} for i in range(4))
    cluster.check_safety()
