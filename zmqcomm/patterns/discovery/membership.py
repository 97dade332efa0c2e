"""A pure SWIM membership machine: probes, indirect probes, suspicion, gossip dissemination.

After Das, Gupta and Motivala, *SWIM* (DSN 2002): a node starts knowing only seed
addresses, sends them JOIN, and learns the members from SYNC replies and gossip. Sans-I/O:
time comes in as ``now``, randomness as ``rng``, signing as ``sign``/``verify``; outputs are
:class:`~zmqcomm.actions.Send` (to a ``(host, port)``, carrying a :class:`Packet`) and the
beacon table's :class:`~.peers.PeerEvent` kinds: ENTER, EVASIVE (suspect), EXPIRED (dead), LEAVE.

Each protocol period the node probes one member, picked by randomized round-robin (a shuffled
list, walked in order, new members inserted at random places): PING, and without an ACK
within ``ping_timeout``, PING_REQ through ``indirect_probes`` other members, who ping the
target and relay its ACK. No ACK by the end of the period: the target becomes SUSPECT.
A suspect that does not refute within the suspicion timeout (``suspicion_mult`` x
log10(n) periods) is declared DEAD: removed, and remembered (bounded) with its incarnation so
stale news cannot bring it back; only a newer incarnation can.

Updates (ALIVE, SUSPECT, DEAD, LEAVE) are piggybacked on every packet, fewest-sent first,
each about ``retransmit_mult`` x ceil(log10(n + 1)) times, capped so no datagram exceeds
:data:`~.membership_wire.MAX_DATAGRAM`. Every 10th period (``sync_every``) a node also asks a
random member for a SYNC, a bounded random slice of its member list (push-pull anti-entropy).

Authenticity: every packet is signed by its sender and carries the sender's own record; every
update carries its member's self-signed record, so only a member can announce itself (ALIVE)
at a new incarnation or LEAVE. SUSPECT and DEAD are claims of whoever signed the packet; a
member hearing one about itself refutes with a higher incarnation. A DEAD claim from another
node only starts the local suspicion timer (Lifeguard-like), so a forged DEAD cannot remove a
live member anywhere: removal always follows a local suspicion that went unrefuted. With a
trust store, records and packets of agents it does not know are dropped; the store is asked
with the machine's own ``now``, so a driver whose clock is not wall-clock time (trust entries
expire at epoch times) passes a lookup that reads the wall clock instead.

Reflection: replies go to the address in the sender's record. A packet of any kind from a
node that is not a member is taken only if it came from that very address (the transport
``sender``); otherwise it is dropped (``address_mismatch``), so nobody can aim replies
(a SYNC is several times larger than a JOIN) at an address that never spoke, nor make
itself a member that everyone probes at such an address. A stranger announced by gossip
(an ALIVE update in someone else's packet, a SYNC slice) is not admitted either: the node
sends it one bare PING (no piggybacked updates, so no larger than the news that caused it)
and admits it when its ACK comes back from the announced address. A record's host must be
an IP literal of the node's own family, neither unspecified nor multicast, and loopback if
and only if the node's own address is (``bad_address``): a node on loopback never sends
anywhere else (these address checks live in :mod:`.membership_addresses`). Every dropped
input is counted in :attr:`Membership.dropped` by reason and never changes state.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any

from zmqcomm.actions import Send
from zmqcomm.crypto.keys import Identity
from zmqcomm.errors import UsageError, ZmqCommError
from zmqcomm.patterns.discovery import membership_wire as wire
from zmqcomm.patterns.discovery.beacon import TrustLookup
from zmqcomm.patterns.discovery.membership_addresses import in_scope, same_address, scope_of
from zmqcomm.patterns.discovery.membership_config import (
    CONFIRMATIONS,
    MemberInfo,
    MembershipConfig,
    RandomLike,
    Signer,
    Verifier,
    ed25519_verify,
)
from zmqcomm.patterns.discovery.membership_state import Member, Probe, Relay, Stranger, Suspicion
from zmqcomm.patterns.discovery.membership_wire import Address, Packet, Record, Update
from zmqcomm.patterns.discovery.peers import ENTER, EVASIVE, EXPIRED, PeerEvent
from zmqcomm.patterns.discovery.peers import LEAVE as LEAVE_EVENT

#: Bare PINGs sent to a stranger announced by gossip before giving it up (loss tolerance).
VERIFY_PINGS = 3

Output = Send | PeerEvent


class Membership:
    """One node's SWIM membership; see the module docstring."""

    def __init__(
        self,
        *,
        verify_key: bytes,
        sign: Signer,
        address: Address,
        rng: RandomLike,
        ports: Sequence[int] = (),
        seeds: Sequence[Address] = (),
        trust: TrustLookup | None = None,
        verify: Verifier = ed25519_verify,
        config: MembershipConfig | None = None,
        incarnation: int = 0,
    ) -> None:
        self.config = config if config is not None else MembershipConfig()
        self._sign = sign
        self._verify = verify
        self._trust = trust
        self._rng = rng
        self.address: Address = (address[0], int(address[1]))
        self._scope = scope_of(self.address[0])
        self.seeds = [(host, int(port)) for host, port in seeds]
        self._ports = tuple(ports)
        if not 0 <= incarnation <= wire.MAX_INCARNATION:
            raise UsageError(f"incarnation must be a u32, got {incarnation}")
        self._verify_key = bytes(verify_key)
        self._record = self._signed_record(incarnation, leaving=False)  # checks the fields
        self.agent_id = self._record.agent_id
        self._sid = self._record.sender_id
        #: Dropped inputs by reason (malformed, bad_signature, unknown_sender, stale...).
        self.dropped: Counter[str] = Counter()
        #: What happened, for tests and operators (probes, acks, suspicions, refutations...).
        self.stats: Counter[str] = Counter()
        self._members: dict[str, Member] = {}
        self._suspects: dict[str, Suspicion] = {}
        self._dead: OrderedDict[str, Update] = OrderedDict()  # DEAD or LEAVE, bounded
        # One update per member, dead member and self: the bound holds against floods.
        self._queue = wire.UpdateQueue(self.config.max_members + self.config.max_dead + 1)
        self._order: list[str] = []
        self._order_index = 0
        self._probe: Probe | None = None
        self._relays: dict[int, Relay] = {}
        # Strangers learnt from gossip, pinged and admitted when they ACK.
        self._verifying: dict[str, Stranger] = {}
        self._seq = 0
        self._ticks = 0
        self._started = False
        self._left = False
        self._next_probe = 0.0
        self._join_at = 0.0
        self._join_backoff = self.config.period

    @classmethod
    def from_identity(cls, identity: Identity, **kwargs: Any) -> Membership:
        return cls(verify_key=identity.verify_key, sign=identity.sign, **kwargs)

    # -- public views -------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._record.incarnation

    @property
    def record(self) -> Record:
        return self._record

    @property
    def members(self) -> list[MemberInfo]:
        return [
            MemberInfo(
                agent_id,
                m.record.host,
                m.record.port,
                m.record.ports,
                m.record.incarnation,
                "SUSPECT" if m.suspect else "ALIVE",
            )
            for agent_id, m in self._members.items()
        ]

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._members

    def __len__(self) -> int:
        return len(self._members)

    def is_dead(self, agent_id: str) -> bool:
        return agent_id in self._dead

    # -- inputs -------------------------------------------------------------------------------

    def on_message(self, sender: object, message: Any, *, now: float) -> list[Output]:
        """Handle one decoded packet. Replies go to the address in the packet's signed sender
        record; ``sender`` (the transport address) must equal it for a JOIN or PING from a
        node that is not a member (see the module docstring)."""
        if self._left:
            return []
        if not isinstance(message, Packet):
            self.dropped["malformed"] += 1
            return []
        origin = message.sender
        if origin.agent_id == self.agent_id:
            self.dropped["own"] += 1
            return []
        if not self._record_ok(origin, now, unknown="unknown_sender"):
            return []
        material = wire.packet_material(
            message.kind, message.seq, origin, message.target, message.updates
        )
        if not self._verify(origin.verify_key, material, message.signature):
            self.dropped["bad_signature"] += 1
            return []
        # After the signatures, so that a forgery counts as one and this reason is exact.
        # Every kind: an ACK, SYNC or PING_REQ would otherwise admit its sender as a member
        # at whatever address its record names.
        if origin.agent_id not in self._members and not same_address(sender, origin.address):
            self.dropped["address_mismatch"] += 1
            return []
        out: list[Output] = []
        out += self._apply(
            Update(wire.LEAVE if origin.leaving else wire.ALIVE, origin), now, direct=True
        )
        for update in message.updates:
            if self._record_ok(update.record, now, unknown="unknown_member"):
                out += self._apply(update, now, claimer=origin.agent_id)
        if origin.leaving:
            return out
        if message.kind == wire.PING:
            out += self._on_ping(message)
        elif message.kind == wire.ACK:
            out += self._on_ack(message)
        elif message.kind == wire.PING_REQ:
            out += self._on_ping_req(message, now)
        elif message.kind == wire.JOIN:
            out.append(self._sync_reply(origin, message.seq))
        elif message.kind == wire.SYNC:
            self.stats["synced"] += 1
        return out

    def on_timer(self, *, now: float) -> list[Output]:
        if self._left:
            return []
        if not self._started:
            self._started = True
            self._next_probe = now + self._rng.random() * self.config.period  # desynchronise
            self._join_at = now
        out: list[Output] = []
        for agent_id, suspicion in list(self._suspects.items()):
            if suspicion.deadline <= now:
                out += self._declare_dead(agent_id)
        for seq in [s for s, r in self._relays.items() if r.expires <= now]:
            del self._relays[seq]
        out += self._ping_strangers(now)
        probe = self._probe
        if probe and not probe.acked and not probe.indirect and now >= probe.ping_deadline:
            out += self._indirect(probe)
        if now >= self._next_probe:
            out += self._tick(now)
        if now >= self._join_at:
            out += self._join(now)
        return out

    def next_deadline(self) -> float | None:
        if self._left:
            return None
        if not self._started:
            return 0.0
        best = min(self._next_probe, self._join_at)
        probe = self._probe
        if probe and not probe.acked and not probe.indirect:
            best = min(best, probe.ping_deadline)
        if self._suspects:
            best = min(best, *(s.deadline for s in self._suspects.values()))
        if self._verifying:
            best = min(best, *(s.next_ping for s in self._verifying.values()))
        return best

    def leave(self, *, now: float) -> list[Output]:
        """Announce LEAVE (signed, at a new incarnation) to a few members and stop."""
        if self._left:
            return []
        self._record = self._signed_record(self.incarnation + 1, leaving=True)
        self._enqueue(Update(wire.LEAVE, self._record))
        targets = list(self._members.values())
        fanout = min(len(targets), max(3, self.config.indirect_probes + 1))
        out: list[Output] = [
            self._packet(wire.PING, self._next_seq(), m.record.sender_id, m.record)
            for m in self._rng.sample(targets, fanout)
        ]
        self._left = True
        return out

    # -- probing ------------------------------------------------------------------------------

    def _tick(self, now: float) -> list[Output]:
        period = self.config.period
        self._next_probe = max(self._next_probe + period, now + period / 2)
        out: list[Output] = []
        probe = self._probe
        if probe is not None and not probe.acked:
            self.stats["probe_failed"] += 1
            out += self._suspect_local(probe.target, now, None)
        self._probe = None
        self._ticks += 1
        target = self._next_target()
        if target is not None:
            member = self._members[target]
            seq = self._next_seq()
            sid = member.record.sender_id
            self._probe = Probe(target, sid, seq, now + self.config.ping_timeout)
            self.stats["probes"] += 1
            out.append(self._packet(wire.PING, seq, sid, member.record))
        every = self.config.sync_every
        if every and self._ticks % every == 0 and self._members:
            peer = self._members[self._rng.sample(list(self._members), 1)[0]]
            out.append(self._packet(wire.JOIN, self._next_seq(), None, peer.record))
        return out

    def _next_target(self) -> str | None:
        if not self._members:
            return None
        for _ in range(2):
            while self._order_index < len(self._order):
                candidate = self._order[self._order_index]
                self._order_index += 1
                if candidate in self._members:
                    return candidate
            self._order = list(self._members)
            self._rng.shuffle(self._order)
            self._order_index = 0
        return None

    def _indirect(self, probe: Probe) -> list[Output]:
        probe.indirect = True
        target = self._members.get(probe.target)
        if target is None:
            return []
        helpers = [m for agent_id, m in self._members.items() if agent_id != probe.target]
        count = min(len(helpers), self.config.indirect_probes)
        self.stats["indirect_probes"] += 1
        return [
            self._packet(wire.PING_REQ, probe.seq, target.record, helper.record)
            for helper in self._rng.sample(helpers, count)
        ]

    def _on_ping(self, packet: Packet) -> list[Output]:
        if packet.target != self._sid:
            self.dropped["misdirected"] += 1
            return []
        return [self._packet(wire.ACK, packet.seq, self._sid, packet.sender)]

    def _on_ack(self, packet: Packet) -> list[Output]:
        probe = self._probe
        if probe and packet.seq == probe.seq and packet.target == probe.target_sid:
            probe.acked = True
            self.stats["acks"] += 1
            return []
        relay = self._relays.get(packet.seq)
        if relay and packet.target == relay.target_sid == packet.sender.sender_id:
            del self._relays[packet.seq]
            self.stats["relayed_acks"] += 1
            return [self._packet(wire.ACK, relay.their_seq, relay.target_sid, relay.requester)]
        self.stats["late_acks"] += 1  # after the period ended, or a duplicate: harmless
        return []

    def _on_ping_req(self, packet: Packet, now: float) -> list[Output]:
        target = packet.target
        if not isinstance(target, Record):  # the codec ensures it; a hand-made packet may not
            self.dropped["malformed"] += 1
            return []
        if not self._record_ok(target, now, unknown="unknown_member"):
            return []
        if target.agent_id == self.agent_id:
            return [self._packet(wire.ACK, packet.seq, self._sid, packet.sender)]
        if len(self._relays) >= self.config.max_relays:
            self.dropped["relays_full"] += 1
            return []
        seq = self._next_seq()
        expires = now + self.config.period
        self._relays[seq] = Relay(packet.sender.address, packet.seq, target.sender_id, expires)
        # Bare to a node we do not know: a PING_REQ must not buy a bigger datagram elsewhere.
        bare = target.agent_id not in self._members
        return [self._packet(wire.PING, seq, target.sender_id, target, bare=bare)]

    # -- joining ------------------------------------------------------------------------------

    def _join(self, now: float) -> list[Output]:
        known = {m.record.address for m in self._members.values()}
        targets = [s for s in self.seeds if s != self.address and s not in known]
        if self._members:
            # Joined: still look for seeds we lost (a healed partition, a restarted seed).
            self._join_backoff = self.config.period
            self._join_at = now + self.config.join_backoff_max
        else:
            self._join_at = now + self._join_backoff
            self._join_backoff = min(self._join_backoff * 2, self.config.join_backoff_max)
        self.stats["join_attempts"] += len(targets)
        return [self._packet(wire.JOIN, self._next_seq(), None, seed) for seed in targets]

    def _sync_reply(self, requester: Record, seq: int) -> Send:
        members = list(self._members.values())
        picked = self._rng.sample(members, min(len(members), wire.MAX_UPDATES))
        extra = [
            Update(wire.SUSPECT if m.suspect else wire.ALIVE, m.record)
            for m in picked
            if m.record.agent_id != requester.agent_id
        ]
        return self._packet(wire.SYNC, seq, None, requester, extra)

    # -- applying updates ---------------------------------------------------------------------

    def _apply(
        self, update: Update, now: float, *, claimer: str | None = None, direct: bool = False
    ) -> list[Output]:
        record = update.record
        if record.leaving != (update.status == wire.LEAVE):
            # LEAVE needs a leave record, and only LEAVE does.
            self.dropped["malformed"] += 1
            return []
        agent_id = record.agent_id
        if agent_id == self.agent_id:
            return self._about_self(update)
        member = self._members.get(agent_id)
        if update.status == wire.LEAVE:
            return self._on_leave(update, member)
        if member is None:
            if update.status != wire.ALIVE:
                return []  # claims about strangers: we learn them when they speak for themselves
            dead = self._dead.get(agent_id)
            if dead is not None and record.incarnation <= dead.record.incarnation:
                self.dropped["stale"] += 1
                # Tell it (if it is talking to us) or the others that it was declared gone,
                # so that a live node refutes with a newer incarnation.
                if direct or agent_id not in self._queue:
                    self._enqueue(dead)
                return []
            if not direct:
                return self._verify_stranger(record, now)
            return self._add(record)
        current = member.record.incarnation
        if record.incarnation < current:
            self.dropped["stale"] += 1
            return []
        if update.status == wire.ALIVE:
            if record.incarnation > current:
                member.record = record
                self._clear_suspicion(agent_id, member)
                self._enqueue(update, urgent=True)  # a refutation (or a move): spread it first
            return []
        # SUSPECT, or DEAD from someone else: both only start (or confirm) our own suspicion.
        if record.incarnation > current:
            member.record = record
            self._suspects.pop(agent_id, None)
        suspicion = self._suspects.get(agent_id)
        if suspicion is not None:
            if claimer is not None and len(suspicion.confirmers) < CONFIRMATIONS:
                suspicion.confirmers.add(claimer)
            return []
        return self._suspect_local(agent_id, now, claimer)

    def _verify_stranger(self, record: Record, now: float) -> list[Output]:
        """A stranger announced by someone else: ping it (up to VERIFY_PINGS times, a period
        apart); its ACK, from the address its record names, admits it (module docstring)."""
        agent_id = record.agent_id
        known = self._verifying.get(agent_id)
        if known is not None:
            if record.incarnation > known.record.incarnation:
                known.record = record
            return []
        if len(self._members) >= self.config.max_members:
            self.dropped["members_full"] += 1
            return []
        if len(self._verifying) >= self.config.max_relays:
            self.dropped["verifications_full"] += 1
            return []
        self._verifying[agent_id] = Stranger(record, now)
        return self._ping_strangers(now)

    def _ping_strangers(self, now: float) -> list[Output]:
        out: list[Output] = []
        for agent_id, stranger in list(self._verifying.items()):
            if stranger.next_ping > now:
                continue
            if stranger.pings >= VERIFY_PINGS:
                del self._verifying[agent_id]
                self.stats["strangers_unverified"] += 1
                continue
            stranger.pings += 1
            stranger.next_ping = now + self.config.period
            self.stats["verification_pings"] += 1
            record = stranger.record
            out.append(
                self._packet(wire.PING, self._next_seq(), record.sender_id, record, bare=True)
            )
        return out

    def _add(self, record: Record) -> list[Output]:
        if len(self._members) >= self.config.max_members:
            self.dropped["members_full"] += 1
            return []
        agent_id = record.agent_id
        self._verifying.pop(agent_id, None)
        self._dead.pop(agent_id, None)
        self._members[agent_id] = Member(record)
        # Randomized round-robin: a newcomer goes to a random place in the rest of the round.
        self._order.insert(self._rng.randrange(self._order_index, len(self._order) + 1), agent_id)
        self._enqueue(Update(wire.ALIVE, record))
        return [PeerEvent(ENTER, agent_id, record.host, record.ports)]

    def _unorder(self, agent_id: str) -> None:
        """Take a removed member out of the probe order. Left in, the order would grow
        with every member ever seen while the node has none (its round never completes)."""
        try:
            index = self._order.index(agent_id)
        except ValueError:
            return
        del self._order[index]
        if index < self._order_index:
            self._order_index -= 1

    def _suspect_local(self, agent_id: str, now: float, claimer: str | None) -> list[Output]:
        member = self._members.get(agent_id)
        if member is None or agent_id in self._suspects:
            return []
        was_suspect = member.suspect
        member.suspect = True
        low = self._suspicion_timeout()
        high = low * self.config.suspicion_max_mult
        self._suspects[agent_id] = Suspicion(now, low, high, {claimer} if claimer else set())
        if was_suspect:
            return []  # a newer incarnation, suspected again: no second EVASIVE
        self.stats["suspected"] += 1
        self._enqueue(Update(wire.SUSPECT, member.record))
        return [PeerEvent(EVASIVE, agent_id, member.record.host, member.record.ports)]

    def _clear_suspicion(self, agent_id: str, member: Member) -> None:
        if member.suspect:
            member.suspect = False
            self._suspects.pop(agent_id, None)
            self.stats["refutations_seen"] += 1

    def _declare_dead(self, agent_id: str) -> list[Output]:
        self._suspects.pop(agent_id, None)
        member = self._members.pop(agent_id, None)
        if member is None:
            return []
        self._unorder(agent_id)
        self.stats["declared_dead"] += 1
        self._remember(Update(wire.DEAD, member.record))
        return [PeerEvent(EXPIRED, agent_id, member.record.host, member.record.ports)]

    def _on_leave(self, update: Update, member: Member | None) -> list[Output]:
        record = update.record
        if member is not None:
            if record.incarnation < member.record.incarnation:
                self.dropped["stale"] += 1
                return []
            del self._members[record.agent_id]
            self._unorder(record.agent_id)
            self._suspects.pop(record.agent_id, None)
            self._remember(update)
            return [PeerEvent(LEAVE_EVENT, record.agent_id, record.host, record.ports)]
        dead = self._dead.get(record.agent_id)
        if dead is None:
            # A stranger: remember it (stale news must not bring it in) but do not gossip
            # it, or anyone could fill every queue with the goodbyes of fresh keys.
            self._remember(update, gossip=False)
        elif record.incarnation > dead.record.incarnation or dead.status != wire.LEAVE:
            self._remember(update)
        return []

    def _remember(self, update: Update, *, gossip: bool = True) -> None:
        agent_id = update.record.agent_id
        self._dead[agent_id] = update
        self._dead.move_to_end(agent_id)
        while len(self._dead) > self.config.max_dead:
            forgotten, _ = self._dead.popitem(last=False)
            self._queue.discard(forgotten)
        if gossip:
            self._enqueue(update)

    def _about_self(self, update: Update) -> list[Output]:
        incarnation = update.record.incarnation
        current = self.incarnation
        if update.status == wire.ALIVE and incarnation <= current:
            return []
        if update.status != wire.ALIVE and incarnation < current:
            return []
        # Suspected, declared dead or gone by someone, or a newer record from a past life
        # of ours (we restarted): outbid it. A u32 wraps only after 4e9 refutations.
        self._record = self._signed_record(
            min(incarnation + 1, wire.MAX_INCARNATION), leaving=False
        )
        self.stats["refuted"] += 1
        self._enqueue(Update(wire.ALIVE, self._record), urgent=True)
        return []

    # -- dissemination and packets ------------------------------------------------------------

    def _enqueue(self, update: Update, *, urgent: bool | None = None) -> None:
        # Urgent news (suspicions, deaths, refutations) goes before join news: a refutation
        # stuck behind a burst of joins is how a live member gets declared dead.
        self._queue.put(update, urgent=update.status != wire.ALIVE if urgent is None else urgent)

    def _suspicion_timeout(self) -> float:
        scale = max(1.0, math.log10(len(self._members) + 1))
        return self.config.suspicion_mult * scale * self.config.period

    def _packet(
        self,
        kind: int,
        seq: int,
        target: bytes | Record | None,
        to: Record | Address,
        extra: Sequence[Update] = (),
        *,
        bare: bool = False,
    ) -> Send:
        first: list[Update] = []
        if isinstance(to, Record):
            member = self._members.get(to.agent_id)
            if member is not None and member.suspect:
                # Lifeguard's buddy system: tell a suspect first, so that it can refute.
                first.append(Update(wire.SUSPECT, member.record))
            to = to.address
        head = wire.encode_body(kind, seq, self._record, target, ())
        limit = self.config.retransmit_mult * math.ceil(math.log10(len(self._members) + 2))
        updates = (
            []
            if bare
            else self._queue.fill(
                head, first, extra, limit=limit, max_datagram=self.config.max_datagram
            )
        )
        material = wire.packet_material(kind, seq, self._record, target, updates)
        return Send(
            to, Packet(kind, seq, self._record, target, tuple(updates), self._sign(material))
        )

    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < wire.MAX_SEQ else 1
        return self._seq

    def _signed_record(self, incarnation: int, *, leaving: bool) -> Record:
        host, port = self.address
        material = wire.record_material(
            self._verify_key, incarnation, leaving, host, port, ports=self._ports
        )
        return Record(
            self._verify_key, incarnation, leaving, host, port, self._ports, self._sign(material)
        )

    def _record_ok(self, record: Record, now: float, *, unknown: str) -> bool:
        """Trusted signer, an address in our scope, and a valid self-signature (skipped for a
        record we already hold)."""
        agent_id = record.agent_id
        if agent_id != self.agent_id and not in_scope(record.host, self._scope):
            self.dropped["bad_address"] += 1
            return False
        if self._trust is not None:
            try:
                entry = self._trust.lookup(agent_id, now=now)
            except ZmqCommError:
                self.dropped[unknown] += 1
                return False
            if bytes(entry.verify_key) != record.verify_key:
                self.dropped["key_changed"] += 1
                return False
        member = self._members.get(agent_id)
        if member is not None and member.record == record:
            return True
        dead = self._dead.get(agent_id)
        if (dead is not None and dead.record == record) or record == self._record:
            return True
        if not self._verify(record.verify_key, record.material, record.signature):
            self.dropped["bad_signature"] += 1
            return False
        return True
