"""The gossip frame codec: round trips, limits, and garbage that only ever raises
RemoteProtocolError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqcomm.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError
from zmqcomm.patterns.gossip import Adopt, Graft, IHave, IWant, Message, Prune, Publish
from zmqcomm.patterns.gossip.codec import (
    CodecLimits,
    build_frame,
    decode_frame,
    encode_frame,
    encode_item,
)

ID = bytes(range(16))
SIG = b"s" * 64


def test_round_trip_of_every_kind_in_one_frame() -> None:
    messages = [
        Publish(Message("origin", 2**64 - 1, b"payload", 3, SIG)),
        Publish(Message("o", 0, b"", 0, None)),
        IHave((ID, ID[::-1])),
        IWant(()),
        Graft(),
    ]
    assert decode_frame(encode_frame(messages)) == messages


def test_prune_and_adopt_are_bare_tags_4_and_5() -> None:
    assert encode_item(Prune()) == msgpack.packb([4])
    assert encode_item(Adopt()) == msgpack.packb([5])
    messages = [Adopt(), Graft(), Prune(), IWant((ID,)), Adopt()]
    assert decode_frame(encode_frame(messages)) == messages


@pytest.mark.parametrize("item", [[4, 1], [5, None], [4, []], [5, 5], [6], [True], [4.0], [5.0]])
def test_prune_and_adopt_with_anything_more_are_refused(item: list[object]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_frame(frame([3], item))  # one bad item rejects the whole frame
    assert info.value.reason == "bad_item"


def test_frames_are_built_from_items_encoded_once() -> None:
    a, b = encode_item(Graft()), encode_item(IWant((ID,)))
    assert decode_frame(build_frame([a, b, a])) == [Graft(), IWant((ID,)), Graft()]
    with pytest.raises(LocalProtocolError):
        build_frame([])


def test_local_limits_refuse_to_encode() -> None:
    limits = CodecLimits(max_payload_bytes=4, max_ids=1)
    with pytest.raises(LocalProtocolError, match="max_payload_bytes"):
        encode_item(Publish(Message("o", 0, b"12345")), limits)
    with pytest.raises(LocalProtocolError):
        encode_item(IHave((ID, ID)), limits)
    with pytest.raises(LocalProtocolError):
        encode_item(Publish(Message(b"bytes-origin", 0, b"")))
    with pytest.raises(LocalProtocolError):
        encode_item("nope")  # type: ignore[arg-type]


def frame(*items: object, version: object = 1) -> bytes:
    return msgpack.packb([version, *items], use_bin_type=True)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "undecodable"),
        (b"\xc1", "undecodable"),
        (msgpack.packb({"a": 1}), "undecodable"),  # maps are not allowed at all
        (frame([3]) + b"\x00", "undecodable"),  # trailing bytes
        (msgpack.packb([1]), "not_a_frame"),
        (frame([3], version=2), "unsupported_version"),
        (frame([3], version=True), "unsupported_version"),
        (frame([0.0, "o", 0, b"", 0, None]), "bad_item"),
        (frame([9]), "bad_item"),
        (frame([3, 1]), "bad_item"),
        (frame([]), "bad_item"),
        (frame([0, "", 0, b"", 0, None]), "bad_origin"),
        (frame([0, "o", -1, b"", 0, None]), "bad_number"),
        (frame([0, "o", 0, b"", True, None]), "bad_number"),
        (frame([0, "o", 0, "text", 0, None]), "bad_payload"),
        (frame([0, "o", 0, b"", 0, b"short"]), "bad_signature_field"),
        (frame([1, [b"short"]]), "bad_ids"),
        (frame([2, b"not a list"]), "bad_ids"),
    ],
)
def test_garbage_gives_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_frame(data)
    assert info.value.reason == reason


def test_limits_are_enforced_before_and_during_parsing() -> None:
    limits = CodecLimits(max_frame_bytes=300, max_payload_bytes=100, max_items=2, max_ids=2)
    with pytest.raises(LimitExceededError):
        decode_frame(b"\x00" * 301, limits)
    with pytest.raises(LimitExceededError):
        decode_frame(frame([3], [3], [3]), limits)
    with pytest.raises(RemoteProtocolError, match=r"ValueError"):
        decode_frame(frame([0, "o", 0, b"x" * 101, 0, None]), limits)
    with pytest.raises(RemoteProtocolError):
        decode_frame(frame([1, [ID, ID, ID]]), limits)
    with pytest.raises(RemoteProtocolError):
        decode_frame(frame([0, "o" * 65, 0, b"", 0, None]))
    deep = b"\x91" * 2000 + b"\x00"
    with pytest.raises(RemoteProtocolError):
        decode_frame(frame() + deep)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    try:
        decoded = decode_frame(data)
    except RemoteProtocolError as exc:
        assert exc.reason
        return
    assert all(isinstance(m, (Publish, IHave, IWant, Graft, Prune, Adopt)) for m in decoded)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(json_like, max_size=5), st.sampled_from([0, 1, 2, 3, 4, 5]))
def test_well_formed_msgpack_with_wrong_shapes_only_raises_protocol_errors(
    items: list[object], kind: int
) -> None:
    data = frame([kind, *items], *items)
    try:
        decoded = decode_frame(data)
    except RemoteProtocolError:
        return
    assert all(isinstance(m, (Publish, IHave, IWant, Graft, Prune, Adopt)) for m in decoded)
