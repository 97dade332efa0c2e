"""A pure peer table fed by discovery beacons, with Zyre-like presence events.

Sans-I/O: the caller passes decoded beacons and the time (``now``, seconds from a monotonic
clock) and calls :meth:`PeerTable.on_timer` at :meth:`PeerTable.next_deadline`.

Events, per peer, always in this order: ``ENTER`` once when first heard; ``EVASIVE`` once when
silent for ``evasive_after`` seconds (heard again, it is simply alive again, no event);
then exactly one of ``EXPIRED`` (silent for ``expired_after``, removed) or ``LEAVE`` (an
explicit goodbye, removed). A later beacon starts a new ``ENTER``.

Senders draw a random incarnation per life and number its beacons upward with wall-clock
microseconds (see :mod:`zmqcomm.patterns.discovery.beacon`). The table keeps, per agent, the
last sequence it took from each of its ``MAX_INCARNATIONS`` most recent incarnations, and
takes a beacon only if

- its sequence is above the last one taken from that incarnation (else ``stale``: a replay
  or a reordered datagram must not keep a dead peer alive or move it to another address);
- for the current incarnation, its sequence moved on from the last one taken by at least
  the time our monotonic clock moved since, less ``restart_window``, or is within
  ``restart_window`` of our wall clock (else ``not_fresh``: a recording of beacons we
  missed, replayed later);
- and, when its incarnation is not the agent's current one (a restart, or a switch back to
  an earlier life), its sequence is within ``restart_window`` seconds of the table's own
  wall clock, ``wall`` (else ``not_fresh``). An incarnation the table never took a beacon
  from is also taken when numbered above every beacon taken from the agent, as version 2
  took every restart: so a sender whose clock is off by more than the window is still
  heard after a restart, as long as its clock moved on.

So a restarted agent is heard at once even when its clock is now behind its earlier life's
last beacon, while a beacon of an earlier life replayed more than ``restart_window`` after
it was sent is refused. The remaining risks: a beacon of an earlier life that
this table never took, replayed within ``restart_window`` of its sending, is taken once and
moves the peer back to that life's address and ports until the live incarnation's next
beacon (which is then fresh, so it is taken back); and a beacon of a life this table never
heard at all, numbered above everything it took from the agent, is taken whatever its age,
as under version 2. Beacons only say where to connect; the handshake that follows
authenticates the peer again. Forgetting the oldest incarnation of an agent reopens only its
last ``restart_window`` seconds of beacons, and only after ``MAX_INCARNATIONS`` later ones.
The first beacon of an agent the table knows nothing of is taken whatever its number: there
is nothing to compare it with.

What the table knows of a peer that expired or left is remembered too (the most recent
``max_peers`` of them): an old beacon replayed after it is gone does not bring it back. New
peers beyond ``max_peers`` are ignored and counted in ``ignored``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from zmqcomm.checks import check_seconds
from zmqcomm.errors import UsageError
from zmqcomm.patterns.discovery.beacon import Beacon, BeaconError

EventKind = Literal["ENTER", "EVASIVE", "EXPIRED", "LEAVE"]
PeerState = Literal["ALIVE", "EVASIVE"]
ENTER: EventKind = "ENTER"
EVASIVE: EventKind = "EVASIVE"
EXPIRED: EventKind = "EXPIRED"
LEAVE: EventKind = "LEAVE"
#: Incarnations remembered per agent, the current one included.
MAX_INCARNATIONS = 4
DEFAULT_RESTART_WINDOW = 10.0


class StaleBeaconError(BeaconError):
    """A verified beacon the table refuses: ``stale`` or ``not_fresh`` (module docstring)."""

    reason = "stale"


def _fresh(beacon: Beacon, wall: float | None, window: float) -> bool:
    """Whether ``beacon``'s number (its sender's wall clock) is within ``window`` seconds of
    ours. Written so that a NaN wall clock is never fresh."""
    return wall is not None and abs(beacon.sequence / 1_000_000 - wall) <= window


class _Lives:
    """What the table took from one agent: the last sequence of each recent incarnation."""

    def __init__(self, beacon: Beacon, now: float) -> None:
        #: incarnation -> last sequence taken, least recently taken first: the current is last.
        self.last: OrderedDict[int, int] = OrderedDict({beacon.incarnation: beacon.sequence})
        #: The highest sequence taken from the agent, in any incarnation.
        self.high = beacon.sequence
        #: When (our monotonic clock) the last beacon was taken.
        self.taken_at = now

    @property
    def current(self) -> int:
        return next(reversed(self.last))

    def check(self, beacon: Beacon, wall: float | None, window: float, now: float) -> None:
        """Raise :class:`StaleBeaconError` unless ``beacon`` may be taken."""
        taken = self.last.get(beacon.incarnation)
        if taken is not None and beacon.sequence <= taken:
            raise StaleBeaconError("not newer than its incarnation's last", reason="stale")
        if beacon.incarnation == self.current:
            assert taken is not None  # the current incarnation is always remembered
            # Its number is its sender's clock: since the last one taken it moved on about
            # as far as ours did. A recording of it replayed later (after a partition, or
            # after the agent died) did not, so it cannot bring the agent back for long.
            # One that lags (its clock was set back or paused) is still taken when fresh by
            # our wall clock, or that agent would stay unheard for good.
            lag = (now - self.taken_at) - (beacon.sequence - taken) / 1_000_000
            if lag > window and not _fresh(beacon, wall, window):
                raise StaleBeaconError("the live incarnation, not fresh", reason="not_fresh")
            return
        if taken is None and beacon.sequence > self.high:
            return  # a life never taken, numbered above all: a clock that moved on (the v2 rule)
        # Another life, new or earlier: taken only when fresh by our wall clock.
        if not _fresh(beacon, wall, window):
            raise StaleBeaconError("another incarnation, not fresh", reason="not_fresh")

    def take(self, beacon: Beacon, now: float) -> bool:
        """Record ``beacon`` (checked); ``True`` if it changed the current incarnation."""
        restart = beacon.incarnation != self.current
        self.taken_at = now
        self.last[beacon.incarnation] = beacon.sequence
        self.last.move_to_end(beacon.incarnation)
        self.high = max(self.high, beacon.sequence)
        while len(self.last) > MAX_INCARNATIONS:
            self.last.popitem(last=False)
        return restart


@dataclass(frozen=True)
class PeerEvent:
    """Something that happened to a peer's presence."""

    kind: EventKind
    agent_id: str
    address: str
    ports: tuple[int, ...]


