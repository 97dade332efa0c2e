"""Unit tests of the pure PBFT pieces: quorums, messages, log predicates, the O set,
certificate checks, the key-value store, the memory store and the client."""

from __future__ import annotations

import itertools
import math
from dataclasses import fields as dataclass_fields
from dataclasses import replace

import msgpack
import pytest

from zmqcomm.actions import Send
from zmqcomm.errors import RemoteProtocolError, UsageError
from zmqcomm.patterns.pbft import (
    NULL_DIGEST,
    Checkpoint,
    Client,
    Commit,
    KeyValueStore,
    MemoryStore,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Quorum,
    Replica,
    Reply,
    Request,
    Result,
    SimulatedCrash,
    Status,
    ViewChange,
    batch_digest,
    decode,
    decode_result,
    encode,
    encode_op,
    material,
    messages,
)
from zmqcomm.patterns.pbft.log import MessageLog
from zmqcomm.patterns.pbft.viewchange import (
    check_new_view,
    check_view_change,
    compute_plan,
    make_new_view,
    make_view_change,
)

from .harness import FakeKeys, build

# -- quorums ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(4, 32))
def test_quorum_table(n: int) -> None:
    q = Quorum(n)
    assert q.f == (n - 1) // 3
    assert q.quorum == math.ceil((n + q.f + 1) / 2)
    # Two quorums share at least f+1 replicas, so at least one correct one...
    assert 2 * q.quorum - n >= q.f + 1
    # ...and the correct replicas alone still form a quorum (liveness).
    assert q.quorum <= n - q.f
    assert q.weak == q.f + 1
    if n == 3 * q.f + 1:
        assert q.quorum == 2 * q.f + 1


@pytest.mark.parametrize("n", [3, 32, 0, -4])
def test_committee_size_out_of_range_is_a_usage_error(n: int) -> None:
    with pytest.raises(UsageError, match="4 to 31"):
        Quorum(n)


def test_primary_rotates_with_the_view() -> None:
    q = Quorum(7)
    assert [q.primary(v) for v in range(9)] == [0, 1, 2, 3, 4, 5, 6, 0, 1]


# -- messages -----------------------------------------------------------------------------------

KEYS = FakeKeys(4)
REQ = Request("c0", 7, encode_op("put", b"k", b"v"))


def signed(message: object, replica: int) -> object:
    return replace(message, signature=KEYS.signer(replica)(material(message)))  # type: ignore[type-var]


def test_every_message_round_trips_through_the_codec() -> None:
    pp = signed(PrePrepare(0, 1, batch_digest((REQ,)), (REQ,), 0), 0)
    prepare = signed(Prepare(0, 1, batch_digest((REQ,)), 1), 1)
    cp = signed(Checkpoint(16, b"d" * 32, 2), 2)
    proof = PreparedProof(pp, (prepare,))  # type: ignore[arg-type]
    vc = ViewChange(1, 16, (cp,), (proof,), 3, b"s")  # type: ignore[arg-type]
    messages = [
        REQ,
        pp,
        prepare,
        Commit(0, 1, b"x" * 32, 2),
        cp,
        proof,
        vc,
        NewView(1, (vc,), (pp,), 1, b"sig"),
        Reply(0, 7, "c0", 1, b"r"),
        Status(0, 12, 3),
    ]  # type: ignore[arg-type]
    for message in messages:
        assert decode(encode(message)) == message
        assert encode(message) == _reference_encode(message)
        assert material(message) == _reference_material(message)


def _reference_encode(value: object) -> bytes:
    """The codec written the obvious way: every message an ExtType of its fields."""

    def default(obj: object) -> object:
        code = messages._CODE[type(obj)]
        fields = [getattr(obj, f.name) for f in dataclass_fields(obj)]  # type: ignore[arg-type]
        return msgpack.ExtType(code, msgpack.packb(fields, default=default, use_bin_type=True))

    return bytes(msgpack.packb(value, default=default, use_bin_type=True))


