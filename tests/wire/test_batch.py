from __future__ import annotations

import numpy as np
import pytest

from zmqcomm.errors import LocalProtocolError, UsageError
from zmqcomm.wire import BatchBuilder, Limits, MessageType, WireCodec


def test_builder_fills_by_count_and_round_trips() -> None:
    codec = WireCodec()
    builder = BatchBuilder(codec, max_items=3)
    assert [builder.add(item) for item in ("a", {"b": 2}, [3])] == [False, False, True]
    frames = codec.assemble(MessageType.DATA, builder.take(), topic="t")
    message = codec.decode(frames)
    assert message.header.is_batch
    assert message.payloads == ["a", {"b": 2}, [3]]
    assert len(builder) == 0
    assert builder.size == 0


def test_builder_fills_by_bytes_and_a_big_item_forms_its_own_batch() -> None:
    builder = BatchBuilder(WireCodec(), max_bytes=100)
    assert builder.add(b"x" * 40) is False
    assert builder.add(b"x" * 70) is True
    builder.take()
    assert builder.add(b"y" * 500) is True
    assert WireCodec().decode(WireCodec().assemble(MessageType.DATA, builder.take())).payloads == [
        b"y" * 500
    ]


def test_batch_carries_out_of_band_tensors_of_several_items() -> None:
    codec = WireCodec(oob_threshold=64)
    builder = BatchBuilder(codec)
    arrays = [np.full(32, i, dtype=np.int32) for i in range(3)]
    for array in arrays:
        builder.add({"t": array})
    frames = codec.assemble(MessageType.DATA, builder.take())
    assert len(frames) == 4
    got = codec.decode([bytes(f) for f in frames]).payloads
    assert all(np.array_equal(g["t"], a) for g, a in zip(got, arrays, strict=True))


def test_empty_take_and_bad_settings() -> None:
    codec = WireCodec()
    with pytest.raises(LocalProtocolError, match="empty"):
        BatchBuilder(codec).take()
    with pytest.raises(UsageError):
        BatchBuilder(codec, max_items=0)
    with pytest.raises(UsageError, match="decoder limit"):
        BatchBuilder(WireCodec(limits=Limits(max_batch_items=10)), max_items=11)


def test_a_batch_of_one_leaves_as_a_plain_message_with_its_arrays() -> None:
    codec = WireCodec(oob_threshold=64)
    builder = BatchBuilder(codec)
    array = np.arange(64, dtype=np.int64)
    builder.add({"t": array, "n": 1})
    body = builder.take()
    frames = codec.assemble(MessageType.DATA, body)
    assert len(frames) == 2
    message = codec.decode([bytes(f) for f in frames])
    assert not message.header.is_batch
    assert np.array_equal(message.payload["t"], array) and message.payload["n"] == 1
    # The body is the packed payload itself: nothing joined around it.
    assert body.data == codec.build_body({"t": array, "n": 1}).data
    # Two or more still make a batch, and the array went with the first message: not kept.
    builder.add("a")
    builder.add("b")
    frames = codec.assemble(MessageType.DATA, builder.take())
    assert len(frames) == 1
    message = codec.decode(frames)
    assert message.header.is_batch and message.payloads == ["a", "b"]
