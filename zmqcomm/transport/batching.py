"""A sender that coalesces small messages into batch frames.

Like Nagle's algorithm but bounded: queued messages leave as one batch frame when the batch
reaches ``max_items`` or ``max_bytes``, when it has waited ``max_delay`` seconds, when the next
message has another type or topic (so order is kept), on :meth:`BatchingSender.flush`, and on
:meth:`BatchingSender.close`. Nothing accepted by :meth:`BatchingSender.send` is lost on a
clean close.

The sender does not own a socket or a timer: it is given a ``send_frames`` callable, and the
loop that drives it calls :meth:`BatchingSender.on_timer` at :meth:`next_deadline`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from zmqcomm.checks import check_seconds
from zmqcomm.errors import ClosedError
from zmqcomm.wire import ANONYMOUS, BatchBuilder, Body, WireCodec
from zmqcomm.wire.batch import DEFAULT_MAX_BYTES, DEFAULT_MAX_ITEMS, BatchOverflow
from zmqcomm.wire.payload import Buffer

SendFrames = Callable[[Sequence[Buffer]], object]
#: Turns a finished batch body into frames: ``(msg_type, body, topic) -> frames``.
FrameBatch = Callable[[int, Body, str], Sequence[Buffer]]

#: Default wait before a partial batch leaves: long enough to gather a burst, far below a
#: network round trip.
DEFAULT_MAX_DELAY = 0.001


class BatchingSender:
    """Queues payloads and sends them as batch frames through ``send_frames``."""

    def __init__(
        self,
        send_frames: SendFrames,
        codec: WireCodec | None = None,
        *,
        sender: bytes = ANONYMOUS,
        max_items: int = DEFAULT_MAX_ITEMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_delay: float = DEFAULT_MAX_DELAY,
        clock: Callable[[], float] = time.monotonic,
        frame_batch: FrameBatch | None = None,
    ) -> None:
        """``frame_batch`` replaces the plain wire framing, e.g. to encrypt each batch with a
        session (see :meth:`zmqcomm.secure.SecureDealer.batching_sender`)."""
        check_seconds(max_delay, "max_delay")
        self.codec = codec if codec is not None else WireCodec()
        self._send_frames = send_frames
        self._builder = BatchBuilder(self.codec, max_items=max_items, max_bytes=max_bytes)
        self._sender = sender
        self._max_delay = max_delay
        self._clock = clock
        self._key: tuple[int, str] | None = None
        self._first_queued_at: float | None = None
        self._counter = 0
        #: A batch taken from the builder whose framing failed: (type, topic, body, count).
        self._unframed: tuple[int, str, Body, int] | None = None
        #: A framed batch that ``send_frames`` refused: (frames, count).
        self._pending: tuple[list[Buffer], int] | None = None
        self._closed = False
        self._frame_batch = frame_batch
        #: Messages and frames handed to ``send_frames`` so far.
        self.messages_sent = 0
        self.frames_sent = 0

    def __len__(self) -> int:
        """Messages queued and not yet sent."""
        held = (self._pending[1] if self._pending else 0) + (
            self._unframed[3] if self._unframed else 0
        )
        return len(self._builder) + held

    def send(self, msg_type: int, payload: object, *, topic: str = "") -> None:
        """Queue one payload; may send a batch (the previous one, or this one when full)."""
        if self._closed:
            raise ClosedError("this sender is closed; create a new one to send again")
        if self._pending is not None or self._unframed is not None:
            self._send_held()
        key = (msg_type, topic)
        if key != self._key and len(self._builder):
            self.flush()
        self._key = key
        try:
            full = self._builder.add(payload)
        except BatchOverflow:
            self.flush()
            full = self._builder.add(payload)
        # Only once something is queued: a refused payload must not leave a deadline behind
        # (next_deadline() would stay in the past and a driver loop would spin).
        if self._first_queued_at is None:
            self._first_queued_at = self._clock()
        if full:
            self.flush()

    def flush(self) -> int:
        """Send whatever is queued now; returns the number of messages sent.

        If framing the batch (``frame_batch``: a rekey that cannot be sent, a session that
        refuses) or ``send_frames`` raises (a full queue, a timeout), the batch is kept and the
        error propagates; the next flush, send or close tries it again first, so nothing is
        lost, nothing is sent twice and order is kept.
        """
        sent = self._send_held()
        count = len(self._builder)
        if not count:
            return sent
        assert self._key is not None  # set by send() whenever the builder is non-empty
        msg_type, topic = self._key
        # Held as unframed until framing succeeds, so a failure there loses nothing.
        self._unframed = (msg_type, topic, self._builder.take(), count)
        self._first_queued_at = None
        return sent + self._send_held()

    def _send_held(self) -> int:
        """Send the batch a previous attempt left behind, framing it first if needed."""
        sent = self._send_pending()
        if self._unframed is not None:
            msg_type, topic, body, count = self._unframed
            frames = self._frame(msg_type, body, topic)
            self._unframed = None
            self._pending = (frames, count)
            sent += self._send_pending()
        return sent

    def _frame(self, msg_type: int, body: Body, topic: str) -> list[Buffer]:
        if self._frame_batch is not None:
            return list(self._frame_batch(msg_type, body, topic))
        frames = self.codec.assemble(
            msg_type, body, topic=topic, sender=self._sender, counter=self._counter
        )
        self._counter += 1
        return frames

    def _send_pending(self) -> int:
        if self._pending is None:
            return 0
        frames, count = self._pending
        self._send_frames(frames)
        self._pending = None
        self.messages_sent += count
        self.frames_sent += 1
        return count

    def next_deadline(self) -> float | None:
        """When the queued partial batch must leave, or None when nothing is queued."""
        if self._pending is not None or self._unframed is not None:
            return self._clock()  # a batch that could not be framed or sent: retry at once
        if self._first_queued_at is None:
            return None
        return self._first_queued_at + self._max_delay

    def on_timer(self, now: float | None = None) -> int:
        """Flush if the oldest queued message has waited ``max_delay``; returns messages sent."""
        deadline = self.next_deadline()
        if deadline is None:
            return 0
        if (self._clock() if now is None else now) >= deadline:
            return self.flush()
        return 0

    def close(self) -> None:
        """Flush what is queued, then refuse further sends. Idempotent."""
        if not self._closed:
            self.flush()
            self._closed = True