def _reference_material(message: object) -> bytes:
    def plain(value: object) -> object:
        if type(value) in messages._CODE:
            marker = msgpack.ExtType(messages._CODE[type(value)], b"")
            return [marker, *(plain(getattr(value, f.name)) for f in dataclass_fields(value))]  # type: ignore[arg-type]
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    unsigned = {"signature", "requests"} if isinstance(message, PrePrepare) else {"signature"}
    names = [f.name for f in dataclass_fields(message) if f.name not in unsigned]  # type: ignore[arg-type]
    kind = type(message).__name__.encode()
    packed = msgpack.packb([plain(getattr(message, n)) for n in names], use_bin_type=True)
    return messages.DOMAIN + kind + b"\x00" + packed


def test_a_big_message_is_packed_once_and_a_decoded_one_keeps_its_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = tuple(Request(f"c{i}", 1, b"op") for i in range(50))
    pp = PrePrepare(0, 1, batch_digest(batch), batch, 0)
    first = encode(pp)
    calls = []
    monkeypatch.setattr(msgpack, "packb", lambda *a, **k: calls.append(1))
    assert encode(pp) is first and not calls  # the wire and the store share one packing
    monkeypatch.undo()
    wire = first[:1] + first[1:]  # equal bytes in another object, as off the socket
    received = decode(wire)
    assert encode(received) is wire  # a backup stores what it received, without repacking
    # Equal but separate objects, and entries pushed out of the memo, are packed afresh.
    for i in range(messages._RECENT_MAX + 1):
        encode(replace(pp, sequence=i + 2))
    assert encode(pp) == first and encode(replace(pp)) == first


@pytest.mark.parametrize(
    "garbage", [b"", b"\xc1", b"\xd4\x7f\x00", b"\x93\x01", b"\xd5\x02\x91\x01"]
)
def test_decoding_garbage_raises_a_remote_protocol_error(garbage: bytes) -> None:
    # Empty, reserved byte, unknown extension, truncated array, a Prepare with one field.
    with pytest.raises(RemoteProtocolError):
        decode(garbage)


def test_signing_material_ignores_the_signature_and_names_the_kind() -> None:
    prepare = Prepare(0, 1, b"d" * 32, 1)
    commit = Commit(0, 1, b"d" * 32, 1)
    assert material(prepare) == material(signed(prepare, 1))
    assert material(prepare) != material(commit)
    assert material(prepare) != material(Prepare(0, 2, b"d" * 32, 1))


def test_batch_digest_depends_on_content_and_order() -> None:
    other = Request("c1", 1, b"op")
    assert batch_digest((REQ, other)) != batch_digest((other, REQ))
    assert batch_digest(()) == NULL_DIGEST
    assert batch_digest((REQ,)) != NULL_DIGEST
    # Every signed field counts, typed (client "1" is not client 1); the signature does not.
    variants = [
        Request("c1", 1, b"op"),
        Request("1", 1, b"op"),
        Request(1, 1, b"op"),
        Request("1", 2, b"op"),
        Request("1", 1, b"op2"),
    ]
    assert len({batch_digest((r,)) for r in variants}) == len(variants)
    assert batch_digest((replace(REQ, signature=b"s"),)) == batch_digest((REQ,))
    # Fields are framed: moving bytes from one field to the next changes the digest.
    assert batch_digest((Request("ab", 1, b"c"),)) != batch_digest((Request("a", 1, b"bc"),))


# -- log predicates -----------------------------------------------------------------------------


def entry_with(
    n: int, prepares: list[int], commits: list[int], digest: bytes
) -> tuple[MessageLog, object]:
    log = MessageLog(Quorum(n), 16)
    entry = log.entry(1)
    entry.pre_prepare = PrePrepare(0, 1, digest, (), 0)
    for r in prepares:
        entry.prepares[r] = Prepare(0, 1, digest, r)
    for r in commits:
        entry.commits[r] = Commit(0, 1, digest, r)
    return log, entry


