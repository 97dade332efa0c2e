"""Pure PBFT (Castro & Liskov, OSDI 1999 / TOCS 2002): replicas, client, state machine, store.

Sans-I/O like every zmqcomm protocol core: no sockets, clocks or randomness. A driver (the
ROUTER/DEALER one, or :class:`zmqcomm.sim.Simulator` in tests) feeds each machine the decoded
messages with the *authenticated* sender id and ``now``, performs the returned
:class:`~zmqcomm.actions.Send` actions, hands other output records to the application, and
calls ``on_timer(now=...)`` at ``next_deadline()``.

Committee: replicas are the ints ``0..n-1`` with 4 <= n <= 31; f = (n-1)//3 and a quorum is
ceil((n+f+1)/2) (2f+1 when n = 3f+1), see :class:`Quorum`. Clients are any other str or int.
The primary of view v is replica ``v % n``.

Replica::

    Replica(replica_id, n, *, state_machine, store, sign, verify, now,
            checkpoint_interval=16,      # K: a CHECKPOINT every K sequence numbers
            watermark_window=None,       # L: H = h + L (default 2K; a multiple of K)
            max_batch=16, batch_delay=0.002,   # primary batching: full batch or delay
            view_change_timeout=1.0,     # T, doubled on each failed view change
            max_view_change_timeout=60.0,
            max_view_jump=16,            # VIEW-CHANGEs for views > v + this are dropped
            fetch_timeout=None,          # state-transfer retry (default T/2)
            max_waiting=10_000,          # requests held per replica, one per client
            verify_client=None,          # verify(client, material, signature) for requests
            reply_all=False)             # True: every replica replies, not f+1 designated

    replica.on_message(sender, message, *, now) -> list[action]
    replica.on_timer(*, now) -> list[action]
    replica.next_deadline() -> float | None
    replica.rejected: Counter[str]     # drops by reason; a dropped message changes nothing
    replica.view, replica.changing, replica.last_executed, replica.stable, replica.log_size()

``sign(material) -> signature`` signs with this replica's key; ``verify(replica_id,
material, signature) -> bool`` checks another's (:func:`ed25519_verifier` builds one from
the replicas' Ed25519 verify keys). Outputs besides ``Send``: :class:`Executed` (sequence,
request, result) for every request executed, :class:`Committed` (view, sequence, digest)
once per executed sequence number (null requests too), :class:`StateTransferred` and
:class:`ViewChanged`.

Client::

    Client(client_id, n, *, now, timeout=0.5, max_timeout=8.0, sign=None,
           broadcast_after_timeout=32)
    client.request(op: bytes, *, now) -> list[action]   # queued; one outstanding at a time
    outputs Result(timestamp, result) after f+1 matching replies

Protocol, as in the paper: REQUEST -> PRE-PREPARE (primary, batched) -> PREPARE (backups) ->
COMMIT; a replica executes a batch once committed-local (pre-prepare, 2f matching prepares
from backups, 2f+1 matching commits) and all lower sequence numbers are executed. Only f+1
designated replicas (the primary of the batch's view and the f after it) reply, plus any
replica the client sent the request to; a client that timed out sends its next 32 requests
to all of them (``reply_all=True`` makes every replica reply, as in the paper). Messages are
accepted only for the current view and h < n <= H. Every K sequence numbers replicas
exchange signed CHECKPOINTs; 2f+1 matching ones make a checkpoint stable and everything at
or below it is garbage-collected. A replica that sees a certified checkpoint it has not
reached fetches the state (:class:`FetchState`/:class:`StateSnapshot`)
from a replica, checks it hashes to the certified digest, installs it and continues.

View change: a replica holding requests it has not executed runs a timer (T, doubled after
each view change that did not produce a working view) that times one of them, as in the
paper: it starts when a request arrives and none is timed, and stops only when the timed
request is executed (restarting for the oldest other waiting request, if any); executing
other requests or null requests does not reset it, so a primary cannot censor one client
while it orders others. On expiry the replica moves to v+1 and sends a signed VIEW-CHANGE
with its stable-checkpoint proof and its prepared certificates.
The new primary, given 2f+1 of them, sends NEW-VIEW with the O set (min-s, max-s, one
pre-prepare per sequence number, null requests for gaps), which every backup recomputes
before accepting (:mod:`.viewchange`). A replica joins a view change early on f+1
VIEW-CHANGEs for higher views, and ignores any for views more than ``max_view_jump`` ahead.

Authentication: the ``sender`` a driver passes must be authenticated (per-pair sessions);
each message's ``replica`` field must be that same replica id, an exact int (``False``,
``True`` or ``1.0`` compare equal to 0 or 1 but are refused as ``sender_mismatch``: they
would poison the proofs built from the message); the client applies the same rule to
replies. Signed (Ed25519, ~17 us to sign): PRE-PREPARE (its batch digest, which every
check ties to its requests) and PREPARE (they become parts of prepared certificates shown in
VIEW-CHANGEs), CHECKPOINT, VIEW-CHANGE and NEW-VIEW. COMMIT
and REPLY are not signed. Client requests are signed only if the replicas get
``verify_client`` (recommended: otherwise a faulty primary could propose requests no client
sent, and backups cannot relay requests, see below).

Durability: the replica writes its view, its votes (pre-prepare/prepare/commit digest per
view and sequence), prepared certificates, committed batches and stable checkpoints to the
injected :class:`Store` *before* returning a message that depends on them, and a new
``Replica`` built on the same store recovers: it restores the stable checkpoint, re-executes
the committed batches above it, refuses to vote differently from its stored votes, and
resends its VIEW-CHANGE if it crashed during one. :class:`MemoryStore` is the in-memory
store, with ``fail_after(k)`` crash injection.

Modules: :mod:`.messages` (dataclasses, codec, signing material), :mod:`.quorum`,
:mod:`.log` (certificates, predicates, watermarks), :mod:`.normal` (requests, three
phases, execution, checkpoints, state transfer), :mod:`.replica` (recovery, timers, view
changes, dispatch), :mod:`.viewchange` (VIEW-CHANGE/NEW-VIEW and the O set),
:mod:`.checkpoint`, :mod:`.client`, :mod:`.statemachine`, :mod:`.store`.

Where this deviates from the paper, on purpose:

- Request relay needs client signatures. With ``verify_client``, as in the paper, a backup
  that first receives a request from its client (not in a view change) forwards it to the
  primary, and the primary accepts a request relayed by a replica if the client's signature
  verifies (a cached reply still goes to the client). Without ``verify_client`` a request is
  accepted only from its client and nobody relays: a faulty replica could otherwise invent
  requests. The risk then: a faulty client that sends each request only to the backups makes
  them start a view change per request; give the replicas ``verify_client`` whenever clients
  are not trusted (``client_signatures = true`` in a replica's configuration,
  ``pbft local --client-signatures``: clients sign with their identity, checked against the
  trust store). The idle-primary detector is the request timer (above); there is no
  heartbeat, since a primary with nothing to order harms nobody.
- NEW-VIEW carries the batches of its pre-prepares, so no replica has to fetch requests.
- A replica that learns of a later view (normal-case messages from a replica in view w > v,
  or a VIEW-CHANGE from a replica that is behind us) asks for / is shown the NEW-VIEW that
  installed it (:class:`ViewQuery`/:class:`ViewState`), checks it and enters that view:
  how a restarted or partitioned replica converges to the current view. Messages for the
  next view that arrive before its NEW-VIEW are buffered (bounded) and replayed after it.
- Retransmission (the paper leaves it to the implementation): a replica resends its
  VIEW-CHANGE every T/2 while it waits for a NEW-VIEW (the timer for moving on to v+2
  starts, as in the paper, once a quorum of VIEW-CHANGEs for v+1 is in); and in the normal
  case it resends its own PRE-PREPARE/PREPARE/COMMIT of entries still uncommitted after
  T/2, while a replica that already committed such an entry answers the repeat with its
  own messages for it (at most every T/4 per peer). Without this a quorum of exactly the
  correct replicas stalls on a single lost message. When its request timer expires, a
  replica fetching a checkpoint times the request again; any other first sends a
  :class:`Status` (its view and last executed sequence number) and waits a quarter timeout
  before it suspects the primary, once per timed request. Replicas ahead of it
  answer with their CHECKPOINT for their stable state (a quorum of them starts a fetch) and
  their own messages for the committed entries it lacks. A replica that is merely behind
  thus catches up instead of starting a view change alone, which would leave it in a view
  nobody else joins; a primary that stalls everyone gains a quarter timeout.
- On recovery the committed batches above the stable checkpoint are re-executed silently
  (no ``Executed`` outputs, no replies): a driver that needs the results again reads the
  state, and clients retransmit (answered from the reply cache).
- The reply cache (last timestamp and result per client) is part of the checkpoint state.
- No read-only fast path, no MAC authenticators (sessions authenticate point-to-point
  messages), no proactive recovery.
"""

