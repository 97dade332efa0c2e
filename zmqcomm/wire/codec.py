"""Encoding and decoding whole messages: header, topic, body and out-of-band frames.

A message is a list of ZeroMQ frames: the first holds header + topic + body; when the
OUT_OF_BAND flag is set, raw tensor buffers follow as further frames. The steps are split so
the security layer can sit between them::

    encode:  build_body (msgpack, zstd)  ->  [encrypt body, header as AD]  ->  assemble
    decode:  parse (header checks)       ->  [decrypt body, header as AD]  ->  open_body

:meth:`WireCodec.encode` and :meth:`WireCodec.decode` run the steps without encryption.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from zmqcomm.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError
from zmqcomm.wire.compression import BodyCompressor, CompressionConfig
from zmqcomm.wire.header import ANONYMOUS, HEADER_LEN, Header, pack_header, parse_header
from zmqcomm.wire.limits import DEFAULT_LIMITS, Limits
from zmqcomm.wire.message_types import Flags
from zmqcomm.wire.payload import OOB_THRESHOLD, Buffer, PayloadPacker, PayloadUnpacker

NO_COMPRESSION = CompressionConfig(enabled=False)
# Body flags as plain ints: IntFlag arithmetic costs a microsecond on every message.
_BATCH = int(Flags.BATCH)
_COMPRESSED = int(Flags.COMPRESSED)


class Body(NamedTuple):
    """An encoded body ready for (optional) encryption and framing."""

    data: bytes
    flags: int
    out_of_band: list[memoryview]


class ParsedFrame(NamedTuple):
    """A peer message after the header checks, before the body is opened."""

    header: Header
    #: Header + topic bytes: the associated data when the body is encrypted.
    associated_data: memoryview
    body: memoryview
    extra_frames: Sequence[Buffer]


class Message(NamedTuple):
    """A fully decoded message: the header and its payloads (one unless it was a batch)."""

    header: Header
    payloads: list[Any]

    @property
    def payload(self) -> Any:
        """The payload of a single (non-batch) message."""
        if self.header.is_batch:
            raise LocalProtocolError("this message is a batch: iterate over .payloads instead")
        return self.payloads[0]


class WireCodec:
    """Wire format v1 encoder/decoder with its limits and compression settings.

    Pure (no sockets, clocks or randomness) and not thread-safe: keep one per thread.
    """

    def __init__(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        compression: CompressionConfig | None = None,
        oob_threshold: int = OOB_THRESHOLD,
    ) -> None:
        self.limits = limits
        self.compression = compression if compression is not None else CompressionConfig()
        self.oob_threshold = oob_threshold
        self._packer = PayloadPacker(oob_threshold=oob_threshold)
        self._unpacker = PayloadUnpacker(limits)
        self._compressor = BodyCompressor(self.compression, max_body_size=limits.max_body_size)
        #: Bodies encoded so far, in bytes before and after compression (for statistics).
        self.bytes_plain = 0
        self.bytes_encoded = 0

    # -- encoding ---------------------------------------------------------------------------

    def build_body(self, payload: object) -> Body:
        """Encode one payload into a (possibly compressed) body."""
        data = self._packer.pack(payload)
        return self._finish_body(data, 0, self._packer.take_out_of_band())

    def build_packed_body(self, packed: bytes, out_of_band: Sequence[memoryview] = ()) -> Body:
        """A single (non-batch) body from a payload already packed by a :class:`PayloadPacker`
        (``out_of_band``: the buffers that packer collected for it)."""
        return self._finish_body(packed, 0, list(out_of_band))

    def build_batch_of(self, payloads: Sequence[object]) -> Body:
        """Encode several payloads into one batch body."""
        try:
            packed = [self._packer.pack(payload) for payload in payloads]
        except BaseException:
            self._packer.take_out_of_band()  # earlier items' arrays: not for the next message
            raise
        return self.build_batch_body(packed, self._packer.take_out_of_band())

    def build_batch_body(
        self, packed_items: Sequence[bytes], out_of_band: Sequence[memoryview] = ()
    ) -> Body:
        """Encode a batch from payloads already packed by a :class:`PayloadPacker`.

        ``out_of_band`` are the buffers that packer collected while packing these items.
        """
        if not packed_items:
            raise LocalProtocolError("a batch needs at least one message")
        data = b"".join([self._packer.array_header(len(packed_items)), *packed_items])
        return self._finish_body(data, _BATCH, list(out_of_band))

    def assemble(
        self,
        msg_type: int,
        body: Body | bytes,
        *,
        flags: int = 0,
        topic: str = "",
        sender: bytes = ANONYMOUS,
        session: int = 0,
        epoch: int = 0,
        counter: int = 0,
        out_of_band: Sequence[Buffer] = (),
    ) -> list[Buffer]:
        """Frame a body. ``body`` may be raw bytes (e.g. ciphertext) with explicit flags."""
        if isinstance(body, Body):
            data, flags, out_of_band = body.data, body.flags | flags, body.out_of_band
        else:
            data = body
        if out_of_band:
            flags |= Flags.OUT_OF_BAND
        self.check_outgoing(len(data), out_of_band, topic=topic)
        head = self.header_bytes(
            msg_type,
            flags,
            topic,
            len(data),
            sender=sender,
            session=session,
            epoch=epoch,
            counter=counter,
        )
        return [head + data, *out_of_band]

    def check_outgoing(
        self, body_len: int, out_of_band: Sequence[Buffer] = (), *, topic: str = ""
    ) -> None:
        """Refuse, before anything is copied or encrypted, a message the receiving side (same
        :class:`Limits`) would drop: ``body_len`` is the body as it goes on the wire (with
        the AEAD tag when sealed)."""
        limits = self.limits
        size = HEADER_LEN + len(topic.encode("utf-8")) + body_len
        if size > limits.max_frame_size:
            raise LocalProtocolError(
                f"message of {size} bytes exceeds max_frame_size "
                f"({limits.max_frame_size}); send large arrays as numpy (out of band) "
                "or raise Limits.max_frame_size on both sides"
            )
        if len(out_of_band) > limits.max_extra_frames:
            raise LocalProtocolError(
                f"message carries {len(out_of_band)} out-of-band arrays; receivers accept at "
                f"most {limits.max_extra_frames} (Limits.max_extra_frames): send fewer per message"
            )
        for extra in out_of_band:
            if memoryview(extra).nbytes > limits.max_extra_frame_size:
                raise LocalProtocolError(
                    f"an out-of-band array of {memoryview(extra).nbytes} bytes exceeds "
                    f"max_extra_frame_size ({limits.max_extra_frame_size})"
                )

    def header_bytes(
        self,
        msg_type: int,
        flags: int,
        topic: str,
        body_len: int,
        *,
        sender: bytes = ANONYMOUS,
        session: int = 0,
        epoch: int = 0,
        counter: int = 0,
    ) -> bytes:
        """Header + topic exactly as :meth:`assemble` writes them (the AEAD's associated data)."""
        return pack_header(
            msg_type,
            flags,
            topic.encode("utf-8"),
            body_len,
            session=session,
            epoch=epoch,
            counter=counter,
            sender=sender,
        )

    def encode(self, msg_type: int, payload: object, **fields: Any) -> list[Buffer]:
        """Encode one unencrypted message into frames."""
        return self.assemble(msg_type, self.build_body(payload), **fields)

    def encode_batch(
        self, msg_type: int, payloads: Sequence[object], **fields: Any
    ) -> list[Buffer]:
        """Encode several payloads as one batch frame (same type, topic and sender)."""
        return self.assemble(msg_type, self.build_batch_of(payloads), **fields)

    def _finish_body(self, data: bytes, flags: int, out_of_band: list[memoryview]) -> Body:
        if len(data) > self.limits.max_body_size:
            raise LocalProtocolError(
                f"body of {len(data)} bytes exceeds max_body_size ({self.limits.max_body_size})"
            )
        compressed = self._compressor.maybe_compress(data)
        self.bytes_plain += len(data)
        if compressed is not None:
            self.bytes_encoded += len(compressed)
            return Body(compressed, flags | _COMPRESSED, out_of_band)
        self.bytes_encoded += len(data)
        return Body(data, flags, out_of_band)

    # -- decoding ---------------------------------------------------------------------------

    def parse(self, frames: Sequence[Buffer]) -> ParsedFrame:
        """Check the header and frame count of a peer message; does not touch the body."""
        if not frames:
            raise RemoteProtocolError("empty multipart message", reason="truncated")
        first = memoryview(frames[0])
        header, body_start = parse_header(first, self.limits)
        extras = frames[1:]
        if header.has_out_of_band != bool(extras):
            raise RemoteProtocolError(
                "out-of-band flag does not match the number of frames", reason="bad_frames"
            )
        if len(extras) > self.limits.max_extra_frames:
            raise LimitExceededError(
                f"{len(extras)} extra frames exceed the limit of {self.limits.max_extra_frames}",
                reason="too_many_frames",
            )
        for extra in extras:
            if len(extra) > self.limits.max_extra_frame_size:
                raise LimitExceededError(
                    f"extra frame of {len(extra)} bytes exceeds the limit of "
                    f"{self.limits.max_extra_frame_size}",
                    reason="frame_too_large",
                )
        return ParsedFrame(header, first[:body_start], first[body_start:], extras)

    def open_body(
        self, header: Header, body: Buffer, extra_frames: Sequence[Buffer] = ()
    ) -> list[Any]:
        """Decompress and unpack a plaintext body into its payloads."""
        if header.is_compressed:
            body = self._compressor.decompress(body)
        elif len(body) > self.limits.max_body_size:
            raise LimitExceededError(
                f"body of {len(body)} bytes exceeds the limit of {self.limits.max_body_size}",
                reason="body_too_large",
            )
        if header.is_batch:
            return self._unpacker.unpack_batch(body, extra_frames)
        return [self._unpacker.unpack(body, extra_frames)]

    def decode(self, frames: Sequence[Buffer]) -> Message:
        """Decode an unencrypted peer message. Only RemoteProtocolError subclasses escape."""
        parsed = self.parse(frames)
        if parsed.header.is_encrypted:
            raise RemoteProtocolError(
                "message is encrypted; it must be opened by its session",
                reason="unexpected_encrypted",
            )
        return Message(
            parsed.header, self.open_body(parsed.header, parsed.body, parsed.extra_frames)
        )