def test_prepared_needs_quorum_minus_one_backup_prepares() -> None:
    log, entry = entry_with(4, [1], [], NULL_DIGEST)
    assert not log.prepared(entry, 0)  # type: ignore[arg-type]
    log, entry = entry_with(4, [1, 2], [], NULL_DIGEST)
    assert log.prepared(entry, 0)  # type: ignore[arg-type]
    # A prepare claiming to be from the primary never counts.
    log, entry = entry_with(4, [0, 1], [], NULL_DIGEST)
    assert not log.prepared(entry, 0)  # type: ignore[arg-type]


def test_prepares_for_another_digest_do_not_count() -> None:
    log, entry = entry_with(4, [1], [], NULL_DIGEST)
    entry.prepares[2] = Prepare(0, 1, b"x" * 32, 2)  # type: ignore[attr-defined]
    assert not log.prepared(entry, 0)  # type: ignore[arg-type]


def test_committed_local_needs_prepared_and_a_quorum_of_commits() -> None:
    log, entry = entry_with(7, [1, 2, 3, 4], [0, 1, 2, 3], NULL_DIGEST)
    assert log.prepared(entry, 0)  # type: ignore[arg-type]
    assert not log.committed_local(entry, 0)  # type: ignore[arg-type]
    entry.commits[5] = Commit(0, 1, NULL_DIGEST, 5)  # type: ignore[attr-defined]
    assert log.committed_local(entry, 0)  # type: ignore[arg-type]
    log, entry = entry_with(7, [1, 2, 3], [0, 1, 2, 3, 4], NULL_DIGEST)
    assert not log.committed_local(entry, 0)  # type: ignore[arg-type]


def test_watermarks_and_garbage_collection() -> None:
    log = MessageLog(Quorum(4), 8)
    assert log.in_window(1) and log.in_window(8) and not log.in_window(9)
    for s in range(1, 9):
        log.entry(s)
    log.collect_garbage(4)
    assert sorted(log.entries) == [5, 6, 7, 8]
    assert not log.in_window(4) and log.in_window(12) and not log.in_window(13)


# -- view changes and the O set ------------------------------------------------------------------


def certificate(n: int, view: int, sequence: int, batch: tuple[Request, ...]) -> PreparedProof:
    q = Quorum(n)
    keys = FakeKeys(n)
    primary = q.primary(view)
    digest = batch_digest(batch)
    pp = PrePrepare(view, sequence, digest, batch, primary)
    pp = PrePrepare(view, sequence, digest, batch, primary, keys.signer(primary)(material(pp)))
    backups = [r for r in range(n) if r != primary][: q.quorum - 1]
    prepares = []
    for r in backups:
        p = Prepare(view, sequence, digest, r)
        prepares.append(Prepare(view, sequence, digest, r, keys.signer(r)(material(p))))
    return PreparedProof(pp, tuple(prepares))


def checkpoint_proof(n: int, sequence: int, digest: bytes) -> tuple[Checkpoint, ...]:
    keys = FakeKeys(n)
    out = []
    for r in range(Quorum(n).quorum):
        c = Checkpoint(sequence, digest, r)
        out.append(Checkpoint(sequence, digest, r, keys.signer(r)(material(c))))
    return tuple(out)


def view_change(
    n: int, new_view: int, replica: int, stable: int, certs: list[PreparedProof]
) -> ViewChange:
    proof = checkpoint_proof(n, stable, b"s" * 32) if stable else ()
    return make_view_change(
        new_view,
        stable=stable,
        proof=proof,
        certificates=certs,
        replica=replica,
        sign=FakeKeys(n).signer(replica),
    )


