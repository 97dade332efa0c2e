"""Size, count and depth limits applied to every frame that comes from a peer.

The defaults are safe for an agent swarm on one host: large enough for a 16 MiB tensor, small
enough that a hostile peer cannot make a node allocate more than a small multiple of what it
actually sent. Every limit is checked *before* the allocation it protects.
"""

from __future__ import annotations

from dataclasses import dataclass

from zmqcomm.errors import UsageError

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a decoder accepts. All sizes in bytes."""

    #: Largest first frame (header + topic + body, possibly compressed) accepted from a peer.
    max_frame_size: int = 64 * MiB
    #: Largest body after decompression.
    max_body_size: int = 64 * MiB
    #: Largest msgpack bin/str/ext values, and array/map element counts.
    max_bin_len: int = 64 * MiB
    max_str_len: int = 16 * MiB
    max_ext_len: int = 64 * MiB
    max_array_len: int = 1_000_000
    max_map_len: int = 100_000
    #: Deepest nesting of arrays and maps in one payload (the top-level value is depth 1).
    max_depth: int = 32
    #: Most messages in one batch frame.
    max_batch_items: int = 100_000
    #: Most out-of-band frames (large tensors) after the first frame.
    max_extra_frames: int = 64
    #: Largest single out-of-band frame.
    max_extra_frame_size: int = 256 * MiB

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(
                    f"Limits.{name} must be a positive integer, got {value!r}; "
                    "raise a limit instead of disabling it"
                )
        if self.max_depth > 1000:
            # msgpack's C unpacker has a fixed stack of 1024 levels.
            raise UsageError(f"Limits.max_depth must be at most 1000, got {self.max_depth}")


DEFAULT_LIMITS = Limits()
