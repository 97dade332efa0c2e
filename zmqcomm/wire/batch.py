"""Accumulating small messages into batch frames.

One batch frame carries many payloads of the same type, topic and sender in one msgpack array,
so the per-message costs of a send, a header and (with the security layer) an AEAD call are
paid once per batch. Payloads are packed as they arrive, so the builder always knows the exact
body size and a payload that cannot be encoded fails at :meth:`BatchBuilder.add`, in the
caller's hands, not later inside a flush. A batch of one payload leaves as a plain message
(no BATCH flag): read through ``Message.payloads`` it is the same.
"""

from __future__ import annotations

from typing import NoReturn

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
        self._pack = self._packer.unchecked()  # one Python call less per message
        self._items: list[bytes] = []
        self._size = 0
        #: Bytes of the packed items alone: what the body limit is about.
        self._body = 0
        limits = codec.limits
        # Checked uncompressed (compression may only shrink a body): with the header, the
        # longest topic and the AEAD tag it must fit max_frame_size too, or framing would
        # fail once the batch was taken.
        self._cap = min(limits.max_body_size, limits.max_frame_size - _FRAME_OVERHEAD_MAX)

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
        # This runs for every message of a stream: the common case (no arrays, room left)
        # is kept to a few operations; the rest is in _add_arrays and _refuse.
        packer = self._packer
        mark = len(packer.out_of_band)
        try:
            packed = self._pack(payload)
        except Exception:
            packer.pack_failed(mark)
            packed = packer.pack(payload)  # raises the typed error (LocalProtocolError)
        if len(packer.out_of_band) != mark:
            return self._add_arrays(packed, mark)
        body = self._body + len(packed)
        if body + _ARRAY_HEADER_MAX > self._cap:
            self._refuse(packed, mark)
        items = self._items
        items.append(packed)
        self._body = body
        self._size += len(packed)
        return len(items) >= self.max_items or self._size >= self.max_bytes

    def _add_arrays(self, packed: bytes, mark: int) -> bool:
        """:meth:`add` for a payload that put arrays out of band."""
        out_of_band = self._packer.out_of_band
        limits = self.codec.limits
        sizes = [memoryview(b).nbytes for b in out_of_band[mark:]]
        if len(sizes) > limits.max_extra_frames or max(sizes) > limits.max_extra_frame_size:
            del out_of_band[mark:]
            raise LocalProtocolError(
                f"payload with {len(sizes)} out-of-band arrays (largest {max(sizes)} bytes) "
                "exceeds the receiver's limits even alone (Limits.max_extra_frames, "
                "max_extra_frame_size)"
            )
        if self._items and len(out_of_band) > limits.max_extra_frames:
            del out_of_band[mark:]
            raise BatchOverflow("take() the queued batch first, then add this payload again")
        # Arrays travel in frames of their own: the body limit is for the packed items only,
        # but array bytes count towards max_bytes (a batch of large arrays leaves by size).
        body = self._body + len(packed)
        if body + _ARRAY_HEADER_MAX > self._cap:
            self._refuse(packed, mark)
        self._items.append(packed)
        self._body = body
        size = self._size + len(packed) + sum(sizes)
        self._size = size
        return (
            len(self._items) >= self.max_items
            or size >= self.max_bytes
            or len(out_of_band) >= limits.max_extra_frames
        )

    def _refuse(self, packed: bytes, mark: int) -> NoReturn:
        """Undo the payload's arrays; LocalProtocolError if it cannot go even alone, else
        BatchOverflow (it fits in a batch of its own)."""
        del self._packer.out_of_band[mark:]
        if not self._items or len(packed) + _ARRAY_HEADER_MAX > self._cap:
            raise LocalProtocolError(
                f"payload of {len(packed)} bytes exceeds what one message may carry "
                f"({self._cap} bytes: Limits.max_body_size and max_frame_size); send large "
                "arrays as numpy (out of band) or raise the limits on both sides"
            )
        raise BatchOverflow("take() the queued batch first, then add this payload again")

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
        self._items, self._size, self._body = [], 0, 0
        self._packer.take_out_of_band()
        return body
