"""The records a SWIM membership machine keeps about other nodes while it runs.

:class:`~.membership.Membership` holds one :class:`Member` per known node (with whether it is
suspected), at most one :class:`Probe` in flight, a :class:`Suspicion` per suspect (whose
timeout shrinks as other members confirm it, after Lifeguard), a :class:`Stranger` per node
announced by gossip and not yet heard from, and a :class:`Relay` per indirect probe it makes
for someone else. Plain mutable records: the rules that change them stay in the machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from zmqcomm.patterns.discovery.membership_config import CONFIRMATIONS
from zmqcomm.patterns.discovery.membership_wire import Address, Record


@dataclass(slots=True)
class Member:
    """A known node: its latest record, and whether we suspect it."""

    record: Record
    suspect: bool = False


@dataclass(slots=True)
class Probe:
    """This period's PING: to whom, under which seq, and whether it was answered or
    went indirect (PING_REQ)."""

    target: str
    target_sid: bytes
    seq: int
    ping_deadline: float
    acked: bool = False
    indirect: bool = False


@dataclass(slots=True)
class Suspicion:
    """Lifeguard-style: the timeout starts at ``high`` and falls towards ``low`` as
    independent members confirm the suspicion (log-scaled, full drop at CONFIRMATIONS)."""

    start: float
    low: float
    high: float
    confirmers: set[str]

    @property
    def deadline(self) -> float:
        fraction = math.log(len(self.confirmers) + 1) / math.log(CONFIRMATIONS + 1)
        return self.start + max(self.low, self.high - (self.high - self.low) * fraction)


@dataclass(slots=True)
class Stranger:
    """A member announced by someone else, not yet heard from at its own address."""

    record: Record
    next_ping: float
    pings: int = 0


@dataclass(slots=True)
class Relay:
    """A PING we sent for another node's PING_REQ: where to pass the ACK back, under its
    seq, and until when we wait for it."""

    requester: Address
    their_seq: int
    target_sid: bytes
    expires: float
