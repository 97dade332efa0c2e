"""Ready-made Byzantine behaviours for :meth:`Simulator.set_byzantine`.

Each returns an interceptor: it sees every message the faulty node sends and decides what
actually goes out. Forging messages in another node's name is :meth:`Simulator.inject`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from typing import Any

from zmqcomm.errors import UsageError

NodeId = Hashable
Outgoing = list[tuple[NodeId, Any]]
Interceptor = Callable[[NodeId, NodeId, Any, random.Random], Outgoing]


def silent() -> Interceptor:
    """Sends nothing at all (a crashed-but-running node, or a mute primary)."""
    return lambda sender, to, message, rng: []


def drop(probability: float) -> Interceptor:
    """Drops each message with ``probability`` (selective omission)."""
    _check_probability(probability)
    return lambda sender, to, message, rng: [] if rng.random() < probability else [(to, message)]


def alter(change: Callable[[Any, random.Random], Any]) -> Interceptor:
    """Sends ``change(message, rng)`` instead of each message (wrong digests, bad votes)."""
    return lambda sender, to, message, rng: [(to, change(message, rng))]


def equivocate(
    variant: Callable[[Any, NodeId, random.Random], Any],
) -> Interceptor:
    """Tells each recipient a different story: ``variant(message, recipient, rng)``."""
    return lambda sender, to, message, rng: [(to, variant(message, to, rng))]


def replay(probability: float, *, history: int = 100) -> Interceptor:
    """Besides each message, resends an old one (to the same recipient) with ``probability``."""
    _check_probability(probability)
    sent: list[tuple[NodeId, Any]] = []

    def intercept(sender: NodeId, to: NodeId, message: Any, rng: random.Random) -> Outgoing:
        out = [(to, message)]
        if sent and rng.random() < probability:
            out.append(sent[rng.randrange(len(sent))])
        sent.append((to, message))
        del sent[:-history]
        return out

    return intercept


def flood(copies: int) -> Interceptor:
    """Sends every message ``copies`` times."""
    if copies < 1:
        raise UsageError(f"flood needs at least one copy, got {copies}")
    return lambda sender, to, message, rng: [(to, message)] * copies


def _check_probability(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"a probability must be between 0 and 1, got {value}")
