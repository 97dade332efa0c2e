"""Compression is used only when it pays, is configurable, and supports a trained dictionary."""

from __future__ import annotations

import os

import msgpack
import pytest
import zstandard

from zmqcomm.errors import RemoteProtocolError, UsageError
from zmqcomm.wire import CompressionConfig, MessageType, WireCodec

TEXT = {"log": "agent 17 moved north to cell 1234; neighbours saw it. " * 100}


def test_compressible_body_over_the_threshold_is_compressed() -> None:
    codec = WireCodec()
    frames = codec.encode(MessageType.DATA, TEXT)
    assert codec.parse(frames).header.is_compressed
    assert len(frames[0]) < len(TEXT["log"]) // 5
    assert codec.decode(frames).payload == TEXT


def test_small_bodies_and_incompressible_bodies_are_sent_as_they_are() -> None:
    codec = WireCodec()
    small = codec.encode(MessageType.DATA, "a" * 100)
    assert not codec.parse(small).header.is_compressed
    noise = os.urandom(64 * 1024)
    frames = codec.encode(MessageType.DATA, noise)
    assert not codec.parse(frames).header.is_compressed
    assert codec.decode(frames).payload == noise


def test_threshold_level_and_switch_are_configurable() -> None:
    payload = "x" * 600
    assert not WireCodec().parse(WireCodec().encode(MessageType.DATA, payload)).header.is_compressed
    low = WireCodec(compression=CompressionConfig(threshold=500))
    assert low.parse(low.encode(MessageType.DATA, payload)).header.is_compressed
    off = WireCodec(compression=CompressionConfig(enabled=False))
    assert not off.parse(off.encode(MessageType.DATA, TEXT)).header.is_compressed
    fast = WireCodec(compression=CompressionConfig(level=1))
    best = WireCodec(compression=CompressionConfig(level=19))
    sample = {"rows": [f"row {i} value {i * 7 % 13}" for i in range(2000)]}
    assert len(best.encode(MessageType.DATA, sample)[0]) < len(
        fast.encode(MessageType.DATA, sample)[0]
    )
    # The reader needs no settings: any level decodes.
    assert WireCodec().decode(best.encode(MessageType.DATA, sample)).payload == sample


@pytest.mark.parametrize(("level", "threshold"), [(23, 1024), (-8, 1024), (3, 0)])
def test_bad_settings_are_usage_errors(level: int, threshold: int) -> None:
    with pytest.raises(UsageError):
        CompressionConfig(level=level, threshold=threshold)


def test_trained_dictionary_round_trip_and_mismatch() -> None:
    samples = [
        f'{{"agent": {i}, "status": "ok", "at": [{i % 17}, {i % 23}], "team": "blue"}}'.encode()
        for i in range(2000)
    ]
    dictionary = zstandard.train_dictionary(4096, samples).as_bytes()
    config = CompressionConfig(threshold=64, dictionary=dictionary)
    with_dict = WireCodec(compression=config)
    payload = {"agent": 5, "status": "ok", "position": [5, 5], "team": "blue", "pad": "ok" * 40}
    frames = with_dict.encode(MessageType.DATA, payload)
    assert with_dict.parse(frames).header.is_compressed
    assert with_dict.decode(frames).payload == payload
    # A reader without the dictionary gets a protocol error, never a zstd exception.
    with pytest.raises(RemoteProtocolError) as caught:
        WireCodec().decode(frames)
    assert caught.value.reason == "bad_compression"


def test_corrupt_and_trailing_compressed_bodies_are_refused() -> None:
    codec = WireCodec()
    frames = codec.encode(MessageType.DATA, TEXT)
    parsed = codec.parse(frames)
    body = bytes(parsed.body)
    cases = {
        "not zstd": b"\x00" * len(body),
        "truncated": body[:-3],
        "trailing": body + zstandard.ZstdCompressor().compress(b"more"),
    }
    for name, bad in cases.items():
        frame = codec.assemble(MessageType.DATA, bad, flags=parsed.header.flags)
        with pytest.raises(RemoteProtocolError) as caught:
            codec.decode(frame)
        assert caught.value.reason == "bad_compression", name


