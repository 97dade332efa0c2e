"""The simulated network: per-link latency, loss, duplication and partitions.

Reordering is not a separate knob: it happens whenever two messages on one link draw
latencies that cross, which a wide latency distribution makes common (ZeroMQ itself keeps
per-connection order; reconnects and multiple paths are what break it in practice).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from zmqcomm.errors import UsageError

NodeId = Hashable
#: Draws one latency in seconds from the simulator's random source.
Latency = Callable[[random.Random], float]


def fixed(seconds: float) -> Latency:
    """Every message takes exactly ``seconds``."""
    _check_delay(seconds)
    return lambda rng: seconds


def uniform(low: float, high: float) -> Latency:
    """Latency uniform in ``[low, high]``: wide ranges reorder messages."""
    _check_delay(low)
    if high < low:
        raise UsageError(f"uniform latency needs low <= high, got {low} > {high}")
    return lambda rng: rng.uniform(low, high)


def lognormal(median: float, sigma: float = 0.5) -> Latency:
    """A long-tailed latency with the given median, like a loaded network."""
    _check_delay(median)
    if median == 0:
        raise UsageError("a lognormal latency needs a positive median")
    mu = math.log(median)
    return lambda rng: rng.lognormvariate(mu, sigma)


def _check_delay(seconds: float) -> None:
    if seconds < 0:
        raise UsageError(f"a latency cannot be negative, got {seconds}")


#: One millisecond, about a loaded loopback hop.
_DEFAULT_LATENCY = fixed(0.001)


@dataclass(frozen=True)
class LinkModel:
    """How one directed link behaves."""

    latency: Latency = _DEFAULT_LATENCY
    #: Probability that a message is lost.
    loss: float = 0.0
    #: Probability that a message is delivered twice (the copy draws its own latency).
    duplicate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"LinkModel.{name} is a probability, got {value}")


class Network:
    """Which links exist, how they behave, and which are cut by a partition."""

    def __init__(self, default: LinkModel | None = None) -> None:
        self.default = default if default is not None else LinkModel()
        self._links: dict[tuple[NodeId, NodeId], LinkModel] = {}
        self._group_of: dict[NodeId, int] | None = None

    def set_link(
        self, source: NodeId, target: NodeId, model: LinkModel, *, both: bool = True
    ) -> None:
        self._links[(source, target)] = model
        if both:
            self._links[(target, source)] = model

    def link(self, source: NodeId, target: NodeId) -> LinkModel:
        return self._links.get((source, target), self.default)

    def partition(self, groups: Iterable[Iterable[NodeId]]) -> None:
        """Only nodes in the same group can talk; nodes in no group are isolated."""
        group_of: dict[NodeId, int] = {}
        for index, group in enumerate(groups):
            for node in group:
                if node in group_of:
                    raise UsageError(f"node {node!r} is in two partition groups")
                group_of[node] = index
        self._group_of = group_of

    def heal(self) -> None:
        self._group_of = None

    def connected(self, source: NodeId, target: NodeId) -> bool:
        if self._group_of is None:
            return True
        group = self._group_of.get(source)
        return group is not None and group == self._group_of.get(target)

    def transit(self, source: NodeId, target: NodeId, rng: random.Random) -> list[float]:
        """Latencies of the copies that will arrive (empty: lost or cut)."""
        if not self.connected(source, target):
            return []
        model = self.link(source, target)
        if model.loss and rng.random() < model.loss:
            return []
        delays = [model.latency(rng)]
        if model.duplicate and rng.random() < model.duplicate:
            delays.append(model.latency(rng))
        return delays
