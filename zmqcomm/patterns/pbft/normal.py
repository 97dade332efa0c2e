"""The normal case of a PBFT replica: requests, the three phases, execution and
checkpoints. :class:`~zmqcomm.patterns.pbft.replica.Replica` adds recovery, timers, state
transfer, view changes and message dispatch on top; use that class.

Every handler validates a message completely before it changes anything; a message that
fails is counted in ``rejected`` under a short reason and changes no state. Every write to
the store happens before the actions that depend on it are returned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import Any

from zmqcomm.actions import Send
from zmqcomm.errors import UsageError
from zmqcomm.patterns.pbft.checkpoint import (
    CheckpointVotes,
    Replies,
    state_bytes,
    state_digest,
)
from zmqcomm.patterns.pbft.log import Entry, MessageLog
from zmqcomm.patterns.pbft.messages import (
    Checkpoint,
    Commit,
    NewView,
    Prepare,
    PrePrepare,
    Reply,
    Request,
    ViewChange,
    ViewQuery,
    batch_digest,
    is_digest,
    is_int,
    material,
    request_content,
    well_formed_request,
)
from zmqcomm.patterns.pbft.quorum import Quorum
from zmqcomm.patterns.pbft.statemachine import StateMachine
from zmqcomm.patterns.pbft.store import StableCheckpoint, Store
from zmqcomm.patterns.pbft.viewchange import (
    Signer,
    Verifier,
    check_pre_prepare_form,
)

ClientVerifier = Callable[[Hashable, bytes, bytes], bool]
ERROR_RESULT = b"error: exception"
_BUFFERED_KINDS = (PrePrepare, Prepare, Commit)


@dataclass(frozen=True, slots=True)
class Executed:
    """Output: ``request`` ran at ``sequence`` and gave ``result`` (exactly once per request)."""

    sequence: int
    request: Request
    result: bytes


@dataclass(frozen=True, slots=True)
class Committed:
    """Output: the batch ``digest`` (pre-prepared in ``view``) was executed at ``sequence``.

    One per sequence number, in order, null requests included (after the ``Executed``
    records of its requests)."""

    view: int
    sequence: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class StateTransferred:
    """Output: the replica skipped ahead to the stable checkpoint at ``sequence``."""

    sequence: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class ViewChanged:
    """Output: the replica entered ``view`` (after a valid NEW-VIEW)."""

    view: int


#: A client operation's largest size, and a batch's: a VIEW-CHANGE carries up to a window
#: of prepared batches, which must still fit one frame (64 MiB by default).
MAX_REQUEST_BYTES = 64 * 1024
MAX_BATCH_BYTES = 512 * 1024


class ReplicaCore:
    """State and normal-case handlers shared by :class:`Replica` (not used alone)."""

    def __init__(  # noqa: PLR0915 - one assignment per piece of protocol state
        self,
        replica_id: int,
        n: int,
        *,
        state_machine: StateMachine,
        store: Store,
        sign: Signer,
        verify: Verifier,
        now: float,
        checkpoint_interval: int = 16,
        watermark_window: int | None = None,
        max_batch: int = 16,
        batch_delay: float = 0.002,
        view_change_timeout: float = 1.0,
        max_view_change_timeout: float = 60.0,
        max_view_jump: int = 16,
        fetch_timeout: float | None = None,
        max_waiting: int = 10_000,
        verify_client: ClientVerifier | None = None,
        reply_all: bool = False,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.config = Quorum(n)
        if not self.config.is_replica(replica_id):
            raise UsageError(f"replica id must be 0..{n - 1}, got {replica_id!r}")
        if not is_int(checkpoint_interval, 1) or not is_int(max_batch, 1):
            raise UsageError("checkpoint_interval and max_batch must be positive integers")
        window = 2 * checkpoint_interval if watermark_window is None else watermark_window
        if not is_int(window, 1) or window % checkpoint_interval:
            raise UsageError("watermark_window must be a positive multiple of checkpoint_interval")
        if not (is_int(max_request_bytes, 1) and is_int(max_batch_bytes, max_request_bytes)):
            raise UsageError(
                "max_request_bytes must be a positive integer and max_batch_bytes at least that"
            )
        if view_change_timeout <= 0 or batch_delay < 0 or max_view_jump < 1:
            raise UsageError("timeouts must be positive, batch_delay >= 0, max_view_jump >= 1")
        self.id = replica_id
        self.n = n
        self.sm = state_machine
        self.store = store
        self.sign = sign
        self.verify = verify
        self.verify_client = verify_client
        self.interval = checkpoint_interval
        self.window = window
        self.max_batch = max_batch
        self.max_request_bytes = max_request_bytes
        self.max_batch_bytes = max_batch_bytes
        self.batch_delay = batch_delay
        self.base_timeout = view_change_timeout
        self.max_timeout = max_view_change_timeout
        self.max_view_jump = max_view_jump
        self.fetch_timeout = view_change_timeout / 2 if fetch_timeout is None else fetch_timeout
        self.max_waiting = max_waiting
        self.reply_all = reply_all
        self.rejected: Counter[str] = Counter()
        #: PREPAREs taken without checking their signature because our prepared certificate
        #: for that entry was already complete (see _on_prepare).
        self.surplus_prepares = 0
        self.log = MessageLog(self.config, window)
        self.checkpoints = CheckpointVotes(self.config, window // checkpoint_interval + 2)
        self.timeout = view_change_timeout
        self.view = 0
        self.changing = False
        self.last_executed = 0
        self.replies: Replies = {}
        self.own_checkpoints: dict[int, tuple[bytes, bytes]] = {}
        self.view_changes: dict[int, dict[int, ViewChange]] = {}
        self.vc_sent: ViewChange | None = None
        self.new_view_msg: NewView | None = None
        self.waiting: dict[Hashable, Request] = {}
        self.pending: dict[Hashable, Request] = {}
        #: Primary: the highest timestamp proposed per client in this view, so a request
        #: is not proposed twice; dropped once executed (one entry per in-flight client).
        self.proposed: dict[Hashable, int] = {}
        self.next_sequence = 1
        #: The request timer times one waiting request, ``timed_client``'s (see
        #: :meth:`_retime_request`); it expires at ``request_deadline``.
        self.request_deadline: float | None = None
        self.timed_client: Hashable | None = None
        self.vc_deadline: float | None = None
        self.vc_resend: float | None = None
        self.resend_at: float | None = None
        self.batch_deadline: float | None = None
        self.fetch_target: StableCheckpoint | None = None
        self.fetch_deadline: float | None = None
        self._fetch_attempt = 0
        self._last_answer: dict[tuple[str, int], float] = {}
        self._future: dict[int, list[Any]] = {}
        #: Whether this run of the request timer already made us ask the others (Status)
        #: instead of suspecting the primary: once per timed request, not per timeout.
        self.timer_asked = False
        #: When to tell the others how far we got (Status), so that they resend what we
        #: lack: at the first timer after a restart, a timeout after a NEW-VIEW we were
        #: shown moved us on, and while committed entries wait behind a gap. None of these
        #: holds a request to time, and an idle cluster makes no checkpoint that would show
        #: us the way (see :meth:`Replica.on_timer`).
        self.ask_at: float | None = None
        #: The next ask is due whatever our log shows (a restart, a view we were shown).
        self.ask_anyway = False
        #: How long until we ask again about the same gap: doubled each time, so that a gap
        #: no answer can fill (a faulty primary that kept one PRE-PREPARE from us alone, and
        #: only the primary can resend it) costs the others little while it lasts.
        self.ask_every = view_change_timeout
        #: Queries decided deep inside a handler, returned with its actions.
        self._outbox: list[Any] = []
        self.votes: dict[tuple[int, int, str], bytes] = {}
        self.stable = StableCheckpoint(0, b"", (), b"")
        self._recover(now)

    # -- the machine interface ----------------------------------------------------------------

    def _recover(self, now: float) -> None:
        """Overridden by :class:`Replica`: rebuild the state from the store."""

    @property
    def primary(self) -> int:
        return self.config.primary(self.view)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.id and not self.changing

    # -- helpers --------------------------------------------------------------------------------

    def _reject(self, reason: str) -> list[Any]:
        self.rejected[reason] += 1
        return []

    def _to_others(self, message: Any) -> list[Any]:
        return [Send(r, message) for r in range(self.n) if r != self.id]

    def _signed(self, message: Any) -> Any:
        return replace(message, signature=self.sign(material(message)))

    def _vote(self, view: int, sequence: int, phase: str, digest: bytes) -> bool:
        """Persist a vote before sending it; False if we already voted otherwise here."""
        known = self.votes.get((view, sequence, phase))
        if known is not None:
            return known == digest
        self.store.save_vote(view, sequence, phase, digest)
        self.votes[(view, sequence, phase)] = digest
        return True

    def _check_view(self, sender: int, view: int, message: Any, now: float) -> str | None:
        """None if ``view`` is our current normal view; else the reason, buffering the future."""
        if view < self.view:
            return "old_view"
        if view > self.view or self.changing:
            if view <= self.view + 1:
                queue = self._future.setdefault(sender, [])
                queue.append(message)
                del queue[: -4 * self.window]
            if self._may_answer("query", sender, now):
                self._outbox.append(Send(sender, ViewQuery(view, self.id)))
            return "future_view"
        return None

    def _may_answer(self, kind: str, replica: int, now: float) -> bool:
        """Rate limit of one answer (or query) per replica per half timeout."""
        last = self._last_answer.get((kind, replica))
        if last is not None and now - last < self.timeout / 2:
            return False
        self._last_answer[(kind, replica)] = now
        return True

    # -- requests and the normal case -----------------------------------------------------------

    def _retime_request(self, now: float) -> None:
        """The paper's request timer, after requests left ``waiting`` (executed or pruned).

        It times one request: with nothing waiting it stops; if the request it timed is no
        longer waiting it restarts for the oldest waiting one; otherwise it keeps running,
        so a primary that orders other requests cannot hold back the timed one forever.
        """
        if self.changing:
            return  # entering the next view restarts it
        if not self.waiting:
            self.timed_client = self.request_deadline = None
        elif self.request_deadline is None or self.timed_client not in self.waiting:
            self._time_request(next(iter(self.waiting)), now)

    def _time_request(self, client: Hashable, now: float) -> None:
        """Start a fresh run of the request timer for ``client``'s waiting request."""
        self.timed_client = client
        self.request_deadline = now + self.timeout
        self.timer_asked = False

    def _on_request(self, sender: Hashable, request: Request, now: float) -> list[Any]:
        if not well_formed_request(request) or self.config.is_replica(request.client):
            return self._reject("malformed_request")
        if len(request.op) > self.max_request_bytes:
            return self._reject("request_too_large")
        # With client signatures a backup may relay a request to the primary (see below):
        # the signature, not the sender, shows the client sent it. Only the primary takes
        # relays: a faulty replica must not start the backups' timers for requests the
        # primary never saw.
        relayed = (
            self.verify_client is not None
            and self.is_primary
            and self.config.is_replica(sender)
            and sender != self.id
        )
        if request.client != sender and not relayed:
            return self._reject("sender_mismatch")
        if self.verify_client is not None and not self.verify_client(
            request.client, material(request), request.signature
        ):
            return self._reject("bad_client_signature")
        last = self.replies.get(request.client)
        if last is not None and request.timestamp <= last[0]:
            if request.timestamp < last[0]:
                return self._reject("old_request")
            reply = Reply(self.view, last[0], request.client, self.id, last[1])
            return [Send(request.client, reply)]
        known = self.waiting.get(request.client)
        if known is not None and known.timestamp >= request.timestamp:
            return []  # a retransmission of what we hold already
        if known is None and len(self.waiting) >= self.max_waiting:
            return self._reject("too_many_waiting")
        self.waiting[request.client] = request
        if self.changing:
            return []
        if self.request_deadline is None:
            self._time_request(request.client, now)
        if self.is_primary:
            self._queue(request, now)
            return self._propose(now)
        if self.verify_client is not None and sender == request.client:
            # As in the paper: a client that reaches only the backups cannot force a view
            # change by leaving the primary out. Only signed requests: the primary checks
            # the client's signature, so a faulty backup cannot invent requests this way.
            return [Send(self.primary, request)]
        return []

    def _queue(self, request: Request, now: float) -> None:
        if self.proposed.get(request.client, 0) >= request.timestamp:
            return  # proposed already in this view (or a newer one from the same client)
        self.pending[request.client] = request
        if self.batch_deadline is None:
            # With every proposed batch executed there is nothing to wait behind: the batch
            # is due at once, so the driver proposes it after the burst this request came in
            # (it fires due timers once per burst); waiting batch_delay would only add latency.
            idle = self.next_sequence - 1 <= self.last_executed
            self.batch_deadline = now if idle else now + self.batch_delay

    def _propose(self, now: float, *, flush: bool = False) -> list[Any]:
        """The primary assigns sequence numbers to full batches (or any batch when flushing)."""
        out: list[Any] = []
        while self.pending and self.next_sequence <= self.log.high:
            clients = self._next_batch()
            full = len(clients) < len(self.pending) or len(clients) == self.max_batch
            if not full and not flush and self.batch_delay > 0:
                break
            batch = tuple(self.pending.pop(c) for c in clients)
            batch = tuple(r for r in batch if r.timestamp > self.replies.get(r.client, (0,))[0])
            if not batch:
                continue
            sequence = self.next_sequence
            pp = self._signed(PrePrepare(self.view, sequence, batch_digest(batch), batch, self.id))
            if not self._vote(self.view, sequence, "pre-prepare", pp.digest):
                self.next_sequence += 1  # never reuse a number we gave out before a crash
                self.pending.update({r.client: r for r in batch})
                continue
            self.next_sequence += 1
            self._mark_proposed(batch)
            self.log.entry(sequence).pre_prepare = pp
            out += self._to_others(pp)
            out += self._advance(sequence, now)
        if not self.pending or self.next_sequence > self.log.high:
            self.batch_deadline = None  # empty, or blocked until a checkpoint moves the window
        elif self.batch_deadline is None:
            self.batch_deadline = now + self.batch_delay
        # A deadline already due stays due: the next timer call proposes the batch.
        return out

    def _next_batch(self) -> list[Hashable]:
        """The clients of the next batch, in order: up to ``max_batch`` requests and
        ``max_batch_bytes`` of operations (always at least one request). Many large requests
        in one PRE-PREPARE would not fit a frame, nor a VIEW-CHANGE carrying such batches."""
        clients: list[Hashable] = []
        size = 0
        for client, request in self.pending.items():
            size += len(request.op)
            if clients and (len(clients) == self.max_batch or size > self.max_batch_bytes):
                break
            clients.append(client)
        return clients

    def _mark_proposed(self, batch: tuple[Request, ...]) -> None:
        for r in batch:
            self.proposed[r.client] = max(self.proposed.get(r.client, 0), r.timestamp)

    def _on_pre_prepare(self, sender: int, pp: PrePrepare, now: float) -> list[Any]:
        if not is_int(getattr(pp, "view", None)) or not is_int(getattr(pp, "sequence", None), 1):
            return self._reject("malformed")
        reason = self._check_view(sender, pp.view, pp, now)
        if reason is not None:
            return self._reject(reason)
        if not self.log.in_window(pp.sequence):
            return self._reject("outside_window")
        if not check_pre_prepare_form(self.config, self.verify, pp, self.max_batch):
            return self._reject("bad_pre_prepare")
        if sum(len(r.op) for r in pp.requests) > self.max_batch_bytes:
            return self._reject("batch_too_large")
        if self.verify_client is not None and not all(
            self.verify_client(r.client, material(r), r.signature) for r in pp.requests
        ):
            return self._reject("bad_client_signature")
        return self._accept_pre_prepare(pp, now)

    def _accept_pre_prepare(self, pp: PrePrepare, now: float) -> list[Any]:
        entry = self.log.entry(pp.sequence)
        if entry.pre_prepare is not None:
            same = entry.pre_prepare.digest == pp.digest
            if same:
                return self._duplicate(self.primary, pp.sequence, now)
            return self._reject("conflicting_pre_prepare")
        if self.id == self.primary:
            entry.pre_prepare = pp  # our own (NEW-VIEW's O set); we send no prepare
            return self._advance(pp.sequence, now)
        if not self._vote(pp.view, pp.sequence, "prepare", pp.digest):
            return self._reject("conflicting_vote")
        entry.pre_prepare = pp
        prepare = self._signed(Prepare(pp.view, pp.sequence, pp.digest, self.id))
        entry.prepares[self.id] = prepare
        return self._to_others(prepare) + self._advance(pp.sequence, now)

    def _on_prepare(self, sender: int, prepare: Prepare, now: float) -> list[Any]:
        if not (
            is_int(prepare.view)
            and is_int(prepare.sequence, 1)
            and is_digest(prepare.digest)
            and isinstance(prepare.signature, bytes)
        ):
            return self._reject("malformed")
        if sender == self.config.primary(prepare.view):
            return self._reject("prepare_from_primary")
        reason = self._check_view(sender, prepare.view, prepare, now)
        if reason is not None:
            return self._reject(reason)
        if not self.log.in_window(prepare.sequence):
            return self._reject("outside_window")
        entry = self.log.entries.get(prepare.sequence)
        if entry is not None and entry.commit_sent and sender not in entry.prepares:
            # Our prepared certificate for this entry is complete and kept: one more PREPARE
            # can change nothing, so we skip its signature check (an Ed25519 verify, the
            # dearest step per message: with n = 4 one in three prepares arrives after the
            # certificate) and do not store it. The sender is the authenticated session
            # peer. Its first copy needs no answer (answering it would start an echo
            # exchange in every run where messages arrive late); a repeat means it is
            # retransmitting, and gets our echo as a stored duplicate would.
            self.surplus_prepares += 1
            if sender not in entry.surplus:
                entry.surplus.add(sender)
                return []
            return self._echo(entry, sender, now)
        if not self.verify(sender, material(prepare), prepare.signature):
            return self._reject("bad_signature")
        entry = self.log.entry(prepare.sequence)
        known = entry.prepares.get(sender)
        if known is not None:
            if known == prepare:
                return self._duplicate(sender, prepare.sequence, now)
            return self._reject("conflicting_prepare")
        entry.prepares[sender] = prepare
        return self._advance(prepare.sequence, now)

    def _on_commit(self, sender: int, commit: Commit, now: float) -> list[Any]:
        if not (is_int(commit.view) and is_int(commit.sequence, 1) and is_digest(commit.digest)):
            return self._reject("malformed")
        reason = self._check_view(sender, commit.view, commit, now)
        if reason is not None:
            return self._reject(reason)
        if not self.log.in_window(commit.sequence):
            return self._reject("outside_window")
        entry = self.log.entry(commit.sequence)
        known = entry.commits.get(sender)
        if known is not None:
            if known == commit:
                return self._duplicate(sender, commit.sequence, now)
            return self._reject("conflicting_commit")
        entry.commits[sender] = commit
        return self._advance(commit.sequence, now)

    def _duplicate(self, sender: int, sequence: int, now: float) -> list[Any]:
        """A replica repeats itself: it is retransmitting an entry it has not committed.
        If we committed it, echo our own messages for it (at most every T/4 per replica)."""
        self.rejected["duplicate"] += 1
        entry = self.log.entries.get(sequence)
        if entry is None:
            return []
        return self._echo(entry, sender, now)

    def _echo(self, entry: Entry, to: int, now: float) -> list[Any]:
        """Our own messages for a committed entry, for a replica that lacks them (at most
        every T/4 per replica and entry)."""
        if not entry.committed:
            return []
        last = entry.echoed.get(to)
        if last is not None and now - last < self.base_timeout / 4:
            return []
        entry.echoed[to] = now
        mine: list[Any] = [entry.prepares.get(self.id), entry.commits.get(self.id)]
        if self.id == self.primary:
            mine.append(entry.pre_prepare)
        return [Send(to, m) for m in mine if m is not None]

    def _advance(self, sequence: int, now: float) -> list[Any]:
        """Apply the paper's predicates to one entry: send COMMIT, then commit and execute."""
        entry = self.log.entries.get(sequence)
        if entry is None or entry.pre_prepare is None:
            return []
        pp, out = entry.pre_prepare, []
        if not entry.commit_sent and self.log.prepared(entry, self.view):
            certificate = self.log.certificate(entry, self.view)
            if self.votes.get((self.view, sequence, "commit"), pp.digest) != pp.digest:
                return self._reject("conflicting_vote")
            self.store.save_entry(sequence, "prepared", certificate)
            self._vote(self.view, sequence, "commit", pp.digest)
            self.log.keep_certificate(certificate)
            entry.commit_sent = True
            commit = Commit(self.view, sequence, pp.digest, self.id)
            entry.commits[self.id] = commit
            out += self._to_others(commit)
        if not entry.committed and self.resend_at is None:
            self.resend_at = now + self.base_timeout / 2
        if entry.commit_sent and not entry.committed and self.log.committed_local(entry, self.view):
            entry.committed = True
            if sequence > self.last_executed and sequence not in self.log.committed:
                self.store.save_entry(sequence, "committed", pp)
                self.log.committed[sequence] = pp
            out += self._execute(now)
            if sequence > self.last_executed and self.ask_at is None:
                # Committed but not executed: a lower sequence has not reached us (yet:
                # entries also commit out of order). Its own messages may still come; if
                # the gap is still there after a quarter timeout, we ask.
                self.ask_at = now + self.base_timeout / 4
                self.ask_every = self.base_timeout
        return out

    def _execute(self, now: float) -> list[Any]:
        out: list[Any] = []
        executed = False
        while (pp := self.log.committed.get(self.last_executed + 1)) is not None:
            for request in pp.requests:
                out += self._run(pp, request)
            self.last_executed = pp.sequence
            out.append(Committed(pp.view, pp.sequence, pp.digest))
            executed = True
            if pp.sequence % self.interval == 0:
                out += self._take_checkpoint(pp.sequence, now)
        if executed:
            self.timeout = self.base_timeout  # the view works: forget earlier doubling
            self._retime_request(now)
            if self.is_primary:
                out += self._propose(now)
        return out

    def _run(self, pp: PrePrepare, request: Request) -> list[Any]:
        last = self.replies.get(request.client)
        if last is not None and request.timestamp <= last[0]:
            return []  # exactly once: already executed (the client has the cached reply)
        try:
            result = self.sm.apply(request.op)
        except Exception:  # a faulty operation must never stop the replica
            result = ERROR_RESULT
        self.replies[request.client] = (request.timestamp, result)
        if self.proposed.get(request.client, 0) <= request.timestamp:
            self.proposed.pop(request.client, None)  # the reply cache now stops repeats
        held = self.waiting.get(request.client)
        if held is not None and held.timestamp <= request.timestamp:
            del self.waiting[request.client]
        executed = Executed(pp.sequence, request, result)
        # The client sent it here itself: the same request, whatever signature bytes a
        # faulty replica's certificate may have carried into a new view.
        asked = held is not None and request_content(held) == request_content(request)
        if not (self.reply_all or asked or self.designated_replier(pp.view)):
            return [executed]
        reply = Reply(self.view, request.timestamp, request.client, self.id, result)
        return [executed, Send(request.client, reply)]

    def designated_replier(self, view: int) -> bool:
        """Whether this replica is one of the f + 1 that answer the requests of a batch
        pre-prepared in ``view``: its primary and the f replicas after it (the batch's view,
        not the current one, so every replica picks the same set even when some execute
        the batch after a view change).

        f + 1 matching replies are all a client needs, so the other replies were only ever
        discarded: they cost every replica and every client work per request. A replica
        still answers a request the client sent to it directly (a client that timed out
        sends to every replica, see :class:`~zmqcomm.patterns.pbft.client.Client`), and
        answers retransmissions from its reply cache, so a silent or lying designated
        replier costs a client one timeout, never a result.
        """
        return (self.id - view) % self.n <= self.config.f

    # -- checkpoints and state transfer ---------------------------------------------------------

    def _take_checkpoint(self, sequence: int, now: float) -> list[Any]:
        blob = state_bytes(self.sm.snapshot(), self.replies)
        digest = state_digest(blob)
        self.own_checkpoints[sequence] = (digest, blob)
        checkpoint = self._signed(Checkpoint(sequence, digest, self.id))
        return self._to_others(checkpoint) + self._count_checkpoint(checkpoint, now)

    def _on_checkpoint(self, sender: int, checkpoint: Checkpoint, now: float) -> list[Any]:
        if not (
            is_int(checkpoint.sequence, 1)
            and checkpoint.sequence % self.interval == 0
            and is_digest(checkpoint.digest)
            and isinstance(checkpoint.signature, bytes)
        ):
            return self._reject("malformed")
        if checkpoint.sequence <= self.stable.sequence:
            return self._reject("old_checkpoint")
        if not self.verify(sender, material(checkpoint), checkpoint.signature):
            return self._reject("bad_signature")
        return self._count_checkpoint(checkpoint, now)

    def _count_checkpoint(self, checkpoint: Checkpoint, now: float) -> list[Any]:
        proof = self.checkpoints.add(checkpoint)
        if proof is None or checkpoint.sequence <= self.stable.sequence:
            return []
        return self._certified(checkpoint.sequence, checkpoint.digest, proof, now)

    def _certified(
        self, sequence: int, digest: bytes, proof: tuple[Checkpoint, ...], now: float
    ) -> list[Any]:
        """A quorum certified the state at ``sequence``: make it stable, or go and fetch it."""
        own = self.own_checkpoints.get(sequence)
        if own is not None and own[0] == digest:
            return self._make_stable(StableCheckpoint(sequence, digest, proof, own[1]), now)
        if own is not None:
            return self._reject("checkpoint_mismatch")
        if sequence > self.last_executed and (
            self.fetch_target is None or self.fetch_target.sequence < sequence
        ):
            self.fetch_target = StableCheckpoint(sequence, digest, proof, b"")
            self._fetch_attempt = 0
            return self._send_fetch(now)
        return []

    def _make_stable(self, checkpoint: StableCheckpoint, now: float) -> list[Any]:
        self.store.save_checkpoint(checkpoint)
        self.store.discard_through(checkpoint.sequence)
        self.stable = checkpoint
        sequence = checkpoint.sequence
        self.log.collect_garbage(sequence)
        self.checkpoints.collect_garbage(sequence)
        for old in [s for s in self.own_checkpoints if s < sequence]:
            del self.own_checkpoints[old]
        self.votes = {k: v for k, v in self.votes.items() if k[1] > sequence}
        if self.fetch_target is not None and self.fetch_target.sequence <= sequence:
            self.fetch_target = self.fetch_deadline = None
        self.next_sequence = max(self.next_sequence, sequence + 1)
        return self._propose(now) if self.is_primary else []

    def _send_fetch(self, now: float) -> list[Any]:
        """Overridden by :class:`Replica`: ask a replica for the certified state."""
        return []

    # -- introspection for tests and drivers ------------------------------------------------------

    def log_size(self) -> int:
        """Messages held in the log and checkpoint tables (bounded by the watermarks)."""
        return self.log.size() + self.checkpoints.size() + len(self.own_checkpoints)
