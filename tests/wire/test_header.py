"""The fixed header: every field round-trips, versions are negotiated, bad headers are typed."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqcomm.errors import (
    LimitExceededError,
    LocalProtocolError,
    RemoteProtocolError,
    UnsupportedVersionError,
)
from zmqcomm.wire import HEADER_LEN, MAGIC, Flags, Limits, MessageType, WireCodec
from zmqcomm.wire.header import pack_header, parse_header

U32 = st.integers(0, 2**32 - 1)


@given(
    msg_type=st.integers(1, 255),
    flags=st.sampled_from([0, Flags.COMPRESSED, Flags.BATCH, Flags.ENCRYPTED, 0b1111]),
    topic=st.text(max_size=60),
    session=U32,
    epoch=U32,
    counter=st.integers(0, 2**64 - 1),
    sender=st.binary(min_size=16, max_size=16),
    body=st.binary(max_size=100),
)
def test_every_field_round_trips(
    msg_type: int,
    flags: int,
    topic: str,
    session: int,
    epoch: int,
    counter: int,
    sender: bytes,
    body: bytes,
) -> None:
    encoded_topic = topic.encode()
    head = pack_header(
        msg_type,
        int(flags),
        encoded_topic,
        len(body),
        session=session,
        epoch=epoch,
        counter=counter,
        sender=sender,
    )
    header, body_start = parse_header(head + body)
    assert header.type == msg_type
    assert header.flags == flags
    assert header.topic == topic
    assert (header.session, header.epoch, header.counter) == (session, epoch, counter)
    assert header.sender == sender
    assert header.body_len == len(body)
    assert body_start == HEADER_LEN + len(encoded_topic)


def _raw_header(**overrides: int | bytes) -> bytearray:
    fields: dict[str, int | bytes] = {
        "magic": MAGIC, "major": 1, "minor": 0, "header_len": HEADER_LEN, "type": 1,
        "flags": 0, "topic_len": 0, "session": 0, "epoch": 0, "counter": 0,
        "sender": bytes(16), "body_len": 1,
    }  # fmt: skip
    fields.update(overrides)
    return bytearray(struct.pack(">2sBBBBBBIIQ16sI", *fields.values()))


def test_unknown_major_version_names_both_versions() -> None:
    frame = bytes(_raw_header(major=2, minor=7)) + b"\xc0"
    with pytest.raises(UnsupportedVersionError) as caught:
        parse_header(frame)
    assert "2.7" in str(caught.value)
    assert "1.0" in str(caught.value)
    assert caught.value.theirs == (2, 7)
    assert caught.value.ours == (1, 0)
    # Even a frame too short for the whole header says which version it was.
    with pytest.raises(UnsupportedVersionError):
        parse_header(frame[:6])


def test_a_newer_minor_version_with_a_longer_header_stays_readable() -> None:
    extension = b"\x00\x01\x02\x03future"
    head = _raw_header(minor=3, header_len=HEADER_LEN + len(extension), topic_len=2, body_len=1)
    frame = bytes(head) + extension + b"hi" + b"\xc0"
    header, body_start = parse_header(frame)
    assert header.minor == 3
    assert header.topic == "hi"
    assert frame[body_start:] == b"\xc0"
    assert WireCodec().decode([frame]).payload is None


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "truncated"),
        (b"Z", "truncated"),
        (b"XX" + bytes(60), "bad_magic"),
        (bytes(_raw_header())[:43], "truncated"),
        (bytes(_raw_header()), "truncated"),  # announces a 1-byte body that is missing
        (bytes(_raw_header()) + b"\xc0\xc0", "trailing_data"),
        (bytes(_raw_header(type=0)) + b"\xc0", "bad_type"),
        (bytes(_raw_header(flags=0x80)) + b"\xc0", "unknown_flags"),
        (bytes(_raw_header(header_len=10)) + b"\xc0", "bad_header"),
        (bytes(_raw_header(topic_len=2, body_len=0)) + b"\xff\xfe", "bad_topic"),
    ],
)
def test_bad_headers_raise_typed_errors(frame: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_header(frame)
    assert caught.value.reason == reason


def test_frame_over_the_limit_is_refused_before_parsing() -> None:
    frame = bytes(_raw_header(body_len=1000)) + bytes(1000)
    with pytest.raises(LimitExceededError) as caught:
        parse_header(frame, Limits(max_frame_size=500))
    assert caught.value.reason == "frame_too_large"


def test_local_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="topic"):
        pack_header(1, 0, b"t" * 256, 0)
    with pytest.raises(LocalProtocolError):
        pack_header(1, 0, b"", 0, sender=b"short")
    with pytest.raises(LocalProtocolError):
        WireCodec().encode(MessageType.DATA, 1, counter=2**64)
