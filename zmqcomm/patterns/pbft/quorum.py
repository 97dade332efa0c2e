"""Replica-count arithmetic: how many faults a committee tolerates and its quorum sizes.

With n replicas, f = floor((n - 1) / 3) and a quorum is ceil((n + f + 1) / 2): any two quorums
intersect in at least f + 1 replicas, so in at least one correct one. For n = 3f + 1 that is
the paper's 2f + 1; for larger n (say 5 or 6 with f = 1) it stays just big enough.
"""

from __future__ import annotations

from dataclasses import dataclass

from zmqcomm.errors import UsageError

MIN_REPLICAS = 4
MAX_REPLICAS = 31


def max_faults(n: int) -> int:
    return (n - 1) // 3


def quorum_size(n: int) -> int:
    f = max_faults(n)
    return (n + f + 2) // 2  # ceil((n + f + 1) / 2)


@dataclass(frozen=True, slots=True)
class Quorum:
    """The sizes one committee of ``n`` replicas uses everywhere."""

    n: int

    def __post_init__(self) -> None:
        if (
            not isinstance(self.n, int)
            or isinstance(self.n, bool)
            or not MIN_REPLICAS <= self.n <= MAX_REPLICAS
        ):
            raise UsageError(
                f"a PBFT committee has {MIN_REPLICAS} to {MAX_REPLICAS} replicas, got {self.n!r}"
            )

    @property
    def f(self) -> int:
        return max_faults(self.n)

    @property
    def quorum(self) -> int:
        """Prepared/committed certificates, checkpoint proofs, view-change sets."""
        return quorum_size(self.n)

    @property
    def weak(self) -> int:
        """f + 1: enough to include one correct replica (client replies, joining a view change)."""
        return self.f + 1

    def primary(self, view: int) -> int:
        return view % self.n

    def is_replica(self, node: object) -> bool:
        return isinstance(node, int) and not isinstance(node, bool) and 0 <= node < self.n
