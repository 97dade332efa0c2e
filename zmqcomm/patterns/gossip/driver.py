"""Gossip over real ZeroMQ sockets: :class:`GossipAgent`, a thin loop around :class:`GossipNode`.

Transport (:mod:`.links`). Given a :class:`TrustStore`, an agent runs over secure sessions by
default: a :class:`~zmqcomm.secure.SecureRouter` bound as its inbox and a
:class:`~zmqcomm.secure.SecureDealer` per dialed peer, expecting that peer's id. The sender of
every frame is then the handshake-authenticated agent id and frames are encrypted per hop;
what the sessions refuse is audited there and counted here as ``session_<reason>`` drops.
With ``verify_keys`` (no trust store to run handshakes with) or ``secure=False`` it runs
signed-only over two plain ROUTER sockets (:mod:`.links` says why ROUTER, and why two).

Either way, every Publish is signed by its origin and verified before it is delivered or
relayed, and control items are taken only from a sender the agent's keys know (:mod:`.peer_trust`).
The sender (session id or, signed-only, the claimed routing id) only names whom to blame:
peer input that is garbage, forged, over the rate or needlessly duplicated lowers that peer's
score (:mod:`.scoring`); below the threshold the peer is pruned from the mesh and its frames
are dropped unread for a while. Nothing a peer sends raises out of :meth:`GossipAgent.step`:
it is dropped, counted per reason in :meth:`GossipAgent.statistics` and, with an audit log,
written as a ``reject`` line.

Signed-only, payloads are *not encrypted*: every mesh peer, and whoever can sniff the
transport or connect under a trusted peer's routing id (routing ids are not authenticated),
reads them. Secure, only trusted mesh peers read them (per hop, not end to end). Encrypt
payloads meant for a few readers at the application level or use Node topics.

:meth:`GossipAgent.publish` queues; :meth:`GossipAgent.step` (or :class:`GossipGroup.step`
for many agents in one thread with one poller) receives, feeds the machine, fires its timer
and flushes the queues (:mod:`.outbox`), coalescing each peer's items into frames. The knobs
are a :class:`GossipConfig` (:mod:`.config`).
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import zmq

from zmqcomm.crypto.audit import REJECT, BaseAuditLog
from zmqcomm.crypto.keys import Identity, is_agent_id
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import (
    ClosedError,
    LocalProtocolError,
    RemoteProtocolError,
    UsageError,
    ZmqCommError,
)
from zmqcomm.patterns.discovery.peers import ENTER, EXPIRED, LEAVE, PeerEvent
from zmqcomm.patterns.gossip.codec import decode_frame, encode_item
from zmqcomm.patterns.gossip.config import GossipConfig
from zmqcomm.patterns.gossip.links import PlainLinks, SecureLinks
from zmqcomm.patterns.gossip.machine import (
    Adopt,
    Deliver,
    GossipNode,
    Graft,
    IHave,
    IWant,
    Publish,
)
from zmqcomm.patterns.gossip.machine import Prune as MeshPrune  # scoring has its own Prune
from zmqcomm.patterns.gossip.outbox import Outbox
from zmqcomm.patterns.gossip.peer_trust import (
    PeerTrust,
    mapping_verifier,
    tcp_endpoint,
    trust_verifier,
)
from zmqcomm.patterns.gossip.queues import Priority
from zmqcomm.patterns.gossip.scoring import PeerScores, Prune, Restore
from zmqcomm.transport.sockets import poll_ms

__all__ = [
    "Delivered",
    "GossipAgent",
    "GossipConfig",
    "mapping_verifier",
    "tcp_endpoint",
    "trust_verifier",
]

Clock = Callable[[], float]
#: Items that make us send to, or keep track of, their sender: taken only from a trusted id.
#: Prune only drops state, but a forged one would make us ask for adoption: same rule.
_CONTROL = (Graft, IHave, IWant, Adopt, MeshPrune)
#: Machine counters that mean "this sender misbehaved" (diffed around each on_message).
_INVALID = ("bad_signature", "malformed", "too_many_hops")
#: Seconds between two audit lines for the same anonymous reject reason (a flood of bad
#: routing ids is counted in full but must not fill the audit log).
_AUDIT_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message handed to the application, once per id. ``sender`` is None for our own."""

    message_id: bytes
    origin: str
    sequence: int
    payload: bytes
    hops: int
    sender: str | None
    at: float


