"""Gossip messages on the wire: msgpack items, several per frame.

A frame is one msgpack array ``[1, item, item, ...]`` (the first element is the format
version). Items are msgpack arrays whose first element says the kind::

    [0, origin: str, sequence: uint64, payload: bin, hops: uint, signature: bin(64) | nil]  Publish
    [1, [id: bin(16), ...]]                                                             IHave
    [2, [id: bin(16), ...]]                                                             IWant
    [3]                                                                                 Graft
    [4]                                                                                 Prune
    [5]                                                                                 Adopt

Items are encoded once (:func:`encode_item`) and frames are built by concatenating encoded
items behind an array header (:func:`build_frame`), so a message relayed to six mesh peers is
packed once, and a frame costs no re-encoding.

Decoding checks the frame size before parsing, gives msgpack hard limits (string, binary and
array lengths, no maps, no extension types) and then checks every type and range; anything
wrong raises :class:`~zmqcomm.errors.RemoteProtocolError` with a short ``reason`` and nothing
else, whatever the bytes. A frame with one bad item is rejected whole: it came from one sender.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from zmqcomm.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError, UsageError
from zmqcomm.patterns.gossip.machine import (
    ID_LEN,
    MAX_SEQUENCE,
    Adopt,
    Graft,
    IHave,
    IWant,
    Message,
    Prune,
    Publish,
)

VERSION = 1
PUBLISH, IHAVE, IWANT, GRAFT, PRUNE, ADOPT = 0, 1, 2, 3, 4, 5
SIGNATURE_LEN = 64
MAX_HOPS = 0xFFFF

GossipMessage = Publish | IHave | IWant | Graft | Prune | Adopt
#: The kinds that carry nothing but their tag.
_BARE: dict[type, int] = {Graft: GRAFT, Prune: PRUNE, Adopt: ADOPT}
_BARE_KINDS: dict[int, GossipMessage] = {GRAFT: Graft(), PRUNE: Prune(), ADOPT: Adopt()}


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """What a decoder accepts; both ends should agree (the defaults are shared)."""

    max_frame_bytes: int = 1024 * 1024
    max_payload_bytes: int = 256 * 1024
    max_items: int = 4096
    max_ids: int = 512
    max_origin_len: int = 64

    def __post_init__(self) -> None:
        if min(self.max_frame_bytes, self.max_payload_bytes, self.max_items, self.max_ids) < 1:
            raise UsageError("gossip codec limits must be positive")
        if not 1 <= self.max_origin_len <= 1024:
            raise UsageError("max_origin_len must be between 1 and 1024")


DEFAULT_CODEC_LIMITS = CodecLimits()
_packer = msgpack.Packer(use_bin_type=True)


def _bad(reason: str, what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"bad gossip frame: {what}", reason=reason)


def encode_item(message: GossipMessage, limits: CodecLimits = DEFAULT_CODEC_LIMITS) -> bytes:
    """One message as a packed msgpack item; :class:`LocalProtocolError` if it cannot travel."""
    if isinstance(message, Publish):
        m = message.message
        if not isinstance(m.origin, str) or not 0 < len(m.origin) <= limits.max_origin_len:
            raise LocalProtocolError("a gossip origin on the wire must be a short string")
        if len(m.payload) > limits.max_payload_bytes:
            raise LocalProtocolError(
                f"gossip payload of {len(m.payload)} bytes exceeds max_payload_bytes "
                f"{limits.max_payload_bytes}; split it or raise the limit on every agent"
            )
        item: list[Any] = [PUBLISH, m.origin, m.sequence, m.payload, min(m.hops, MAX_HOPS)]
        item.append(m.signature)
    elif isinstance(message, (IHave, IWant)):
        if len(message.ids) > limits.max_ids:
            raise LocalProtocolError(f"at most {limits.max_ids} ids fit in one IHave/IWant")
        item = [IHAVE if isinstance(message, IHave) else IWANT, list(message.ids)]
    elif type(message) in _BARE:
        item = [_BARE[type(message)]]
    else:
        raise LocalProtocolError(f"cannot encode {type(message).__name__} as a gossip item")
    packed: bytes = _packer.pack(item)
    return packed


def build_frame(items: Sequence[bytes]) -> bytes:
    """A frame carrying already encoded ``items``."""
    if not items:
        raise LocalProtocolError("a gossip frame needs at least one item")
    header: bytes = _packer.pack_array_header(len(items) + 1)
    return b"".join((header, _packer.pack(VERSION), *items))


def encode_frame(
    messages: Sequence[GossipMessage], limits: CodecLimits = DEFAULT_CODEC_LIMITS
) -> bytes:
    return build_frame([encode_item(m, limits) for m in messages])


def decode_frame(data: bytes, limits: CodecLimits = DEFAULT_CODEC_LIMITS) -> list[GossipMessage]:
    """The messages in one frame, or :class:`RemoteProtocolError` (never anything else)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _bad("frame_type", "not bytes")
    if len(data) > limits.max_frame_bytes:
        raise LimitExceededError(
            f"gossip frame of {len(data)} bytes exceeds {limits.max_frame_bytes}"
        )
    try:
        decoded = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            max_str_len=limits.max_origin_len,
            max_bin_len=max(limits.max_payload_bytes, SIGNATURE_LEN, ID_LEN),
            max_array_len=max(limits.max_items + 1, limits.max_ids, 6),
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, StackError...)
        raise _bad("undecodable", type(exc).__name__) from exc
    if not isinstance(decoded, list) or len(decoded) < 2:
        raise _bad("not_a_frame", "expected an array of a version and items")
    version = decoded[0]
    if version != VERSION or not isinstance(version, int) or isinstance(version, bool):
        raise _bad("unsupported_version", f"version {version!r}")
    if len(decoded) - 1 > limits.max_items:
        raise LimitExceededError(f"more than {limits.max_items} gossip items in one frame")
    return [_decode_item(item, limits) for item in decoded[1:]]


