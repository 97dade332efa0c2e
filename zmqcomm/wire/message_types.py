"""Message types and header flags of wire format v1."""

from __future__ import annotations

import enum

#: The security range (handshake, rekey, close) as plain ints: checked on every message, where
#: an IntEnum comparison costs several times more.
FIRST_SECURITY_TYPE = 0x40
LAST_SECURITY_TYPE = 0x7F


class MessageType(enum.IntEnum):
    """The one-byte message type in every header.

    Ranges: 0x01-0x3F application messages, 0x40-0x7F security (handshake, rekey, close),
    0x80-0xBF swarm patterns (gossip, consensus, discovery), 0xC0-0xFF reserved. Type 0 is
    never valid. The wire layer carries any type in 1..255; the layer that owns a range rejects
    types it does not know.
    """

    DATA = 0x01
    REQUEST = 0x02
    REPLY = 0x03
    PUBLISH = 0x04
    ERROR = 0x05
    #: Broker protocol (docs/protocol.md section 11): the clear topic names the other agent
    #: (or the topic); bodies are end-to-end ciphertext the broker cannot open.
    FORWARD = 0x20
    DELIVER = 0x21
    UNREACHABLE = 0x22
    MAIL = 0x23
    MAIL_ACCEPTED = 0x24
    MAIL_DELIVER = 0x25
    MAIL_ACK = 0x26
    SUBSCRIBE = 0x27
    UNSUBSCRIBE = 0x28
    BROKER_STATS = 0x29
    #: Between agents, inside their session: a subscriber asks a publisher for its topic key.
    TOPIC_KEY_REQUEST = 0x2A
    TOPIC_KEY = 0x2B
    #: Agent to broker: "still here" when idle, and "leaving now" on a clean close.
    PING = 0x2C
    BYE = 0x2D
    #: Between agents through the broker: "I hold no session for this frame" (I restarted).
    SESSION_RESET = 0x2E
    #: Security layer (docs/protocol.md section 10): the three Noise XX messages, then the
    #: responder's first encrypted message, which tells the initiator it was accepted.
    HANDSHAKE_INIT = 0x40
    HANDSHAKE_REPLY = 0x41
    HANDSHAKE_FINISH = 0x42
    HANDSHAKE_CONFIRM = 0x43


class Flags(enum.IntFlag):
    """Header flag bits. Bits not listed here must be zero in v1."""

    NONE = 0
    #: The body is one zstandard frame; decompress before msgpack.
    COMPRESSED = 0x01
    #: The body (after decompression) is a msgpack array of payloads.
    BATCH = 0x02
    #: The body is AEAD ciphertext produced by the security layer.
    ENCRYPTED = 0x04
    #: Out-of-band buffers (large tensors) follow as extra ZeroMQ frames.
    OUT_OF_BAND = 0x08


KNOWN_FLAGS = int(Flags.COMPRESSED | Flags.BATCH | Flags.ENCRYPTED | Flags.OUT_OF_BAND)