def test_o_set_takes_min_s_max_s_highest_view_and_nulls_for_gaps() -> None:
    a = (Request("a", 1, b"1"),)
    b = (Request("b", 1, b"2"),)
    c = (Request("c", 1, b"3"),)
    vcs = [
        view_change(4, 3, 0, 4, [certificate(4, 1, 5, a), certificate(4, 0, 8, c)]),
        view_change(4, 3, 1, 0, [certificate(4, 0, 3, c), certificate(4, 2, 5, b)]),
        view_change(4, 3, 2, 4, []),
    ]
    plan = compute_plan(vcs)
    assert plan.stable == 4
    assert [s for s, _, _ in plan.slots] == [5, 6, 7, 8]
    slots = {s: (d, batch) for s, d, batch in plan.slots}
    assert slots[5] == (batch_digest(b), b)  # view 2 beats view 1
    assert slots[6] == (NULL_DIGEST, ()) and slots[7] == (NULL_DIGEST, ())
    assert slots[8] == (batch_digest(c), c)  # below min-s (seq 3) is ignored


@pytest.mark.parametrize("n", [4, 7])
def test_new_view_from_any_quorum_subset_contains_every_committed_request(n: int) -> None:
    """A request committed at sequence 1 was prepared by a quorum; every quorum of
    VIEW-CHANGEs intersects it, so every possible NEW-VIEW re-proposes the request."""
    q = Quorum(n)
    batch = (Request("c0", 1, b"op"),)
    cert = certificate(n, 0, 1, batch)
    prepared_by = set(range(q.quorum))
    vcs = [view_change(n, 1, r, 0, [cert] if r in prepared_by else []) for r in range(n)]
    for subset in itertools.combinations(vcs, q.quorum):
        nv, plan = make_new_view(q, 1, subset, FakeKeys(n).signer(1))
        assert plan.slots[0] == (1, batch_digest(batch), batch)
        checked, reason = check_new_view(q, FakeKeys(n).verifier(), nv, window=32, max_batch=16)
        assert checked == plan, reason


def test_a_new_view_with_a_tampered_o_set_is_refused() -> None:
    n, keys = 4, FakeKeys(4)
    q = Quorum(n)
    batch = (Request("c0", 1, b"op"),)
    vcs = [view_change(n, 1, r, 0, [certificate(n, 0, 1, batch)]) for r in range(3)]
    nv, _ = make_new_view(q, 1, vcs, keys.signer(1))
    null = PrePrepare(1, 1, NULL_DIGEST, (), 1)
    null = replace(null, signature=keys.signer(1)(material(null)))
    variants = {
        "new_view_wrong_o": replace(nv, pre_prepares=(null,)),
        "new_view_small_set": replace(nv, view_changes=nv.view_changes[:2], pre_prepares=()),
        "new_view_bad_set": replace(nv, view_changes=(vcs[0], vcs[0], vcs[1])),
    }
    for reason, unsigned in variants.items():
        variant = replace(unsigned, signature=keys.signer(1)(material(unsigned)))
        plan, got = check_new_view(q, keys.verifier(), variant, window=32, max_batch=16)
        assert plan is None and got == reason
    forged = replace(nv, signature=b"x" * 32)
    assert check_new_view(q, keys.verifier(), forged, window=32, max_batch=16) == (
        None,
        "bad_signature",
    )


def test_view_change_certificate_checks() -> None:
    n, keys = 4, FakeKeys(4)
    q = Quorum(n)
    batch = (Request("c0", 1, b"op"),)
    good = certificate(n, 0, 1, batch)

    def check(cert: PreparedProof, new_view: int = 1, stable: int = 0) -> str | None:
        vc = view_change(n, new_view, 3, stable, [cert])
        return check_view_change(q, keys.verifier(), vc, window=8, max_batch=16)

    assert check(good) is None
    assert check(replace(good, prepares=good.prepares[:1])) == "bad_prepared_certificate"
    assert check(certificate(n, 1, 1, batch)) == "bad_prepared_certificate"  # not before v
    assert check(certificate(n, 0, 9, batch)) == "bad_prepared_certificate"  # beyond H
    assert check(certificate(n, 0, 9, batch), stable=8) is None
    bad_proof = replace(view_change(n, 1, 3, 8, []), proof=checkpoint_proof(n, 8, b"s" * 32)[:2])
    bad_proof = replace(bad_proof, signature=keys.signer(3)(material(bad_proof)))
    assert check_view_change(q, keys.verifier(), bad_proof, window=8, max_batch=16) == (
        "bad_checkpoint_proof"
    )