from zmqcomm.patterns.gossip.machine import ed25519_verifier
from zmqcomm.patterns.pbft.client import Client, Result
from zmqcomm.patterns.pbft.messages import (
    NULL_DIGEST,
    Checkpoint,
    Commit,
    FetchState,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Reply,
    Request,
    StateSnapshot,
    Status,
    ViewChange,
    ViewQuery,
    ViewState,
    batch_digest,
    decode,
    encode,
    material,
)
from zmqcomm.patterns.pbft.quorum import Quorum, max_faults, quorum_size
from zmqcomm.patterns.pbft.replica import (
    Committed,
    Executed,
    Replica,
    StateTransferred,
    ViewChanged,
)
from zmqcomm.patterns.pbft.statemachine import (
    KeyValueStore,
    StateMachine,
    decode_result,
    encode_op,
)
from zmqcomm.patterns.pbft.store import MemoryStore, SimulatedCrash, StableCheckpoint, Store

__all__ = [
    "NULL_DIGEST",
    "Checkpoint",
    "Client",
    "Commit",
    "Committed",
    "Executed",
    "FetchState",
    "KeyValueStore",
    "MemoryStore",
    "NewView",
    "PrePrepare",
    "Prepare",
    "PreparedProof",
    "Quorum",
    "Replica",
    "Reply",
    "Request",
    "Result",
    "SimulatedCrash",
    "StableCheckpoint",
    "StateMachine",
    "StateSnapshot",
    "StateTransferred",
    "Status",
    "Store",
    "ViewChange",
    "ViewChanged",
    "ViewQuery",
    "ViewState",
    "batch_digest",
    "decode",
    "decode_result",
    "ed25519_verifier",
    "encode",
    "encode_op",
    "material",
    "max_faults",
    "quorum_size",
]
