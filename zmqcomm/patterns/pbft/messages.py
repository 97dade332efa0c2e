"""PBFT messages: frozen dataclasses, digests and the canonical bytes that replicas sign.

Every message is a plain frozen dataclass whose fields are ints, bytes, str, tuples of those,
or nested messages. :func:`encode`/:func:`decode` map them to msgpack (one extension type per
class, fields in declaration order), which is canonical for these types, so the same encoding
is the signing material: :func:`material` is a domain tag plus the encoding of the message
with its ``signature`` field emptied. A store or a wire codec can reuse :func:`encode`.

Which messages are signed (``signature`` non-empty) and why:

- PRE-PREPARE and PREPARE: they end up inside prepared certificates that a VIEW-CHANGE shows
  to third parties, so a replica must be able to prove what another replica said. As in the
  paper, a PRE-PREPARE's signature covers the batch digest, not the requests it carries:
  every check of that signature also checks that the requests hash to the digest
  (:func:`~zmqcomm.patterns.pbft.viewchange.check_pre_prepare_form`, and NEW-VIEW's
  re-proposals equal batches from checked certificates), so a large batch is hashed once
  and never packed again just to be signed.
- CHECKPOINT: 2f+1 of them form the stable-checkpoint proof in VIEW-CHANGE and state transfer.
- VIEW-CHANGE and NEW-VIEW: relayed and checked by everyone.
- COMMIT, REPLY and the state-transfer messages are point-to-point and authenticated by the
  driver's session (the ``sender`` argument), so they carry no signature.
- REQUEST is signed by the client only when the replicas are given ``verify_client``
  (otherwise a faulty primary could slip in requests no client made).
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Hashable
from dataclasses import dataclass, fields
from typing import Any, TypeGuard

import msgpack

from zmqcomm.errors import RemoteProtocolError
from zmqcomm.wire.packing import pack

ClientId = Hashable
DOMAIN = b"zmqcomm/1 pbft "
DIGEST_SIZE = 32
#: Caps applied when decoding bytes from a peer or a store.
MAX_DECODE_BYTES = 64 * 1024 * 1024


def hash_bytes(data: bytes) -> bytes:
    """BLAKE2b-256 of ``data``: the one digest used for requests, batches and states."""
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


@dataclass(frozen=True, slots=True)
class Request:
    """<REQUEST, o, t, c>: operation ``op`` from ``client`` with its increasing ``timestamp``."""

    client: str | int
    timestamp: int
    op: bytes
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class PrePrepare:
    """The primary assigns ``sequence`` to the batch ``requests`` (empty: a null request)."""

    view: int
    sequence: int
    digest: bytes
    requests: tuple[Request, ...]
    replica: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class Prepare:
    view: int
    sequence: int
    digest: bytes
    replica: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class Commit:
    view: int
    sequence: int
    digest: bytes
    replica: int


@dataclass(frozen=True, slots=True)
class Reply:
    view: int
    timestamp: int
    client: str | int
    replica: int
    result: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """``replica`` executed up to ``sequence`` and its state then hashes to ``digest``."""

    sequence: int
    digest: bytes
    replica: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class PreparedProof:
    """A prepared certificate: the pre-prepare and 2f matching prepares from backups."""

    pre_prepare: PrePrepare
    prepares: tuple[Prepare, ...]


@dataclass(frozen=True, slots=True)
class ViewChange:
    """<VIEW-CHANGE, v+1, n, C, P, i>: stable checkpoint ``stable`` proven by ``proof``."""

    new_view: int
    stable: int
    proof: tuple[Checkpoint, ...]
    prepared: tuple[PreparedProof, ...]
    replica: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class NewView:
    """<NEW-VIEW, v+1, V, O>: 2f+1 view changes and the pre-prepares recomputed from them."""

    view: int
    view_changes: tuple[ViewChange, ...]
    pre_prepares: tuple[PrePrepare, ...]
    replica: int
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class ViewQuery:
    """Asks a replica seen in a later view for the NEW-VIEW that installed it."""

    view: int
    replica: int


@dataclass(frozen=True, slots=True)
class ViewState:
    """Answer to :class:`ViewQuery`: the NEW-VIEW that installed the sender's view."""

    new_view: NewView
    replica: int


