"""Wire format v1: a fixed binary header, a msgpack body, optional zstd and batches.

Pure: no sockets, clocks or randomness. See docs/protocol.md for the byte layout.
"""

from zmqcomm.wire.batch import BatchBuilder
from zmqcomm.wire.codec import Body, Message, ParsedFrame, WireCodec
from zmqcomm.wire.compression import CompressionConfig
from zmqcomm.wire.header import ANONYMOUS, HEADER_LEN, MAGIC, VERSION_MAJOR, VERSION_MINOR, Header
from zmqcomm.wire.limits import DEFAULT_LIMITS, Limits
from zmqcomm.wire.message_types import Flags, MessageType

__all__ = [
    "ANONYMOUS",
    "DEFAULT_LIMITS",
    "HEADER_LEN",
    "MAGIC",
    "VERSION_MAJOR",
    "VERSION_MINOR",
    "BatchBuilder",
    "Body",
    "CompressionConfig",
    "Flags",
    "Header",
    "Limits",
    "Message",
    "MessageType",
    "ParsedFrame",
    "WireCodec",
]
