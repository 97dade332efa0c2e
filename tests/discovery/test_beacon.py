"""Discovery beacons: round trips, the byte layout, and hostile datagrams of every kind."""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import (
    AuthenticationError,
    RemoteProtocolError,
    UnknownPeerError,
    UsageError,
    ZmqCommError,
)
from zmqcomm.patterns.discovery import (
    MAX_BEACON_LEN,
    MIN_BEACON_LEN,
    Beacon,
    BeaconError,
    decode_beacon,
    encode_beacon,
)
from zmqcomm.patterns.discovery.beacon import BEACON_TAG

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate("alice")


@pytest.fixture(scope="module")
def mallory() -> Identity:
    return Identity.generate("mallory")


@pytest.fixture(scope="module")
def full(alice: Identity) -> bytes:
    """The largest valid beacon: 8 ports and the static key."""
    return encode_beacon(
        alice,
        sequence=7,
        ports=[1, 2, 3, 4, 5, 6, 7, 65535],
        incarnation=0x0123456789ABCDEF,
        with_static_key=True,
    )


def _reason(exc_info: pytest.ExceptionInfo[BaseException]) -> str:
    return str(getattr(exc_info.value, "reason", ""))


def test_round_trip_without_static_key(alice: Identity) -> None:
    data = encode_beacon(alice, sequence=42, ports=[5555, 5556])
    assert len(data) == MIN_BEACON_LEN + 4
    beacon = decode_beacon(data)
    assert beacon == Beacon(alice.sender_id, 42, (5555, 5556), alice.verify_key, None)
    assert beacon.agent_id == alice.agent_id


def test_round_trip_with_static_key(alice: Identity) -> None:
    data = encode_beacon(
        alice, sequence=2**64 - 1, ports=[], incarnation=2**64 - 1, with_static_key=True
    )
    beacon = decode_beacon(bytearray(data))
    assert beacon.static_key == alice.static_keypair.public
    assert beacon.sequence == 2**64 - 1
    assert beacon.incarnation == 2**64 - 1
    assert beacon.ports == ()
    assert decode_beacon(memoryview(data)) == beacon


def test_byte_layout_matches_the_documented_table(alice: Identity, full: bytes) -> None:
    assert len(full) == MAX_BEACON_LEN == 182
    assert MIN_BEACON_LEN == 134
    assert full[:3] == b"ZCB"
    assert full[3] == 3
    assert full[4] == 0x01
    assert (
        full[5:21] == alice.sender_id == hashlib.blake2b(alice.verify_key, digest_size=16).digest()
    )
    assert struct.unpack(">Q", full[21:29]) == (0x0123456789ABCDEF,)
    assert struct.unpack(">Q", full[29:37]) == (7,)
    assert full[37] == 8
    assert struct.unpack(">8H", full[38:54]) == (1, 2, 3, 4, 5, 6, 7, 65535)
    assert full[54:86] == alice.static_keypair.public
    assert full[86:118] == alice.verify_key
    # The tag is signed but not sent.
    assert BEACON_TAG not in full
    assert full[118:] == alice.sign(BEACON_TAG + full[:118])


@pytest.mark.parametrize("version", [1, 2])
def test_version_1_and_2_beacons_are_refused(full: bytes, version: int) -> None:
    # v1 had a u32 sequence that restarted with the agent: tables guessed restarts wrongly.
    # v2 had no incarnation: a restart with the clock behind its earlier life went unheard.
    old = full[:3] + bytes([version]) + full[4:]
    with pytest.raises(BeaconError) as info:
        decode_beacon(old)
    assert _reason(info) == "unsupported_version"


def test_every_truncation_and_extension_is_refused(full: bytes) -> None:
    for cut in range(len(full)):
        with pytest.raises(RemoteProtocolError):
            decode_beacon(full[:cut])
    with pytest.raises(BeaconError) as info:
        decode_beacon(full + b"\x00")
    assert _reason(info) == "beacon_size"


def test_every_bit_flip_is_refused(full: bytes, alice: Identity) -> None:
    short = encode_beacon(alice, sequence=1, ports=[9])
    for data in (full, short):
        for index in range(len(data)):
            for bit in range(8):
                flipped = bytearray(data)
                flipped[index] ^= 1 << bit
                with pytest.raises(RemoteProtocolError):
                    decode_beacon(bytes(flipped))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b"XCB" + b[3:], "bad_magic"),
        (lambda b: b[:3] + b"\x04" + b[4:], "unsupported_version"),
        (lambda b: b[:4] + b"\x03" + b[5:], "unknown_flags"),
        (lambda b: b[:4] + b"\x00" + b[5:], "bad_length"),
        (lambda b: b[:37] + b"\x09" + b[38:], "bad_length"),
        (lambda b: b[:38] + b"\x00\x00" + b[40:], "bad_port"),
        (lambda b: b[:5] + bytes(16) + b[21:], "sender_mismatch"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 0x40]), "bad_signature"),
        (lambda b: b[:21] + (8).to_bytes(8, "big") + b[29:], "bad_signature"),  # incarnation
        (lambda b: b[:29] + (8).to_bytes(8, "big") + b[37:], "bad_signature"),  # sequence
    ],
)
def test_each_check_has_its_reason(full: bytes, mutate: object, reason: str) -> None:
    assert callable(mutate)
    with pytest.raises(BeaconError) as info:
        decode_beacon(mutate(full))
    assert _reason(info) == reason