@dataclass(frozen=True, slots=True)
class FetchState:
    """Ask for a stable checkpoint at ``sequence`` or later, with its state."""

    sequence: int
    replica: int


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """A stable checkpoint: its proof and the state whose hash is ``digest``."""

    sequence: int
    digest: bytes
    proof: tuple[Checkpoint, ...]
    snapshot: bytes
    replica: int


@dataclass(frozen=True, slots=True)
class Status:
    """A replica says how far it got (its view and last executed sequence number), so
    replicas ahead of it resend what it missed: when it cannot execute a request it times,
    after a restart, and while committed entries wait behind a gap."""

    view: int
    executed: int
    replica: int


_TYPES: tuple[type, ...] = (
    Request,
    PrePrepare,
    Prepare,
    Commit,
    Reply,
    Checkpoint,
    PreparedProof,
    ViewChange,
    NewView,
    ViewQuery,
    ViewState,
    FetchState,
    StateSnapshot,
    Status,  # new types go last: the codes on the wire are the positions
)
_CODE = {cls: index + 1 for index, cls in enumerate(_TYPES)}
_CLASS = {code: cls for cls, code in _CODE.items()}
#: Messages big enough that packing them twice shows: see :func:`encode`.
_REMEMBERED = frozenset({PrePrepare, PreparedProof, ViewChange, NewView, StateSnapshot})
#: The kind tag inside signing material, so two message types never sign the same bytes.
_KINDS = {cls: cls.__name__.encode() for cls in _TYPES}


#: One getter per type, built once: ``fields()`` per encoded object was most of encode's cost.
_GETTERS = {cls: operator.attrgetter(*(f.name for f in fields(cls))) for cls in _TYPES}


def _default(obj: Any) -> Any:
    cls = type(obj)
    code = _CODE.get(cls)
    if code is None:
        raise TypeError(f"cannot encode {cls.__name__}")
    values = _GETTERS[cls](obj)
    return msgpack.ExtType(code, pack(values, _default))


#: Bytes of recent big messages (batches, certificates), so one is packed once however often
#: it is sent and stored: a pre-prepare of 256 requests was packed for the wire, again for the
#: store, and a backup re-packed the one it had just decoded. Keyed by id and holding the
#: object, so an id cannot be reused while its entry lives; cleared when full.
_RECENT: dict[int, tuple[Any, bytes]] = {}
_RECENT_MAX = 64


def _remember(message: Any, data: bytes) -> None:
    if len(_RECENT) >= _RECENT_MAX:
        _RECENT.clear()
    _RECENT[id(message)] = (message, data)


_FIXEXT = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}


def _ext_head(code: int, size: int) -> bytes:
    """The msgpack head of an extension of ``size`` bytes, exactly as msgpack writes it."""
    fixed = _FIXEXT.get(size)
    if fixed is not None:
        return bytes((fixed, code))
    if size < 0x100:
        return bytes((0xC7, size, code))
    if size < 0x10000:
        return b"\xc8" + size.to_bytes(2, "big") + bytes((code,))
    return b"\xc9" + size.to_bytes(4, "big") + bytes((code,))


def encode(message: Any) -> bytes:
    """Canonical msgpack bytes of a message (or a tuple of them); for a message decoded by
    :func:`decode`, the bytes it came from (which decode to the same message)."""
    known = _RECENT.get(id(message))
    if known is not None and known[0] is message:
        return known[1]
    cls = type(message)
    code = _CODE.get(cls)
    if code is None:
        data = pack(message, _default)
    else:
        # Framing the top-level extension ourselves gives msgpack's bytes without a second
        # pack and an ExtType (msgpack 1.x also takes ~20 us to reach ``default`` for a
        # top-level object, measured here).
        body = pack(_GETTERS[cls](message), _default)
        data = _ext_head(code, len(body)) + body
    if cls in _REMEMBERED:
        _remember(message, data)
    return data


def _ext_hook(code: int, data: bytes) -> Any:
    cls = _CLASS.get(code)
    if cls is None:
        raise RemoteProtocolError(f"unknown pbft message code {code}", reason="unknown_type")
    values = msgpack.unpackb(data, ext_hook=_ext_hook, use_list=False, raw=False)
    try:
        return cls(*values)
    except TypeError as exc:
        raise RemoteProtocolError(f"bad {cls.__name__} fields", reason="malformed") from exc


