"""The PBFT driver over real sockets: authenticated, encrypted sessions between replicas and
with clients, feeding the pure :class:`~zmqcomm.patterns.pbft.Replica`.

Sockets. Each replica binds one :class:`~zmqcomm.secure.SecureRouter` (clients and the other
replicas connect to it) and keeps one :class:`~zmqcomm.secure.SecureDealer` to each other
replica. A message from replica i to replica j goes out on i's dealer to j and arrives on
j's router; replies to clients go back on the router. The secure layer (not
:class:`zmqcomm.node.Node`) is used because it is the thinnest authenticated path: a batch of
payloads to one peer is one AEAD call and one socket send (``send_many``), with no request
tracking, mail or topic machinery in the way.

Who sent what. The session proves the peer's agent id. The cluster configuration maps the
replicas' agent ids to their indexes; any other authenticated agent is a client, and may
only speak for client ids that are its agent id or start with ``"<agent id>/"`` (one
connection can carry many logical clients: a load generator multiplexes them). A message's
own ``replica``/``client`` field must then match, which the replica checks.

Persist before send. The replica's store runs in group-commit mode: the driver feeds the
replica a burst of messages, commits the store (one fsync), and only then performs the
``Send`` actions. Sends of one burst are grouped by destination and go out as one batch.

Bad bytes from a peer are dropped, counted by reason in :attr:`ReplicaDriver.drops` and
written to the audit log (at most one line per peer and reason per second); they never stop
the loop and never reach the replica.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import zmq

from zmqcomm.actions import Send
from zmqcomm.crypto.audit import REJECT, AuditLog, BaseAuditLog
from zmqcomm.crypto.channel import TrustChecker
from zmqcomm.crypto.key_files import load_identity
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.data_lock import lock_data_directory
from zmqcomm.errors import (
    ClosedError,
    CorruptStoreError,
    RemoteProtocolError,
    StoreError,
    UsageError,
    ZmqCommError,
)
from zmqcomm.patterns.gossip.machine import ed25519_verifier
from zmqcomm.patterns.pbft.config import ReplicaConfig
from zmqcomm.patterns.pbft.messages import Request, decode, encode
from zmqcomm.patterns.pbft.normal import ClientVerifier
from zmqcomm.patterns.pbft.replica import Executed, Replica, StateTransferred, ViewChanged
from zmqcomm.patterns.pbft.sqlite_store import SQLiteStore
from zmqcomm.patterns.pbft.statemachine import KeyValueStore
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.secure_poller import SecurePoller
from zmqcomm.transport.sockets import DEFAULT_SOCKET_OPTIONS

__all__ = ["ReplicaDriver", "client_agent", "group_sends", "run_replica"]

#: Sends held per replica while its session is being set up (PBFT retransmits the rest).
MAX_HELD = 10_000
#: Longest wait in one poll, so statistics and stop flags are looked at regularly.
MAX_WAIT = 0.05
_AUDIT_EVERY = 1.0
#: Errors from the store that must stop the replica rather than be dropped as one bad message.
_STORE_FAILURES = (sqlite3.Error, OSError, StoreError, CorruptStoreError, ClosedError)


def client_agent(client: Hashable) -> str | None:
    """The agent id that may speak for ``client``: the part before the first ``/``."""
    if not isinstance(client, str) or not client:
        return None
    return client.split("/", 1)[0]


def group_sends(
    actions: Iterable[Any], encoded: dict[int, bytes] | None = None
) -> tuple[dict[Hashable, list[bytes]], list[Any]]:
    """Split actions into encoded payloads per destination (in order) and other outputs.

    A message sent to several replicas (a broadcast is one ``Send`` per replica of the same
    object) is encoded once."""
    cache: dict[int, bytes] = {} if encoded is None else encoded
    sends: dict[Hashable, list[bytes]] = {}
    others: list[Any] = []
    for action in actions:
        if isinstance(action, Send):
            message = action.message
            data = cache.get(id(message))
            if data is None:
                data = cache[id(message)] = encode(message)
            sends.setdefault(action.to, []).append(data)
        else:
            others.append(action)
    return sends, others


class ReplicaDriver:
    """Runs one replica: sockets, decode, feed the machine, commit, send, one timer.

    ``replica_agents[i]`` is replica i's agent id and ``endpoints[i]`` where it binds;
    ``store`` should be an :class:`~zmqcomm.patterns.pbft.sqlite_store.SQLiteStore` with
    ``group_commit=True`` (anything with a ``commit()`` method is committed before sends).
    """

    def __init__(
        self,
        replica: Replica,
        *,
        identity: Identity,
        trust: TrustChecker,
        endpoints: Sequence[str],
        replica_agents: Sequence[str],
        store: Any,
        audit: BaseAuditLog | None = None,
        context: zmq.Context[Any] | None = None,
        on_output: Callable[[Any], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        n = replica.n
        if len(endpoints) != n or len(replica_agents) != n:
            raise UsageError(f"need {n} endpoints and {n} replica agent ids")
        if replica_agents[replica.id] != identity.agent_id:
            raise UsageError(
                f"replica {replica.id}'s agent id in the configuration is "
                f"{replica_agents[replica.id]}, but this identity is {identity.agent_id}"
            )
        self.replica = replica
        self.store = store
        self.audit = audit
        self.on_output = on_output
        self.clock = clock
        self.index = {agent: i for i, agent in enumerate(replica_agents)}
        self.drops: Counter[str] = Counter()
        self.executed = 0
        self.view_changes = 0
        self.state_transfers = 0
        self.messages_sent = 0
        self.bytes_sent = 0
        self.batches_sent = 0
        self.steps = 0
        self._audited: dict[tuple[str, str], float] = {}
        self._held: dict[int, deque[bytes]] = {}
        options = DEFAULT_SOCKET_OPTIONS.with_changes(linger=0.0)
        self.router = SecureRouter(
            endpoints[replica.id],
            identity=identity,
            trust=trust,
            audit=audit,
            options=options,
            context=context,
            send_timeout=0.0,  # never block the loop on a slow or gone client
        )
        self.dealers: dict[int, SecureDealer] = {}
        try:
            for j, endpoint in enumerate(endpoints):
                if j != replica.id:
                    self.dealers[j] = SecureDealer(
                        endpoint,
                        identity=identity,
                        trust=trust,
                        expect_peer=replica_agents[j],
                        audit=audit,
                        options=options,
                        context=context,
                        send_timeout=0.0,
                        connect_timeout=None,
                    )
        except BaseException:
            self.close()
            raise
        # On the sockets' clock (the default), not the replica's: it paces their timers.
        self._poller: SecurePoller[SecureRouter | SecureDealer] = SecurePoller(
            [self.router, *self.dealers.values()]
        )

    # -- the loop ---------------------------------------------------------------------------

    def step(self, timeout: float = MAX_WAIT) -> int:
        """Wait up to ``timeout`` s (less if the replica's timer is due), handle what came,
        fire the timer, persist, send. Returns the number of messages fed to the replica."""
        now = self.clock()
        deadline = self.replica.next_deadline()
        wait = timeout if deadline is None else min(timeout, max(0.0, deadline - now))
        self.steps += 1
        actions: list[Any] = []
        fed = 0
        for sock in self._poller.wait(wait):
            try:
                sock.pump(0.0)
            except ZmqCommError as exc:
                self._drop(None, f"pump_{exc.reason}")
            while sock.inbox:
                delivered = sock.inbox.popleft()
                now = self.clock()
                for payload in delivered.message.payloads:
                    fed += 1
                    actions += self._feed(delivered.agent_id, payload, now)
        now = self.clock()
        deadline = self.replica.next_deadline()
        if deadline is not None and now >= deadline:
            actions += self.replica.on_timer(now=now)
        self._flush_held()
        if actions:
            self._perform(actions)
        return fed

    def _feed(self, agent: str, payload: Any, now: float) -> list[Any]:
        if not isinstance(payload, bytes):
            self._drop(agent, "not_bytes")
            return []
        try:
            message = decode(payload)
        except RemoteProtocolError as exc:
            self._drop(agent, exc.reason)
            return []
        sender: Hashable | None = self.index.get(agent)
        if sender is None:
            # A client: it may only speak for client ids under its own agent id.
            if not isinstance(message, Request):
                self._drop(agent, "not_from_replica")
                return []
            if client_agent(message.client) != agent:
                self._drop(agent, "client_id_mismatch")
                return []
            sender = message.client
        from_client = isinstance(sender, str)
        before = sum(self.replica.rejected.values()) if from_client else 0
        try:
            out = self.replica.on_message(sender, message, now=now)
        except _STORE_FAILURES:
            # Not a bug in the core: the disk failed. Saves of this burst may be gone, so
            # nothing it produced may be sent; stop (a restart recovers from what is on disk).
            raise
        except Exception:  # a bug the core missed must not stop the replica
            self._drop(agent, "replica_exception")
            return []
        if from_client and sum(self.replica.rejected.values()) != before:
            self._audit(agent, "rejected_by_replica")
        return out

    def _perform(self, actions: list[Any]) -> None:
        sends, others = group_sends(actions)
        commit = getattr(self.store, "commit", None)
        if commit is not None:
            commit()  # persist before send: everything these sends depend on is on disk
        for output in others:
            if isinstance(output, Executed):
                self.executed += 1
            elif isinstance(output, ViewChanged):
                self.view_changes += 1
            elif isinstance(output, StateTransferred):
                self.state_transfers += 1
            if self.on_output is not None:
                self.on_output(output)
        # Replies to the many logical clients behind one connection go out as one batch.
        per_agent: dict[str, list[bytes]] = {}
        for to, payloads in sends.items():
            if isinstance(to, int):
                self._send_replica(to, payloads)
                continue
            agent = client_agent(to)
            if agent is None:
                self.drops["bad_client_id"] += len(payloads)
            else:
                per_agent.setdefault(agent, []).extend(payloads)
        for agent, payloads in per_agent.items():
            self._transmit(
                lambda p, a=agent: self.router.send_many(a, p),  # type: ignore[misc]
                payloads,
                "send_client",
            )

    def _send_replica(self, to: int, payloads: list[bytes]) -> None:
        dealer = self.dealers.get(to)
        if dealer is None:
            self.drops["no_such_replica"] += len(payloads)
            return
        if not dealer.established or self._held.get(to):
            held = self._held.setdefault(to, deque(maxlen=MAX_HELD))
            held.extend(payloads)
            return
        self._transmit(dealer.send_many, payloads, "send_replica")

    def _transmit(
        self, send: Callable[[list[bytes]], None], payloads: list[bytes], what: str
    ) -> None:
        try:
            send(payloads)
        except ZmqCommError as exc:
            self.drops[f"{what}_{exc.reason}"] += len(payloads)
            return
        self.batches_sent += 1
        self.messages_sent += len(payloads)
        self.bytes_sent += sum(len(p) for p in payloads)

    def _flush_held(self) -> None:
        for to, held in self._held.items():
            dealer = self.dealers[to]
            if held and dealer.established:
                payloads = list(held)
                held.clear()
                self._transmit(dealer.send_many, payloads, "send_replica")

    # -- bad input ------------------------------------------------------------------------------

    def _drop(self, agent: str | None, reason: str) -> None:
        self.drops[reason] += 1
        self._audit(agent, reason)

    def _audit(self, agent: str | None, reason: str) -> None:
        if self.audit is None:
            return
        now = self.clock()
        key = (agent or "", reason)
        last = self._audited.get(key)
        if last is not None and now - last < _AUDIT_EVERY:
            return  # a flood of junk stays cheap: one line per peer and reason per second
        self._audited[key] = now
        if len(self._audited) > 10_000:
            self._audited.clear()
        self.audit.record(REJECT, now=time.time(), peer=agent, reason=reason, pattern="pbft")

    # -- introspection and lifetime -----------------------------------------------------------

    @property
    def connected(self) -> int:
        """How many other replicas we have a session with (our dealers to them)."""
        return sum(1 for d in self.dealers.values() if d.established)

    @property
    def inbound(self) -> int:
        """How many other replicas have a session with our router (their dealers to us)."""
        return sum(1 for agent in self.router.peers if agent in self.index)

    def statistics(self) -> dict[str, Any]:
        r = self.replica
        return {
            "replica": r.id,
            "view": r.view,
            "changing": r.changing,
            "last_executed": r.last_executed,
            "stable_sequence": r.stable.sequence,
            "stable_digest": r.stable.digest.hex(),
            "executed": self.executed,
            "view_changes": self.view_changes,
            "state_transfers": self.state_transfers,
            "connected": self.connected,
            "inbound": self.inbound,
            "steps": self.steps,
            "messages_sent": self.messages_sent,
            "bytes_sent": self.bytes_sent,
            "batches_sent": self.batches_sent,
            "store_commits": getattr(self.store, "commits", None),
            "rejected": dict(r.rejected),
            "surplus_prepares": r.surplus_prepares,
            "drops": dict(self.drops),
            "session_rejects": _merge(
                s.table.rejected for s in (self.router, *self.dealers.values())
            ),
        }

    def close(self) -> None:
        for dealer in getattr(self, "dealers", {}).values():
            dealer.close()
        router = getattr(self, "router", None)
        if router is not None:
            router.close()

    def __enter__(self) -> ReplicaDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _merge(counters: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for counter in counters:
        total.update(counter)
    return dict(total)


# -- the replica process ----------------------------------------------------------------------

STORE_FILE = "replica.sqlite3"
STATUS_FILE = "status.json"
STATE_FILE = "state.json"
#: Locked (flock) by the replica process that runs on the data directory.
LOCK_FILE = "replica.lock"


def write_json(path: Path, data: object) -> None:
    """Atomically, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temporary, path)


