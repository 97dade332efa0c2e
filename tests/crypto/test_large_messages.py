"""Large bodies and out-of-band arrays are encrypted in place and opened from the received
buffer; small ones keep the copying path, which is faster for them."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from zmqcomm.crypto import aead
from zmqcomm.crypto.envelope import SecureCodec
from zmqcomm.crypto.session import IN_PLACE_MIN, Session
from zmqcomm.errors import AuthenticationError
from zmqcomm.wire import CompressionConfig, MessageType, WireCodec

MiB = 1 << 20
KEYS = (bytes(range(32)), bytes(range(32, 64)))


def _pair(
    compression: bool = True, oob_threshold: int = IN_PLACE_MIN
) -> tuple[SecureCodec, SecureCodec]:
    def codec() -> WireCodec:
        return WireCodec(
            compression=CompressionConfig(enabled=compression), oob_threshold=oob_threshold
        )

    a = Session(session_id=3, send_key=KEYS[0], receive_key=KEYS[1], now=0)
    b = Session(session_id=3, send_key=KEYS[1], receive_key=KEYS[0], now=0)
    return SecureCodec(a, codec()), SecureCodec(b, codec())


def _record(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[Any, ...]]:
    """Patch ``aead.<name>`` to record its arguments."""
    calls: list[tuple[Any, ...]] = []
    real = getattr(aead, name)

    def recording(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(aead, name, recording)
    return calls


@pytest.mark.parametrize("compression", [True, False])
@pytest.mark.parametrize("kind", ["random", "compressible"])
def test_a_1_mib_message_round_trips(compression: bool, kind: str) -> None:
    a, b = _pair(compression)
    data = os.urandom(MiB) if kind == "random" else b"agent 7 is at cell 12; " * (MiB // 23)
    payload = {"data": data, "n": 1}
    for _ in range(3):  # the counter moves on and every message still opens
        frames = a.encode(MessageType.DATA, payload, topic="big", now=0)
        assert len(frames) == 1
        if kind == "random" or not compression:
            assert len(frames[0]) > MiB and data[1000:1100] not in frames[0]
        message = b.decode(frames, now=0)
        assert message.payload == payload and message.header.topic == "big"


def test_in_place_only_from_the_threshold_and_the_frames_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = _pair(compression=False)
    copying = _record(monkeypatch, "encrypt")
    in_place = _record(monkeypatch, "encrypt_into")
    # A bin of 256 to 65535 bytes packs with a 3-byte header: bodies of 64 KiB - 1 and 64 KiB.
    for body_len, expected in [(IN_PLACE_MIN - 1, "copy"), (IN_PLACE_MIN, "in")]:
        copying.clear()
        in_place.clear()
        payload = os.urandom(body_len - 3)
        (frame,) = a.encode(MessageType.DATA, payload, now=0)
        assert a.codec.parse([frame]).header.body_len == body_len + aead.TAG_SIZE
        assert (len(copying), len(in_place)) == ((1, 0) if expected == "copy" else (0, 1))
        assert type(frame) is (bytes if expected == "copy" else bytearray)
        assert b.decode([frame], now=0).payload == payload


def test_a_large_out_of_band_array_is_sealed_from_the_callers_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = _pair(compression=True, oob_threshold=1024)
    in_place = _record(monkeypatch, "encrypt_into")
    big = np.arange(IN_PLACE_MIN // 4, dtype=np.float32).reshape(128, -1)  # exactly 64 KiB
    small = np.arange(512, dtype=np.int32)  # 2 KiB: out of band, sealed by copy
    payload = {"big": big, "small": small, "text": "x" * 5000}
    frames = a.encode(MessageType.DATA, payload, now=0)
    assert len(frames) == 3
    (plaintext_arg,) = [args[3] for args in in_place]
    # No bytes(array) first: libsodium read the caller's own memory.
    assert np.shares_memory(np.frombuffer(plaintext_arg, dtype=np.float32), big)
    assert big.tobytes()[:256] not in frames[1] and small.tobytes()[:256] not in frames[2]
    got = b.decode(frames, now=0).payload
    assert np.array_equal(got["big"], big) and np.array_equal(got["small"], small)
    assert got["text"] == payload["text"]
    # A decrypted frame is a bytearray: the array over it is read-only all the same.
    assert not got["big"].flags.writeable and not got["small"].flags.writeable
    with pytest.raises(ValueError):
        got["big"].flags.writeable = True


def test_large_frames_open_where_they_were_received(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _pair(compression=False)
    payload = {"a": np.ones(MiB // 8), "pad": b"p" * MiB}
    frames = [bytes(f) for f in a.encode(MessageType.DATA, payload, now=0)]
    small = a.encode(MessageType.DATA, b"x" * 64, now=0)
    in_place = _record(monkeypatch, "decrypt_buffer")
    copying = _record(monkeypatch, "decrypt")
    got = b.decode(frames, now=0).payload
    assert np.array_equal(got["a"], payload["a"]) and got["pad"] == payload["pad"]
    # The ciphertext went to libsodium as views of the received frames, not copies.
    sources = [args[3] for args in in_place]
    assert [type(s) for s in sources] == [memoryview, bytes]
    assert sources[0].obj is frames[0] and sources[1] is frames[1]
    assert not copying
    # A small one takes the copying path, faster for it.
    in_place.clear()
    assert b.decode(small, now=0).payload == b"x" * 64
    assert len(copying) == 1 and not in_place


def test_a_tampered_large_frame_is_refused_and_spends_no_counter() -> None:
    a, b = _pair(compression=False)
    array = np.arange(MiB // 8, dtype=np.float64)
    frames = a.encode(MessageType.DATA, {"a": array, "pad": b"p" * MiB}, now=0)
    for index in range(len(frames)):
        tampered = [bytes(f) for f in frames]
        spot = len(tampered[index]) // 2
        tampered[index] = (
            tampered[index][:spot]
            + bytes([tampered[index][spot] ^ 1])
            + (tampered[index][spot + 1 :])
        )
        with pytest.raises(AuthenticationError):
            b.decode(tampered, now=0)
    got = b.decode(frames, now=0).payload
    assert np.array_equal(got["a"], array) and got["pad"] == b"p" * MiB


def test_the_public_binding_seals_the_same_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = {"a": np.arange(MiB // 4, dtype=np.int32), "b": os.urandom(MiB)}
    direct = _pair()[0].encode(MessageType.DATA, payload, now=0)
    monkeypatch.setattr(aead, "encrypt_into", aead._public_encrypt_into)
    monkeypatch.setattr(aead, "decrypt_buffer", aead._public_decrypt_buffer)
    a, b = _pair()
    public = a.encode(MessageType.DATA, payload, now=0)
    assert public == direct
    got = b.decode(public, now=0).payload
    assert np.array_equal(got["a"], payload["a"]) and got["b"] == payload["b"]