def test_random_garbage_raises_only_zmqcomm_errors(full: bytes) -> None:
    rng = random.Random(20261126)
    for _ in range(1000):
        data = rng.randbytes(rng.randint(0, 600))
        with pytest.raises(ZmqCommError):
            decode_beacon(data)
    # Garbage that passes the cheap checks reaches the deeper ones.
    for _ in range(1000):
        count = rng.randint(0, 9)
        head = b"ZCB\x03" + bytes([rng.choice([0, 1, 2])]) + rng.randbytes(32) + bytes([count])
        data = head + rng.randbytes(rng.randint(0, MAX_BEACON_LEN - len(head)))
        with pytest.raises(ZmqCommError):
            decode_beacon(data)


def test_zyre_beacon_is_refused_as_bad_magic() -> None:
    zyre = b"ZRE\x01" + bytes(range(16)) + struct.pack(">H", 5670)
    assert len(zyre) == 22
    # A bare Zyre beacon is too short for ours; padded into our size range it hits the magic.
    with pytest.raises(BeaconError) as info:
        decode_beacon(zyre)
    assert _reason(info) == "beacon_size"
    with pytest.raises(BeaconError) as info:
        decode_beacon(zyre + bytes(MIN_BEACON_LEN - len(zyre)))
    assert _reason(info) == "bad_magic"


def test_oversize_refused_before_parsing() -> None:
    # Perfectly valid-looking head, but too long: the size check fires first.
    with pytest.raises(BeaconError) as info:
        decode_beacon(b"ZCB\x03\x00" + bytes(MAX_BEACON_LEN))
    assert _reason(info) == "beacon_size"
    with pytest.raises(BeaconError) as info:
        decode_beacon(bytes(65_507))
    assert _reason(info) == "beacon_size"


def test_forged_sender_id_is_refused(alice: Identity, mallory: Identity) -> None:
    honest = encode_beacon(mallory, sequence=1, ports=[4000])
    # Mallory claims Alice's id but can only sign with her own key.
    forged = honest[:5] + alice.sender_id + honest[21:-64]
    forged += mallory.sign(BEACON_TAG + forged)
    with pytest.raises(AuthenticationError) as info:
        decode_beacon(forged)
    assert _reason(info) == "sender_mismatch"
    assert isinstance(info.value, RemoteProtocolError)
    # Alice's key in the beacon, signed by Mallory: the signature fails.
    forged = honest[:5] + alice.sender_id + honest[21:-96] + alice.verify_key
    forged += mallory.sign(BEACON_TAG + forged)
    with pytest.raises(AuthenticationError) as info:
        decode_beacon(forged)
    assert _reason(info) == "bad_signature"


def test_trust_store_refuses_unknown_and_accepts_known(
    tmp_path: Path, alice: Identity, mallory: Identity
) -> None:
    store = TrustStore(tmp_path / "trust")
    store.add(alice.public)
    good = decode_beacon(encode_beacon(alice, sequence=3, ports=[1]), trust=store, now=NOW)
    assert good.agent_id == alice.agent_id
    with pytest.raises(UnknownPeerError):
        decode_beacon(encode_beacon(mallory, sequence=3, ports=[1]), trust=store, now=NOW)


@dataclass
class _Entry:
    verify_key: bytes


class _FakeTrust:
    def __init__(self, key: bytes) -> None:
        self.key = key

    def lookup(self, agent_id: str, *, now: float) -> _Entry:
        return _Entry(self.key)


def test_key_changed_and_now_required(alice: Identity) -> None:
    data = encode_beacon(alice, sequence=3, ports=[1])
    with pytest.raises(AuthenticationError) as info:
        decode_beacon(data, trust=_FakeTrust(bytes(32)), now=NOW)
    assert _reason(info) == "key_changed"
    assert decode_beacon(data, trust=_FakeTrust(alice.verify_key), now=NOW).sequence == 3
    with pytest.raises(UsageError):
        decode_beacon(data, trust=_FakeTrust(alice.verify_key))


def test_non_bytes_input_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        decode_beacon(170)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        decode_beacon("ZCB" * 50)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sequence": -1, "ports": []},
        {"sequence": 2**64, "ports": []},
        {"sequence": 1, "ports": [0]},
        {"sequence": 1, "ports": [65536]},
        {"sequence": 1, "ports": [True]},
        {"sequence": 1, "ports": list(range(1, 10))},
        {"sequence": 1, "ports": [], "incarnation": -1},
        {"sequence": 1, "ports": [], "incarnation": 2**64},
        {"sequence": 1, "ports": [], "incarnation": 1.0},
    ],
)
def test_encode_refuses_bad_arguments(alice: Identity, kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        encode_beacon(alice, **kwargs)  # type: ignore[arg-type]