# -- state machine and store ---------------------------------------------------------------------


def test_key_value_store_ops_and_errors() -> None:
    kv = KeyValueStore()
    assert decode_result(kv.apply(encode_op("put", b"a", b"1"))) == ["ok", None]
    assert decode_result(kv.apply(encode_op("put", b"a", b"2"))) == ["ok", b"1"]
    assert decode_result(kv.apply(encode_op("get", b"a"))) == ["ok", b"2"]
    assert decode_result(kv.apply(encode_op("delete", b"a"))) == ["ok", b"2"]
    assert decode_result(kv.apply(encode_op("get", b"a"))) == ["ok", None]
    for bad in (
        b"\xc1",
        encode_op("frob", b"a"),
        encode_op("put", b"a"),
        encode_op(1, 2),
        encode_op("put", "str", b"v"),
        b"\x80",
    ):
        assert decode_result(kv.apply(bad))[0] == "error"
    assert kv.data == {}


def test_key_value_snapshot_round_trip_and_digest() -> None:
    ops = [encode_op("put", k, k * 2) for k in (b"z", b"x", b"y")]
    ops += [
        encode_op("delete", b"x"),
        encode_op("put", b"x", b"again"),
        encode_op("put", b"z", b""),
    ]
    a = KeyValueStore()
    for op in ops:
        a.apply(op)
    # A restored machine goes on exactly as the one it came from, so replicas that fetched
    # the state agree with those that executed it at every later checkpoint.
    c = KeyValueStore()
    c.restore(a.snapshot())
    assert c.data == a.data and c.snapshot() == a.snapshot()
    later = [encode_op("put", b"w", b"1"), encode_op("delete", b"y"), encode_op("put", b"y", b"2")]
    for op in later:
        a.apply(op)
        c.apply(op)
    assert c.snapshot() == a.snapshot()
    c.apply(encode_op("delete", b"x"))
    assert c.digest() != a.digest()


@pytest.mark.parametrize(
    "snapshot",
    [b"\xc1", msgpack.packb([[b"k", b"v"]]), msgpack.packb({b"k": 1}), msgpack.packb({1: b"v"})],
)
def test_key_value_restore_refuses_what_is_not_its_snapshot(snapshot: bytes) -> None:
    kv = KeyValueStore()
    kv.apply(encode_op("put", b"k", b"v"))
    with pytest.raises(ValueError, match="not a key-value snapshot"):
        kv.restore(snapshot)
    assert kv.data == {b"k": b"v"}  # unchanged


def test_memory_store_fail_after_crashes_at_the_kth_write() -> None:
    store = MemoryStore()
    store.fail_after(3)
    store.save_view(1, True)
    store.save_vote(1, 1, "prepare", b"d")
    with pytest.raises(SimulatedCrash):
        store.save_vote(1, 2, "prepare", b"e")
    assert store.load_votes() == {(1, 1, "prepare"): b"d"}  # the crashing write did not land
    store.save_vote(1, 2, "prepare", b"e")  # one-shot
    store.fail_after(1, after_write=True)
    with pytest.raises(SimulatedCrash):
        store.save_view(2, False)
    assert store.load_view() == (2, False)
    store.discard_through(1)
    assert store.load_votes() == {(1, 2, "prepare"): b"e"}


# -- client --------------------------------------------------------------------------------------


def reply(replica: int, ts: int, result: bytes, view: int = 0) -> Reply:
    return Reply(view, ts, "c0", replica, result)


