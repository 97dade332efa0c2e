"""VIEW-CHANGE and NEW-VIEW: building them, checking them, and computing the O set.

Pure functions over messages; signatures go through the injected ``sign``/``verify``.

The new primary of view v collects a quorum V of valid VIEW-CHANGEs for v and computes, as
in the paper: min-s, the latest stable checkpoint in V; max-s, the highest sequence with a
prepared certificate in V; and for every n in (min-s, max-s] one PRE-PREPARE in view v for the
digest of the certificate of the highest view at n, or for the null request when no
certificate exists. A backup accepts a NEW-VIEW only if it recomputes the same O from V
itself. Each pre-prepare in O carries its batch (the certificate's), so nobody needs to
fetch requests afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from zmqcomm.patterns.pbft.messages import (
    NULL_DIGEST,
    Checkpoint,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Request,
    ViewChange,
    batch_digest,
    is_digest,
    is_int,
    material,
    well_formed_request,
)
from zmqcomm.patterns.pbft.quorum import Quorum

Signer = Callable[[bytes], bytes]
Verifier = Callable[[int, bytes, bytes], bool]


def signed(message: object, sign: Signer) -> object:
    return replace(message, signature=sign(material(message)))  # type: ignore[type-var]


def check_checkpoint_proof(
    quorum: Quorum, verify: Verifier, sequence: int, digest: bytes, proof: object
) -> bool:
    """A quorum of distinct replicas signed CHECKPOINT(sequence, digest); seq 0 needs none."""
    if not isinstance(proof, tuple):
        return False
    if sequence == 0:
        return proof == ()
    signers: set[int] = set()
    for checkpoint in proof:
        if not (
            isinstance(checkpoint, Checkpoint)
            and quorum.is_replica(checkpoint.replica)
            and checkpoint.replica not in signers
            and checkpoint.sequence == sequence
            and checkpoint.digest == digest
            and isinstance(checkpoint.signature, bytes)
            and verify(checkpoint.replica, material(checkpoint), checkpoint.signature)
        ):
            return False
        signers.add(checkpoint.replica)
    return len(signers) >= quorum.quorum


def well_formed_batch(requests: object, max_batch: int) -> bool:
    return (
        isinstance(requests, tuple)
        and len(requests) <= max_batch
        and all(well_formed_request(r) for r in requests)
        and len({(r.client, r.timestamp) for r in requests}) == len(requests)
    )


def check_pre_prepare_form(quorum: Quorum, verify: Verifier, pp: object, max_batch: int) -> bool:
    """Shape, primary, batch digest and signature of a PRE-PREPARE (not its view/window)."""
    return (
        isinstance(pp, PrePrepare)
        and is_int(pp.view)
        and is_int(pp.sequence, 1)
        and is_digest(pp.digest)
        and pp.replica == quorum.primary(pp.view)
        and well_formed_batch(pp.requests, max_batch)
        and batch_digest(pp.requests) == pp.digest
        and isinstance(pp.signature, bytes)
        and verify(pp.replica, material(pp), pp.signature)
    )


def check_prepared_proof(
    quorum: Quorum,
    verify: Verifier,
    proof: object,
    *,
    below_view: int,
    low: int,
    window: int,
    max_batch: int,
) -> bool:
    """A prepared certificate from a view before ``below_view`` for a sequence in the window."""
    if not isinstance(proof, PreparedProof) or not isinstance(proof.prepares, tuple):
        return False
    pp = proof.pre_prepare
    if not check_pre_prepare_form(quorum, verify, pp, max_batch):
        return False
    assert isinstance(pp, PrePrepare)
    if not (pp.view < below_view and low < pp.sequence <= low + window):
        return False
    voters: set[int] = set()
    for prepare in proof.prepares:
        if not (
            isinstance(prepare, Prepare)
            and quorum.is_replica(prepare.replica)
            and prepare.replica != pp.replica
            and prepare.replica not in voters
            and (prepare.view, prepare.sequence, prepare.digest)
            == (pp.view, pp.sequence, pp.digest)
            and isinstance(prepare.signature, bytes)
            and verify(prepare.replica, material(prepare), prepare.signature)
        ):
            return False
        voters.add(prepare.replica)
    return len(voters) >= quorum.quorum - 1


def make_view_change(
    new_view: int,
    *,
    stable: int,
    proof: tuple[Checkpoint, ...],
    certificates: Iterable[PreparedProof],
    replica: int,
    sign: Signer,
) -> ViewChange:
    prepared = tuple(
        sorted(
            (c for c in certificates if c.pre_prepare.sequence > stable),
            key=lambda c: c.pre_prepare.sequence,
        )
    )
    message = ViewChange(new_view, stable, proof, prepared, replica)
    return replace(message, signature=sign(material(message)))


def check_view_change(
    quorum: Quorum, verify: Verifier, vc: object, *, window: int, max_batch: int
) -> str | None:
    """None if ``vc`` is a valid VIEW-CHANGE, else the reason to count."""
    if not (
        isinstance(vc, ViewChange)
        and is_int(vc.new_view, 1)
        and is_int(vc.stable)
        and quorum.is_replica(vc.replica)
        and isinstance(vc.prepared, tuple)
        and isinstance(vc.proof, tuple)
        and isinstance(vc.signature, bytes)
    ):
        return "malformed"
    if not verify(vc.replica, material(vc), vc.signature):
        return "bad_signature"
    first = vc.proof[0] if vc.proof else None
    digest = first.digest if isinstance(first, Checkpoint) else b""
    if not check_checkpoint_proof(quorum, verify, vc.stable, digest, vc.proof):
        return "bad_checkpoint_proof"
    sequences = set()
    for proof in vc.prepared:
        if not check_prepared_proof(
            quorum,
            verify,
            proof,
            below_view=vc.new_view,
            low=vc.stable,
            window=window,
            max_batch=max_batch,
        ):
            return "bad_prepared_certificate"
        sequences.add(proof.pre_prepare.sequence)
    if len(sequences) != len(vc.prepared):
        return "duplicate_certificate"
    return None


@dataclass(frozen=True, slots=True)
class Plan:
    """What a NEW-VIEW must contain, computed from its view changes."""

    stable: int
    digest: bytes
    proof: tuple[Checkpoint, ...]
    #: (sequence, digest, batch) for every sequence in (min-s, max-s].
    slots: tuple[tuple[int, bytes, tuple[Request, ...]], ...]


def compute_plan(view_changes: Iterable[ViewChange]) -> Plan:
    """The paper's min-s, max-s and O set, deterministic in the order of ``view_changes``."""
    changes = sorted(view_changes, key=lambda vc: vc.replica)
    best = max(changes, key=lambda vc: vc.stable)  # first of the highest: deterministic
    stable = best.stable
    digest = best.proof[0].digest if stable else b""
    chosen: dict[int, PrePrepare] = {}
    for vc in changes:
        for proof in vc.prepared:
            pp = proof.pre_prepare
            if pp.sequence <= stable:
                continue
            known = chosen.get(pp.sequence)
            if known is None or (pp.view, pp.digest) > (known.view, known.digest):
                chosen[pp.sequence] = pp
    top = max(chosen, default=stable)
    slots: list[tuple[int, bytes, tuple[Request, ...]]] = []
    for sequence in range(stable + 1, top + 1):
        pp_or_none = chosen.get(sequence)
        if pp_or_none is None:
            slots.append((sequence, NULL_DIGEST, ()))
        else:
            slots.append((sequence, pp_or_none.digest, pp_or_none.requests))
    return Plan(stable, digest, best.proof, tuple(slots))


