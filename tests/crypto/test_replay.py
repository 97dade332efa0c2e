"""The replay window, in the spirit of WireGuard's table-driven replay tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqcomm.crypto.replay import MAX_COUNTER, ReplayWindow
from zmqcomm.errors import ReplayError, UsageError

SIZE = 256  # small, so wrap-arounds of the ring happen within the table

# (counter, accepted?) in order, on one window of SIZE.
TABLE = [
    (0, True),
    (1, True),
    (1, False),  # duplicate
    (9, True),
    (8, True),  # late but inside
    (7, True),
    (7, False),
    (SIZE + 8, True),  # jump: now 9 is the oldest still inside (SIZE + 8 - 9 < SIZE)
    (8, False),  # just outside: SIZE + 8 - 8 == SIZE
    (9, False),  # inside but already seen
    (10, True),  # just inside
    (SIZE * 3, True),  # several wraps of the ring at once
    (SIZE * 2 + 1, True),  # just inside again (SIZE*3 - (SIZE*2+1) = SIZE - 1)
    (SIZE * 2, False),  # just outside
    (SIZE * 3, False),
    (SIZE * 3 + 64, True),  # one block forward clears exactly one recycled block
    (SIZE * 3 + 1, True),
    (SIZE * 3 + 1, False),
    (2**40, True),  # a far jump clears everything
    (2**40 - 1, True),
    (SIZE * 3 + 64, False),
    (2**40, False),
    (MAX_COUNTER - 1, True),
    (MAX_COUNTER, False),  # reserved
    (MAX_COUNTER - 1, False),
]


def test_replay_table() -> None:
    window = ReplayWindow(SIZE)
    for step, (counter, expected) in enumerate(TABLE):
        assert window.check(counter) is expected, f"step {step}: counter {counter}"
        if expected:
            window.accept(counter)
        else:
            with pytest.raises(ReplayError):
                window.accept(counter)


def test_check_alone_never_moves_the_window() -> None:
    window = ReplayWindow(SIZE)
    window.accept(5)
    assert window.check(1_000_000)
    assert window.highest == 5
    assert window.check(4)


def test_negative_counters_and_bad_sizes() -> None:
    window = ReplayWindow()
    assert not window.check(-1)
    for size in (0, 63, 100):
        with pytest.raises(UsageError):
            ReplayWindow(size)


@given(st.lists(st.integers(0, 3 * SIZE), max_size=400))
def test_matches_a_simple_model(counters: list[int]) -> None:
    window = ReplayWindow(SIZE)
    seen: set[int] = set()
    highest = -1
    for counter in counters:
        expected = counter not in seen and (counter > highest or highest - counter < SIZE)
        assert window.check(counter) is expected
        if expected:
            window.accept(counter)
            seen.add(counter)
            highest = max(highest, counter)
