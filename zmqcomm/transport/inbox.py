"""Taking the next delivery from an inbox that a pump fills: what ``receive()`` does for a
secure socket and for a node."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TypeVar

from zmqcomm.checks import check_timeout
from zmqcomm.errors import ReceiveTimeout

T = TypeVar("T")

#: The longest single wait: a receive with no deadline still pumps this often.
MAX_WAIT = 0.1


def take_next(
    inbox: deque[T],
    pump: Callable[[float], object],
    clock: Callable[[], float],
    timeout: float | None,
    *,
    what: str,
    waited: float = 0.0,
) -> T:
    """The oldest of ``inbox``, pumping (up to ``MAX_WAIT`` at a time) until one is there;
    ReceiveTimeout saying "no ``what``" after ``timeout`` s (None: wait for ever), of which
    the caller already spent ``waited`` s waiting on its own.

    It pumps at least once, even with no time left: ``timeout=0`` returns a message that is
    already waiting in a socket."""
    check_timeout(timeout, "receive timeout")
    deadline = None if timeout is None else clock() + timeout - waited
    while not inbox:
        left = MAX_WAIT if deadline is None else deadline - clock()
        pump(min(max(left, 0.0), MAX_WAIT))
        if not inbox and deadline is not None and clock() >= deadline:
            raise ReceiveTimeout(f"no {what} within {timeout} s")
    return inbox.popleft()
