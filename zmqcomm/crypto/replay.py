"""Anti-replay: a sliding bitmap window over 64-bit message counters (RFC 6479 style).

The window remembers which of the last ``size`` counters below the highest one were seen.
It is a ring of 64-bit blocks: moving forward clears only the blocks that fall out, never
shifts the whole bitmap, so a far jump costs the same as a step. A counter is acceptable if
it is newer than anything seen, or inside the window and not yet seen.

Use it in two steps around decryption: :meth:`ReplayWindow.check` before (cheap, changes
nothing), :meth:`ReplayWindow.accept` after the tag verified. A forged frame therefore never
moves the window.
"""

from __future__ import annotations

from zmqcomm.errors import ReplayError, UsageError

_BLOCK_BITS = 64
#: The last counter value is never valid: it would leave no room to detect the next replay.
MAX_COUNTER = 2**64 - 1


class ReplayWindow:
    """Which counters were already accepted, over the last ``size`` counters."""

    __slots__ = ("_blocks", "_count", "highest", "size")

    def __init__(self, size: int = 4096) -> None:
        if size < _BLOCK_BITS or size % _BLOCK_BITS:
            raise UsageError(f"replay window size must be a positive multiple of 64, got {size}")
        self.size = size
        # One spare block, so the ring always holds ``size`` bits below the highest counter.
        self._count = size // _BLOCK_BITS + 1
        self._blocks = [0] * self._count
        #: The highest accepted counter, -1 before the first.
        self.highest = -1

    def check(self, counter: int) -> bool:
        """Whether ``counter`` may be accepted; changes nothing."""
        if not 0 <= counter < MAX_COUNTER:
            return False
        if counter > self.highest:
            return True
        if self.highest - counter >= self.size:
            return False
        block = (counter // _BLOCK_BITS) % self._count
        return not (self._blocks[block] >> (counter % _BLOCK_BITS)) & 1

    def accept(self, counter: int) -> None:
        """Record ``counter`` as seen; raises :class:`ReplayError` if it may not be accepted."""
        if not self.check(counter):
            raise ReplayError(
                f"message counter {counter} was already seen or is too old "
                f"(newest {self.highest}, window {self.size})"
            )
        index = counter // _BLOCK_BITS
        if counter > self.highest:
            current = self.highest // _BLOCK_BITS if self.highest >= 0 else -1
            steps = index - current
            if steps >= self._count:
                self._blocks = [0] * self._count
            else:
                for offset in range(1, steps + 1):
                    self._blocks[(current + offset) % self._count] = 0
            self.highest = counter
        self._blocks[index % self._count] |= 1 << (counter % _BLOCK_BITS)