def decode(data: bytes) -> Any:
    """Inverse of :func:`encode`; :class:`RemoteProtocolError` on bytes it cannot read.

    Field types are not checked here: the replica validates every message it receives.
    """
    if not isinstance(data, bytes) or len(data) > MAX_DECODE_BYTES:
        raise RemoteProtocolError("pbft message too large or not bytes", reason="limit_exceeded")
    try:
        message = msgpack.unpackb(data, ext_hook=_ext_hook, use_list=False, raw=False)
    except RemoteProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types for garbage
        raise RemoteProtocolError("undecodable pbft message", reason="malformed") from exc
    if type(message) in _REMEMBERED:
        _remember(message, data)
    return message


_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in _TYPES}
#: Marks "a message of this type starts here" inside signing material; a tuple of plain
#: values can never contain one, so material is unambiguous.
_MARKERS = {cls: msgpack.ExtType(code, b"") for cls, code in _CODE.items()}


#: Fields left out of the signing material besides ``signature`` (see the module docstring).
_UNSIGNED_EXTRA: dict[type, str] = {PrePrepare: "requests"}


def _unsigned_getter(cls: type) -> Any:
    names = [n for n in _FIELDS[cls] if n not in ("signature", _UNSIGNED_EXTRA.get(cls))]
    getter = operator.attrgetter(*names)
    if len(names) == 1:
        return lambda message: (getter(message),)
    return getter


#: The signed fields (all but ``signature``) of each type, fetched in one call as a tuple.
_UNSIGNED = {cls: _unsigned_getter(cls) for cls in _TYPES}
_FLAT = frozenset({int, str, bytes, bool, float, type(None)})


def _plain(value: Any) -> Any:
    names = _FIELDS.get(type(value))
    if names is not None:
        return [_MARKERS[type(value)], *(_plain(getattr(value, n)) for n in names)]
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def material(message: Any) -> bytes:
    """The bytes signed for ``message``: domain, kind, and its fields without the signature
    (nor a PRE-PREPARE's requests, which its digest stands for).

    Canonical (msgpack of ints, bytes, str and arrays in field order, nested messages
    marked by type) and cheap: one ``pack`` call, since replicas compute it per message.
    """
    cls = type(message)
    values = list(_UNSIGNED[cls](message))
    # Requests, votes and replies hold only plain values, which _plain would return as is.
    if not all(type(v) in _FLAT for v in values):
        values = [_plain(v) for v in values]
    return DOMAIN + _KINDS[cls] + b"\x00" + pack(values)


#: What identifies a request, signature aside: (client, timestamp, op).
request_content = operator.attrgetter("client", "timestamp", "op")


def batch_digest(requests: tuple[Request, ...]) -> bytes:
    """The digest a pre-prepare assigns; the empty batch is the null request.

    BLAKE2b of the requests' signed fields (client, timestamp, op) in batch order, packed
    as one msgpack array of arrays: typed and length-prefixed, so no two different
    batches give the same bytes. One ``pack`` for the batch, not one per request, since
    the primary and every backup hash every batch.
    """
    rows = [request_content(r) for r in requests]
    return hash_bytes(DOMAIN + b"batch\x00" + pack(rows))


NULL_DIGEST = batch_digest(())


def is_int(value: Any, minimum: int = 0) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_digest(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == DIGEST_SIZE


def well_formed_request(request: Any) -> bool:
    return (
        isinstance(request, Request)
        and isinstance(request.client, (str, int))
        and not isinstance(request.client, bool)
        and is_int(request.timestamp, 1)
        and isinstance(request.op, bytes)
        and isinstance(request.signature, bytes)
    )


__all__ = [
    "DIGEST_SIZE",
    "NULL_DIGEST",
    "Checkpoint",
    "Commit",
    "FetchState",
    "NewView",
    "PrePrepare",
    "Prepare",
    "PreparedProof",
    "Reply",
    "Request",
    "StateSnapshot",
    "Status",
    "ViewChange",
    "ViewQuery",
    "ViewState",
    "batch_digest",
    "decode",
    "encode",
    "hash_bytes",
    "material",
    "request_content",
]
