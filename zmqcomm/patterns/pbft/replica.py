"""The PBFT replica: a pure machine (see the package docstring for the protocol and API).

This module adds to :class:`~zmqcomm.patterns.pbft.normal.ReplicaCore` what concerns more
than one view or one message: recovery from the store at construction, the timers and
retransmission, state transfer, VIEW-CHANGE/NEW-VIEW handling (built and checked in
:mod:`.viewchange`), catching up on a view, and dispatch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from zmqcomm.actions import Send
from zmqcomm.errors import CorruptStoreError
from zmqcomm.patterns.pbft.checkpoint import parse_state, state_bytes, state_digest
from zmqcomm.patterns.pbft.messages import (
    Checkpoint,
    Commit,
    FetchState,
    NewView,
    Prepare,
    PrePrepare,
    Request,
    StateSnapshot,
    Status,
    ViewChange,
    ViewQuery,
    ViewState,
    is_digest,
    is_int,
)
from zmqcomm.patterns.pbft.normal import (
    Committed,
    Executed,
    ReplicaCore,
    StateTransferred,
    ViewChanged,
)
from zmqcomm.patterns.pbft.store import StableCheckpoint
from zmqcomm.patterns.pbft.viewchange import (
    Plan,
    check_checkpoint_proof,
    check_new_view,
    check_view_change,
    make_new_view,
    make_view_change,
)

__all__ = ["Committed", "Executed", "Replica", "StateTransferred", "ViewChanged"]


class Replica(ReplicaCore):
    """One PBFT replica; see the package docstring for the constructor's arguments."""

    # -- recovery ---------------------------------------------------------------------------

    def _recover(self, now: float) -> None:
        """Rebuild from the store: view, stable checkpoint, votes, certificates, commits."""
        self.view, self.changing = self.store.load_view()
        self.votes = self.store.load_votes()
        saved = self.store.load_checkpoint()
        if saved is not None:
            parsed = parse_state(saved.snapshot)
            # Falling back to the initial state would silently undo what a quorum certified.
            if parsed is None or state_digest(saved.snapshot) != saved.digest:
                raise CorruptStoreError(
                    f"the stored stable checkpoint {saved.sequence} does not match its "
                    "certified digest; move the data directory aside and restart the replica"
                )
            try:
                self.sm.restore(parsed[0])
            except Exception as exc:  # the state machine's own check of its format
                raise CorruptStoreError(
                    f"the state machine cannot restore the stored stable checkpoint "
                    f"{saved.sequence} ({exc}); was it written by another version? Move the "
                    "data directory aside and restart the replica to fetch the state anew"
                ) from None
            self.replies = parsed[1]
            self.stable = saved
            self.last_executed = saved.sequence
            self.log.low = saved.sequence
        else:
            blob = state_bytes(self.sm.snapshot(), self.replies)
            self.stable = StableCheckpoint(0, state_digest(blob), (), blob)
        self.own_checkpoints[self.stable.sequence] = (self.stable.digest, self.stable.snapshot)
        for (sequence, kind), record in sorted(self.store.load_entries().items()):
            if sequence <= self.log.low:
                continue
            if kind == "prepared" and not isinstance(record, PrePrepare):
                self.log.keep_certificate(record)
            elif kind == "committed" and isinstance(record, PrePrepare):
                self.log.committed[sequence] = record
        self._execute(now)  # re-execution rebuilds state and reply cache; nothing is resent
        mine = [s for (v, s, phase) in self.votes if v == self.view and phase == "pre-prepare"]
        self.next_sequence = max([self.log.low, self.last_executed, *mine]) + 1
        if self.changing:
            self.vc_sent = self._make_view_change(self.view)
            self.view_changes.setdefault(self.view, {})[self.id] = self.vc_sent
            self.vc_resend = now  # resend our VIEW-CHANGE at the first timer
        if self.votes or saved is not None:
            # A restart: the others may have gone on while we were down.
            self.ask_at, self.ask_anyway = now, True

    def next_deadline(self) -> float | None:
        deadlines = [
            d
            for d in (
                self.vc_deadline if self.changing else self.request_deadline,
                self.vc_resend if self.changing else self.resend_at,
                self.batch_deadline if self.is_primary and self.pending else None,
                self.fetch_deadline,
                self.ask_at if self._may_ask else None,
            )
            if d is not None
        ]
        return min(deadlines, default=None)

    def on_message(self, sender: Hashable, message: Any, *, now: float) -> list[Any]:
        handler = _HANDLERS.get(type(message))
        if handler is None:
            return self._reject("unknown_type")
        if type(message) is not Request:
            if not self.config.is_replica(sender) or sender == self.id:
                return self._reject("not_a_replica")
            # Exact ints only: False == 0 and 1.0 == 1, and such a value would pass "==" here
            # but poison the proofs built from this message (third parties reject them).
            claimed = getattr(message, "replica", None)
            if not self.config.is_replica(claimed) or claimed != sender:
                return self._reject("sender_mismatch")
        out = handler(self, sender, message, now)
        if self._outbox:
            out, self._outbox = out + self._outbox, []
        return out

    def on_timer(self, *, now: float) -> list[Any]:
        out: list[Any] = []
        if self.changing:
            if self.vc_deadline is not None and now >= self.vc_deadline:
                # A quorum moved to this view but no valid NEW-VIEW came: try the next one.
                self.timeout = min(self.timeout * 2, self.max_timeout)
                out += self._start_view_change(self.view + 1, now)
            elif self.vc_resend is not None and now >= self.vc_resend and self.vc_sent:
                out += self._to_others(self.vc_sent)  # retransmit: messages get lost
                self.vc_resend = now + self.base_timeout / 2
        elif self.request_deadline is not None and now >= self.request_deadline:
            out += self._request_timed_out(now)
        elif self.resend_at is not None and now >= self.resend_at:
            out += self._retransmit(now)
        if self.is_primary and self.batch_deadline is not None and now >= self.batch_deadline:
            out += self._propose(now, flush=True)
        if self.fetch_deadline is not None and now >= self.fetch_deadline:
            out += self._send_fetch(now)
        if self.ask_at is not None and now >= self.ask_at and self._may_ask:
            out += self._ask_how_far(now)
        return out

    @property
    def _may_ask(self) -> bool:
        # A view change or a state transfer under way brings us up to date on its own.
        return not self.changing and self.fetch_target is None

    def _ask_how_far(self, now: float) -> list[Any]:
        """Tell the others how far we got; they resend what we lack. Again, less and less
        often, while committed entries still wait behind a gap (answers get lost too)."""
        gap = any(sequence > self.last_executed for sequence in self.log.committed)
        anyway, self.ask_anyway = self.ask_anyway, False
        if not gap:
            self.ask_at = None
            if not anyway:
                return []  # the missing entries came after all
        else:
            self.ask_at = now + self.ask_every
            self.ask_every = min(self.ask_every * 2, self.max_timeout)
        return self._to_others(Status(self.view, self.last_executed, self.id))

    def _request_timed_out(self, now: float) -> list[Any]:
        """The paper suspects the primary here. We may instead be the one behind (the
        request ordered already, past a gap of ours), and a view change started alone
        would leave us in a view the others never join: catch up first, boundedly."""
        if self.fetch_target is not None:
            # Fetching a certified checkpoint: time the request again; the replicas that are
            # up to date judge the primary meanwhile (f+1 of them pull us along).
            self.request_deadline = now + self.timeout
            return []
        if not self.timer_asked:
            # Ask once per timed request (a newer request from the same client, or other
            # requests executing, keep the timer running), then give them a quarter
            # timeout to resend what we lack: a faulty primary gains that quarter, once.
            self.timer_asked = True
            self.request_deadline = now + self.timeout / 4
            return self._to_others(Status(self.view, self.last_executed, self.id))
        return self._start_view_change(self.view + 1, now)

    def _on_status(self, sender: int, status: Status, now: float) -> list[Any]:
        """A replica behind us says how far it got: resend what it lacks."""
        if not (is_int(status.view) and is_int(status.executed)):
            return self._reject("malformed")
        if self.changing or status.view > self.view:
            return self._reject("future_view")
        if not self._may_answer("status", sender, now):
            return self._reject("rate_limited")
        if status.view < self.view:
            nv = self.new_view_msg  # it missed a view change: show it how we got here
            return [] if nv is None else [Send(sender, ViewState(nv, self.id))]
        out: list[Any] = []
        stable = self.stable
        if status.executed < stable.sequence:
            # Our CHECKPOINT, not the state: with a quorum of them it fetches the state
            # from one replica, instead of every replica sending it a copy.
            out.append(
                Send(sender, self._signed(Checkpoint(stable.sequence, stable.digest, self.id)))
            )
        for sequence, entry in sorted(self.log.entries.items()):
            if sequence > status.executed:
                out += self._echo(entry, sender, now)
        return out

    # -- retransmission and state transfer ---------------------------------------------------

    def _retransmit(self, now: float) -> list[Any]:
        """Resend our messages for entries still not committed after T/2: messages get lost."""
        out: list[Any] = []
        for entry in self.log.entries.values():
            if entry.pre_prepare is None or entry.committed:
                continue
            if self.id == self.primary:
                out += self._to_others(entry.pre_prepare)
            for mine in (entry.prepares.get(self.id), entry.commits.get(self.id)):
                if mine is not None:
                    out += self._to_others(mine)
        self.resend_at = now + self.base_timeout / 2 if out else None
        return out

    def _send_fetch(self, now: float) -> list[Any]:
        target = self.fetch_target
        if target is None or target.sequence <= self.last_executed:
            self.fetch_target = self.fetch_deadline = None
            return []
        # Ask the replicas that signed the proof first, one at a time, in turn.
        signers = [c.replica for c in target.proof if c.replica != self.id]
        others = signers + [r for r in range(self.n) if r != self.id and r not in signers]
        replica = others[self._fetch_attempt % len(others)]
        self._fetch_attempt += 1
        self.fetch_deadline = now + self.fetch_timeout
        return [Send(replica, FetchState(target.sequence, self.id))]

    def _on_fetch_state(self, sender: int, fetch: FetchState, now: float) -> list[Any]:
        if not is_int(fetch.sequence):
            return self._reject("malformed")
        stable = self.stable
        if stable.sequence == 0 or stable.sequence < fetch.sequence:
            return self._reject("no_such_state")
        if not self._may_answer("state", sender, now):
            return self._reject("rate_limited")
        snapshot = StateSnapshot(
            stable.sequence, stable.digest, stable.proof, stable.snapshot, self.id
        )
        return [Send(sender, snapshot)]

    def _on_state_snapshot(self, sender: int, state: StateSnapshot, now: float) -> list[Any]:
        if not (
            is_int(state.sequence, 1)
            and is_digest(state.digest)
            and isinstance(state.snapshot, bytes)
        ):
            return self._reject("malformed")
        if state.sequence <= self.last_executed:
            return self._reject("stale_state")
        if not check_checkpoint_proof(
            self.config, self.verify, state.sequence, state.digest, state.proof
        ):
            return self._reject("bad_checkpoint_proof")
        parsed = parse_state(state.snapshot)
        if state_digest(state.snapshot) != state.digest or parsed is None:
            return self._reject("wrong_state_digest")
        checkpoint = StableCheckpoint(state.sequence, state.digest, state.proof, state.snapshot)
        try:
            self.sm.restore(parsed[0])
        except Exception:  # certified, yet not this machine's format: another version's
            return self._reject("unrestorable_state")
        self.replies = dict(parsed[1])
        self.last_executed = state.sequence
        self.own_checkpoints[state.sequence] = (state.digest, state.snapshot)
        for client, request in list(self.waiting.items()):
            if request.timestamp <= self.replies.get(client, (0,))[0]:
                del self.waiting[client]
        self.request_deadline = None  # caught up: a full timeout from here (see on_timer)
        self._retime_request(now)
        out: list[Any] = [StateTransferred(state.sequence, state.digest)]
        out += self._make_stable(checkpoint, now)
        return out + self._execute(now)

    # -- view changes ---------------------------------------------------------------------------

    def _make_view_change(self, target: int) -> ViewChange:
        return make_view_change(
            target,
            stable=self.stable.sequence,
            proof=self.stable.proof,
            certificates=self.log.certificates.values(),
            replica=self.id,
            sign=self.sign,
        )

    def _start_view_change(self, target: int, now: float) -> list[Any]:
        self.store.save_view(target, True)
        self.view, self.changing = target, True
        self.log.new_view()
        self.pending.clear()
        self.proposed.clear()
        self.request_deadline = self.batch_deadline = self.resend_at = None
        self.timed_client = None
        self.vc_sent = self._make_view_change(target)
        self.view_changes.setdefault(target, {})[self.id] = self.vc_sent
        for view in [v for v in self.view_changes if v < target]:
            del self.view_changes[view]
        self.vc_resend = now + self.base_timeout / 2
        self.vc_deadline = None
        self._arm_view_change_timer(now)
        return self._to_others(self.vc_sent) + self._after_view_change_vote(now)

    def _on_view_change(self, sender: int, vc: ViewChange, now: float) -> list[Any]:
        if not is_int(getattr(vc, "new_view", None), 1):
            return self._reject("malformed")
        if vc.new_view < self.view or (vc.new_view == self.view and not self.changing):
            # The sender is behind or stuck: show it the NEW-VIEW that got us here.
            nv = self.new_view_msg
            if nv is not None and not self.changing and self._may_answer("view", sender, now):
                return [Send(sender, ViewState(nv, self.id))]
            return self._reject("old_view_change")
        if vc.new_view > self.view + self.max_view_jump:
            return self._reject("view_jump")
        reason = check_view_change(
            self.config, self.verify, vc, window=self.window, max_batch=self.max_batch
        )
        if reason is not None:
            return self._reject(reason)
        at = self.view_changes.setdefault(vc.new_view, {})
        if sender in at:
            return [] if at[sender] == vc else self._reject("conflicting_view_change")
        at[sender] = vc
        self._arm_view_change_timer(now)
        return self._after_view_change_vote(now)

    def _arm_view_change_timer(self, now: float) -> None:
        """As in the paper, the timer for the next view starts once a quorum wants this one.

        A replica that already wants a later view counts too: it will never accept a
        NEW-VIEW for this one. Counting only this view deadlocks a split that crashes can
        leave behind (two replicas restarted wanting v, the third gone on to v+1 alone):
        neither side reaches a quorum, nor f+1 to join the other.
        """
        wanting = {r for v, at in self.view_changes.items() if v >= self.view for r in at}
        if self.changing and self.vc_deadline is None and len(wanting) >= self.config.quorum:
            self.vc_deadline = now + self.timeout

    def _after_view_change_vote(self, now: float) -> list[Any]:
        # Join early: f+1 replicas (so at least one correct one) already moved past us.
        higher = {v: d for v, d in self.view_changes.items() if v > self.view and d}
        senders = {r for d in higher.values() for r in d}
        if len(senders) >= self.config.weak:
            return self._start_view_change(min(higher), now)
        at = self.view_changes.get(self.view, {})
        if not (
            self.changing
            and self.config.primary(self.view) == self.id
            and len(at) >= self.config.quorum
            and self.id in at
        ):
            return []
        if any(v == self.view and p == "pre-prepare" for v, _, p in self.votes):
            return self._reject("new_view_already_sent")  # before a crash: never send two
        chosen = [at[self.id]] + [vc for r, vc in sorted(at.items()) if r != self.id]
        nv, plan = make_new_view(self.config, self.view, chosen[: self.config.quorum], self.sign)
        for pp in nv.pre_prepares:
            self._vote(nv.view, pp.sequence, "pre-prepare", pp.digest)
        return self._to_others(nv) + self._enter_view(nv, plan, now)

    def _on_new_view(self, sender: int, nv: NewView, now: float) -> list[Any]:
        return self._accept_new_view(nv, now)

    def _on_view_state(self, sender: int, state: ViewState, now: float) -> list[Any]:
        before = self.view, self.changing
        out = self._accept_new_view(state.new_view, now)
        if (self.view, self.changing) != before:
            # Shown a view we missed (our STATUS was from an older one): what committed in
            # it since reaches us only if we ask again, after the others' rate limit.
            self.ask_at, self.ask_anyway = now + self.base_timeout, True
        return out

    def _accept_new_view(self, nv: Any, now: float) -> list[Any]:
        view = getattr(nv, "view", None)
        if not is_int(view, 1):
            return self._reject("malformed")
        if view < self.view or (view == self.view and not self.changing):
            return self._reject("old_new_view")
        plan, reason = check_new_view(
            self.config, self.verify, nv, window=self.window, max_batch=self.max_batch
        )
        if plan is None:
            return self._reject(reason)
        return self._enter_view(nv, plan, now)

    def _enter_view(self, nv: NewView, plan: Plan, now: float) -> list[Any]:
        self.store.save_view(nv.view, False)
        self.view, self.changing = nv.view, False
        self.new_view_msg = nv
        self.vc_sent = self.vc_deadline = self.vc_resend = None
        for view in [v for v in self.view_changes if v <= nv.view]:
            del self.view_changes[view]
        self.log.new_view()
        self.pending.clear()
        self.proposed.clear()
        out: list[Any] = [ViewChanged(nv.view)]
        if plan.stable > self.stable.sequence:
            proof = plan.proof
            own = self.own_checkpoints.get(plan.stable)
            if own is not None and own[0] == plan.digest:
                out += self._make_stable(
                    StableCheckpoint(plan.stable, plan.digest, proof, own[1]), now
                )
            elif plan.stable > self.last_executed:
                self.log.collect_garbage(plan.stable)
                self.fetch_target = StableCheckpoint(plan.stable, plan.digest, proof, b"")
                self._fetch_attempt = 0
                out += self._send_fetch(now)
        for pp in nv.pre_prepares:
            if self.log.in_window(pp.sequence):
                self._mark_proposed(pp.requests)  # before: executing it drops the mark
                out += self._accept_pre_prepare(pp, now)
        top = max((pp.sequence for pp in nv.pre_prepares), default=0)
        # A fresh numbering per view: gaps left by an older view of ours would stall.
        self.next_sequence = max(top + 1, self.log.low + 1, self.last_executed + 1)
        # A new view: the timer restarts for the oldest waiting request, if any.
        self.request_deadline = self.timed_client = None
        self._retime_request(now)
        if self.is_primary:
            for request in self.waiting.values():
                self._queue(request, now)
            out += self._propose(now)
        for sender, queued in sorted(self._future.items()):
            self._future[sender] = []
            for message in queued:
                out += self.on_message(sender, message, now=now)
        return out

    def _on_view_query(self, sender: int, query: ViewQuery, now: float) -> list[Any]:
        nv = self.new_view_msg
        if not is_int(query.view) or nv is None or self.changing:
            return self._reject("no_new_view")
        if not self._may_answer("view", sender, now):
            return self._reject("rate_limited")
        return [Send(sender, ViewState(nv, self.id))]


_HANDLERS: dict[type, Callable[[Replica, Any, Any, float], list[Any]]] = {
    Request: Replica._on_request,
    PrePrepare: Replica._on_pre_prepare,
    Prepare: Replica._on_prepare,
    Commit: Replica._on_commit,
    Checkpoint: Replica._on_checkpoint,
    FetchState: Replica._on_fetch_state,
    StateSnapshot: Replica._on_state_snapshot,
    ViewChange: Replica._on_view_change,
    NewView: Replica._on_new_view,
    ViewQuery: Replica._on_view_query,
    ViewState: Replica._on_view_state,
    Status: Replica._on_status,
}
