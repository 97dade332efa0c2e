"""Accumulating small messages into batch frames.

One batch frame carries many payloads of the same type, topic and sender in one msgpack array,
so the per-message costs of a send, a header and (with the security layer) an AEAD call are
paid once per batch. Payloads are packed as they arrive, so the builder always knows the exact
body size and a payload that cannot be encoded fails at :meth:`BatchBuilder.add`, in the
caller's hands, not later inside a flush.
"""

from __future__ import annotations

from zmqcomm.errors import LocalProtocolError, UsageError
from zmqcomm.wire.codec import Body, WireCodec
from zmqcomm.wire.payload import PayloadPacker

DEFAULT_MAX_ITEMS = 1024
DEFAULT_MAX_BYTES = 256 * 1024


class BatchBuilder:
    """Packs payloads one by one and hands out a batch body when asked.

    ``add`` returns True once the batch reached ``max_items`` or ``max_bytes``: time to
    :meth:`take`. A single payload larger than ``max_bytes`` still forms a batch of its own.
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

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes of packed payloads waiting (before compression)."""
        return self._size

    def add(self, payload: object) -> bool:
        """Pack and queue one payload; True when the batch is full."""
        packed = self._packer.pack(payload)
        self._items.append(packed)
        self._size += len(packed)
        return len(self._items) >= self.max_items or self._size >= self.max_bytes

    def take(self) -> Body:
        """The batch body of everything queued; the builder starts empty again."""
        if not self._items:
            raise LocalProtocolError("nothing to take: the batch is empty")
        items, self._items, self._size = self._items, [], 0
        return self.codec.build_batch_body(items, self._packer.take_out_of_band())