def test_client_accepts_only_f_plus_one_matching_replies() -> None:
    client = Client("c0", 7, now=0.0)
    (send,) = client.request(b"op", now=0.0)
    ts = send.message.timestamp
    assert send.to == 0
    assert client.on_message(1, reply(1, ts, b"a"), now=0.1) == []
    assert client.on_message(2, reply(2, ts, b"b", view=9), now=0.1) == []
    assert client.on_message(3, reply(3, ts, b"b", view=9), now=0.1) == []
    assert client.on_message(3, reply(3, ts, b"a"), now=0.1) == []  # first reply counts
    out = client.on_message(4, reply(4, ts, b"b", view=9), now=0.1)
    assert out == [Result(ts, b"b")]
    assert client.view == 9  # f+1 = 3 replies say 9, so a correct replica is there
    assert client.on_message(5, reply(5, ts, b"b"), now=0.2) == []


def test_after_a_timeout_the_client_sends_a_few_requests_to_every_replica() -> None:
    client = Client("c0", 4, now=0.0, timeout=0.5, broadcast_after_timeout=2)

    def targets(actions: list[object]) -> list[int]:
        return sorted(a.to for a in actions if isinstance(a, Send))  # type: ignore[misc]

    def answer(now: float) -> list[object]:
        ts = client.current.timestamp  # type: ignore[union-attr]
        client.on_message(0, reply(0, ts, b"ok"), now=now)
        return client.on_message(1, reply(1, ts, b"ok"), now=now)

    assert targets(client.request(b"a", now=0.0)) == [0]  # the primary only
    for op in (b"b", b"c", b"d"):
        assert client.request(op, now=0.0) == []  # queued behind "a"
    assert targets(client.on_timer(now=1.0)) == [0, 1, 2, 3]  # "a" timed out
    assert targets(answer(1.1)) == [0, 1, 2, 3]  # "b" goes to all
    assert targets(answer(1.2)) == [0, 1, 2, 3]  # "c" too
    assert targets(answer(1.3)) == [0]  # "d": back to the primary
    assert client.retransmissions == 1 and client.broadcast_left == 0


@pytest.mark.parametrize("n", [4, 7, 10])
def test_designated_repliers_are_the_primary_and_the_f_after_it(n: int) -> None:
    f = (n - 1) // 3
    keys = FakeKeys(n)
    replicas = [
        Replica(
            i,
            n,
            state_machine=KeyValueStore(),
            store=MemoryStore(),
            sign=keys.signer(i),
            verify=keys.verifier(),
            now=0.0,
        )
        for i in range(n)
    ]
    for view in range(2 * n + 1):
        chosen = {r.id for r in replicas if r.designated_replier(view)}
        assert chosen == {(view + k) % n for k in range(f + 1)}  # wraps past replica n-1


def test_client_rejects_forged_and_stale_replies() -> None:
    client = Client("c0", 4, now=0.0)
    (send,) = client.request(b"op", now=0.0)
    ts = send.message.timestamp
    assert client.on_message("c9", reply(1, ts, b"a"), now=0.1) == []
    assert client.on_message(2, reply(1, ts, b"a"), now=0.1) == []
    assert client.on_message(1, reply(1, ts - 1, b"a"), now=0.1) == []
    assert client.on_message(1, Reply(0, ts, "c1", 1, b"a"), now=0.1) == []
    assert client.rejected == {"sender_mismatch": 2, "stale_reply": 1, "malformed": 1}
    assert client.on_message(1, reply(1, ts, b"a"), now=0.1) == []
    assert client.on_message(2, reply(2, ts, b"a"), now=0.1) == [Result(ts, b"a")]


