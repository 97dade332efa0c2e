"""Accumulating small messages into batch frames.

One batch frame carries many payloads of the same type, topic and sender in one msgpack array,
so the per-message costs of a send, a header and (with the security layer) an AEAD call are
paid once per batch. Payloads are packed as they arrive, so the builder always knows the exact
body size and a payload that cannot be encoded fails at :meth:`BatchBuilder.add`, in the
caller's hands, not later inside a flush. A batch of one payload leaves as a plain message
(no BATCH flag): read through ``Message.payloads`` it is the same.
"""

from __future__ import annotations

from zmqcomm.errors import LocalProtocolError, UsageError
from zmqcomm.wire.codec import Body, WireCodec
from zmqcomm.wire.header import HEADER_LEN
from zmqcomm.wire.payload import PayloadPacker

DEFAULT_MAX_ITEMS = 1024
DEFAULT_MAX_BYTES = 256 * 1024
#: The largest msgpack array header (0xdd + u32): what a batch adds to its items.
_ARRAY_HEADER_MAX = 5
#: Header, longest topic and AEAD tag around a body.
_FRAME_OVERHEAD_MAX = HEADER_LEN + 255 + 16


class BatchOverflow(LocalProtocolError):
    """The payload does not fit in the queued batch: take() it, then add the payload again."""


class BatchBuilder:
    """Packs payloads one by one and hands out a batch body when asked.

    ``add`` returns True once the batch reached ``max_items`` or ``max_bytes``: time to
    :meth:`take`. A single payload larger than ``max_bytes`` still leaves on its own.
    """

    def __init__(
        self,
        codec: WireCodec,
        *,
        max_items: int = DEFAULT_MAX_ITEMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_items < 1 or max_bytes < 1:
            raise UsageError("batch max_items and max_bytes must be at least 1")
        if max_items > codec.limits.max_batch_items:
            raise UsageError(
                f"batch max_items {max_items} exceeds the decoder limit "
                f"{codec.limits.max_batch_items}; receivers would reject the batches"
            )
        self.codec = codec
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._packer = PayloadPacker(oob_threshold=codec.oob_threshold)
        self._items: list[bytes] = []
        self._size = 0
        limits = codec.limits
        # Checked uncompressed (compression may only shrink a body): with the header, the
        # longest topic and the AEAD tag it must fit max_frame_size too, or framing would
        # fail once the batch was taken.
        self._cap = min(limits.max_body_size, limits.max_frame_size - _FRAME_OVERHEAD_MAX)
        self._max_arrays = limits.max_extra_frames

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes of packed payloads waiting (before compression)."""
        return self._size

    def add(self, payload: object) -> bool:
        """Pack and queue one payload; True when the batch is full.

        Raises LocalProtocolError, queueing nothing, for a payload no receiver would accept
        even alone, and :class:`BatchOverflow`, queueing nothing, when the payload fits alone
        but not with what is queued: take() the batch, then add it again."""
        out_of_band = self._packer.out_of_band
        mark = len(out_of_band)
        packed = self._packer.pack(payload)
        size = len(packed) + _ARRAY_HEADER_MAX
        arrays = len(out_of_band) - mark
        extra = 0
        if arrays:  # rare: checked apart, so plain payloads pay nothing for it
            sizes = [memoryview(b).nbytes for b in out_of_band[mark:]]
            limits = self.codec.limits
            if arrays > limits.max_extra_frames or max(sizes) > limits.max_extra_frame_size:
                del out_of_band[mark:]
                raise LocalProtocolError(
                    f"payload with {arrays} out-of-band arrays (largest {max(sizes)} bytes) "
                    "exceeds the receiver's limits even alone (Limits.max_extra_frames, "
                    "max_extra_frame_size)"
                )
            extra = sum(sizes)
            if self._items and len(out_of_band) > limits.max_extra_frames:
                del out_of_band[mark:]
                raise BatchOverflow("take() the queued batch first, then add this payload again")
        if size > self._cap:
            del out_of_band[mark:]
            raise LocalProtocolError(
                f"payload of {len(packed)} bytes exceeds what one message may carry "
                f"({self._cap} bytes: Limits.max_body_size and max_frame_size); send large "
                "arrays as numpy (out of band) or raise the limits on both sides"
            )
        if self._size + size > self._cap and self._items:
            del out_of_band[mark:]
            raise BatchOverflow("take() the queued batch first, then add this payload again")
        items = self._items
        items.append(packed)
        # Out-of-band bytes count too: a batch of large arrays must leave by size as well.
        self._size += len(packed) + extra
        return (
            len(items) >= self.max_items
            or self._size >= self.max_bytes
            or (arrays > 0 and len(out_of_band) >= self._max_arrays)
        )

    def take(self) -> Body:
        """The batch body of everything queued (a plain body for a single payload); the
        builder starts empty again."""
        if not self._items:
            raise LocalProtocolError("nothing to take: the batch is empty")
        # Build first: if the body is refused (too large), the items stay queued.
        if len(self._items) == 1:
            # A batch of one goes as a plain message: no array-header join (a whole copy of a
            # large body), and the receiver takes the flat path with no structure walk.
            body = self.codec.build_packed_body(self._items[0], self._packer.out_of_band)
        else:
            body = self.codec.build_batch_body(self._items, self._packer.out_of_band)
        self._items, self._size = [], 0
        self._packer.take_out_of_band()
        return body
