"""pytest-benchmark cases for the wire codec's hot functions.

    pytest benchmarks/test_bench_wire.py --benchmark-autosave
    pytest benchmarks/test_bench_wire.py --benchmark-compare

Each case also checks its result, so a broken codec cannot produce a fast, wrong figure.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from zmqcomm.transport.batching import BatchingSender
from zmqcomm.wire import BatchBuilder, CompressionConfig, MessageType, WireCodec

SMALL = {"op": "move", "agent": 17, "x": 0.25, "y": -1.5, "tags": ["scout", "north"]}
TEXT_4K = {"log": "agent 17 moved north to cell 1234; neighbours saw it. " * 75}


@pytest.fixture(scope="module")
def codec() -> WireCodec:
    return WireCodec()


def test_encode_small_envelope(benchmark: Any, codec: WireCodec) -> None:
    frames = benchmark(codec.encode, MessageType.DATA, SMALL, topic="swarm", counter=7)
    assert codec.decode(frames).payload == SMALL


def test_decode_small_envelope(benchmark: Any, codec: WireCodec) -> None:
    frames = codec.encode(MessageType.DATA, SMALL, topic="swarm", counter=7)
    message = benchmark(codec.decode, frames)
    assert message.payload == SMALL


def test_encode_64_bytes(benchmark: Any, codec: WireCodec) -> None:
    blob = os.urandom(64)
    frames = benchmark(codec.encode, MessageType.DATA, blob)
    assert codec.decode(frames).payload == blob


def test_decode_64_bytes(benchmark: Any, codec: WireCodec) -> None:
    blob = os.urandom(64)
    frames = codec.encode(MessageType.DATA, blob)
    assert benchmark(codec.decode, frames).payload == blob


def test_encode_4k_text_compressed(benchmark: Any) -> None:
    codec = WireCodec(compression=CompressionConfig(threshold=1024))
    frames = benchmark(codec.encode, MessageType.DATA, TEXT_4K)
    assert codec.decode(frames).header.is_compressed


def test_encode_4k_text_uncompressed(benchmark: Any) -> None:
    codec = WireCodec(compression=CompressionConfig(enabled=False))
    frames = benchmark(codec.encode, MessageType.DATA, TEXT_4K)
    assert not codec.decode(frames).header.is_compressed


def test_decode_4k_text_compressed(benchmark: Any) -> None:
    codec = WireCodec(compression=CompressionConfig(threshold=1024))
    frames = codec.encode(MessageType.DATA, TEXT_4K)
    assert benchmark(codec.decode, frames).payload == TEXT_4K


def test_batch_of_1024_64_byte_messages(benchmark: Any, codec: WireCodec) -> None:
    blob = os.urandom(64)

    def build_and_frame() -> list[Any]:
        builder = BatchBuilder(codec)
        for _ in range(1024):
            builder.add(blob)
        return codec.assemble(MessageType.DATA, builder.take())

    frames = benchmark(build_and_frame)
    assert len(codec.decode(frames).payloads) == 1024


def test_decode_batch_of_1024_64_byte_messages(benchmark: Any, codec: WireCodec) -> None:
    blob = os.urandom(64)
    frames = codec.encode_batch(MessageType.DATA, [blob] * 1024)
    assert len(benchmark(codec.decode, frames).payloads) == 1024


def test_batching_sender_1024_messages_of_64_bytes(benchmark: Any, codec: WireCodec) -> None:
    blob = os.urandom(64)
    sent: list[Any] = []

    def send_1024() -> int:
        sent.clear()
        sender = BatchingSender(sent.append, codec, max_delay=1.0)
        enqueue, data = sender.send, MessageType.DATA
        for _ in range(1024):
            enqueue(data, blob)
        sender.close()
        return sender.messages_sent

    assert benchmark(send_1024) == 1024
    assert sum(len(codec.decode(frames).payloads) for frames in sent) == 1024
