"""UDP discovery beacons, format v3: a small signed datagram saying "this agent, these ports".

Pure (sans-I/O): no sockets, clocks or randomness; the caller sends and receives datagrams.
All integers are big-endian.

=======  ==========  ================================================================
Offset   Size        Field
=======  ==========  ================================================================
0        3           magic ``b"ZCB"`` (a Zyre beacon starts ``b"ZRE"`` and is refused)
3        1           version, u8 = 3
4        1           flags, u8: bit 0 = X25519 static key present; other bits must be 0
5        16          sender id: BLAKE2b-128 of the Ed25519 verify key
21       8           incarnation, u64: random, drawn once per life of the sending process
29       8           sequence, u64: wall-clock microseconds, strictly increasing per incarnation
37       1           port count ``n``, u8, 0..8
38       2 * n       ports, u16 each, nonzero (the agent's TCP ports)
38+2n    0 or 32     X25519 static public key, present iff flag bit 0 is set
...      32          Ed25519 verify key
...      64          Ed25519 signature over ``b"zmqcomm/1 beacon"`` + every byte before it
=======  ==========  ================================================================

Sizes: 134 bytes at least (no ports, no static key), 182 at most (8 ports and the key). The
domain tag is signed but not sent, so a beacon signature is never valid as any other
zmqcomm signature, nor the other way round.

Version 1 had a u32 sequence that restarted at 1 with the agent, so a table could not tell a
restart from a replay: it guessed from the size of the drop, and guessed wrong both ways (a
young agent's restart was ignored, old beacons replayed after a big enough gap were taken).
Version 2 numbered beacons by wall-clock microseconds only, so an agent restarted with its
clock behind its earlier life's last beacon went unheard until the clock passed that point.
:class:`~zmqcomm.patterns.discovery.udp.BeaconService` draws a random incarnation when it
starts and numbers beacons with the microseconds of its wall clock (one more than the last
when the clock is slower); a table takes a new incarnation when its number is fresh by the
table's own clock (see :mod:`zmqcomm.patterns.discovery.peers`). Versions 1 and 2 are refused
(``unsupported_version``).

:func:`decode_beacon` checks cheapest first and raises :class:`BeaconError` (a
:class:`~zmqcomm.errors.RemoteProtocolError`) with one ``reason`` per failure, in this order:
``beacon_size``, ``bad_magic``, ``unsupported_version``, ``unknown_flags``, ``bad_length``,
``bad_port``, then :class:`BeaconAuthenticationError` (also an
:class:`~zmqcomm.errors.AuthenticationError`) for ``sender_mismatch`` and ``bad_signature``.
With a trust store it then looks the agent up (its :class:`~zmqcomm.errors.UnknownPeerError`
propagates) and refuses a key that differs from the trusted one (``key_changed``).

A valid signature proves who made the beacon, not when: beacons can be replayed, so the
incarnation and sequence number (see :mod:`zmqcomm.patterns.discovery.peers`) and the
handshake that follows discovery are what stop stale or replayed announcements from doing
harm.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from zmqcomm.crypto.keys import (
    KEY_LEN,
    SENDER_ID_LEN,
    SIGNATURE_LEN,
    Identity,
    agent_id_from_sender,
    verify_signature,
)
from zmqcomm.errors import AuthenticationError, RemoteProtocolError, UsageError

MAGIC = b"ZCB"
VERSION = 3
FLAG_STATIC_KEY = 0x01
KNOWN_FLAGS = FLAG_STATIC_KEY
MAX_PORTS = 8
MAX_SEQUENCE = MAX_INCARNATION = 2**64 - 1
#: Prefixed to the signed bytes, never sent: domain separation from every other signature.
BEACON_TAG = b"zmqcomm/1 beacon"

# magic, version, flags, sender id, incarnation, sequence, port count
_HEAD = struct.Struct(">3sBB16sQQB")
HEAD_LEN = _HEAD.size  # 38
MIN_BEACON_LEN = HEAD_LEN + KEY_LEN + SIGNATURE_LEN  # 134
MAX_BEACON_LEN = HEAD_LEN + 2 * MAX_PORTS + KEY_LEN + KEY_LEN + SIGNATURE_LEN  # 182


class BeaconError(RemoteProtocolError):
    """A datagram that is not a valid beacon. Drop it and count ``reason``."""

    reason = "bad_beacon"


class BeaconAuthenticationError(BeaconError, AuthenticationError):
    """A beacon whose sender id, signature or key does not check out."""

    reason = "authentication_failed"


class TrustedKey(Protocol):
    """A trust entry, as far as discovery cares: the peer's Ed25519 verify key."""

    @property
    def verify_key(self) -> bytes: ...


class TrustLookup(Protocol):
    """What :func:`decode_beacon` needs of a trust store (:class:`TrustStore` fits)."""

    def lookup(self, agent_id: str, *, now: float) -> TrustedKey: ...


def _check_ports(ports: Sequence[int]) -> tuple[int, ...]:
    given: object = ports
    if not isinstance(given, list | tuple):  # 5555 or "5555": a list was meant
        raise UsageError(f"beacon ports are a list of ints, got {ports!r}")
    checked = tuple(given)
    if len(checked) > MAX_PORTS:
        raise UsageError(f"a beacon carries at most {MAX_PORTS} ports, got {len(checked)}")
    for port in checked:
        # bool is an int subclass; True as a port is certainly a bug.
        if type(port) is not int or not 0 < port <= 0xFFFF:
            raise UsageError(f"a beacon port is an int in 1..65535, got {port!r}")
    return checked


