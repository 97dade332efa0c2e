"""A pure gossip machine: gossipsub-like eager push over a mesh plus lazy IHave/IWant repair.

Sans-I/O: no sockets, clocks or randomness. Time comes in as ``now``; peer sampling is an
injected ``choose(population, k) -> list`` (``random.Random(seed).sample`` in tests).

Message kinds: :class:`Publish` (a full :class:`Message`), :class:`IHave` (ids this node has
cached), :class:`IWant` (ids it asks for), :class:`Graft` ("you are in my mesh": the receiver
learns the sender as a peer, so a late joiner gets lazy repair, and notes it as a *feeder*),
:class:`Prune` ("you are no longer in my mesh") and :class:`Adopt` ("please put me in your
mesh").

The mesh is outbound: each node picks about ``degree`` peers to push to, and a Graft does not
make the receiver push back (that would raise duplicates above ``degree`` per message). So a
node whose Grafts arrive after its peers filled their meshes (a late joiner) would be in no
one's mesh and get everything by IHave/IWant only, half a heartbeat late on average. Each node
therefore tracks its feeders (``fed_by``: from Graft and Prune, and any peer that pushes it a
new message it did not ask for; a feeder whose session is made anew, :meth:`peer_reconnected`,
counts again only once it feeds us again); when it has had fewer than
``min_fed`` of them (default 2, at most its number of peers) for a whole heartbeat, it sends
Adopt to that many peers not feeding it (not those asked at the heartbeat before). A receiver
takes the sender into its mesh only while the mesh is below ``degree_high`` and answers
Graft; otherwise it ignores the Adopt (``adopt_refused``). Mesh sizes stay within
``degree_high`` whoever sends Adopts, and only underfed nodes ask, so the duplicates per node
and message (about the mean mesh size less one) stay below ``degree`` in the simulator.

A message id is BLAKE2b-128 of the id material (a domain tag, the origin, the sequence and
the payload), always recomputed by the receiver. With ``sign``/``verify`` the origin signs
the id material; a copy that does not verify is counted in ``bad_signature`` and never
delivered nor forwarded, and it does not mark the id as seen (so a forged copy that arrives
first cannot suppress the genuine one). ``hops`` is not signed: it only bounds eager push.

Replays: the seen-cache only suppresses a copy for ``seen_ttl`` seconds, so each origin also
has a replay window over its signed sequence numbers (the highest accepted and a bitmap of the
``replay_window`` below it, :class:`~zmqcomm.crypto.replay.ReplayWindow`). A copy whose id is
no longer remembered but whose sequence is below the window or already in it is dropped and
counted as ``replayed``; a sequence inside the window not seen yet (a message that was
overtaken) is still taken. The window moves only after the signature verified, so a forged
copy cannot move it. Origins beyond ``max_origins`` are forgotten least recently used first
(``replay_origins_forgotten``); a forgotten origin's old messages are then refused only by
the seen-cache again. An origin must therefore number its messages upwards across restarts
(``first_sequence``; :class:`GossipAgent` starts from the wall clock).

Memory is bounded: the seen-cache forgets ids after ``seen_ttl`` seconds (and keeps at most
``max_seen``), the replay windows are capped at ``max_origins``, the message cache keeps
``history`` heartbeat windows, IHave/IWant lists are capped, peers learned from Graft or
Adopt are capped at ``max_peers`` (a removed one frees its slot), feeders are a subset of the
peers, and IWant replies to one peer are capped at ``max_iwant_replies`` per heartbeat.

Promises: an IHave promises that its sender will answer our IWant. The ids we asked one peer
for and did not get yet are capped at ``max_wants_per_peer`` (beyond it that peer's IHaves
are ignored, counted ``iwant_peer_capped``), separately from the node-wide cap ``max_wanted``
(``iwant_table_full``), so one peer advertising ids that do not exist cannot fill the table
and switch off repair for everyone. An IWant that times out is a broken promise of the peer
asked (``broken_promises``); :meth:`GossipNode.take_broken_promises` hands them per peer to
whoever scores peers (the driver lowers that peer's score).
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from zmqcomm.actions import Send
from zmqcomm.checks import check_seconds
from zmqcomm.crypto.keys import signature_valid
from zmqcomm.crypto.replay import ReplayWindow
from zmqcomm.errors import UsageError

NodeId = Hashable
MessageId = bytes
Chooser = Callable[[Sequence[NodeId], int], list[NodeId]]
Signer = Callable[[bytes], bytes]
Verifier = Callable[[NodeId, bytes, bytes], bool]

DOMAIN = b"zmqcomm/1 gossip"
ID_LEN = 16
MAX_SEQUENCE = 2**64 - 1


def _origin_bytes(origin: NodeId) -> bytes:
    if isinstance(origin, bytes):
        return b"b" + origin
    if isinstance(origin, str):
        return b"s" + origin.encode()
    if isinstance(origin, int) and not isinstance(origin, bool):
        return b"i" + str(origin).encode()
    return b"r" + repr(origin).encode()


def id_material(origin: NodeId, sequence: int, payload: bytes) -> bytes:
    """The bytes a message id hashes and an origin signs."""
    encoded = _origin_bytes(origin)
    return (
        DOMAIN + len(encoded).to_bytes(4, "big") + encoded + sequence.to_bytes(8, "big") + payload
    )


def message_id(origin: NodeId, sequence: int, payload: bytes) -> MessageId:
    """BLAKE2b-128 of :func:`id_material`."""
    return hashlib.blake2b(id_material(origin, sequence, payload), digest_size=ID_LEN).digest()


@dataclass(frozen=True, slots=True)
class Message:
    """One published message; ``hops`` counts eager-push relays and is not signed."""

    origin: NodeId
    sequence: int
    payload: bytes
    hops: int = 0
    signature: bytes | None = None

    @property
    def id(self) -> MessageId:
        return message_id(self.origin, self.sequence, self.payload)

    @property
    def material(self) -> bytes:
        return id_material(self.origin, self.sequence, self.payload)


@dataclass(frozen=True, slots=True)
class Publish:
    message: Message


@dataclass(frozen=True, slots=True)
class IHave:
    ids: tuple[MessageId, ...]


@dataclass(frozen=True, slots=True)
class IWant:
    ids: tuple[MessageId, ...]


@dataclass(frozen=True, slots=True)
class Graft:
    """The sender added the receiver to its mesh."""


@dataclass(frozen=True, slots=True)
class Prune:
    """The sender took the receiver out of its mesh."""


@dataclass(frozen=True, slots=True)
class Adopt:
    """The sender asks the receiver to put it in its mesh (answered by Graft, or ignored)."""


@dataclass(frozen=True, slots=True)
class Deliver:
    """Output record: hand ``message`` to the application (exactly once per id per TTL)."""

    message: Message

    @property
    def message_id(self) -> MessageId:
        return self.message.id


def ed25519_verifier(keys: Mapping[NodeId, bytes]) -> Verifier:
    """A ``verify`` callback checking Ed25519 signatures against each origin's verify key."""

    def verify(origin: NodeId, material: bytes, signature: bytes) -> bool:
        key = keys.get(origin)
        return key is not None and signature_valid(key, material, signature)

    return verify


