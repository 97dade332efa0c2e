"""Nearest-rank percentiles, the one definition the reports of measured runs use.

The nearest-rank ``q`` percentile is the smallest sample with at least ``q`` of the samples at
or below it: p99 of 100 samples is the 99th smallest, the median of two is the first. Unlike
interpolation it always names a value that was measured. (``zmqcomm.bench`` interpolates on
purpose, to draw smooth latency curves.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (``q`` in 0..1) of a non-empty ``values``."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = math.ceil(q * len(ordered) - 1e-9)  # 0.07 * 100 is 7.000000000000001
    return ordered[min(len(ordered) - 1, max(0, rank - 1))]
