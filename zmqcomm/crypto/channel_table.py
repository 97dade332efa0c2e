"""The secure channels of one socket, keyed by ZeroMQ routing id (pure, sans-I/O).

The table is where peer input first meets the security layer, so it carries the guards:

- before any Diffie-Hellman, a handshake INIT must pass the cheap checks (exact size, known
  suite) and two token buckets, one per routing id and one for the whole table, so a flood of
  handshakes from unknown keys costs a few comparisons per message;
- an INIT on an established channel (a rekey, or a new session on the same connection) spends
  a token from its authenticated identity's bucket instead; a handshake that completes gives
  the token back, so only INITs left unfinished count, and a trusted peer cannot make the
  table do a DH and send a REPLY for every INIT it floods in;
- at most ``max_pending`` unfinished handshakes are held (the oldest is dropped), so memory
  stays bounded however many connections a flood opens;
- every refusal is counted by reason and written to the audit trail, and never raises to
  the driver: a bad message is a drop, not a crash.

A routing id is never an identity: the channel's authenticated agent id is. When an agent
completes a handshake on a new connection, its previous channel is dropped.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from zmqcomm.access import Policy, RateLimiter, TokenBucket
from zmqcomm.crypto.audit import BaseAuditLog, NullAuditLog
from zmqcomm.crypto.channel import Delivered, Established, Event, SecureChannel, TrustChecker
from zmqcomm.crypto.handshake import RandomBytes
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.errors import RateLimitedError, RemoteProtocolError, SecurityError, UsageError
from zmqcomm.wire import MessageType, WireCodec
from zmqcomm.wire.header import parse_header, peek_type
from zmqcomm.wire.payload import Buffer

#: Identities whose INIT budget is remembered; an evicted one comes back with a full bucket.
_MAX_INIT_BUDGETS = 100_000


@dataclass(frozen=True)
class HandshakeLimits:
    """How much handshake work unknown peers may cause."""

    #: New handshakes per second for the whole table, and the burst allowed above it.
    rate: float = 500.0
    burst: float = 200.0
    #: Per routing id: a client that reconnects now and then never notices these.
    per_route_rate: float = 2.0
    per_route_burst: float = 8.0
    #: Per authenticated identity, INITs on its established channel (rekeys, new sessions):
    #: a completed handshake gives its token back, so legitimate rekeys (rare, retried with
    #: backoff, one surviving when both sides start at once) never run out.
    rekey_rate: float = 0.5
    rekey_burst: float = 4.0
    #: Unfinished handshakes held at once; the oldest is dropped past this.
    max_pending: int = 1024

    def with_policy(self, policy: Policy | None) -> HandshakeLimits:
        """These limits, with the per-connection bucket a policy's ``[unauthenticated]``
        section sets (unchanged where it is silent)."""
        if policy is None:
            return self
        rate, burst = policy.unauthenticated_rate, policy.unauthenticated_burst
        return replace(
            self,
            per_route_rate=self.per_route_rate if rate is None else rate,
            per_route_burst=self.per_route_burst if burst is None else burst,
        )

    def __post_init__(self) -> None:
        if self.max_pending < 1:
            raise UsageError(f"max_pending must be at least 1, got {self.max_pending}")
        # Refused here, not when a socket that already bound builds its buckets.
        TokenBucket(self.rate, self.burst, now=0.0)
        TokenBucket(self.per_route_rate, self.per_route_burst, now=0.0)
        TokenBucket(self.rekey_rate, self.rekey_burst, now=0.0)


class _InitBudget:
    """A token bucket whose tokens a completed handshake gives back (capped at the burst)."""

    __slots__ = ("_stamp", "_tokens")

    def __init__(self, burst: float, *, now: float) -> None:
        self._tokens = float(burst)
        self._stamp = now

    def take(self, rate: float, burst: float, *, now: float) -> bool:
        elapsed = now - self._stamp
        if elapsed > 0:  # a clock going backwards adds nothing
            self._tokens = min(burst, self._tokens + elapsed * rate)
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def give_back(self, burst: float) -> None:
        self._tokens = min(burst, self._tokens + 1.0)


class ChannelTable:
    """Routes frames to per-peer channels and guards the way in."""

    def __init__(
        self,
        *,
        identity: Identity,
        trust: TrustChecker,
        random_bytes: RandomBytes,
        now: float,
        audit: BaseAuditLog | None = None,
        codec: WireCodec | None = None,
        policy: RekeyPolicy | None = None,
        limits: HandshakeLimits | None = None,
        handshake_timeout: float = 2.0,
        max_failures: int = 16,
    ) -> None:
        self.identity = identity
        self.trust = trust
        self.audit = audit if audit is not None else NullAuditLog()
        self.codec = codec if codec is not None else WireCodec()
        self.policy = policy
        self.limits = limits if limits is not None else HandshakeLimits()
        self.handshake_timeout = handshake_timeout
        self.max_failures = max_failures
        self._random = random_bytes
        self._global = TokenBucket(self.limits.rate, self.limits.burst, now=now)
        self._per_route = RateLimiter(
            self.limits.per_route_rate, self.limits.per_route_burst, max_keys=100_000
        )
        #: Per agent id, for INITs on established channels; least recently used first.
        self._init_budgets: OrderedDict[str, _InitBudget] = OrderedDict()
        self.channels: dict[bytes, SecureChannel] = {}
        self._pending: OrderedDict[bytes, None] = OrderedDict()
        self._routes: dict[str, bytes] = {}
        self.rejected: Counter[str] = Counter()
        self.handshakes = 0
        self.rekeys = 0
        #: When each channel next wants its timer (as last looked at: :meth:`note`), and
        #: the same as a heap with stale entries left in, so that :meth:`next_deadline` is
        #: not a scan of every channel (0.6 ms with 1,000 peers) on every pump.
        self._deadline_of: dict[bytes, float] = {}
        #: Routes whose session still holds a superseded receive key (its grace period):
        #: frames sealed under it may be queued behind newer ones (see ``in_grace``).
        self._in_grace: set[bytes] = set()
        self._deadline_heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self.channels)

    def route_of(self, agent_id: str) -> bytes | None:
        """The routing id of the established channel to ``agent_id``, if any."""
        return self._routes.get(agent_id)

    def channel_to(self, agent_id: str) -> SecureChannel | None:
        route = self._routes.get(agent_id)
        return self.channels.get(route) if route is not None else None

    @property
    def peers(self) -> list[str]:
        return sorted(self._routes)

    # -- starting ----------------------------------------------------------------------------

    def connect(self, route: bytes, *, now: float, expect_peer: str | None = None) -> list[Buffer]:
        """Start a session as initiator on ``route``; returns the INIT frames."""
        # A reconnect replaces the old channel: its session ended with the old connection.
        self.drop(route)
        channel = self._new_channel(expect_peer)
        frames = channel.connect(now=now)
        self.channels[route] = channel
        self.note(route)
        return frames

    def _new_channel(self, expect_peer: str | None) -> SecureChannel:
        return SecureChannel(
            identity=self.identity,
            trust=self.trust,
            random_bytes=self._random,
            codec=self.codec,
            policy=self.policy,
            handshake_timeout=self.handshake_timeout,
            max_failures=self.max_failures,
            expect_peer=expect_peer,
        )

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, route: bytes, frames: Sequence[Buffer], *, now: float) -> list[Event]:
        """Handle one message from ``route``. Refused input returns no events, is counted in
        :attr:`rejected` and audited; it never raises."""
        channel = self.channels.get(route)
        try:
            if channel is not None and len(frames) == 1:
                delivered = channel.open_data(frames[0], now=now)
                if delivered is not None:
                    return [delivered]  # data: most messages, and no timer moves
            # Unauthenticated routes pass the guard; an established peer's INITs (rekeys, new
            # sessions) pass its identity's budget instead: each would cost a DH and a REPLY.
            if channel is None or (not channel.established and self._is_init(frames)):
                self._admit(route, frames, now=now)
                if channel is None:
                    channel = self._new_channel(None)
            elif channel.established and self._is_init(frames):
                self._admit_established(channel, now=now)
            events = channel.receive(frames, now=now)
        except (RemoteProtocolError, SecurityError) as exc:
            self._reject(route, channel, exc, now=now)  # refused input changes no timer
            return []
        if route not in self.channels:
            self.channels[route] = channel
        if len(events) != 1 or type(events[0]) is not Delivered:
            self.note(route)  # data moves no timer (it costs 0.6 us): handshake frames do
        if channel.handshaking and not channel.established:
            self._track_pending(route, now=now)
        for event in events:
            if isinstance(event, Established):
                self._on_established(route, event, now=now)
        return events

    def _is_init(self, frames: Sequence[Buffer]) -> bool:
        return bool(frames) and peek_type(frames[0]) == MessageType.HANDSHAKE_INIT

    def _admit(self, route: bytes, frames: Sequence[Buffer], *, now: float) -> None:
        """The checks before a channel or a DH is spent on a message."""
        if not frames:
            raise RemoteProtocolError("empty message", reason="truncated")
        header, _ = parse_header(memoryview(frames[0]), self.codec.limits)
        if header.type != MessageType.HANDSHAKE_INIT:
            raise SecurityError("no session on this connection", reason="no_session")
        if not self._per_route.allow(route, now=now) or not self._global.take(now=now):
            raise RateLimitedError("too many handshakes", reason="rate_limited")

    def _admit_established(self, channel: SecureChannel, *, now: float) -> None:
        """An INIT on an established channel spends a token of the peer's identity."""
        assert channel.peer is not None  # established
        limits = self.limits
        budget = self._init_budget(channel.peer.agent_id, now=now)
        if not budget.take(limits.rekey_rate, limits.rekey_burst, now=now):
            raise RateLimitedError(
                "too many handshakes from an established peer", reason="rate_limited"
            )

    def _init_budget(self, agent_id: str, *, now: float) -> _InitBudget:
        budget = self._init_budgets.get(agent_id)
        if budget is None:
            if len(self._init_budgets) >= _MAX_INIT_BUDGETS:
                self._init_budgets.popitem(last=False)
            budget = self._init_budgets[agent_id] = _InitBudget(self.limits.rekey_burst, now=now)
        else:
            self._init_budgets.move_to_end(agent_id)
        return budget

    def _track_pending(self, route: bytes, *, now: float) -> None:
        self._pending[route] = None
        self._pending.move_to_end(route)
        while len(self._pending) > self.limits.max_pending:
            oldest, _ = self._pending.popitem(last=False)
            stale = self.channels.get(oldest)
            if stale is not None and not stale.established:
                del self.channels[oldest]
                self.note(oldest)
            self.rejected["handshake_evicted"] += 1
            self.audit.record("reject", now=now, reason="handshake_evicted", route=oldest.hex())

    def _on_established(self, route: bytes, event: Established, *, now: float) -> None:
        self._pending.pop(route, None)
        budget = self._init_budgets.get(event.agent_id)
        if budget is not None:  # a completed handshake returns the token its INIT spent
            budget.give_back(self.limits.rekey_burst)
        if event.epoch:
            self.rekeys += 1
            self.audit.record(
                "rekey", now=now, peer=event.agent_id, session=event.session_id, epoch=event.epoch
            )
            return
        self.handshakes += 1
        previous = self._routes.get(event.agent_id)
        if previous is not None and previous != route:
            self.channels.pop(previous, None)
            self.note(previous)
        self._routes[event.agent_id] = route
        self.audit.record(
            "handshake", now=now, peer=event.agent_id, session=event.session_id, route=route.hex()
        )

    def _reject(
        self, route: bytes, channel: SecureChannel | None, exc: Exception, *, now: float
    ) -> None:
        reason = getattr(exc, "reason", "error")
        self.rejected[reason] += 1
        peer = channel.peer.agent_id if channel is not None and channel.peer else None
        self.audit.record("reject", now=now, peer=peer, reason=reason, route=route.hex())
        if channel is not None and channel.closed:
            self.drop(route)
            self.audit.record("close", now=now, peer=peer, reason="too_many_failures")

    def drop(self, route: bytes) -> None:
        """Forget the channel on ``route`` (the connection went away)."""
        channel = self.channels.pop(route, None)
        self._pending.pop(route, None)
        self._deadline_of.pop(route, None)
        self._in_grace.discard(route)
        peer = channel.peer if channel is not None else None
        if peer is not None and self._routes.get(peer.agent_id) == route:
            del self._routes[peer.agent_id]

    # -- timers ------------------------------------------------------------------------------

    def note(self, route: bytes) -> None:
        """Look again at when the channel on ``route`` next wants its timer. The table's own
        methods do it; whoever works a channel directly does it after anything that may
        start a handshake or move a key's expiry (a send's ``on_timer`` that returned
        frames, pausing or resuming an expiry): :meth:`next_deadline` sees no other change.
        What a channel's ``on_timer`` changes without returning frames (an old key erased, a
        handshake given up) happens only once its deadline here has passed, so the table's
        next :meth:`on_timer`, due at once, looks again."""
        channel = self.channels.get(route)
        if channel is not None and channel.holds_superseded_keys:
            self._in_grace.add(route)
        else:
            self._in_grace.discard(route)
        deadline = None if channel is None else channel.next_deadline()
        if deadline is None:
            self._deadline_of.pop(route, None)
        elif self._deadline_of.get(route) != deadline:
            self._deadline_of[route] = deadline
            heapq.heappush(self._deadline_heap, (deadline, route))
            if len(self._deadline_heap) > 2 * len(self._deadline_of) + 64:
                self._reindex()  # stale entries (rekeys, retries) would pile up otherwise

    @property
    def in_grace(self) -> bool:
        """Whether some session may still receive frames under a superseded key: a reader
        must then read all that waits before its caller gets back to work, or those frames
        may outlast the key's grace period in a socket queue. Kept by :meth:`note`, which
        may keep a route a while after its old key went: that only costs a look more."""
        return bool(self._in_grace)

    def after_send(self, route: bytes, channel: SecureChannel, *, now: float) -> list[Event]:
        """The message-count rekey trigger, for whoever seals on ``channel`` (on ``route``):
        call it after each send or burst. A rekey that starts is indexed; its INIT is in the
        events returned. :meth:`on_timer` visits only channels whose deadline has come, so a
        count reached between timers waits for this call, not for a timer."""
        events = channel.on_timer(now=now)
        if events:
            self.note(route)
        return events

    def _reindex(self) -> None:
        self._deadline_heap = [(d, route) for route, d in self._deadline_of.items()]
        heapq.heapify(self._deadline_heap)

    def next_deadline(self) -> float | None:
        """The earliest time a channel wants :meth:`on_timer` (None: no channel does)."""
        heap, current = self._deadline_heap, self._deadline_of
        while heap:
            deadline, route = heap[0]
            if current.get(route) == deadline:
                return deadline
            heapq.heappop(heap)  # stale: that channel moved on, or is gone
        return None

    def _take_due(self, now: float) -> list[bytes]:
        """The routes whose deadline is at or before ``now``, taken out of the index (the
        caller's :meth:`note` puts each back with its next deadline)."""
        heap, current = self._deadline_heap, self._deadline_of
        due = []
        while heap and heap[0][0] <= now:
            deadline, route = heapq.heappop(heap)
            if current.get(route) == deadline:  # else stale: the channel moved on
                del current[route]
                due.append(route)
        return due

    def scan_deadline(self) -> float | None:
        """:meth:`next_deadline` the slow way, from every channel (for tests)."""
        deadlines = [d for c in self.channels.values() if (d := c.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def on_timer(self, *, now: float) -> list[tuple[bytes, Event]]:
        """Retries, rekeys and expiries that are due; abandoned handshakes are forgotten.

        Only the channels whose deadline has come are visited (a broker holds thousands):
        the index is never later than a channel's own deadline. A rekey by message count is
        the sender's to start, through :meth:`after_send`."""
        out: list[tuple[bytes, Event]] = []
        due = self._take_due(now)
        try:
            for route in due:
                channel = self.channels.get(route)
                if channel is None:
                    continue
                for event in channel.on_timer(now=now):
                    out.append((route, event))
                if not channel.established and not channel.handshaking:
                    self.channels.pop(route, None)
                    self._pending.pop(route, None)
                    self.rejected["handshake_timeout"] += 1
                    self.audit.record(
                        "reject", now=now, reason="handshake_timeout", route=route.hex()
                    )
        finally:
            for route in due:  # all of them: were one to raise, the rest stay indexed
                self.note(route)
        return out