def test_client_retransmits_to_all_with_doubling_timeout_and_queues() -> None:
    client = Client("c0", 4, now=5.0, timeout=0.5, max_timeout=1.5)
    first = client.request(b"one", now=5.0)
    assert client.request(b"two", now=5.0) == []  # queued behind the outstanding one
    ts = first[0].message.timestamp
    assert client.on_timer(now=5.4) == []
    resent = client.on_timer(now=5.5)
    assert sorted(s.to for s in resent) == [0, 1, 2, 3]
    assert client.next_deadline() == pytest.approx(6.5)
    client.on_timer(now=6.5)
    assert client.next_deadline() == pytest.approx(8.0)  # capped at max_timeout
    client.on_message(0, reply(0, ts, b"r"), now=7.0)
    out = client.on_message(1, reply(1, ts, b"r"), now=7.0)
    assert out[0] == Result(ts, b"r")
    assert out[1].message.op == b"two" and out[1].message.timestamp > ts


def test_client_usage_errors() -> None:
    with pytest.raises(UsageError, match="collides"):
        Client(2, 4, now=0.0)
    client = Client("c0", 4, now=0.0)
    with pytest.raises(UsageError, match="bytes"):
        client.request("text", now=0.0)  # type: ignore[arg-type]


def test_status_from_a_replica_behind_gets_what_it_lacks_at_a_bounded_rate() -> None:
    cluster = build(4, seed=9, checkpoint_interval=4, watermark_window=8, batch_delay=0.0)
    for k in range(6):
        cluster.put("c0", f"k{k}", "v")
    cluster.run_until_results(6, until=5.0)
    ahead = cluster.replica(0)  # the primary: stable at 4, sequences 5 and 6 committed
    assert ahead.stable.sequence == 4 and ahead.last_executed == 6
    now = cluster.sim.now + 1.0
    answer = ahead.on_message(3, Status(0, 2, 3), now=now)
    assert all(isinstance(a, Send) and a.to == 3 for a in answer)
    checkpoint = answer[0].message  # below our stable checkpoint: our signed CHECKPOINT
    assert isinstance(checkpoint, Checkpoint) and checkpoint.sequence == 4
    assert checkpoint.digest == ahead.stable.digest
    assert cluster.keys.verifier()(0, material(checkpoint), checkpoint.signature)
    resent = {(type(a.message).__name__, a.message.sequence) for a in answer[1:]}
    assert resent == {(kind, seq) for kind in ("PrePrepare", "Commit") for seq in (5, 6)}
    # Once per half timeout per replica, whatever it sends.
    assert ahead.on_message(3, Status(0, 2, 3), now=now + 0.01) == []
    assert ahead.rejected["rate_limited"] == 1
    assert ahead.on_message(2, Status(0, "2", 2), now=now) == []  # type: ignore[arg-type]
    assert ahead.rejected["malformed"] == 1
    assert ahead.on_message(2, Status(5, 2, 2), now=now) == []
    assert ahead.rejected["future_view"] == 1
    assert ahead.on_message(2, Status(0, 2, 1), now=now) == []  # says it is someone else
    assert ahead.rejected["sender_mismatch"] == 1


def test_request_timer_asks_once_then_suspects_the_primary() -> None:
    """Before suspecting the primary a backup asks the others (STATUS) and waits a quarter
    timeout, in case it is the one behind; once per timed request, so a faulty primary
    gains a quarter timeout, not an endless delay."""
    backup = Replica(
        3,
        4,
        state_machine=KeyValueStore(),
        store=MemoryStore(),
        sign=KEYS.signer(3),
        verify=KEYS.verifier(),
        now=0.0,
        view_change_timeout=1.0,
    )
    assert backup.on_message("c0", REQ, now=0.0) == []  # waiting, timer running
    assert backup.next_deadline() == 1.0
    first = backup.on_timer(now=1.0)
    assert [(a.to, a.message) for a in first] == [(r, Status(0, 0, 3)) for r in (0, 1, 2)]
    assert not backup.changing and backup.next_deadline() == 1.25
    assert backup.on_timer(now=1.1) == []  # not due yet
    second = backup.on_timer(now=1.25)  # no progress since it asked: suspect the primary
    assert {type(a.message) for a in second} == {ViewChange} and backup.changing