def pre_prepares_for(plan: Plan, view: int, primary: int, sign: Signer) -> tuple[PrePrepare, ...]:
    out = []
    for sequence, digest, batch in plan.slots:
        pp = PrePrepare(view, sequence, digest, batch, primary)
        out.append(replace(pp, signature=sign(material(pp))))
    return tuple(out)


def make_new_view(
    quorum: Quorum, view: int, view_changes: Iterable[ViewChange], sign: Signer
) -> tuple[NewView, Plan]:
    changes = tuple(sorted(view_changes, key=lambda vc: vc.replica))
    plan = compute_plan(changes)
    primary = quorum.primary(view)
    message = NewView(view, changes, pre_prepares_for(plan, view, primary, sign), primary)
    return replace(message, signature=sign(material(message))), plan


def check_new_view(
    quorum: Quorum, verify: Verifier, nv: object, *, window: int, max_batch: int
) -> tuple[Plan | None, str]:
    """(plan, "") for a valid NEW-VIEW, else (None, reason)."""
    if not (
        isinstance(nv, NewView)
        and is_int(nv.view, 1)
        and nv.replica == quorum.primary(nv.view)
        and isinstance(nv.view_changes, tuple)
        and isinstance(nv.pre_prepares, tuple)
        and isinstance(nv.signature, bytes)
    ):
        return None, "malformed"
    if not verify(nv.replica, material(nv), nv.signature):
        return None, "bad_signature"
    senders = set()
    for vc in nv.view_changes:
        reason = check_view_change(quorum, verify, vc, window=window, max_batch=max_batch)
        if reason is not None:
            return None, f"new_view_{reason}"
        if vc.new_view != nv.view or vc.replica in senders:
            return None, "new_view_bad_set"
        senders.add(vc.replica)
    if len(senders) < quorum.quorum:
        return None, "new_view_small_set"
    plan = compute_plan(nv.view_changes)
    if len(plan.slots) != len(nv.pre_prepares):
        return None, "new_view_wrong_o"
    for (sequence, digest, batch), pp in zip(plan.slots, nv.pre_prepares, strict=True):
        if not (
            isinstance(pp, PrePrepare)
            and (pp.view, pp.sequence, pp.digest, pp.requests, pp.replica)
            == (nv.view, sequence, digest, batch, nv.replica)
            and isinstance(pp.signature, bytes)
            and verify(pp.replica, material(pp), pp.signature)
        ):
            return None, "new_view_wrong_o"
    return plan, ""
