"""A pure peer table fed by discovery beacons, with Zyre-like presence events.

Sans-I/O: the caller passes decoded beacons and the time (``now``, seconds from a monotonic
clock) and calls :meth:`PeerTable.on_timer` at :meth:`PeerTable.next_deadline`.

Events, per peer, always in this order: ``ENTER`` once when first heard; ``EVASIVE`` once when
silent for ``evasive_after`` seconds (heard again, it is simply alive again, no event);
then exactly one of ``EXPIRED`` (silent for ``expired_after``, removed) or ``LEAVE`` (an
explicit goodbye, removed). A later beacon starts a new ``ENTER``.

A beacon whose sequence is not newer than the last one accepted from that peer is dropped and
counted in ``stale``: a replay or a reordered datagram must not keep a dead peer alive or
move it to another address. Senders number beacons upward across restarts (wall-clock
microseconds, see :mod:`zmqcomm.patterns.discovery.beacon`), so a restart needs no guess.
The last sequence of a peer that expired or left is remembered too (the most recent
``max_peers`` of them): an old beacon replayed after it is gone does not bring it back.
New peers beyond ``max_peers`` are ignored and counted in ``ignored``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from zmqcomm.checks import check_seconds
from zmqcomm.errors import UsageError
from zmqcomm.patterns.discovery.beacon import Beacon

EventKind = Literal["ENTER", "EVASIVE", "EXPIRED", "LEAVE"]
PeerState = Literal["ALIVE", "EVASIVE"]
ENTER: EventKind = "ENTER"
EVASIVE: EventKind = "EVASIVE"
EXPIRED: EventKind = "EXPIRED"
LEAVE: EventKind = "LEAVE"


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
    sequence: int
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
        #: Beacons dropped because their sequence was not newer (replays, reordering).
        self.stale = 0
        #: Beacons from new peers dropped because the table was full.
        self.ignored = 0
        # Ordered by last_seen, oldest first: timers look only at the front of the table.
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        #: Peers that expired or left -> their last sequence, oldest first.
        self._gone: OrderedDict[str, int] = OrderedDict()
        self._latest = -math.inf

    def _clock(self, now: float) -> float:
        # A clock that steps back must not break the last_seen ordering: never go back.
        self._latest = max(self._latest, float(now))
        return self._latest

    def observe(self, beacon: Beacon, address: str, *, now: float) -> list[PeerEvent]:
        """Record a verified beacon heard from ``address``; ``[ENTER]`` for a new peer."""
        now = self._clock(now)
        agent_id = beacon.agent_id
        peer = self._peers.get(agent_id)
        if peer is None:
            if beacon.sequence <= self._gone.get(agent_id, -1):
                self.stale += 1  # a beacon of its earlier life, replayed
                return []
            if len(self._peers) >= self.max_peers:
                self.ignored += 1  # a flood of fresh identities must not grow us unbounded
                return []
            self._gone.pop(agent_id, None)
            self._peers[agent_id] = _Peer(address, beacon.ports, beacon.sequence, now)
            return [PeerEvent(ENTER, agent_id, address, beacon.ports)]
        if beacon.sequence <= peer.sequence:
            self.stale += 1
            return []
        peer.address = address
        peer.ports = beacon.ports
        peer.sequence = beacon.sequence
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
        self._gone[agent_id] = peer.sequence
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