@dataclass(slots=True)
class _Want:
    """An id asked for by IWant: when to give up on that request, and who else has it."""

    deadline: float
    sources: list[NodeId]
    asked: NodeId | None  # the peer whose answer we wait for (None: waiting for a batch)


def _well_formed(message: Any) -> bool:
    return (
        isinstance(message, Message)
        and isinstance(message.origin, Hashable)
        and isinstance(message.sequence, int)
        and not isinstance(message.sequence, bool)
        and 0 <= message.sequence <= MAX_SEQUENCE
        and isinstance(message.payload, bytes)
        and isinstance(message.hops, int)
        and message.hops >= 0
        and (message.signature is None or isinstance(message.signature, bytes))
    )


def _ids_ok(ids: Any) -> bool:
    return isinstance(ids, tuple) and all(
        isinstance(item, bytes) and len(item) == ID_LEN for item in ids
    )


class GossipNode:
    """One gossip participant; see the module docstring."""

    def __init__(  # noqa: PLR0915 - one assignment per piece of protocol state
        self,
        node_id: NodeId,
        peers: Sequence[NodeId],
        *,
        sign: Signer | None,
        verify: Verifier | None,
        choose: Chooser,
        now: float,
        degree: int = 6,
        degree_low: int = 4,
        degree_high: int = 12,
        heartbeat: float = 1.0,
        history: int = 5,
        gossip_windows: int = 3,
        gossip_fanout: int | None = None,
        seen_ttl: float = 120.0,
        max_hops: int = 32,
        max_ihave_ids: int = 512,
        max_iwant_ids: int = 64,
        max_iwant_replies: int | None = None,
        max_seen: int = 100_000,
        max_peers: int = 256,
        iwant_timeout: float | None = None,
        max_sources: int = 8,
        first_sequence: int = 0,
        replay_window: int = 4096,
        max_origins: int = 10_000,
        max_wants_per_peer: int | None = None,
        max_wanted: int | None = None,
        min_fed: int | None = None,
    ) -> None:
        if not 0 <= degree_low <= degree <= degree_high:
            raise UsageError("gossip needs 0 <= degree_low <= degree <= degree_high")
        check_seconds(heartbeat, "heartbeat", allow_zero=False)
        check_seconds(seen_ttl, "seen_ttl", allow_zero=False)
        if iwant_timeout is not None:
            check_seconds(iwant_timeout, "iwant_timeout", allow_zero=False)
        if not 1 <= gossip_windows <= history:
            raise UsageError("gossip needs 1 <= gossip_windows <= history")
        if min(max_hops, max_ihave_ids, max_iwant_ids, max_seen) < 1 or max_peers < 0:
            raise UsageError("gossip limits must be positive")
        # Default 2, so that one lost or silent feeder does not put us back on IHave/IWant
        # (but at most degree: degree 0 means lazy pull only, so no Adopt at all).
        self.min_fed = min(2, degree) if min_fed is None else min_fed
        if isinstance(self.min_fed, bool) or not isinstance(self.min_fed, int):
            raise UsageError(f"min_fed must be a whole number, got {self.min_fed!r}")
        if not 0 <= self.min_fed <= degree_high:
            raise UsageError("gossip needs 0 <= min_fed <= degree_high")
        self.node_id = node_id
        self.degree, self.degree_low, self.degree_high = degree, degree_low, degree_high
        self.heartbeat = heartbeat
        self.history, self.gossip_windows = history, gossip_windows
        self.gossip_fanout = degree if gossip_fanout is None else gossip_fanout
        self.seen_ttl, self.max_hops, self.max_seen = seen_ttl, max_hops, max_seen
        self.max_ihave_ids, self.max_iwant_ids, self.max_peers = (
            max_ihave_ids,
            max_iwant_ids,
            max_peers,
        )
        self.iwant_timeout = heartbeat / 4 if iwant_timeout is None else iwant_timeout
        # Generous: a peer asks once per IHave plus a few retries per heartbeat.
        self.max_iwant_replies = (
            8 * max_iwant_ids if max_iwant_replies is None else max_iwant_replies
        )
        if self.max_iwant_replies < 0:
            raise UsageError("max_iwant_replies must be >= 0")
        self.max_sources = max_sources
        self.max_wants_per_peer = (
            4 * max_iwant_ids if max_wants_per_peer is None else max_wants_per_peer
        )
        self.max_wanted = max_seen if max_wanted is None else max_wanted
        if self.max_wants_per_peer < 1 or self.max_wanted < 1:
            raise UsageError("max_wants_per_peer and max_wanted must be >= 1")
        if (
            isinstance(first_sequence, bool)
            or not isinstance(first_sequence, int)
            or not 0 <= first_sequence <= MAX_SEQUENCE
        ):
            raise UsageError(f"first_sequence must be an int in [0, 2**64), got {first_sequence!r}")
        if max_origins < 1:
            raise UsageError("max_origins must be >= 1")
        ReplayWindow(replay_window)  # refuses a size that is not a positive multiple of 64
        self.replay_window, self.max_origins = replay_window, max_origins
        # origin -> its replay window, least recently used first
        self._replay: dict[NodeId, ReplayWindow] = {}
        self._sign, self._verify, self._choose = sign, verify, choose
        self._sequence = first_sequence
        # Ordered sets (dicts), so that iteration never depends on hash randomisation.
        self._peers: dict[NodeId, None] = dict.fromkeys(p for p in peers if p != node_id)
        self._learned: dict[NodeId, None] = {}  # peers learned from Graft, capped
        self._replies: Counter[NodeId] = Counter()  # IWant replies per peer this heartbeat
        self._mesh: dict[NodeId, None] = {}
        self._new_grafts: list[NodeId] = []
        # Peers whose Graft says we are in their mesh (a subset of _peers, so capped with them).
        self._fed_by: dict[NodeId, None] = {}
        self._adopt_asked: dict[NodeId, None] = {}  # asked at the last heartbeat
        self._was_underfed = False  # below min_fed at the last heartbeat
        self._graft()
        self._seen: dict[MessageId, float] = {}  # id -> expiry, in expiry order
        self._wanted: dict[MessageId, _Want] = {}
        self._asked: Counter[NodeId] = Counter()  # ids asked of each peer, not received yet
        self._broken: Counter[NodeId] = Counter()  # broken promises not taken yet
        self._retry_at: float | None = None
        self._cache: dict[MessageId, Message] = {}
        self._windows: deque[list[MessageId]] = deque([[]])
        self._next_heartbeat = now + heartbeat
        self.counters: Counter[str] = Counter()

    # -- introspection -----------------------------------------------------------------------

    @property
    def peers(self) -> list[NodeId]:
        return list(self._peers)

    @property
    def mesh(self) -> list[NodeId]:
        return list(self._mesh)

    @property
    def fed_by(self) -> list[NodeId]:
        """Peers that told us (Graft) that we are in their mesh: they push to us eagerly."""
        return list(self._fed_by)

    def has_seen(self, mid: MessageId) -> bool:
        return mid in self._seen

    def take_broken_promises(self) -> dict[NodeId, int]:
        """Per peer, how many of our IWants it left unanswered since the last call."""
        broken = dict(self._broken)
        self._broken.clear()
        return broken

    def add_peer(self, peer: NodeId) -> None:
        if peer != self.node_id:
            self._peers.setdefault(peer, None)
            self._learned.pop(peer, None)  # configured now: no longer counts as learned

    def peer_reconnected(self, peer: NodeId) -> None:
        """``peer``'s session was made anew: it may have restarted and forgotten its mesh.
        It counts as a feeder again only once it grafts us or pushes to us, and may be asked
        to adopt us at the next heartbeat. Without this a node whose feeders all restarted
        would think itself fed and get everything by IHave/IWant only, for good."""
        if peer in self._fed_by:
            del self._fed_by[peer]
            self.counters["feeder_reconnected"] += 1
        self._adopt_asked.pop(peer, None)

    def remove_peer(self, peer: NodeId) -> None:
        self._peers.pop(peer, None)
        self._mesh.pop(peer, None)
        self._learned.pop(peer, None)
        self._fed_by.pop(peer, None)
        self._adopt_asked.pop(peer, None)

    # -- the application side ----------------------------------------------------------------

    def publish(self, payload: bytes, *, now: float) -> tuple[MessageId, list[Any]]:
        """Originate ``payload``: deliver it here and push it to the mesh."""
        if not isinstance(payload, bytes):
            raise UsageError("a gossip payload must be bytes")
        if self._sequence >= MAX_SEQUENCE:  # the last one is kept free, as replay windows do
            raise UsageError("gossip sequence numbers exhausted")
        sequence = self._sequence
        self._sequence += 1
        self._record(self.node_id, sequence)  # a copy of our own sent back later is a replay
        material = id_material(self.node_id, sequence, payload)
        signature = None if self._sign is None else self._sign(material)
        message = Message(self.node_id, sequence, payload, 0, signature)
        mid = message.id
        actions: list[Any] = [self._accept(mid, message, now)]
        actions += self._push(message, exclude=())
        return mid, actions

    # -- Machine protocol --------------------------------------------------------------------

    def on_message(self, sender: NodeId, message: Any, *, now: float) -> list[Any]:
        if isinstance(message, Publish) and _well_formed(message.message):
            return self._on_publish(sender, message.message, now)
        if isinstance(message, IHave) and _ids_ok(message.ids):
            return self._on_ihave(sender, message.ids, now)
        if isinstance(message, IWant) and _ids_ok(message.ids):
            return self._on_iwant(sender, message.ids)
        if isinstance(message, Graft):
            if self._learn(sender):
                self._fed_by[sender] = None
            return []
        if isinstance(message, Prune):
            self.counters["received_prune"] += 1
            self._fed_by.pop(sender, None)
            return []
        if isinstance(message, Adopt):
            self.counters["received_adopt"] += 1
            return self._on_adopt(sender)
        self.counters["malformed"] += 1
        return []

    def on_timer(self, *, now: float) -> list[Any]:
        actions = self._retry(now)
        if now < self._next_heartbeat:
            return actions
        self._next_heartbeat = now + self.heartbeat
        self._replies.clear()
        self._expire(now)
        actions += self._maintain_mesh()
        actions += [self._send(peer, Graft()) for peer in self._new_grafts]
        self._new_grafts = []
        actions += self._ask_adoption()
        actions += self._gossip()
        self._windows.append([])
        while len(self._windows) > self.history:
            for mid in self._windows.popleft():
                self._cache.pop(mid, None)
        return actions

    def next_deadline(self) -> float | None:
        if self._retry_at is not None and self._retry_at < self._next_heartbeat:
            return self._retry_at
        return self._next_heartbeat

    # -- internals ---------------------------------------------------------------------------

    def _send(self, to: NodeId, message: Any) -> Send:
        self.counters["sent_" + type(message).__name__.lower()] += 1
        return Send(to, message)

    def _accept(self, mid: MessageId, message: Message, now: float) -> Deliver:
        self._seen[mid] = now + self.seen_ttl
        while len(self._seen) > self.max_seen:
            del self._seen[next(iter(self._seen))]
        want = self._wanted.pop(mid, None)
        if want is not None:
            self._release(want)
        self._cache[mid] = message
        self._windows[-1].append(mid)
        self.counters["delivered"] += 1
        return Deliver(message)

    def _record(self, origin: NodeId, sequence: int) -> None:
        """Mark ``sequence`` of ``origin`` as taken."""
        window = self._replay.pop(origin, None)
        if window is None:
            window = ReplayWindow(self.replay_window)
            if len(self._replay) >= self.max_origins:
                del self._replay[next(iter(self._replay))]
                self.counters["replay_origins_forgotten"] += 1
        self._replay[origin] = window  # most recently used last
        if window.check(sequence):  # else an earlier incarnation of ours numbered higher
            window.accept(sequence)

    def _push(self, message: Message, *, exclude: tuple[NodeId, ...]) -> list[Any]:
        return [self._send(peer, Publish(message)) for peer in self._mesh if peer not in exclude]

    def _on_publish(self, sender: NodeId, message: Message, now: float) -> list[Any]:
        if message.hops > self.max_hops:
            self.counters["too_many_hops"] += 1
            return []
        mid = message.id
        if mid in self._seen:
            self.counters["duplicates"] += 1
            return []
        window = self._replay.get(message.origin)
        if window is None:
            fresh = message.sequence < MAX_SEQUENCE
        else:
            fresh = window.check(message.sequence)
        if not fresh:
            self.counters["replayed"] += 1
            return []
        if self._verify is not None and (
            message.signature is None
            or not self._verify(message.origin, message.material, message.signature)
        ):
            self.counters["bad_signature"] += 1
            return []
        self._record(message.origin, message.sequence)
        want = self._wanted.get(mid)
        if sender in self._peers and (want is None or want.asked != sender):
            # Pushed to us unasked: the sender has us in its mesh, Graft or not. A node
            # that restarted (its feeders' Grafts long gone) learns them so, and does not
            # ask for adoption it does not need.
            self._fed_by[sender] = None
        actions: list[Any] = [self._accept(mid, message, now)]
        if message.hops < self.max_hops:
            relayed = replace(message, hops=message.hops + 1)
            actions += self._push(relayed, exclude=(sender, message.origin))
        return actions

    def _release(self, want: _Want) -> None:
        if want.asked is not None:
            left = self._asked[want.asked] - 1
            if left > 0:
                self._asked[want.asked] = left
            else:
                del self._asked[want.asked]
            want.asked = None

    def _on_ihave(self, sender: NodeId, ids: tuple[MessageId, ...], now: float) -> list[Any]:
        want: list[MessageId] = []
        room = min(self.max_iwant_ids, self.max_wants_per_peer - self._asked[sender])
        for mid in ids[: self.max_ihave_ids]:
            if mid in self._seen:
                continue
            pending = self._wanted.get(mid)
            if pending is not None:  # asked someone already: remember this source for later
                if sender not in pending.sources and len(pending.sources) < self.max_sources:
                    pending.sources.append(sender)
                continue
            if len(want) >= room:
                if room < self.max_iwant_ids:
                    self.counters["iwant_peer_capped"] += 1
                continue
            if len(self._wanted) >= self.max_wanted:
                self.counters["iwant_table_full"] += 1
                continue
            deadline = now + self.iwant_timeout
            self._wanted[mid] = _Want(deadline, [], sender)
            self._asked[sender] += 1
            if self._retry_at is None or deadline < self._retry_at:
                self._retry_at = deadline
            want.append(mid)
        return [self._send(sender, IWant(tuple(want)))] if want else []

    def _on_iwant(self, sender: NodeId, ids: tuple[MessageId, ...]) -> list[Any]:
        actions: list[Any] = []
        # Answer each id once: an asker repeating an id only repeats work for us.
        for mid in dict.fromkeys(ids[: self.max_iwant_ids]):
            cached = self._cache.get(mid)
            if cached is None:
                continue
            if self._replies[sender] >= self.max_iwant_replies:
                self.counters["iwant_replies_capped"] += 1
                continue
            self._replies[sender] += 1
            hops = min(cached.hops + 1, self.max_hops)
            actions.append(self._send(sender, Publish(replace(cached, hops=hops))))
        return actions

    def _expire(self, now: float) -> None:
        stale = [mid for mid, expiry in self._seen.items() if expiry <= now]
        for mid in stale:
            del self._seen[mid]

    def _retry(self, now: float) -> list[Any]:
        """Ask the next source for each wanted id whose request timed out (a lost, withheld
        or forged reply); forget ids that nobody else offered."""
        if self._retry_at is None or now < self._retry_at:
            return []
        asks: dict[NodeId, list[MessageId]] = {}
        for mid, pending in list(self._wanted.items()):
            if pending.deadline > now:
                continue
            if pending.asked is not None:
                self._broken[pending.asked] += 1
                self.counters["broken_promises"] += 1
                self._release(pending)
            # The next source that has room for one more want (others are skipped for good).
            while pending.sources and self._asked[pending.sources[0]] >= self.max_wants_per_peer:
                pending.sources.pop(0)
                self.counters["iwant_peer_capped"] += 1
            if not pending.sources:
                del self._wanted[mid]
                continue
            pending.deadline = now + self.iwant_timeout
            ask = asks.setdefault(pending.sources[0], [])
            if len(ask) < self.max_iwant_ids:  # else: asked in a later round
                peer = pending.sources.pop(0)
                ask.append(mid)
                pending.asked = peer
                self._asked[peer] += 1
        self._retry_at = min((p.deadline for p in self._wanted.values()), default=None)
        return [self._send(peer, IWant(tuple(ids))) for peer, ids in asks.items()]

    def _graft(self) -> None:
        candidates = [peer for peer in self._peers if peer not in self._mesh]
        count = min(self.degree - len(self._mesh), len(candidates))
        if count > 0:
            for peer in self._choose(candidates, count):
                self._mesh[peer] = None
                self._new_grafts.append(peer)

    def _maintain_mesh(self) -> list[Any]:
        """Refill below degree_low, trim above degree_high; Prune tells the trimmed peers (a
        peer gone from ``_peers`` is not told: it is gone or not ours to talk to)."""
        for peer in [peer for peer in self._mesh if peer not in self._peers]:
            del self._mesh[peer]
        if len(self._mesh) < self.degree_low:
            self._graft()
        elif len(self._mesh) > self.degree_high:
            trimmed = self._choose(list(self._mesh), len(self._mesh) - self.degree)
            for peer in trimmed:
                del self._mesh[peer]
            return [self._send(peer, Prune()) for peer in trimmed]
        return []

    def _learn(self, sender: NodeId) -> bool:
        """Whether ``sender`` is a peer now, learning it within ``max_peers`` if new."""
        if sender == self.node_id:
            return False
        if sender not in self._peers:
            if len(self._learned) >= self.max_peers:
                self.counters["peers_ignored"] += 1
                return False
            self._learned[sender] = None
            self._peers[sender] = None
        return True

    def _on_adopt(self, sender: NodeId) -> list[Any]:
        """Take ``sender`` into the mesh if it has room below degree_high (so Adopts, from
        anyone, never grow it past that); answer Graft, also to a member whose Graft was lost."""
        if not self._learn(sender):
            return []
        if sender not in self._mesh:
            if len(self._mesh) >= self.degree_high:
                self.counters["adopt_refused"] += 1
                return []
            self._mesh[sender] = None
            self.counters["adopted"] += 1
        return [self._send(sender, Graft())]

    def _ask_adoption(self) -> list[Any]:
        """Ask peers that do not feed us to adopt us, when we have had fewer than min_fed
        feeders for a whole heartbeat. The first heartbeat below it only notes the fact: at
        a node's first heartbeat its peers' Grafts are still in flight, and asking then would
        have every node of a swarm that starts together ask, growing every mesh."""
        want = min(self.min_fed, len(self._peers))
        underfed = len(self._fed_by) < want
        ask = underfed and self._was_underfed
        self._was_underfed = underfed
        if not ask:
            self._adopt_asked = {}
            return []
        # Skip the peers asked last time (a full mesh refuses silently): ask others first.
        candidates = [
            peer
            for peer in self._peers
            if peer not in self._fed_by and peer not in self._adopt_asked
        ]
        chosen = self._choose(candidates, min(want - len(self._fed_by), len(candidates)))
        self._adopt_asked = dict.fromkeys(chosen)
        return [self._send(peer, Adopt()) for peer in chosen]

    def _gossip(self) -> list[Any]:
        recent = list(self._windows)[-self.gossip_windows :]
        ids = tuple(mid for window in recent for mid in window)[-self.max_ihave_ids :]
        if not ids or self.gossip_fanout <= 0:
            return []
        outside = [peer for peer in self._peers if peer not in self._mesh]
        targets = self._choose(outside, min(self.gossip_fanout, len(outside)))
        missing = self.gossip_fanout - len(targets)
        if missing > 0:
            inside = list(self._mesh)
            targets += self._choose(inside, min(missing, len(inside)))
        return [self._send(peer, IHave(ids)) for peer in targets]