def test_a_frame_without_a_declared_size_must_fill_the_body_alone() -> None:
    # The bounded streaming read stops at the end of the first frame: more frames, or a
    # skippable frame, behind one that does not declare its size went through unread.
    codec = WireCodec()
    parsed = codec.parse(codec.encode(MessageType.DATA, TEXT))
    streamed = zstandard.ZstdCompressor(write_content_size=False)
    first = streamed.compress(bytes(zstandard.ZstdDecompressor().decompress(parsed.body)))
    skippable = (0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"junk"
    alone = codec.assemble(MessageType.DATA, first, flags=parsed.header.flags)
    assert codec.decode(alone).payload == TEXT
    for name, extra in {
        "declared": zstandard.ZstdCompressor().compress(b"more"),
        "streamed": streamed.compress(b"more"),
        "skippable": skippable,
    }.items():
        frame = codec.assemble(MessageType.DATA, first + extra, flags=parsed.header.flags)
        with pytest.raises(RemoteProtocolError) as caught:
            codec.decode(frame)
        assert caught.value.reason == "bad_compression", name


def _declared_frame(payload: bytes) -> tuple[bytes, int]:
    """A zstd frame of the packed payload and where its 4-byte declared size sits."""
    frame = zstandard.ZstdCompressor().compress(msgpack.packb(payload))
    descriptor = frame[4]
    assert descriptor >> 6 == 2 and descriptor & 3 == 0  # 4-byte size, no dictionary id
    return frame, 5 if descriptor & 0x20 else 6  # a window byte unless single-segment


def test_a_frame_that_declares_its_size_must_fill_the_body_alone_and_match_it() -> None:
    # Such frames are decoded in one call into one buffer of the declared size: zstd itself
    # must refuse anything else in the body and a size that does not match the content.
    codec = WireCodec()
    flags = codec.parse(codec.encode(MessageType.DATA, TEXT)).header.flags
    payload = os.urandom(1 << 19) + bytes(1 << 19)
    frame, at = _declared_frame(payload)
    size = int.from_bytes(frame[at : at + 4], "little")
    assert size == zstandard.frame_content_size(frame) == len(payload) + 5
    assert codec.decode(codec.assemble(MessageType.DATA, frame, flags=flags)).payload == payload
    skippable = (0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"junk"
    cases = {
        "declared": frame + zstandard.ZstdCompressor().compress(b"more"),
        "streamed": frame + zstandard.ZstdCompressor(write_content_size=False).compress(b"m"),
        "skippable": frame + skippable,
        "one byte": frame + b"\x00",
        "truncated": frame[: len(frame) // 2],
        "declares less": frame[:at] + (size - 1).to_bytes(4, "little") + frame[at + 4 :],
        "declares more": frame[:at] + (size + 1).to_bytes(4, "little") + frame[at + 4 :],
    }
    for name, bad in cases.items():
        with pytest.raises(RemoteProtocolError) as caught:
            codec.decode(codec.assemble(MessageType.DATA, bad, flags=flags))
        assert caught.value.reason == "bad_compression", name


def test_a_frame_that_declares_nothing_to_decode_must_still_fill_the_body_alone() -> None:
    # python-zstandard's one-shot decoder returns b"" for a declared size of 0 without
    # reading on: such frames take the checked path.
    codec = WireCodec()
    flags = codec.parse(codec.encode(MessageType.DATA, TEXT)).header.flags
    empty = zstandard.ZstdCompressor().compress(b"")
    assert zstandard.frame_content_size(empty) == 0
    for name, bad in {
        "frame": empty + zstandard.ZstdCompressor().compress(b"\xc0"),
        "bytes": empty + b"\xc0",
        "header only": empty[:6],
    }.items():
        with pytest.raises(RemoteProtocolError) as caught:
            codec.decode(codec.assemble(MessageType.DATA, bad, flags=flags))
        assert caught.value.reason == "bad_compression", name
