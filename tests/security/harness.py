"""A pure two-party link for attack tests: Alice and Bob, each a ChannelTable, a fake clock.

The attacker sits on the wire: it sees every frame (``wire``), and can inject anything into
either side with :meth:`Link.inject_to_bob` / :meth:`Link.inject_to_alice`. Every check the
attack tests make is on the tables' own outputs: events, rejection counters, audit lines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.channel import Delivered, Established, Event, SecureChannel, Transmit
from zmqcomm.crypto.channel_table import ChannelTable, HandshakeLimits
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.wire.payload import Buffer

ALICE_ROUTE = b"route-to-alice"
BOB_ROUTE = b"route-to-bob"


@dataclass
class Link:
    alice: ChannelTable
    bob: ChannelTable
    now: float = 1000.0
    wire: list[tuple[str, list[bytes]]] = field(default_factory=list)

    # -- carrying frames ---------------------------------------------------------------------

    def _carry(
        self, sender: str, route_at_receiver: bytes, frames: Sequence[Buffer]
    ) -> list[Event]:
        raw = [bytes(frame) for frame in frames]
        self.wire.append((sender, raw))
        receiver = self.bob if sender == "alice" else self.alice
        events = receiver.receive(route_at_receiver, raw, now=self.now)
        self._follow("bob" if sender == "alice" else "alice", events)
        return events

    def _follow(self, side: str, events: list[Event]) -> None:
        """Deliver what an event list asks the side to transmit (handshake replies)."""
        # The receiver knows the transmitting side by the route it arrives on.
        route = ALICE_ROUTE if side == "alice" else BOB_ROUTE
        for event in events:
            if isinstance(event, Transmit):
                self._carry(side, route, event.frames)

    def connect(self) -> None:
        self._carry("alice", ALICE_ROUTE, self.alice.connect(BOB_ROUTE, now=self.now))
        assert self.alice_channel.established and self.bob_channel.established

    @property
    def alice_channel(self) -> SecureChannel:
        return self.alice.channels[BOB_ROUTE]

    @property
    def bob_channel(self) -> SecureChannel:
        return self.bob.channels[ALICE_ROUTE]

    # -- traffic -----------------------------------------------------------------------------

    def seal_from_alice(self, payload: object, *, topic: str = "") -> list[bytes]:
        frames = self.alice_channel.seal(0x01, payload, topic=topic, now=self.now)
        return [bytes(frame) for frame in frames]

    def seal_from_bob(self, payload: object) -> list[bytes]:
        return [bytes(f) for f in self.bob_channel.seal(0x01, payload, now=self.now)]

    def inject_to_bob(self, frames: Sequence[Buffer]) -> list[Event]:
        events = self.bob.receive(ALICE_ROUTE, [bytes(f) for f in frames], now=self.now)
        self._follow("bob", events)
        return events

    def inject_to_alice(self, frames: Sequence[Buffer]) -> list[Event]:
        events = self.alice.receive(BOB_ROUTE, [bytes(f) for f in frames], now=self.now)
        self._follow("alice", events)
        return events

    def send_alice_to_bob(self, payload: object) -> Any:
        """A legitimate message; returns what Bob got (fails the test if nothing)."""
        delivered = self.inject_to_bob(self.seal_from_alice(payload))
        assert len(delivered) == 1 and isinstance(delivered[0], Delivered), delivered
        return delivered[0].message.payload

    def rekey(self) -> None:
        """Alice starts a rekey now (as her timer would) and it completes."""
        session = self.alice_channel.session
        assert session is not None
        epoch = session.epoch
        init = self.alice_channel._initiate(session.session_id, epoch + 1, now=self.now, delay=2.0)
        events = self._carry("alice", ALICE_ROUTE, init)
        assert any(isinstance(e, Transmit) for e in events)
        assert session.epoch == epoch + 1


def delivered(events: list[Event]) -> list[Delivered]:
    return [event for event in events if isinstance(event, Delivered)]


def established(events: list[Event]) -> list[Established]:
    return [event for event in events if isinstance(event, Established)]


def make_link(
    alice: Identity,
    bob: Identity,
    alice_trust: TrustStore,
    bob_trust: TrustStore,
    *,
    bob_audit: MemoryAuditLog,
    policy: RekeyPolicy | None = None,
    limits: HandshakeLimits | None = None,
    max_failures: int = 16,
    alice_audit: MemoryAuditLog | None = None,
) -> Link:
    now = 1000.0
    common: dict[str, Any] = {
        "random_bytes": os.urandom,
        "now": now,
        "policy": policy,
        "max_failures": max_failures,
    }
    alice_table = ChannelTable(
        identity=alice, trust=alice_trust, audit=alice_audit or MemoryAuditLog(), **common
    )
    bob_table = ChannelTable(
        identity=bob, trust=bob_trust, audit=bob_audit, limits=limits, **common
    )
    return Link(alice_table, bob_table, now=now)


def fingerprint(channel: SecureChannel) -> tuple[Any, ...]:
    """Everything an attack must not change on the receiving side (white-box on purpose)."""
    session = channel.session
    assert session is not None
    windows = {
        epoch: (state.window.highest, tuple(state.window._blocks))
        for epoch, state in session._receive.items()
    }
    pending = channel._pending
    return (
        session.session_id,
        session.epoch,
        tuple(session.open_epochs),
        tuple(sorted(windows.items())),
        channel.peer.agent_id if channel.peer else None,
        None if pending is None else id(pending.handshake),
        channel.closed,
    )
