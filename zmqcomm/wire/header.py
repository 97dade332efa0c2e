"""The fixed binary header of wire format v1, parseable without msgpack.

Layout (all integers big-endian), 44 bytes in v1.0::

    offset size field
     0      2   magic        b"ZC"
     2      1   major        1
     3      1   minor        0
     4      1   header_len   bytes from offset 0 to the topic (44 in v1.0; later minors may grow it)
     5      1   type         MessageType, 1..255
     6      1   flags        Flags bits; unknown bits are an error
     7      1   topic_len    0..255
     8      4   session      session id chosen by the security layer (0 = none)
    12      4   epoch        key epoch within the session (0 = none)
    16      8   counter      per-direction message counter (the AEAD nonce when encrypted)
    24     16   sender       agent id of the sender (16 zero bytes = anonymous)
    40      4   body_len     length of the body that follows the topic
    44          (fields of later minor versions, skipped by v1.0 readers)
  header_len    topic        UTF-8, topic_len bytes
       + topic  body         body_len bytes; nothing may follow

The header bytes (including the topic) are the associated data of the AEAD when the body is
encrypted, so every field here is authenticated.
"""

from __future__ import annotations

import functools
import struct
from typing import NamedTuple, NoReturn

from zmqcomm.errors import (
    LimitExceededError,
    LocalProtocolError,
    RemoteProtocolError,
    UnsupportedVersionError,
)
from zmqcomm.wire.limits import DEFAULT_LIMITS, Limits
from zmqcomm.wire.message_types import KNOWN_FLAGS, Flags

MAGIC = b"ZC"
VERSION_MAJOR = 1
VERSION_MINOR = 0
SENDER_LEN = 16
ANONYMOUS = bytes(SENDER_LEN)
MAX_TOPIC_LEN = 255

_STRUCT = struct.Struct(">2sBBBBBBIIQ16sI")
HEADER_LEN = _STRUCT.size  # 44
_U32 = 0xFFFF_FFFF
# Plain ints: IntFlag arithmetic builds enum members, too slow for a per-frame check.
_BATCH = int(Flags.BATCH)
_COMPRESSED = int(Flags.COMPRESSED)
_ENCRYPTED = int(Flags.ENCRYPTED)
_OUT_OF_BAND = int(Flags.OUT_OF_BAND)
_U64 = 0xFFFF_FFFF_FFFF_FFFF


class Header(NamedTuple):
    """The decoded fixed header plus the topic (which the header's length field covers).

    A NamedTuple rather than a dataclass: one is built per received frame, and this is the
    cheapest immutable record Python has.
    """

    type: int
    flags: int = 0
    topic: str = ""
    session: int = 0
    epoch: int = 0
    counter: int = 0
    sender: bytes = ANONYMOUS
    body_len: int = 0
    minor: int = VERSION_MINOR

    @property
    def is_batch(self) -> bool:
        return bool(self.flags & _BATCH)

    @property
    def is_compressed(self) -> bool:
        return bool(self.flags & _COMPRESSED)

    @property
    def is_encrypted(self) -> bool:
        return bool(self.flags & _ENCRYPTED)

    @property
    def has_out_of_band(self) -> bool:
        return bool(self.flags & _OUT_OF_BAND)


#: The fixed header from its variable fields (type, flags, topic length, session, epoch,
#: counter, sender, body length): a partial, so no Python frame more per message.
_pack_fields = functools.partial(_STRUCT.pack, MAGIC, VERSION_MAJOR, VERSION_MINOR, HEADER_LEN)


def pack_bare_header(
    msg_type: int,
    flags: int,
    body_len: int,
    *,
    session: int,
    epoch: int,
    counter: int,
    sender: bytes,
) -> bytes:
    """:func:`pack_header` with no topic, for a caller that already holds every field in range
    but the type (a session's sender id, epoch and counter, a body under ``max_frame_size``,
    flags of its own): what the sealing shortcut needs, without checks it has made."""
    if not 1 <= msg_type <= 255:
        raise LocalProtocolError(f"message type must be 1..255, got {msg_type}")
    return _pack_fields(msg_type, flags, 0, session, epoch, counter, sender, body_len)


#: Offset of the ``type`` byte in the fixed header (docs/protocol.md section 2).
_TYPE_OFFSET = 5


def pack_header(
    msg_type: int,
    flags: int,
    topic: bytes,
    body_len: int,
    *,
    session: int = 0,
    epoch: int = 0,
    counter: int = 0,
    sender: bytes = ANONYMOUS,
) -> bytes:
    """Pack a v1.0 header followed by the (already UTF-8 encoded) topic.

    Raises LocalProtocolError for values the format cannot carry: that is a bug or misuse on
    our side, never a peer's fault.
    """
    if not 1 <= msg_type <= 255:
        raise LocalProtocolError(f"message type must be 1..255, got {msg_type}")
    if flags & ~KNOWN_FLAGS:
        raise LocalProtocolError(f"unknown flag bits {flags & ~KNOWN_FLAGS:#04x}")
    if len(topic) > MAX_TOPIC_LEN:
        raise LocalProtocolError(
            f"topic is {len(topic)} bytes encoded; the limit is {MAX_TOPIC_LEN}: "
            "use a shorter topic"
        )
    if len(sender) != SENDER_LEN:
        raise LocalProtocolError(f"sender id must be {SENDER_LEN} bytes, got {len(sender)}")
    if not (0 <= session <= _U32 and 0 <= epoch <= _U32 and 0 <= counter <= _U64):
        raise LocalProtocolError("session and epoch must fit 32 bits and counter 64 bits")
    if not 0 <= body_len <= _U32:
        raise LocalProtocolError(f"body of {body_len} bytes does not fit the 32-bit length field")
    fixed = _pack_fields(msg_type, flags, len(topic), session, epoch, counter, sender, body_len)
    return fixed + topic