def _uint(value: Any, top: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top


def _ids(value: Any, limits: CodecLimits) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > limits.max_ids:
        raise _bad("bad_ids", "ids must be a short array")
    if not all(isinstance(i, bytes) and len(i) == ID_LEN for i in value):
        raise _bad("bad_ids", f"every id must be {ID_LEN} bytes")
    return tuple(value)


def _decode_item(item: Any, limits: CodecLimits) -> GossipMessage:
    if not isinstance(item, list) or not item:
        raise _bad("bad_item", "an item must be a non-empty array")
    kind = item[0]
    if not isinstance(kind, int) or isinstance(kind, bool):  # 0.0 == 0 in Python
        raise _bad("bad_item", "the kind must be an integer")
    if kind == PUBLISH and len(item) == 6:
        _, origin, sequence, payload, hops, signature = item
        if not isinstance(origin, str) or not origin:
            raise _bad("bad_origin", "origin must be a non-empty string")
        if not _uint(sequence, MAX_SEQUENCE) or not _uint(hops, MAX_HOPS):
            raise _bad("bad_number", "sequence or hops out of range")
        if not isinstance(payload, bytes):
            raise _bad("bad_payload", "payload must be binary")
        if signature is not None and not (
            isinstance(signature, bytes) and len(signature) == SIGNATURE_LEN
        ):
            raise _bad("bad_signature_field", f"signature must be {SIGNATURE_LEN} bytes or nil")
        return Publish(Message(origin, sequence, payload, hops, signature))
    if kind in (IHAVE, IWANT) and len(item) == 2:
        ids = _ids(item[1], limits)
        return IHave(ids) if kind == IHAVE else IWant(ids)
    if kind in _BARE_KINDS and len(item) == 1:
        return _BARE_KINDS[kind]
    raise _bad("bad_item", "unknown kind or wrong length")
