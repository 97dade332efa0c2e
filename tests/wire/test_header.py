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
from zmqcomm.wire.header import pack_header, parse_header, parse_sealed_frame
from zmqcomm.wire.limits import DEFAULT_LIMITS

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


# -- parse_sealed_frame: the receive path's shortcut ---------------------------------------


def _sealed_frame(
    flags: int = Flags.ENCRYPTED, topic: bytes = b"", body: bytes = b"x" * 20
) -> bytes:
    head = pack_header(
        MessageType.DATA, int(flags), topic, len(body), session=7, epoch=2, counter=9,
        sender=b"s" * 16,
    )  # fmt: skip
    return head + body


def _agrees_with_parse_header(frame: bytes | bytearray, limits: Limits = DEFAULT_LIMITS) -> None:
    """parse_sealed_frame answers only what parse_header would, and never raises."""
    shortcut = parse_sealed_frame(frame, limits)
    if shortcut is None:
        return
    assert shortcut == parse_header(bytes(frame), limits)
    assert shortcut[0].flags & Flags.ENCRYPTED
    assert not shortcut[0].flags & Flags.OUT_OF_BAND


@pytest.mark.parametrize(
    ("flags", "topic"),
    [
        (Flags.ENCRYPTED, b""),
        (Flags.ENCRYPTED | Flags.BATCH, b""),
        (Flags.ENCRYPTED | Flags.COMPRESSED | Flags.BATCH, b"news"),
        (Flags.ENCRYPTED, "gr\u00fc\u00dfe".encode()),
    ],
)
def test_the_shortcut_reads_the_usual_sealed_frame_as_parse_header_does(
    flags: int, topic: bytes
) -> None:
    frame = _sealed_frame(flags, topic)
    assert parse_sealed_frame(frame) == parse_header(frame)
    assert parse_sealed_frame(memoryview(frame)) == parse_header(frame)


@pytest.mark.parametrize(
    "frame",
    [
        _sealed_frame(Flags.NONE),  # not sealed
        _sealed_frame(Flags.ENCRYPTED | Flags.OUT_OF_BAND),  # needs extra frames
        _sealed_frame()[:-1],  # truncated
        _sealed_frame() + b"!",  # trailing data
        _sealed_frame()[:30],  # shorter than the header
        bytes(_raw_header(minor=3, flags=Flags.ENCRYPTED)) + b"\xc0",  # another minor
        bytes(_raw_header(type=0, flags=Flags.ENCRYPTED)) + b"\xc0",
        bytes(_raw_header(flags=Flags.ENCRYPTED | 0x80)) + b"\xc0",
        bytes(_raw_header(flags=Flags.ENCRYPTED, topic_len=2, body_len=0)) + b"\xff\xfe",
        b"XX" + _sealed_frame()[2:],
    ],
)
def test_the_shortcut_leaves_every_other_frame_to_parse_header(frame: bytes) -> None:
    assert parse_sealed_frame(frame) is None


def test_the_shortcut_leaves_a_frame_over_the_limit_to_parse_header() -> None:
    frame = _sealed_frame(body=bytes(1000))
    assert parse_sealed_frame(frame, Limits(max_frame_size=500)) is None
    assert parse_sealed_frame(frame, Limits(max_frame_size=len(frame))) is not None


def test_the_shortcut_agrees_with_parse_header_after_any_byte_changes() -> None:
    frame = _sealed_frame(Flags.ENCRYPTED | Flags.BATCH, b"t")
    for position in range(len(frame)):
        for value in (0x00, 0x01, 0x2C, 0x80, 0xFF, frame[position] ^ 0x04):
            mutated = bytearray(frame)
            mutated[position] = value
            _agrees_with_parse_header(mutated)
    for length in range(len(frame) + 2):
        _agrees_with_parse_header((frame + b"zz")[:length])


@given(
    msg_type=st.integers(1, 255),
    flags=st.integers(0, 15),
    topic=st.text(max_size=20),
    body=st.binary(max_size=60),
)
def test_the_shortcut_takes_exactly_the_sealed_one_frame_messages(
    msg_type: int, flags: int, topic: str, body: bytes
) -> None:
    frame = pack_header(msg_type, flags, topic.encode(), len(body), sender=b"s" * 16) + body
    sealed_in_one_frame = bool(flags & Flags.ENCRYPTED) and not flags & Flags.OUT_OF_BAND
    expected = parse_header(frame) if sealed_in_one_frame else None
    assert parse_sealed_frame(frame) == expected


@given(st.binary(min_size=40, max_size=120))
def test_the_shortcut_never_raises_and_never_disagrees(frame: bytes) -> None:
    _agrees_with_parse_header(MAGIC + b"\x01\x00" + frame)
