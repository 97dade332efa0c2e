"""A payload the sender refuses, or that no receiver would take, leaves nothing behind:
not its arrays in the next message, not the messages queued with it, not a spinning timer
(found by a review of the wire and batching layer)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from zmqcomm.errors import LocalProtocolError
from zmqcomm.transport.batching import BatchingSender
from zmqcomm.wire import CompressionConfig, Limits, WireCodec
from zmqcomm.wire.payload import Buffer

DATA = 1
SMALL_LIMITS = Limits(max_body_size=1 << 20, max_frame_size=1 << 20)


def _sender(
    codec: WireCodec, max_bytes: int = 256 * 1024
) -> tuple[BatchingSender, list[Sequence[Buffer]]]:
    sent: list[Sequence[Buffer]] = []
    return BatchingSender(sent.append, codec, max_delay=10.0, max_bytes=max_bytes), sent


def _decoded(codec: WireCodec, sent: list[Sequence[Buffer]]) -> list[object]:
    return [payload for frames in sent for payload in codec.decode(frames).payloads]


def test_the_arrays_of_a_refused_payload_do_not_ride_along_with_the_next_message() -> None:
    codec = WireCodec()
    secret = np.full(100_000, 7, dtype=np.uint8)  # large enough to travel out of band
    with pytest.raises(LocalProtocolError):
        codec.encode(DATA, {"a": secret, "b": object()})
    frames = codec.encode(DATA, "hello")
    assert len(frames) == 1
    with pytest.raises(LocalProtocolError):
        codec.encode_batch(DATA, [secret, object()])
    assert len(codec.encode(DATA, "next")) == 1


def test_out_of_band_arrays_count_towards_a_batch_and_its_frame_limit() -> None:
    codec = WireCodec()
    sender, sent = _sender(codec)
    array = np.zeros(64 * 1024, dtype=np.uint8)
    for _ in range(65):  # one more than a receiver takes in one message (max_extra_frames)
        sender.send(DATA, array)
    sender.close()
    assert all(len(frames) - 1 <= codec.limits.max_extra_frames for frames in sent)
    assert len(_decoded(WireCodec(), sent)) == 65  # every receiver accepts every batch


def test_a_payload_too_large_for_any_message_is_refused_and_the_queue_kept() -> None:
    codec = WireCodec(limits=SMALL_LIMITS, compression=CompressionConfig(enabled=False))
    sender, sent = _sender(codec)
    for n in range(3):
        sender.send(DATA, {"seq": n})
    with pytest.raises(LocalProtocolError, match="exceeds"):
        sender.send(DATA, b"x" * (1 << 20))
    assert len(sender) == 3  # what send() accepted earlier is still queued
    # Within max_body_size, but not once header and tag are added: refused just the same,
    # rather than taken and then stuck in framing with everything queued behind it.
    with pytest.raises(LocalProtocolError):
        sender.send(DATA, b"x" * ((1 << 20) - 40))
    sender.send(DATA, "after")
    sender.close()
    assert _decoded(WireCodec(limits=SMALL_LIMITS), sent) == [
        {"seq": 0},
        {"seq": 1},
        {"seq": 2},
        "after",
    ]


def test_a_payload_that_fits_alone_but_not_with_the_queue_starts_a_new_batch() -> None:
    codec = WireCodec(limits=SMALL_LIMITS, compression=CompressionConfig(enabled=False))
    sender, sent = _sender(codec, max_bytes=8 << 20)  # the batch would not leave by size
    sender.send(DATA, b"a" * 600_000)
    sender.send(DATA, b"b" * 600_000)  # both together would exceed max_body_size
    sender.close()
    assert [len(frames) for frames in sent] == [1, 1]
    assert [len(p) for p in _decoded(WireCodec(limits=SMALL_LIMITS), sent)] == [600_000] * 2


def test_a_refused_send_leaves_no_deadline_behind() -> None:
    sender, _ = _sender(WireCodec())
    with pytest.raises(LocalProtocolError):
        sender.send(DATA, object())
    assert sender.next_deadline() is None  # a driver loop would otherwise wake at once


def test_a_plain_frame_over_the_limits_is_refused_before_it_is_assembled() -> None:
    codec = WireCodec(limits=SMALL_LIMITS, compression=CompressionConfig(enabled=False))
    with pytest.raises(LocalProtocolError, match="max_frame_size"):
        codec.encode(DATA, b"x" * ((1 << 20) - 40))
    arrays = [np.zeros(8, dtype=np.uint8) for _ in range(codec.limits.max_extra_frames + 1)]
    big_codec = WireCodec(oob_threshold=1)
    with pytest.raises(LocalProtocolError, match="max_extra_frames"):
        big_codec.encode(DATA, arrays)


def test_an_array_larger_than_the_body_limit_still_goes_out_of_band() -> None:
    """Arrays travel in frames of their own (max_extra_frame_size): only the packed items
    count against the body limit."""
    limits = Limits(max_body_size=1 << 20, max_frame_size=1 << 20)
    codec = WireCodec(limits=limits, compression=CompressionConfig(enabled=False))
    sender, sent = _sender(codec, max_bytes=8 << 20)
    array = np.arange(1 << 18, dtype=np.float64)  # 2 MiB, over the 1 MiB body limit
    sender.send(DATA, {"a": array})
    sender.close()
    [got] = _decoded(WireCodec(limits=limits), sent)
    assert isinstance(got, dict) and np.array_equal(got["a"], array)
