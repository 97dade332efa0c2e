"""The membership datagram (SWIM over UDP unicast), format v1: types and a pure codec.

A datagram is ``b"ZCM"``, a version byte (1), a canonical msgpack *body*, and a 64-byte
Ed25519 signature by the sender over ``b"zmqcomm/1 member"`` + everything before it::

    body   = [kind, seq, sender, target, updates]
    kind   = 1 PING | 2 ACK | 3 PING_REQ | 4 JOIN | 5 SYNC
    seq    = u32, the sender's probe/request number (echoed by ACK and SYNC)
    sender = record of the sender itself (its key signs the datagram)
    target = PING, ACK: bin 16 (sender id of the probed member); PING_REQ: a record; else nil
    update = [status, record]; status 0 ALIVE | 1 SUSPECT | 2 DEAD | 3 LEAVE
    record = [verify_key bin 32, incarnation u32, leaving bool, host str, port u16,
              ports [u16 ...] (at most 8), signature bin 64]

A record is a member's own statement "I am at host:port with these ports, incarnation N"
(or "I leave at incarnation N"): its signature, by the member's key, covers
``b"zmqcomm/1 member-record"`` + the canonical msgpack of the first six fields. So a record
can be forwarded by anyone but forged by nobody; SUSPECT and DEAD are the claims of the
datagram's signer about the record's incarnation.

*Canonical* msgpack: every value in its shortest encoding (as msgpack-python writes it). The
decoder re-encodes the body and refuses anything that differs, so the signed bytes are a
function of the decoded values and a machine can check signatures on decoded packets.

:func:`decode_packet` checks cheapest first and raises :class:`MembershipWireError` (a
:class:`~zmqcomm.errors.RemoteProtocolError`) with one ``reason``: ``datagram_size``,
``bad_magic``, ``unsupported_version``, ``bad_msgpack``, ``malformed``, ``non_canonical``.
Signatures are checked by the machine (:mod:`.membership`), which owns the trust decisions.

:class:`UpdateQueue` holds the updates waiting to be piggybacked (a bounded number) and fills
each packet up to the datagram bound (like memberlist's transmit-limited queue).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from zmqcomm.crypto.keys import KEY_LEN, SENDER_ID_LEN, SIGNATURE_LEN, agent_id, sender_id
from zmqcomm.errors import RemoteProtocolError, UsageError
from zmqcomm.wire.packing import pack

MAGIC = b"ZCM"
VERSION = 1
HEADER = MAGIC + bytes([VERSION])
PACKET_TAG = b"zmqcomm/1 member"
RECORD_TAG = b"zmqcomm/1 member-record"
#: No datagram is produced or accepted above this: it fits any path MTU without fragments.
MAX_DATAGRAM = 1200
MIN_DATAGRAM = len(HEADER) + 1 + SIGNATURE_LEN
MAX_PORTS = 8
MAX_HOST_LEN = 64
MAX_INCARNATION = 2**32 - 1
MAX_SEQ = 2**32 - 1
MAX_UPDATES = 32
#: No update is smaller (key, signature and the rest): a budget below it is spent.
_MIN_UPDATE = 100

PING, ACK, PING_REQ, JOIN, SYNC = 1, 2, 3, 4, 5
KINDS = {PING: "PING", ACK: "ACK", PING_REQ: "PING_REQ", JOIN: "JOIN", SYNC: "SYNC"}
ALIVE, SUSPECT, DEAD, LEAVE = 0, 1, 2, 3
STATUSES = {ALIVE: "ALIVE", SUSPECT: "SUSPECT", DEAD: "DEAD", LEAVE: "LEAVE"}

Address = tuple[str, int]


class MembershipWireError(RemoteProtocolError):
    """A datagram that is not a well-formed membership packet. Drop it and count ``reason``."""

    reason = "malformed"


@dataclass(frozen=True, slots=True)
class Record:
    """A member's self-signed statement of where it is (see the module docstring)."""

    verify_key: bytes
    incarnation: int
    leaving: bool
    host: str
    port: int
    ports: tuple[int, ...]
    signature: bytes
    #: Derived, not sent: the member's agent id (BLAKE2b-128 of the key, base32).
    agent_id: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Built by decode (already checked) or by hand in tests: keep impossible ones out.
        _check_record_fields(
            self.verify_key, self.incarnation, self.host, self.port, self.ports, error=UsageError
        )
        if len(self.signature) != SIGNATURE_LEN:
            raise UsageError(f"a record signature is {SIGNATURE_LEN} bytes")
        object.__setattr__(self, "agent_id", agent_id(self.verify_key))

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    @property
    def sender_id(self) -> bytes:
        return sender_id(self.verify_key)

    @property
    def material(self) -> bytes:
        """What the member signs: the tag plus the canonical msgpack of the fields."""
        return record_material(
            self.verify_key, self.incarnation, self.leaving, self.host, self.port, ports=self.ports
        )


