"""Checks of numbers a caller passes in: durations, timeouts, counts.

Written so NaN fails them: every comparison with NaN is false, so a check such as
``if value < 0: raise`` lets NaN through, and a NaN interval or deadline then makes a loop
spin or never end.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from zmqcomm.errors import UsageError


def _is_number(value: Any) -> bool:
    # numbers.Real: numpy scalars and Fractions too; bool is an int but never a duration.
    # Plain floats and ints first: every receive(timeout) checks one, and the ABC check
    # costs about a microsecond.
    kind = type(value)
    if kind is float or kind is int:
        return True
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def check_seconds(
    value: Any, what: str, *, allow_zero: bool = True, maximum: float = math.inf
) -> float:
    """A duration from the caller: a finite number of seconds, >= 0 (> 0 without
    ``allow_zero``) and at most ``maximum``. Returns it as a float."""
    if (
        not _is_number(value)
        or not math.isfinite(value)
        or not (value >= 0 if allow_zero else value > 0)
        or value > maximum
    ):
        bound = ">= 0" if allow_zero else "> 0"
        if maximum != math.inf:
            bound += f" and at most {maximum:g}"
        raise UsageError(f"{what} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


def check_timeout(value: Any, what: str, *, allow_none: bool = True) -> None:
    """A wait from the caller: seconds (a negative wait has already run out, an infinite
    one never does; NaN means nothing), or None for no limit where ``allow_none``."""
    if value is None and allow_none:
        return
    if not _is_number(value) or math.isnan(value):
        also = " or None (no limit)" if allow_none else ""
        raise UsageError(f"{what} must be a number of seconds{also}, got {value!r}")


def check_count(value: Any, what: str, *, minimum: int = 0) -> int:
    """A whole number from the caller, at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise UsageError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return int(value)
