"""Medians, percentiles and ratios: the arithmetic of the report, kept apart to be tested."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

#: The quantiles stored for every latency distribution (enough to draw its curve).
QUANTILE_POINTS: tuple[float, ...] = (
    *(q / 100 for q in range(0, 100, 2)),
    0.99,
    0.995,
    0.999,
    1.0,
)


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within 0..1, got {q}")
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 (and mean, min, max) in microseconds."""
    micro = sorted(value * 1e6 for value in seconds)
    return {
        "p50_us": percentile(micro, 0.50),
        "p90_us": percentile(micro, 0.90),
        "p99_us": percentile(micro, 0.99),
        "mean_us": statistics.fmean(micro),
        "min_us": micro[0],
        "max_us": micro[-1],
        "samples": len(micro),
    }


def latency_quantiles(seconds: Sequence[float]) -> list[list[float]]:
    """``[[q, microseconds], ...]`` at :data:`QUANTILE_POINTS`, for plots redrawn from JSON."""
    micro = sorted(value * 1e6 for value in seconds)
    return [[q, percentile(micro, q)] for q in QUANTILE_POINTS]


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no values")
    return float(statistics.median(values))


def median_known(values: Sequence[float | None]) -> float | None:
    """The median of the values that are known (not None); None when none is."""
    known = [value for value in values if value is not None]
    return median(known) if known else None


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, or None when either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def alternating(items: Sequence[str], round_index: int) -> list[str]:
    """Even rounds in order, odd rounds reversed, so slow drift hits every mode alike."""
    return list(items) if round_index % 2 == 0 else list(reversed(items))
