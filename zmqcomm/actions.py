"""The actions a pure protocol machine returns instead of doing I/O.

A machine (handshake, gossip, PBFT replica, peer table) never touches a socket: its methods
return a list of these small frozen records, and a driver (a real socket loop, or the
simulator in :mod:`zmqcomm.sim`) performs them. Patterns add their own output records
(``Deliver``, ``Commit``...); drivers pass anything they do not know to the application.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol

NodeId = Hashable


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to one peer."""

    to: NodeId
    message: Any


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``message`` to every peer the driver knows (never back to the sender itself)."""

    message: Any


class Machine(Protocol):
    """The shape of a sans-I/O protocol machine that the drivers and the simulator run."""

    def on_message(self, sender: NodeId, message: Any, *, now: float) -> list[Any]: ...

    def on_timer(self, *, now: float) -> list[Any]: ...

    def next_deadline(self) -> float | None: ...