def peek_type(frame: bytes | bytearray | memoryview) -> int:
    """The message type of a frame without parsing it (0 when it is too short to have one):
    routing decisions that must stay cheap for hostile input start here."""
    return frame[_TYPE_OFFSET] if len(frame) > _TYPE_OFFSET else 0


def parse_header(frame: bytes | memoryview, limits: Limits = DEFAULT_LIMITS) -> tuple[Header, int]:
    """Parse and validate the header of a peer's first frame.

    Returns the header and the offset where the body starts. The frame must hold exactly
    header + topic + body: a short frame is ``truncated``, a long one ``trailing_data``.
    Only zmqcomm RemoteProtocolError subclasses escape.
    """
    size = len(frame)
    if size > limits.max_frame_size:
        raise LimitExceededError(
            f"frame of {size} bytes exceeds the limit of {limits.max_frame_size}",
            reason="frame_too_large",
        )
    if size < HEADER_LEN:
        _explain_short_frame(frame)
    (
        magic,
        major,
        minor,
        header_len,
        msg_type,
        flags,
        topic_len,
        session,
        epoch,
        counter,
        sender,
        body_len,
    ) = _STRUCT.unpack_from(frame)
    if magic != MAGIC:
        raise RemoteProtocolError("frame does not start with the zmqcomm magic", reason="bad_magic")
    if major != VERSION_MAJOR:
        raise _unsupported(major, minor)
    if header_len < HEADER_LEN:
        raise RemoteProtocolError(
            f"header_len {header_len} is below the minimum {HEADER_LEN}", reason="bad_header"
        )
    if msg_type == 0:
        raise RemoteProtocolError("message type 0 is not valid", reason="bad_type")
    if flags & ~KNOWN_FLAGS:
        raise RemoteProtocolError(
            f"unknown flag bits {flags & ~KNOWN_FLAGS:#04x}", reason="unknown_flags"
        )
    body_start = header_len + topic_len
    expected = body_start + body_len
    if size != expected:
        if size < expected:
            raise RemoteProtocolError(
                f"frame is {size} bytes but its header announces {expected}", reason="truncated"
            )
        raise RemoteProtocolError(
            f"frame has {size - expected} bytes after its body", reason="trailing_data"
        )
    topic = ""
    if topic_len:
        try:
            topic = str(frame[header_len:body_start], "utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError("topic is not valid UTF-8", reason="bad_topic") from exc
    header = Header(msg_type, flags, topic, session, epoch, counter, sender, body_len, minor)
    return header, body_start


#: The flag bits a one-frame sealed message may carry (no OUT_OF_BAND: that needs frames).
_SEALED_ONE_FRAME_FLAGS = _ENCRYPTED | _BATCH | _COMPRESSED


def parse_sealed_frame(
    frame: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS
) -> tuple[Header, int] | None:
    """:func:`parse_header` for the frame almost every message is: one frame, sealed, in the
    v1.0 layout. Returns what :func:`parse_header` would, or None for anything else (another
    minor version, out-of-band arrays, no ENCRYPTED flag, any check that fails), having
    raised nothing: the caller then takes the general path, whose checks say what is wrong.

    The same checks as :func:`parse_header`, with less to do: the receive path of every
    message runs this (with the rest of the one-frame shortcut, 2 to 3 us less per round
    trip hot, ``benchmarks/secure_hot_trip.py``)."""
    size = len(frame)
    if size < HEADER_LEN or size > limits.max_frame_size:
        return None
    (
        magic,
        major,
        minor,
        header_len,
        msg_type,
        flags,
        topic_len,
        session,
        epoch,
        counter,
        sender,
        body_len,
    ) = _STRUCT.unpack_from(frame)
    body_start = HEADER_LEN + topic_len
    if (
        magic != MAGIC
        or major != VERSION_MAJOR
        or minor != VERSION_MINOR
        or header_len != HEADER_LEN
        or msg_type == 0
        or not flags & _ENCRYPTED
        or flags & ~_SEALED_ONE_FRAME_FLAGS
        or size != body_start + body_len
    ):
        return None
    topic = ""
    if topic_len:
        try:
            topic = str(frame[HEADER_LEN:body_start], "utf-8")
        except UnicodeDecodeError:
            return None
    return Header(
        msg_type, flags, topic, session, epoch, counter, sender, body_len, minor
    ), body_start


def _explain_short_frame(frame: bytes | memoryview) -> NoReturn:
    """Raise the most useful error for a frame shorter than the fixed header."""
    size = len(frame)
    if size >= 2 and bytes(frame[:2]) != MAGIC:
        raise RemoteProtocolError("frame does not start with the zmqcomm magic", reason="bad_magic")
    if size >= 4 and frame[2] != VERSION_MAJOR:
        raise _unsupported(frame[2], frame[3])
    raise RemoteProtocolError(
        f"frame of {size} bytes is shorter than the {HEADER_LEN}-byte header", reason="truncated"
    )


def _unsupported(major: int, minor: int) -> UnsupportedVersionError:
    return UnsupportedVersionError(
        f"peer speaks wire version {major}.{minor}; this build speaks "
        f"{VERSION_MAJOR}.{VERSION_MINOR} (upgrade the older side)",
        theirs=(major, minor),
        ours=(VERSION_MAJOR, VERSION_MINOR),
    )