@dataclass(frozen=True, slots=True)
class Update:
    """A piggybacked membership update: ``status`` (ALIVE...LEAVE) of ``record``'s member."""

    status: int
    record: Record

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise UsageError(f"an update status is one of {sorted(STATUSES)}, got {self.status}")


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded membership datagram; ``signature`` covers :func:`packet_material`."""

    kind: int
    seq: int
    sender: Record
    target: bytes | Record | None
    updates: tuple[Update, ...]
    signature: bytes = bytes(SIGNATURE_LEN)

    @property
    def kind_name(self) -> str:
        return KINDS.get(self.kind, str(self.kind))


def _check_record_fields(
    key: object, incarnation: object, host: object, port: object, ports: object, *, error: type
) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise error(f"a record key is {KEY_LEN} bytes", reason="malformed")
    if type(incarnation) is not int or not 0 <= incarnation <= MAX_INCARNATION:
        raise error(f"an incarnation is a u32, got {incarnation!r}", reason="malformed")
    if not isinstance(host, str) or not 0 < _utf8_len(host) <= MAX_HOST_LEN:
        raise error(f"a record host is 1..{MAX_HOST_LEN} bytes of UTF-8", reason="malformed")
    if type(port) is not int or not 0 < port <= 0xFFFF:
        raise error(f"a record port is 1..65535, got {port!r}", reason="malformed")
    if not isinstance(ports, tuple) or len(ports) > MAX_PORTS:
        raise error(f"a record carries at most {MAX_PORTS} ports", reason="malformed")
    for item in ports:
        if type(item) is not int or not 0 < item <= 0xFFFF:
            raise error(f"an announced port is 1..65535, got {item!r}", reason="malformed")


def _utf8_len(text: str) -> int:
    # The wire limit is in bytes (what the decoder caps), not characters.
    try:
        return len(text.encode())
    except UnicodeEncodeError:  # lone surrogates: not encodable at all
        return -1


def _pack(value: Any) -> bytes:
    return pack(value)


def record_material(
    key: bytes, incarnation: int, leaving: bool, host: str, port: int, *, ports: tuple[int, ...]
) -> bytes:
    return RECORD_TAG + _pack([key, incarnation, leaving, host, port, list(ports)])


def _record_value(record: Record) -> list[Any]:
    return [
        record.verify_key,
        record.incarnation,
        record.leaving,
        record.host,
        record.port,
        list(record.ports),
        record.signature,
    ]


def _update_value(update: Update) -> list[Any]:
    return [update.status, _record_value(update.record)]


def update_size(update: Update) -> int:
    """Bytes this update adds to a body (the machine uses it to stay under the bound)."""
    return len(_pack(_update_value(update)))


def encode_body(
    kind: int,
    seq: int,
    sender: Record,
    target: bytes | Record | None,
    updates: tuple[Update, ...] | list[Update],
) -> bytes:
    """The canonical msgpack body (no header, no signature)."""
    target_value = _record_value(target) if isinstance(target, Record) else target
    return _pack(
        [kind, seq, _record_value(sender), target_value, [_update_value(u) for u in updates]]
    )


def packet_material(
    kind: int,
    seq: int,
    sender: Record,
    target: bytes | Record | None,
    updates: tuple[Update, ...] | list[Update],
) -> bytes:
    """What the sender signs: the tag, the header and the body."""
    return PACKET_TAG + HEADER + encode_body(kind, seq, sender, target, updates)


def encode_packet(packet: Packet) -> bytes:
    """The datagram for a signed packet (:class:`UsageError` if it would exceed the bound)."""
    body = encode_body(packet.kind, packet.seq, packet.sender, packet.target, packet.updates)
    datagram = HEADER + body + packet.signature
    if len(datagram) > MAX_DATAGRAM:
        raise UsageError(f"a membership datagram is at most {MAX_DATAGRAM} bytes")
    return datagram


def _largest_bare_datagram() -> int:
    """A PING_REQ without updates whose two records have every field at its longest: no
    packet without updates is larger, so a smaller ``max_datagram`` could not be kept."""
    longest = Record(
        bytes(KEY_LEN),
        MAX_INCARNATION,
        False,
        "x" * MAX_HOST_LEN,
        0xFFFF,
        (0xFFFF,) * MAX_PORTS,
        bytes(SIGNATURE_LEN),
    )
    return len(HEADER) + len(encode_body(PING_REQ, MAX_SEQ, longest, longest, ())) + SIGNATURE_LEN


#: The smallest ``max_datagram`` a node can keep whatever it sends (478 bytes).
MIN_MAX_DATAGRAM = _largest_bare_datagram()


# -- filling packets ------------------------------------------------------------------------

#: Bytes of a packet besides its updates' own: header, signature, and the updates array
#: header growing from 1 to 3 bytes past 15 entries.
_OVERHEAD = len(HEADER) + SIGNATURE_LEN + 2


@dataclass(slots=True)
class _Queued:
    update: Update
    size: int
    urgent: bool
    sent: int = 0


class UpdateQueue:
    """Updates to piggyback: one per member (newer news replaces older and starts its count
    again), urgent ones first, then fewest-sent first, each sent up to ``limit`` times.

    At most ``capacity`` members' updates are held: past it, a new one evicts the most-sent
    non-urgent entry (an urgent one only for urgent news), so neither memory nor the sort
    in :meth:`fill` grows with a flood of fresh keys. ``evicted`` counts what was given up.
    """

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise UsageError(f"an update queue holds at least 1 update, got {capacity}")
        self.capacity = capacity
        self.evicted = 0
        self._items: dict[str, _Queued] = {}

    def put(self, update: Update, *, urgent: bool) -> None:
        agent = update.record.agent_id
        if (
            agent not in self._items
            and self.capacity is not None
            and len(self._items) >= self.capacity
        ):
            self.evicted += 1
            victim = self._victim(urgent)
            if victim is None:
                return  # only urgent news is queued: this non-urgent one gives way
            del self._items[victim]
        self._items[agent] = _Queued(update, update_size(update), urgent)

    def _victim(self, urgent: bool) -> str | None:
        """The most-sent entry that ``urgent`` news may replace (the oldest among equals)."""
        best: tuple[str, _Queued] | None = None
        for agent, entry in self._items.items():
            if entry.urgent and not urgent:
                continue
            # Non-urgent entries go first, then the one already sent most often.
            if best is None or (not entry.urgent, entry.sent) > (not best[1].urgent, best[1].sent):
                best = (agent, entry)
        return None if best is None else best[0]

    def discard(self, agent_id: str) -> None:
        """Forget the update about ``agent_id``, if any (its member is no longer tracked)."""
        self._items.pop(agent_id, None)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    def fill(
        self,
        head: bytes,
        first: Sequence[Update],
        last: Sequence[Update],
        *,
        limit: int,
        max_datagram: int = MAX_DATAGRAM,
    ) -> list[Update]:
        """``first``, then queued updates, then ``last``, as many as fit a datagram whose
        body without updates is ``head``. Updates about a member in ``first`` are skipped."""
        budget = max_datagram - _OVERHEAD - len(head)
        chosen: list[Update] = []
        skip = {update.record.agent_id for update in first}
        queued = sorted(self._items.values(), key=lambda q: (not q.urgent, q.sent))
        candidates = [(u, None) for u in first] + [
            (q.update, q) for q in queued if q.update.record.agent_id not in skip
        ]
        candidates += [(u, None) for u in last]
        for update, entry in candidates:
            if len(chosen) >= MAX_UPDATES or budget < _MIN_UPDATE:
                break
            size = entry.size if entry is not None else update_size(update)
            if size > budget:
                continue
            chosen.append(update)
            budget -= size
            if entry is not None:
                entry.sent += 1
                if entry.sent >= limit:
                    del self._items[update.record.agent_id]
        return chosen


# -- decoding ---------------------------------------------------------------------------------


def _fail(message: str, reason: str = "malformed") -> MembershipWireError:
    return MembershipWireError(message, reason=reason)


def _record(value: Any) -> Record:
    if not isinstance(value, list) or len(value) != 7:
        raise _fail("a record is an array of 7")
    key, incarnation, leaving, host, port, ports, signature = value
    if not isinstance(ports, list):
        raise _fail("record ports are an array")
    ports_tuple = tuple(ports)
    _check_record_fields(key, incarnation, host, port, ports_tuple, error=MembershipWireError)
    if not isinstance(leaving, bool):
        raise _fail("record leaving flag is a bool")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LEN:
        raise _fail("a record signature is 64 bytes")
    return Record(key, incarnation, leaving, host, port, ports_tuple, signature)


def _update(value: Any) -> Update:
    if not isinstance(value, list) or len(value) != 2:
        raise _fail("an update is an array of 2")
    status, record = value
    if type(status) is not int or status not in STATUSES:
        raise _fail(f"unknown update status {status!r}")
    return Update(status, _record(record))


def decode_packet(datagram: bytes | bytearray | memoryview) -> Packet:
    """Parse one datagram into a :class:`Packet`; only :class:`MembershipWireError` escapes."""
    size = datagram.nbytes if isinstance(datagram, memoryview) else len(datagram)
    if not MIN_DATAGRAM <= size <= MAX_DATAGRAM:
        raise _fail(
            f"a membership datagram is {MIN_DATAGRAM}..{MAX_DATAGRAM} bytes", "datagram_size"
        )
    data = bytes(datagram)
    if data[:3] != MAGIC:
        raise _fail("not a membership datagram", "bad_magic")
    if data[3] != VERSION:
        raise _fail(f"membership version {data[3]} is not supported", "unsupported_version")
    body = data[len(HEADER) : -SIGNATURE_LEN]
    try:
        # The datagram bounds every length already; these limits keep nesting cheap anyway.
        value = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            max_bin_len=SIGNATURE_LEN,
            max_str_len=MAX_HOST_LEN,
            max_array_len=MAX_UPDATES,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise _fail(f"body is not valid msgpack: {exc}", "bad_msgpack") from exc
    if not isinstance(value, list) or len(value) != 5:
        raise _fail("a body is an array of 5")
    kind, seq, sender, target, updates = value
    if type(kind) is not int or kind not in KINDS:
        raise _fail(f"unknown packet kind {kind!r}")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise _fail("seq is a u32")
    sender_record = _record(sender)
    decoded_target: bytes | Record | None
    if kind in (PING, ACK):
        if not isinstance(target, bytes) or len(target) != SENDER_ID_LEN:
            raise _fail("PING and ACK name their target by a 16-byte id")
        decoded_target = target
    elif kind == PING_REQ:
        decoded_target = _record(target)
    elif target is not None:
        raise _fail("JOIN and SYNC have no target")
    else:
        decoded_target = None
    if not isinstance(updates, list):
        raise _fail("updates are an array")
    decoded_updates = tuple(_update(item) for item in updates)
    if encode_body(kind, seq, sender_record, decoded_target, decoded_updates) != body:
        raise _fail("body is not canonical msgpack", "non_canonical")
    return Packet(kind, seq, sender_record, decoded_target, decoded_updates, data[-SIGNATURE_LEN:])