def run_replica(
    config: ReplicaConfig,
    *,
    identity: Identity | None = None,
    stop: Callable[[], bool] | None = None,
    status_every: float = 0.25,
    context: zmq.Context[Any] | None = None,
    on_started: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run one replica until ``stop()`` is true (or SIGTERM/SIGINT in the main thread).
    ``on_started()`` is called once its store is loaded and its socket bound.

    The SQLite store, ``status.json`` (refreshed every ``status_every`` s) and, at a clean
    stop, ``state.json`` (the executed sequence, the state digest and the keys held) live in
    ``config.data``. Returns the final statistics. A store that cannot be trusted raises
    :class:`~zmqcomm.patterns.pbft.sqlite_store.CorruptStoreError` before anything is sent.
    """
    if identity is None:
        identity = load_identity(config.keys / f"{config.name}.key")
    if not config.trust.is_dir():
        # TrustStore would create a misspelt directory empty and refuse every peer forever.
        raise UsageError(
            f"trust directory {config.trust} does not exist: check the trust setting, or "
            "create it with the .pub files of the replicas and the clients"
        )
    config.data.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = _lock_data_directory(config.data)
    try:
        return _run_locked(
            config, identity, stop, status_every, context=context, on_started=on_started
        )
    finally:
        lock.close()


def client_verifier(trust: TrustStore) -> ClientVerifier:
    """Checks a request's signature with the key of the agent its client id belongs to (the
    part before the slash), as the trust store holds it now: revoked clients fail."""

    def verify(client: Hashable, material: bytes, signature: bytes) -> bool:
        agent = client_agent(client)
        return (
            agent is not None
            and isinstance(signature, bytes)
            and trust.signed_by(agent, material, signature, now=time.time())
        )

    return verify


def build_replica(
    config: ReplicaConfig,
    *,
    identity: Identity,
    store: SQLiteStore,
    machine: KeyValueStore,
    trust: TrustStore,
) -> Replica:
    """The protocol core a replica process runs, with the configuration's settings."""
    return Replica(
        config.replica,
        config.n,
        state_machine=machine,
        store=store,
        sign=identity.sign,
        verify=ed25519_verifier(config.verify_keys),
        now=time.monotonic(),
        checkpoint_interval=config.checkpoint_interval,
        watermark_window=config.window,
        max_batch=config.batch_size,
        max_request_bytes=config.max_request_bytes,
        max_batch_bytes=config.batch_bytes,
        batch_delay=config.batch_delay,
        view_change_timeout=config.view_change_timeout,
        # Doubling must be able to go past the first timeout, however long it is.
        max_view_change_timeout=max(60.0, 16 * config.view_change_timeout),
        reply_all=config.reply_all,
        verify_client=client_verifier(trust) if config.client_signatures else None,
    )


