"""The knobs and public records of SWIM membership (:mod:`.membership`), and its verifier."""

from __future__ import annotations

import math
from collections.abc import Callable, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from zmqcomm.checks import check_seconds
from zmqcomm.crypto.keys import signature_valid
from zmqcomm.errors import UsageError
from zmqcomm.patterns.discovery import membership_wire as wire

Signer = Callable[[bytes], bytes]
#: ``verify(verify_key, material, signature) -> bool``.
Verifier = Callable[[bytes, bytes, bytes], bool]
T = TypeVar("T")
#: Independent suspicions that bring the suspicion timeout down to its minimum.
CONFIRMATIONS = 3


class RandomLike(Protocol):
    """What the machine needs of a random source (``random.Random`` fits)."""

    def random(self) -> float: ...

    def randrange(self, start: int, stop: int) -> int: ...

    def shuffle(self, x: MutableSequence[Any]) -> None: ...

    def sample(self, population: Sequence[T], k: int) -> list[T]: ...


#: The default ``verify``: an Ed25519 check that answers yes or no.
ed25519_verify = signature_valid


@dataclass(frozen=True)
class MembershipConfig:
    """Timing and bounds; the defaults are close to memberlist's LAN profile."""

    period: float = 1.0
    ping_timeout: float = 0.5
    indirect_probes: int = 3
    suspicion_mult: float = 4.0
    suspicion_max_mult: float = 3.0
    retransmit_mult: int = 4
    sync_every: int = 10
    join_backoff_max: float = 30.0
    max_members: int = 1024
    max_dead: int = 1024
    max_relays: int = 256
    max_datagram: int = wire.MAX_DATAGRAM

    def __post_init__(self) -> None:
        check_seconds(self.period, "period", allow_zero=False)
        if not 0 < self.ping_timeout < self.period:
            raise UsageError(
                f"ping_timeout ({self.ping_timeout}) must be in (0, period={self.period})"
            )
        check_seconds(self.join_backoff_max, "join_backoff_max", allow_zero=False)
        if self.join_backoff_max < self.period:
            raise UsageError("join_backoff_max must be at least one period")
        if not (0 < self.suspicion_mult < math.inf and 1 <= self.suspicion_max_mult < math.inf):
            raise UsageError("suspicion_mult must be positive and suspicion_max_mult >= 1")
        for name in ("indirect_probes", "sync_every"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} cannot be negative")
        for name in ("retransmit_mult", "max_members", "max_dead", "max_relays"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        if not wire.MIN_MAX_DATAGRAM <= self.max_datagram <= wire.MAX_DATAGRAM:
            # Below the minimum, a PING_REQ of two long records would not fit even bare.
            raise UsageError(
                f"max_datagram must be in {wire.MIN_MAX_DATAGRAM}..{wire.MAX_DATAGRAM} bytes "
                f"(a packet without updates can take {wire.MIN_MAX_DATAGRAM}), "
                f"got {self.max_datagram}"
            )


@dataclass(frozen=True)
class MemberInfo:
    """A snapshot of one member."""

    agent_id: str
    host: str
    port: int
    ports: tuple[int, ...]
    incarnation: int
    state: str  # "ALIVE" or "SUSPECT"