def _check_u64(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SEQUENCE:
        raise UsageError(f"a beacon {what} is a u64 (0..{MAX_SEQUENCE}), got {value!r}")
    return value


@dataclass(frozen=True)
class Beacon:
    """A decoded (and, from :func:`decode_beacon`, verified) beacon."""

    sender_id: bytes
    sequence: int
    ports: tuple[int, ...]
    verify_key: bytes
    static_key: bytes | None = None
    #: Random per life of the sender; 0 in hand-built beacons that do not care.
    incarnation: int = 0

    def __post_init__(self) -> None:
        # Built by hand in tests and simulators too: keep impossible beacons out of the table.
        if len(self.sender_id) != SENDER_ID_LEN or len(self.verify_key) != KEY_LEN:
            raise UsageError("a beacon's sender id is 16 bytes and its verify key 32")
        if self.static_key is not None and len(self.static_key) != KEY_LEN:
            raise UsageError("a beacon's static key is 32 bytes")
        _check_u64(self.sequence, "sequence")
        _check_u64(self.incarnation, "incarnation")
        object.__setattr__(self, "ports", _check_ports(self.ports))

    @property
    def agent_id(self) -> str:
        return agent_id_from_sender(self.sender_id)


def encode_beacon(
    identity: Identity,
    *,
    sequence: int,
    ports: Sequence[int],
    incarnation: int = 0,
    with_static_key: bool = False,
) -> bytes:
    """A signed beacon datagram for ``identity``; :class:`UsageError` on bad arguments.

    A sender draws ``incarnation`` at random once per life (a constant one, such as the
    default 0, makes every restart look like the same life: the table then needs a sequence
    above all earlier ones, the version 2 rule).
    """
    _check_u64(sequence, "sequence")
    _check_u64(incarnation, "incarnation")
    checked = _check_ports(ports)
    flags = FLAG_STATIC_KEY if with_static_key else 0
    head = (MAGIC, VERSION, flags, identity.sender_id, incarnation, sequence, len(checked))
    parts = [
        _HEAD.pack(*head),
        struct.pack(f">{len(checked)}H", *checked),
    ]
    if with_static_key:
        parts.append(identity.static_keypair.public)
    parts.append(identity.verify_key)
    body = b"".join(parts)
    return body + identity.sign(BEACON_TAG + body)


def decode_beacon(
    datagram: bytes | bytearray | memoryview,
    *,
    trust: TrustLookup | None = None,
    now: float | None = None,
) -> Beacon:
    """Parse and verify a received datagram; see the module docstring for the checks.

    Only zmqcomm errors leave this function, whatever the bytes.
    """
    if trust is not None and now is None:
        raise UsageError("decode_beacon needs now= when a trust store is given")
    # cast: the hint says bytes, but a caller's bug must still end as a zmqcomm error.
    if not isinstance(cast(object, datagram), (bytes, bytearray, memoryview)):
        raise UsageError(f"a datagram is bytes, got {type(datagram).__name__}")
    # A memoryview's len() counts items, not bytes.
    size = datagram.nbytes if isinstance(datagram, memoryview) else len(datagram)
    # Size first, before any copy or parse: an oversize datagram costs one comparison.
    if not MIN_BEACON_LEN <= size <= MAX_BEACON_LEN:
        raise BeaconError(
            f"a beacon is {MIN_BEACON_LEN}..{MAX_BEACON_LEN} bytes", reason="beacon_size"
        )
    data = bytes(datagram)
    magic, version, flags, sender, incarnation, sequence, count = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise BeaconError("not a zmqcomm beacon", reason="bad_magic")
    if version != VERSION:
        raise BeaconError(
            f"beacon version {version} is not supported", reason="unsupported_version"
        )
    if flags & ~KNOWN_FLAGS:
        raise BeaconError(f"unknown beacon flags 0x{flags:02x}", reason="unknown_flags")
    has_static = bool(flags & FLAG_STATIC_KEY)
    expected = HEAD_LEN + 2 * count + (KEY_LEN if has_static else 0) + KEY_LEN + SIGNATURE_LEN
    if count > MAX_PORTS or len(data) != expected:
        raise BeaconError("beacon length does not match its fields", reason="bad_length")
    offset = HEAD_LEN
    ports = struct.unpack_from(f">{count}H", data, offset)
    offset += 2 * count
    if 0 in ports:
        raise BeaconError("beacon announces port 0", reason="bad_port")
    static_key: bytes | None = None
    if has_static:
        static_key = data[offset : offset + KEY_LEN]
        offset += KEY_LEN
    verify_key = data[offset : offset + KEY_LEN]
    offset += KEY_LEN
    # Hash before the signature: one BLAKE2b is far cheaper than an Ed25519 verification.
    claimed = hashlib.blake2b(verify_key, digest_size=SENDER_ID_LEN).digest()
    if not hmac.compare_digest(claimed, sender):
        raise BeaconAuthenticationError(
            "beacon sender id does not match its key", reason="sender_mismatch"
        )
    try:
        verify_signature(verify_key, BEACON_TAG + data[:offset], data[offset:])
    except AuthenticationError as exc:
        raise BeaconAuthenticationError("bad beacon signature", reason="bad_signature") from exc
    beacon = Beacon(sender, sequence, ports, verify_key, static_key, incarnation)
    if trust is not None and now is not None:  # now is required with trust (checked above)
        entry = trust.lookup(beacon.agent_id, now=now)  # UnknownPeerError propagates
        if not hmac.compare_digest(bytes(entry.verify_key), verify_key):
            raise BeaconAuthenticationError(
                f"beacon key of {beacon.agent_id} differs from the trusted one",
                reason="key_changed",
            )
    return beacon