def _lock_data_directory(data: Path) -> IO[bytes]:
    """An exclusive lock on ``data``, held while the replica runs: two replicas on one store
    (two configurations naming the same directory) would mix their votes."""
    return lock_data_directory(data, lock_file=LOCK_FILE, owner="replica")


def _run_locked(
    config: ReplicaConfig,
    identity: Identity,
    stop: Callable[[], bool] | None,
    status_every: float,
    *,
    context: zmq.Context[Any] | None,
    on_started: Callable[[], None] | None,
) -> dict[str, Any]:
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
    audit = AuditLog(config.audit) if config.audit is not None else None
    store = SQLiteStore(config.data / STORE_FILE, group_commit=True, fsync=config.fsync)
    machine = KeyValueStore()
    try:
        trust = TrustStore(config.trust)
        replica = build_replica(
            config, identity=identity, store=store, machine=machine, trust=trust
        )
        store.commit()  # a restart that resumes a view change persisted nothing new, but be sure
        driver = ReplicaDriver(
            replica,
            identity=identity,
            trust=trust,
            endpoints=config.endpoints,
            replica_agents=config.agent_ids,
            store=store,
            audit=audit,
            context=context,
        )
    except BaseException:
        store.close()
        raise
    status_path = config.data / STATUS_FILE
    next_status = 0.0
    stopped_cleanly = False
    try:
        if on_started is not None:
            on_started()  # inside: if it raises, everything is still closed below
        while not stopping and not (stop is not None and stop()):
            try:
                driver.step()
            except KeyboardInterrupt:
                break
            now = time.monotonic()
            if now >= next_status:
                next_status = now + status_every
                # "updated": a replica killed with SIGKILL cannot say it stopped; a file
                # not rewritten for more than a second tells a monitor instead.
                write_json(
                    status_path,
                    {"pid": os.getpid(), "running": True, "updated": time.time()}
                    | driver.statistics(),
                )
        final = {"pid": os.getpid(), "running": False, "updated": time.time()}
        final |= driver.statistics()
        write_json(status_path, final)
        stopped_cleanly = True
        write_json(
            config.data / STATE_FILE,
            {
                "last_executed": replica.last_executed,
                "digest": machine.digest().hex(),
                "keys": sorted(k.hex() for k in machine.data),
            },
        )
        return final
    finally:
        if not stopped_cleanly:
            # A monitor reading status.json must not see a dead replica as running.
            with contextlib.suppress(Exception):
                write_json(
                    status_path,
                    {"pid": os.getpid(), "running": False, "failed": True, "updated": time.time()},
                )
        driver.close()
        store.close()
        if audit is not None:
            audit.close()
