"""Payload encoding: every msgpack type round-trips; tensors travel as dtype + shape + bytes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqcomm.errors import LocalProtocolError, RemoteProtocolError
from zmqcomm.wire import Limits, MessageType, WireCodec
from zmqcomm.wire.payload import OOB_THRESHOLD, PayloadUnpacker

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=50)
)
keys = st.text(max_size=10) | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=10)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=30,
)


@given(payload=values, topic=st.text(max_size=20))
@settings(max_examples=300)
def test_any_msgpack_value_round_trips(payload: Any, topic: str) -> None:
    codec = WireCodec()
    message = codec.decode(codec.encode(MessageType.DATA, payload, topic=topic))
    assert message.payload == payload
    assert message.header.topic == topic


def test_nan_and_infinities_round_trip() -> None:
    codec = WireCodec()
    out = codec.decode(codec.encode(MessageType.DATA, [float("nan"), float("inf"), -0.0])).payload
    assert out[0] != out[0]
    assert out[1] == float("inf")
    assert str(out[2]) == "-0.0"


def test_bytes_like_payloads_come_back_as_bytes() -> None:
    codec = WireCodec()
    data = bytes(range(256))
    for value in (data, bytearray(data), memoryview(data)):
        assert codec.decode(codec.encode(MessageType.DATA, value)).payload == data


def test_tuples_arrive_as_lists_and_unsupported_types_are_local_errors() -> None:
    codec = WireCodec()
    assert codec.decode(codec.encode(MessageType.DATA, (1, 2))).payload == [1, 2]
    with pytest.raises((LocalProtocolError, TypeError)):
        codec.encode(MessageType.DATA, {1, 2})
    with pytest.raises((LocalProtocolError, TypeError)):
        codec.encode(MessageType.DATA, object())


@pytest.mark.parametrize(
    "dtype", ["bool", "int8", "uint16", "<i4", ">i4", "int64", "float16", "<f4", ">f8", "complex64"]
)
def test_small_arrays_travel_inline(dtype: str) -> None:
    codec = WireCodec()
    array = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    frames = codec.encode(MessageType.DATA, {"t": array})
    assert len(frames) == 1
    out = codec.decode(frames).payload["t"]
    assert isinstance(out, np.ndarray)
    assert out.dtype == array.dtype
    assert out.shape == (2, 3, 4)
    assert np.array_equal(out, array)


def test_large_arrays_travel_as_their_own_frame_without_a_copy() -> None:
    codec = WireCodec()
    array = np.arange(OOB_THRESHOLD // 4 * 2, dtype=np.float32).reshape(2, -1)
    frames = codec.encode(MessageType.DATA, [array, "label", array[0]])
    assert len(frames) == 3  # the header frame and one frame per large array
    assert isinstance(frames[1], memoryview)
    assert frames[1].obj is not None and np.shares_memory(np.asarray(frames[1]), array)
    got = codec.decode([bytes(frames[0]), bytes(frames[1]), bytes(frames[2])]).payload
    assert np.array_equal(got[0], array)
    assert got[1] == "label"
    assert np.array_equal(got[2], array[0])


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],  # not contiguous
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.array(3.5),  # zero-dimensional
        np.zeros((0, 5), dtype=np.uint8),  # empty
    ],
)
def test_awkward_arrays(array: Any) -> None:
    codec = WireCodec()
    out = codec.decode(codec.encode(MessageType.DATA, array)).payload
    assert out.shape == array.shape
    assert out.dtype == array.dtype
    assert np.array_equal(out, array)


def test_numpy_scalars_become_plain_values() -> None:
    codec = WireCodec()
    assert codec.decode(codec.encode(MessageType.DATA, np.int64(7))).payload == 7
    assert codec.decode(codec.encode(MessageType.DATA, np.float32(0.5))).payload == 0.5


def test_object_arrays_are_refused_never_pickled() -> None:
    codec = WireCodec()
    with pytest.raises(LocalProtocolError, match="pickle"):
        codec.encode(MessageType.DATA, np.array([{"a": 1}], dtype=object))
    with pytest.raises(LocalProtocolError):
        codec.encode(MessageType.DATA, np.array(["text"]))  # unicode dtype: not numeric


def test_a_peer_array_that_lies_about_its_size_is_refused() -> None:
    codec = WireCodec()
    frames = codec.encode(MessageType.DATA, np.arange(10, dtype=np.int64))
    # Patch the shape [10] to [11] inside the msgpack ext: 8 bytes of data are now missing.
    first = bytes(frames[0])
    assert first.count(b"\x91\x0a") == 1
    forged = first.replace(b"\x91\x0a", b"\x91\x0b")
    with pytest.raises(RemoteProtocolError) as caught:
        codec.decode([forged])
    assert caught.value.reason == "bad_array"


def test_limits_apply_to_peer_payloads() -> None:
    sender = WireCodec()
    strict = WireCodec(limits=Limits(max_str_len=10, max_array_len=3, max_depth=3))
    for payload in ("x" * 11, [1, 2, 3, 4], [[[[1]]]]):
        with pytest.raises(RemoteProtocolError):
            strict.decode(sender.encode(MessageType.DATA, payload))
    assert strict.decode(sender.encode(MessageType.DATA, [[["ok"]]])).payload == [[["ok"]]]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xc4\x05abc", "bad_msgpack"),  # bin8 announcing more bytes than it has
        (b"\xc6\xff\xff\xff\xffab", "bad_msgpack"),  # bin32 announcing 4 GiB
        (b"\xa3abcXYZ", "bad_msgpack"),  # a str followed by bytes that are not part of it
        (b"\x2a\x2a", "bad_msgpack"),  # two values where one is expected
        (b"\xc1", "bad_msgpack"),  # the one byte msgpack never uses
        (b"\xa2\xff\xfe", "bad_msgpack"),  # a str that is not UTF-8
    ],
)
def test_malformed_scalar_bodies_are_refused(body: bytes, reason: str) -> None:
    # Scalars take a shorter decoding path than containers; it must refuse the same input.
    with pytest.raises(RemoteProtocolError) as caught:
        PayloadUnpacker().unpack(body)
    assert caught.value.reason == reason


def test_scalar_bodies_obey_the_length_limits() -> None:
    strict = PayloadUnpacker(Limits(max_str_len=10, max_bin_len=10))
    for too_long in ("x" * 11, b"x" * 11):
        with pytest.raises(RemoteProtocolError):
            strict.unpack(WireCodec().build_body(too_long).data)
    assert strict.unpack(WireCodec().build_body(b"x" * 10).data) == b"x" * 10
