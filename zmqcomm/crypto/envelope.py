"""Encrypted frames: the wire codec plus a session (pure).

Sending: build the body (msgpack, maybe zstd), allocate (epoch, counter), write the clear
header with the ENCRYPTED flag, encrypt the body with the header as associated data. A batch
body is one AEAD call. Out-of-band frames (large tensors) are encrypted too, each under its
own frame index in the nonce.

Receiving: parse the clear header under the limits, refuse a plaintext frame or another
session's frame, check replay, decrypt, then decompress and unpack the plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from zmqcomm.crypto.session import IN_PLACE_MIN, TAG_SIZE, Session
from zmqcomm.errors import AuthenticationError
from zmqcomm.wire import ANONYMOUS, Body, Flags, Message, WireCodec
from zmqcomm.wire.codec import ParsedFrame
from zmqcomm.wire.header import HEADER_LEN, Header, pack_bare_header, parse_sealed_frame
from zmqcomm.wire.message_types import FIRST_SECURITY_TYPE, LAST_SECURITY_TYPE
from zmqcomm.wire.payload import Buffer

_ENCRYPTED = int(Flags.ENCRYPTED)
_OUT_OF_BAND = int(Flags.OUT_OF_BAND)

#: A sealed frame: bytes, or a bytearray for a body or array of at least IN_PLACE_MIN bytes
#: (written in place; nothing changes it once it is returned).
Sealed = bytes | bytearray


class SecureCodec:
    """Encodes and decodes the frames of one session."""

    def __init__(
        self, session: Session, codec: WireCodec | None = None, *, sender: bytes = ANONYMOUS
    ) -> None:
        self.session = session
        self.codec = codec if codec is not None else WireCodec()
        self.sender = sender

    def encode(
        self, msg_type: int, payload: object, *, topic: str = "", now: float
    ) -> list[Sealed]:
        body = self.codec.build_body(payload)
        data = body.data
        size = len(data) + TAG_SIZE
        if (
            topic
            or body.out_of_band
            or size >= IN_PLACE_MIN
            or HEADER_LEN + size > self.codec.limits.max_frame_size
            or not 1 <= msg_type <= 255
        ):
            return self.seal(msg_type, body, topic=topic, now=now)
        # The message almost every send is: one small payload, no topic, no arrays. The
        # frame seal() would write, in fewer steps (they cost as much as the AEAD here).
        session = self.session
        epoch, counter = session.allocate(now=now)
        head = pack_bare_header(
            msg_type,
            body.flags | _ENCRYPTED,
            size,
            session=session.session_id,
            epoch=epoch,
            counter=counter,
            sender=self.sender,
        )
        return [head + session.encrypt(epoch, counter, head, data)]

    def encode_batch(
        self,
        msg_type: int,
        packed: Sequence[bytes],
        out_of_band: Sequence[memoryview] = (),
        *,
        topic: str = "",
        now: float,
    ) -> list[Sealed]:
        """Seal a batch from payloads packed with a PayloadPacker: one AEAD call for all."""
        return self.seal(
            msg_type, self.codec.build_batch_body(packed, out_of_band), topic=topic, now=now
        )

    def seal(self, msg_type: int, body: Body, *, topic: str = "", now: float) -> list[Sealed]:
        # Before a counter is spent or a byte encrypted: what the peer would drop, unseen.
        self.codec.check_outgoing(len(body.data) + TAG_SIZE, body.out_of_band, topic=topic)
        epoch, counter = self.session.allocate(now=now)
        # Plain ints: IntFlag arithmetic costs microseconds on this path.
        flags = int(body.flags) | _ENCRYPTED
        if body.out_of_band:
            flags |= _OUT_OF_BAND
        head = self.codec.header_bytes(
            msg_type,
            flags,
            topic,
            len(body.data) + TAG_SIZE,
            sender=self.sender,
            session=self.session.session_id,
            epoch=epoch,
            counter=counter,
        )
        session = self.session
        data = body.data
        frames: list[Sealed]
        if len(data) < IN_PLACE_MIN:
            frames = [head + session.encrypt(epoch, counter, head, data)]
        else:
            # One buffer, ciphertext written after the clear header: no ciphertext copy and
            # no concatenation (each a fresh 1 MiB buffer for a 1 MiB body).
            first = bytearray(len(head) + len(data) + TAG_SIZE)
            first[: len(head)] = head
            session.encrypt_into(epoch, counter, head, data, memoryview(first)[len(head) :])
            frames = [first]
        for index, extra in enumerate(body.out_of_band, start=1):
            size = memoryview(extra).nbytes
            if size < IN_PLACE_MIN:
                frames.append(session.encrypt(epoch, counter, head, bytes(extra), frame=index))
            else:  # read in place: the caller's array is not copied first
                sealed = bytearray(size + TAG_SIZE)
                session.encrypt_into(epoch, counter, head, extra, sealed, frame=index)
                frames.append(sealed)
        return frames

    def open(
        self, frames: Sequence[Buffer], *, now: float
    ) -> tuple[Header, bytes | bytearray, list[bytes | bytearray]]:
        """Check and decrypt; returns the header, the plaintext body and the extra frames."""
        return self.open_parsed(self.codec.parse(frames), now=now)

    def open_parsed(
        self, parsed: ParsedFrame, *, now: float
    ) -> tuple[Header, bytes | bytearray, list[bytes | bytearray]]:
        """:meth:`open` for frames the caller already parsed (no second parse)."""
        header = parsed.header
        if not header.is_encrypted:
            raise AuthenticationError(
                "plaintext frame on an encrypted session", reason="plaintext_refused"
            )
        if header.session != self.session.session_id:
            raise AuthenticationError("frame belongs to another session", reason="wrong_session")
        associated = bytes(parsed.associated_data)
        last = len(parsed.extra_frames)
        # Every frame must open before the counter is recorded (accept only on the last).
        # Large ciphertexts are read where they were received: no copy of them first.
        body = self.session.decrypt(
            header.epoch, header.counter, associated, parsed.body, now=now, accept=last == 0
        )
        extras = [
            self.session.decrypt(
                header.epoch,
                header.counter,
                associated,
                extra,
                now=now,
                frame=index,
                accept=index == last,
            )
            for index, extra in enumerate(parsed.extra_frames, start=1)
        ]
        return header, body, extras

    def open_frame(self, frame: Buffer, sender: bytes) -> Message | None:
        """:meth:`decode` for data in one sealed frame under the current keys from
        ``sender``; None, with nothing changed, for anything else (a handshake type, another
        session or sender, an older epoch, a counter the window refuses, a bad tag): the
        general path then decides, and says what is wrong. A body that authenticated but
        does not unpack raises, as there (its counter is spent: it was the peer's)."""
        parsed = parse_sealed_frame(frame, self.codec.limits)
        if parsed is None:
            return None
        header, body_start = parsed
        if (
            header.session != self.session.session_id
            or header.sender != sender
            or FIRST_SECURITY_TYPE <= header.type <= LAST_SECURITY_TYPE
        ):
            return None
        # A large frame is read in place, as in open_parsed; slicing bytes would copy it.
        view = frame if len(frame) < IN_PLACE_MIN else memoryview(frame)
        body = self.session.open_current(
            header.epoch, header.counter, bytes(view[:body_start]), view[body_start:]
        )
        if body is None:
            return None
        return Message(header, self.codec.open_body(header, body))

    def decode(self, frames: Sequence[Buffer], *, now: float) -> Message:
        return self.decode_parsed(self.codec.parse(frames), now=now)

    def decode_parsed(self, parsed: ParsedFrame, *, now: float) -> Message:
        header, body, extras = self.open_parsed(parsed, now=now)
        return Message(header, self.codec.open_body(header, body, extras))

    def decode_payloads(self, frames: Sequence[Buffer], *, now: float) -> list[Any]:
        return self.decode(frames, now=now).payloads