class GossipAgent:
    """One gossip participant on real sockets; see the module docstring."""

    def __init__(
        self,
        identity: Identity,
        endpoint: str,
        *,
        peers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        verify_keys: Mapping[str, bytes] | None = None,
        trust: TrustStore | None = None,
        config: GossipConfig | None = None,
        audit: BaseAuditLog | None = None,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
        context: zmq.Context[Any] | None = None,
        secure: bool | None = None,
    ) -> None:
        keys = PeerTrust(verify_keys, trust)
        secure = keys.secure(secure)
        self.config = config or GossipConfig()
        self.identity = identity
        self.agent_id = identity.agent_id
        self.audit = audit
        self._clock = clock
        self._keys = keys
        self._dialed: dict[str, str] = {}
        self._known: dict[str, str] = {}
        peer_items = peers.items() if isinstance(peers, Mapping) else peers
        c = self.config
        rng = rng or random.Random()
        options = dict(c.machine_options)
        # Message ids hash (origin, sequence, payload): numbering from 0 after a restart would
        # give a payload re-published at the same position the id of the earlier copy, which
        # peers then drop as a duplicate (and, with the replay window, as a replay). Wall-clock
        # nanoseconds grow across restarts and stay far below 2**64 (until the year 2554).
        options.setdefault("first_sequence", time.time_ns())
        self.node = GossipNode(
            self.agent_id,
            [],
            sign=identity.sign,
            verify=keys.verifier(),
            choose=rng.sample,
            now=clock(),
            degree=c.degree,
            degree_low=c.degree_low,
            degree_high=c.degree_high,
            heartbeat=c.heartbeat,
            history=c.history,
            gossip_windows=c.gossip_windows,
            **options,
        )
        self.scores = PeerScores(c.scores)
        self.counters: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.deliveries: deque[Delivered] = deque(maxlen=c.keep_deliveries)
        self._audited_at: dict[str, float] = {}  # throttled reject reason -> last audit line
        # Sockets after the settings are checked: a bad one raises before anything is bound.
        self.links: PlainLinks | SecureLinks
        if secure:
            assert trust is not None
            self.links = SecureLinks(
                identity,
                endpoint,
                trust=trust,
                audit=audit,
                options=c.sockets,
                context=context,
                max_burst=c.max_burst,
            )
        else:
            self.links = PlainLinks(self.agent_id, endpoint, c.sockets, context, c.max_burst)
        self.endpoint = self.links.endpoint
        self.outbox = Outbox(self.links, c, self.counters, refused=self._untrust, lost=self._lost)
        self.queues = self.outbox.queues
        self._poller = zmq.Poller()
        self._polled: list[zmq.Socket[Any]] = []
        self._polled_version = -1
        self._closed = False
        try:
            for agent_id, peer_endpoint in peer_items:
                self.add_peer(agent_id, peer_endpoint)
        except BaseException:
            self.close()  # a refused peer entry must not leave the endpoint bound
            raise

    @property
    def secure(self) -> bool:
        """Whether frames travel in authenticated, encrypted sessions (else signed-only)."""
        return self.links.secure

    @property
    def sockets(self) -> tuple[zmq.Socket[Any], ...]:
        """The raw sockets to wait on for input (secure: a dealer per dialed peer and its
        connection events too); changes when peers are dialed or hung up, see
        :attr:`sockets_version`."""
        return tuple(self.links.sockets())

    @property
    def sockets_version(self) -> int:
        return self.links.version

    # -- membership --------------------------------------------------------------------------

    def add_peer(self, agent_id: str, endpoint: str) -> None:
        """Dial ``agent_id`` at ``endpoint`` and make it a gossip peer."""
        self._check_open()
        if not isinstance(agent_id, str) or not is_agent_id(agent_id):
            raise UsageError(f"not an agent id: {agent_id!r}; use Identity.agent_id")
        if agent_id == self.agent_id:
            return
        self._known[agent_id] = endpoint
        if self._dialed.get(agent_id) != endpoint:
            self._dialed.pop(agent_id, None)
            self.links.dial(agent_id, endpoint)
            self._dialed[agent_id] = endpoint
        if not self.scores.is_graylisted(agent_id):
            self.node.add_peer(agent_id)

    def remove_peer(self, agent_id: str, *, reason: str = "peer_removed") -> None:
        """Stop gossiping with ``agent_id``; what was queued for it is dropped (counted)."""
        self._known.pop(agent_id, None)
        if self._dialed.pop(agent_id, None) is not None:
            self.links.hang_up(agent_id)  # secure: its dealer is closed, nothing is kept
        self.links.forget(agent_id)
        self.node.remove_peer(agent_id)
        self.outbox.forget(agent_id, reason)

    def on_peer_event(
        self, event: PeerEvent, *, endpoint_for: Callable[[PeerEvent], str | None] = tcp_endpoint
    ) -> None:
        """Feed discovery: ENTER adds the peer (at ``endpoint_for(event)``), EXPIRED and LEAVE
        remove it, anything else is ignored. Events come from other peers' records: one whose
        endpoint cannot be dialed is dropped, counted and audited (``bad_peer_endpoint``),
        never raised into the discovery loop."""
        if event.kind == ENTER:
            endpoint = endpoint_for(event)
            if endpoint is not None and is_agent_id(event.agent_id):
                try:
                    self.add_peer(event.agent_id, endpoint)
                except ClosedError:
                    raise
                except ZmqCommError:
                    self._reject(event.agent_id, "bad_peer_endpoint", throttle=True)
        elif event.kind in (EXPIRED, LEAVE):
            self.remove_peer(event.agent_id, reason="peer_gone")

    # -- application side --------------------------------------------------------------------

    def publish(self, payload: bytes) -> bytes:
        """Sign and queue ``payload`` for the mesh; returns its message id. Sent on the next
        :meth:`step` or :meth:`flush`. Delivered locally too (``sender`` None)."""
        self._check_open()
        if not isinstance(payload, bytes):
            raise UsageError("a gossip payload must be bytes")
        if len(payload) > self.config.limits.max_payload_bytes:
            raise UsageError(
                f"payload of {len(payload)} bytes exceeds max_payload_bytes "
                f"{self.config.limits.max_payload_bytes}; split it or raise the limit"
            )
        now = self._clock()
        mid, actions = self.node.publish(payload, now=now)
        self._perform(actions, None, Priority.OWN, now, [])
        self.outbox.retry_at = now  # wake the loop to flush
        return mid

    def step(self, timeout: float | None = 0.0) -> list[Delivered]:
        """Wait up to ``timeout`` seconds (None: until something happens) for input, drain it,
        fire timers and flush; returns what was delivered during this step."""
        self._check_open()
        wait = self.wake_at()
        now = self._clock()
        if wait is not None:
            left = max(0.0, wait - now)
            timeout = left if timeout is None else min(timeout, left)
        self._sync_poller()
        ready = dict(self._poller.poll(None if timeout is None else poll_ms(timeout)))
        out: list[Delivered] = []
        now = self._clock()
        for sock in self._polled:
            if sock in ready:
                out += self.drain(sock, now)
        out += self.service(self._clock())
        return out

    def _sync_poller(self) -> None:
        """Wait on the sockets we have now (secure: dealers come and go with peers)."""
        if self._polled_version == self.links.version:
            return
        for sock in self._polled:
            self._poller.unregister(sock)
        self._polled = self.links.sockets()
        for sock in self._polled:
            self._poller.register(sock, zmq.POLLIN)
        self._polled_version = self.links.version

    def __iter__(self) -> Iterator[Delivered]:
        """Deliveries as they come (steps forever; stop by breaking out of the loop)."""
        while not self._closed:
            yield from self.step(None)

    def flush(self) -> None:
        self.outbox.flush(self._clock())

    # -- the loop's parts (GossipGroup drives them directly) ---------------------------------

    def wake_at(self) -> float | None:
        deadlines = [self.node.next_deadline(), self.scores.next_deadline(), self.outbox.retry_at]
        links_due = self.links.due_in()
        if links_due is not None:
            deadlines.append(self._clock() + links_due)
        return min((d for d in deadlines if d is not None), default=None)

    def drain(self, sock: zmq.Socket[Any], now: float) -> list[Delivered]:
        """Read up to ``max_burst`` frames from ``sock`` (one of :attr:`sockets`) without
        blocking and handle them."""
        out: list[Delivered] = []
        received = self.links.receive(sock)
        self._note_reconnected()
        for sender, parts in received:
            self._on_frames(sender, parts, now, out)
        return out

    def _note_reconnected(self) -> None:
        """Peers whose sessions came back (before their frames: a Graft on the new session
        must count)."""
        for peer in self.links.take_reconnected():
            self.node.peer_reconnected(peer)

    def service(self, now: float) -> list[Delivered]:
        """Fire due timers (the secure sessions' too) and flush the queues."""
        out: list[Delivered] = []
        links_due = self.links.due_in()
        if links_due is not None and links_due <= 0.0:
            received = self.links.tick()
            self._note_reconnected()
            for sender, parts in received:
                self._on_frames(sender, parts, now, out)
        deadline = self.node.next_deadline()
        if deadline is not None and deadline <= now:
            self._drop_untrusted_peers()  # each heartbeat, before the mesh is rebalanced
            self._perform(self.node.on_timer(now=now), None, Priority.CONTROL, now, out)
            for peer, count in self.node.take_broken_promises().items():
                self._prune(self.scores.broken_promises(peer, now=now, count=count))
        deadline = self.scores.next_deadline()
        if deadline is not None and deadline <= now:
            for restore in self.scores.on_timer(now=now):
                self._restore(restore)
        self.outbox.flush(now)
        return out

    # -- receiving ---------------------------------------------------------------------------

    def _reject(
        self, peer: str | None, reason: str, count: int = 1, *, throttle: bool = False
    ) -> None:
        self.drops[reason] += count
        if self.audit is None:
            return
        if peer is None or throttle:  # nobody to graylist: rate-limit the lines instead
            now = self._clock()
            last = self._audited_at.get(reason)
            if last is not None and now - last < _AUDIT_INTERVAL:
                return
            self._audited_at[reason] = now
        self.audit.record(REJECT, now=time.time(), peer=peer, reason=reason, pattern="gossip")

    def _drop_untrusted_peers(self) -> None:
        """A peer revoked (or expired) since it joined stops getting our traffic."""
        for peer in self._keys.untrusted(self.node.peers, self._known):
            self._untrust(peer)

    def _untrust(self, peer: str) -> None:
        self.remove_peer(peer, reason="peer_untrusted")
        self._reject(peer, "peer_untrusted")

    def _lost(self, peer: str) -> None:
        """``peer``'s frames were dropped after ``unreachable_grace``."""
        if peer not in self._known:  # learned from a Graft, now gone
            self.node.remove_peer(peer)

    def _on_frames(self, sender: str, parts: list[Any], now: float, out: list[Delivered]) -> None:
        """One frame from ``sender``: the authenticated agent id (secure) or the claimed
        routing id (plain); ``parts``: what came with it, one gossip frame if well formed."""
        self.counters["received_frames"] += 1
        if not is_agent_id(sender) or sender == self.agent_id:
            self._reject(None, "bad_routing_id")
            return
        if self.scores.is_graylisted(sender):
            self.drops["graylisted"] += 1  # no audit line: a flood must stay cheap to drop
            return
        if len(parts) != 1 or not isinstance(parts[0], bytes):
            self._penalise(sender, "bad_frames", now)
            return
        try:
            messages = decode_frame(parts[0], self.config.limits)
        except RemoteProtocolError as exc:
            self._penalise(sender, "malformed_" + exc.reason, now)
            return
        admitted, prunes = self.scores.admit(sender, now=now, cost=len(messages))
        self._prune(prunes)
        if not admitted:
            self.drops["rate_limited"] += len(messages)
            return
        self.counters["received_items"] += len(messages)
        counters = self.node.counters
        trusted: bool | None = None  # looked up once per frame, only if a control item needs it
        for message in messages:
            if isinstance(message, _CONTROL):
                if trusted is None:
                    trusted = self._keys.trusted(sender)
                if not trusted:
                    self._reject(sender, "untrusted_control", throttle=True)
                    continue
            # A replay (an old copy whose id we forgot) is scored like a duplicate: an honest
            # peer may send one when the seen-cache overflowed.
            dupes = counters["duplicates"] + counters["replayed"]
            bad = [counters[k] for k in _INVALID]
            actions = self.node.on_message(sender, message, now=now)
            priority = Priority.REPAIR if isinstance(message, IWant) else Priority.FORWARD
            self._perform(actions, sender, priority, now, out)
            if counters["duplicates"] + counters["replayed"] > dupes:
                self._prune(self.scores.duplicate(sender, now=now))
            for name, before in zip(_INVALID, bad, strict=True):
                if counters[name] > before:
                    self._penalise(sender, name, now)
            if self.scores.is_graylisted(sender):
                break

    def _penalise(self, sender: str, reason: str, now: float) -> None:
        self._reject(sender, reason)
        self._prune(self.scores.invalid(sender, reason, now=now))

    def _prune(self, prunes: list[Prune]) -> None:
        for prune in prunes:
            peer = str(prune.peer)
            self.node.remove_peer(peer)
            self.outbox.forget(peer, "graylisted")
            self._reject(peer, "graylisted_peer")

    def _restore(self, restore: Restore) -> None:
        peer = str(restore.peer)
        if peer in self._known:
            self.node.add_peer(peer)

    # -- performing the machine's actions ----------------------------------------------------

    def _perform(
        self,
        actions: list[Any],
        sender: str | None,
        priority: Priority,
        now: float,
        out: list[Delivered],
    ) -> None:
        # One relayed message goes to many peers, and IWant replies are fresh copies of one
        # cached message: pack each (id, hops, signature) once. ``keys`` saves rehashing the
        # payload for the same object (alive in ``actions`` meanwhile, so id() is stable).
        encoded: dict[Any, bytes] = {}
        keys: dict[int, tuple[bytes, int, bytes | None]] = {}
        for action in actions:
            if isinstance(action, Deliver):
                m = action.message
                delivered = Delivered(
                    action.message_id, str(m.origin), m.sequence, m.payload, m.hops, sender, now
                )
                self.deliveries.append(delivered)
                out.append(delivered)
                self.counters["delivered"] += 1
                if sender is not None:
                    self.scores.useful(sender, now=now)
                continue
            message = action.message
            to = str(action.to)
            key: Any
            if isinstance(message, Publish):
                m = message.message
                key = keys.get(id(m))
                if key is None:
                    key = keys[id(m)] = (m.id, m.hops, m.signature)
            else:
                key = id(message)
            item = encoded.get(key)
            # A repair evicts nothing: when it cannot fit, do not pack it at all.
            if (
                item is None
                and priority is Priority.REPAIR
                and isinstance(message, Publish)
                and not self.outbox.room_for_repair(to, message.message)
            ):
                continue
            if item is None:
                try:
                    item = encoded[key] = encode_item(message, self.config.limits)
                except LocalProtocolError:
                    self.drops["unencodable"] += 1
                    continue
            cls = priority if isinstance(message, Publish) else Priority.CONTROL
            self.outbox.push(to, item, cls)

    # -- introspection and lifetime ----------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        now = self._clock()
        drops = Counter(self.drops)
        queue_stats = self.queues.statistics()
        drops.update(queue_stats["drops"])
        # Secure: what the sessions refused (and audited), e.g. a handshake with an untrusted
        # or unexpected peer, frames from a revoked one or from outside any session.
        drops.update({f"session_{k}": v for k, v in self.links.rejected().items()})
        return {
            "agent_id": self.agent_id,
            "endpoint": self.endpoint,
            "peers": len(self.node.peers),
            "mesh": len(self.node.mesh),
            "sent_frames": self.counters["sent_frames"],
            "sent_items": self.counters["sent_items"],
            "received_frames": self.counters["received_frames"],
            "received_items": self.counters["received_items"],
            "delivered": self.counters["delivered"],
            "hwm_blocked": self.counters["hwm_blocked"],
            "drops": dict(drops),
            "transport": self.links.statistics(),
            "queues": queue_stats,
            "machine": dict(self.node.counters),
            "scoring": dict(self.scores.counters),
            "scores": self.scores.snapshot(now=now),
        }

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this gossip agent is closed")

    def close(self, linger: float | None = 0.0) -> None:
        """Close every socket; ``linger`` seconds to push out what libzmq still holds."""
        if self._closed:
            return
        self._closed = True
        for sock in self._polled:
            self._poller.unregister(sock)
        self._polled = []
        self.links.close(None if linger is None else round(linger * 1000))

    def __enter__(self) -> GossipAgent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GossipAgent({self.agent_id}, {self.endpoint})"
