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