@dataclass(frozen=True)
class PeerInfo:
    """A snapshot of one row of the table."""

    agent_id: str
    address: str
    ports: tuple[int, ...]
    last_seen: float
    state: PeerState


@dataclass
class _Peer:
    address: str
    ports: tuple[int, ...]
    lives: _Lives
    last_seen: float
    state: PeerState = "ALIVE"


class PeerTable:
    """Who is out there, as told by beacons; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        evasive_after: float = 5.0,
        expired_after: float = 30.0,
        max_peers: int = 10_000,
        restart_window: float = DEFAULT_RESTART_WINDOW,
    ) -> None:
        self.evasive_after = check_seconds(evasive_after, "evasive_after", allow_zero=False)
        self.expired_after = check_seconds(expired_after, "expired_after", allow_zero=False)
        if self.evasive_after >= self.expired_after:
            raise UsageError(
                f"evasive_after ({evasive_after}) must be less than expired_after ({expired_after})"
            )
        if type(max_peers) is not int or max_peers < 1:
            raise UsageError(f"max_peers must be a positive int, got {max_peers!r}")
        self.max_peers = max_peers
        self.restart_window = check_seconds(
            restart_window, "restart_window", allow_zero=False, maximum=3600
        )
        #: Beacons dropped because their sequence was not newer (replays, reordering).
        self.stale = 0
        #: Beacons of another incarnation dropped as neither fresh nor above all earlier ones.
        self.not_fresh = 0
        #: Beacons taken that changed a known agent's incarnation (it restarted).
        self.restarts = 0
        #: Beacons from new peers dropped because the table was full.
        self.ignored = 0
        # Ordered by last_seen, oldest first: timers look only at the front of the table.
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        #: Peers that expired or left -> what was taken from them, oldest first.
        self._gone: OrderedDict[str, _Lives] = OrderedDict()
        self._latest = -math.inf

    def _clock(self, now: float) -> float:
        # A clock that steps back must not break the last_seen ordering: never go back.
        self._latest = max(self._latest, float(now))
        return self._latest

    def observe(
        self, beacon: Beacon, address: str, *, now: float, wall: float | None = None
    ) -> list[PeerEvent]:
        """Record a verified beacon heard from ``address``; ``[ENTER]`` for a new peer.

        ``now`` is the monotonic clock of the timers; ``wall`` is the receiver's wall clock
        (seconds since the epoch), which a restarted agent's first beacons are compared with.
        Without it a restart is taken only when numbered above every earlier beacon.
        """
        now = self._clock(now)
        agent_id = beacon.agent_id
        peer = self._peers.get(agent_id)
        lives = peer.lives if peer is not None else self._gone.get(agent_id)
        if lives is not None:
            try:
                lives.check(beacon, wall, self.restart_window, now)
            except StaleBeaconError as exc:  # a replay, a reordering, or a badly skewed clock
                if exc.reason == "not_fresh":
                    self.not_fresh += 1
                else:
                    self.stale += 1
                return []
        if peer is None:
            if len(self._peers) >= self.max_peers:
                self.ignored += 1  # a flood of fresh identities must not grow us unbounded
                return []
            if lives is None:
                lives = _Lives(beacon, now)
            else:
                del self._gone[agent_id]
                self.restarts += lives.take(beacon, now)
            self._peers[agent_id] = _Peer(address, beacon.ports, lives, now)
            return [PeerEvent(ENTER, agent_id, address, beacon.ports)]
        self.restarts += peer.lives.take(beacon, now)
        peer.address = address
        peer.ports = beacon.ports
        peer.last_seen = now
        peer.state = "ALIVE"  # back from EVASIVE silently: it was never reported gone
        self._peers.move_to_end(agent_id)
        return []

    def leave(self, agent_id: str, *, now: float) -> list[PeerEvent]:
        """An explicit goodbye: ``[LEAVE]`` and removal, or ``[]`` for an unknown peer."""
        self._clock(now)
        peer = self._peers.pop(agent_id, None)
        if peer is None:
            return []
        self._forget(agent_id, peer)
        return [PeerEvent(LEAVE, agent_id, peer.address, peer.ports)]

    def _forget(self, agent_id: str, peer: _Peer) -> None:
        self._gone[agent_id] = peer.lives
        self._gone.move_to_end(agent_id)
        while len(self._gone) > self.max_peers:
            self._gone.popitem(last=False)

    def on_timer(self, *, now: float) -> list[PeerEvent]:
        """``EVASIVE`` and ``EXPIRED`` events due at ``now``; expired peers are removed."""
        now = self._clock(now)
        events: list[PeerEvent] = []
        expired: list[str] = []
        for agent_id, peer in self._peers.items():
            silent = now - peer.last_seen
            if silent < self.evasive_after:
                break  # everyone after this one was heard even more recently
            if silent >= self.expired_after:
                # Straight to EXPIRED if the timer ran late: EVASIVE is moot for a gone peer.
                expired.append(agent_id)
                events.append(PeerEvent(EXPIRED, agent_id, peer.address, peer.ports))
            elif peer.state == "ALIVE":
                peer.state = "EVASIVE"
                events.append(PeerEvent(EVASIVE, agent_id, peer.address, peer.ports))
        for agent_id in expired:
            self._forget(agent_id, self._peers.pop(agent_id))
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` next has something to do, or ``None`` for an empty table."""
        best: float | None = None
        for peer in self._peers.values():
            # No later peer can be due before its own last_seen + evasive_after.
            if best is not None and peer.last_seen + self.evasive_after >= best:
                break
            delay = self.evasive_after if peer.state == "ALIVE" else self.expired_after
            due = peer.last_seen + delay
            if best is None or due < best:
                best = due
        return best

    @property
    def peers(self) -> list[PeerInfo]:
        return [
            PeerInfo(agent_id, p.address, p.ports, p.last_seen, p.state)
            for agent_id, p in self._peers.items()
        ]

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._peers
