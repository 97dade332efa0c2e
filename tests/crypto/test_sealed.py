"""Sealed one-shot messages: round trip, tampering, truncation, forwarding, time, hostile input."""

from __future__ import annotations

import ast
import random
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from nacl.public import PrivateKey, PublicKey, SealedBox

from zmqcomm.crypto import sealed
from zmqcomm.crypto.keys import Certificate, Identity
from zmqcomm.crypto.sealed import (
    DEFAULT_MAX_SKEW,
    SEAL_OVERHEAD,
    SEALED_VERSION,
    SealedMessage,
    open_sealed,
    seal,
)
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import (
    AuthenticationError,
    LimitExceededError,
    LocalProtocolError,
    UnknownPeerError,
    UsageError,
    ZmqCommError,
)

NOW = 1_800_000_000.0
SECRET = b"the launch code is 0000 -- do not log me"


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate("alice")


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity.generate("bob")


@pytest.fixture(scope="module")
def carol() -> Identity:
    return Identity.generate("carol")


@pytest.fixture(scope="module")
def blob(alice: Identity, bob: Identity) -> bytes:
    return seal(SECRET, sender=alice, recipient=bob.public, now=NOW)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _assert_no_leak(exc: BaseException, secret: bytes = SECRET) -> None:
    """The plaintext appears nowhere in the exception chain: text, args or attributes."""
    for link in _chain(exc):
        texts = [str(link), repr(link), repr(link.args), repr(vars(link))]
        for text in texts:
            assert secret.decode("latin-1") not in text
            assert secret.hex() not in text
            assert repr(secret)[2:-1] not in text


def _reason(exc_info: pytest.ExceptionInfo[BaseException]) -> str:
    return str(getattr(exc_info.value, "reason", ""))


def _inner(
    signer: Identity,
    to: Identity,
    *,
    created: float = NOW,
    message: bytes = SECRET,
    certificate: Certificate | None = None,
) -> bytes:
    """The body seal() would put in the box, built by hand so tests can bend any part."""
    signed = (to.static_keypair.public, to.verify_key, created, message)
    cert = (certificate or signer.certificate).encode()
    return sealed._pack(cert, signed, signer.sign(sealed._signed_bytes(signed)))


def _box(inner: bytes, to: Identity) -> bytes:
    return bytes(SealedBox(PublicKey(to.static_keypair.public)).encrypt(inner))


def _unbox(data: bytes, me: Identity) -> bytes:
    return bytes(SealedBox(PrivateKey(me.static_keypair.private)).decrypt(data))


# -- round trip -------------------------------------------------------------------------------


def test_round_trip(alice: Identity, bob: Identity, blob: bytes) -> None:
    opened = open_sealed(blob, recipient=bob, now=NOW + 10)
    assert isinstance(opened, SealedMessage)
    assert opened.message == SECRET
    assert opened.created == NOW
    assert opened.agent_id == alice.agent_id
    assert opened.sender_certificate == alice.certificate
    assert SECRET not in blob  # encrypted, not just signed


@pytest.mark.parametrize("message", [b"", b"x", bytes(range(256)) * 300])
def test_round_trip_sizes_and_certificate_recipient(
    alice: Identity, bob: Identity, message: bytes
) -> None:
    data = seal(message, sender=alice, recipient=bob.certificate, now=NOW)
    assert open_sealed(data, recipient=bob, now=NOW).message == message


def test_each_seal_is_fresh(alice: Identity, bob: Identity) -> None:
    # A new ephemeral key each time: equal messages give unlinkable blobs.
    first, second = (seal(SECRET, sender=alice, recipient=bob.public, now=NOW) for _ in "ab")
    assert first != second
    assert open_sealed(first, recipient=bob, now=NOW) == open_sealed(second, recipient=bob, now=NOW)


def test_repr_hides_the_message(bob: Identity, blob: bytes) -> None:
    opened = open_sealed(blob, recipient=bob, now=NOW)
    assert SECRET.decode() not in repr(opened)
    assert SECRET.decode() not in str(opened)
    assert opened.agent_id in repr(opened)


def test_seal_refuses_non_bytes(alice: Identity, bob: Identity) -> None:
    with pytest.raises(UsageError):
        seal("text", sender=alice, recipient=bob.public, now=NOW)  # type: ignore[arg-type]


# -- damage -----------------------------------------------------------------------------------


def test_every_flipped_byte_is_refused(bob: Identity, blob: bytes) -> None:
    for position in range(len(blob)):
        damaged = bytearray(blob)
        damaged[position] ^= 0x01
        with pytest.raises(AuthenticationError) as exc_info:
            open_sealed(bytes(damaged), recipient=bob, now=NOW)
        assert _reason(exc_info) == "bad_seal", position
        _assert_no_leak(exc_info.value)


def test_every_truncation_is_refused(bob: Identity, blob: bytes) -> None:
    for length in range(len(blob)):
        with pytest.raises(AuthenticationError) as exc_info:
            open_sealed(blob[:length], recipient=bob, now=NOW)
        assert _reason(exc_info) == "bad_seal", length


def test_appended_bytes_are_refused(bob: Identity, blob: bytes) -> None:
    with pytest.raises(AuthenticationError, match="does not open"):
        open_sealed(blob + b"\x00", recipient=bob, now=NOW)


def test_low_order_ephemeral_key_is_refused(bob: Identity, blob: bytes) -> None:
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(bytes(32) + blob[32:], recipient=bob, now=NOW)
    assert _reason(exc_info) == "bad_seal"


# -- recipients -------------------------------------------------------------------------------


def test_another_identity_cannot_open(carol: Identity, blob: bytes) -> None:
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(blob, recipient=carol, now=NOW)
    assert _reason(exc_info) == "bad_seal"
    _assert_no_leak(exc_info.value)


def test_forwarding_attack_is_refused(bob: Identity, carol: Identity, blob: bytes) -> None:
    # Bob opens Alice's mail and re-seals the very bytes Alice signed to Carol, hoping Carol
    # takes it as Alice writing to her. The signature still names Bob as the recipient.
    forwarded = _box(_unbox(blob, bob), carol)
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(forwarded, recipient=carol, now=NOW)
    assert _reason(exc_info) == "wrong_recipient"
    assert bob.agent_id in str(exc_info.value)
    _assert_no_leak(exc_info.value)


def test_forwarding_with_rewritten_recipient_breaks_the_signature(
    bob: Identity, carol: Identity, blob: bytes
) -> None:
    # Rewriting the recipient fields to Carol's keys makes them match, but Alice never signed
    # those bytes.
    fields = msgpack.unpackb(_unbox(blob, bob), raw=False)
    fields[2], fields[3] = carol.static_keypair.public, carol.verify_key
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(_box(msgpack.packb(fields), carol), recipient=carol, now=NOW)
    assert _reason(exc_info) == "bad_signature"


def test_hand_built_inner_opens(alice: Identity, bob: Identity) -> None:
    # The helpers the attack tests use build exactly what seal() builds.
    opened = open_sealed(_box(_inner(alice, bob), bob), recipient=bob, now=NOW)
    assert (opened.message, opened.agent_id) == (SECRET, alice.agent_id)


def test_signature_by_another_key_is_refused(
    alice: Identity, bob: Identity, carol: Identity
) -> None:
    # Carol signs, but presents Alice's (valid) certificate.
    forged = _box(_inner(carol, bob, certificate=alice.certificate), bob)
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(forged, recipient=bob, now=NOW)
    assert _reason(exc_info) == "bad_signature"


def test_forged_certificate_is_refused(alice: Identity, bob: Identity, carol: Identity) -> None:
    # Alice's Ed25519 key claiming Carol's static key, signed by nobody valid.
    cert = Certificate(alice.verify_key, carol.static_keypair.public, None, bytes(64))
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(_box(_inner(alice, bob, certificate=cert), bob), recipient=bob, now=NOW)
    assert _reason(exc_info) == "bad_signature"


def test_seal_refuses_an_unsigned_recipient_key(alice: Identity, bob: Identity) -> None:
    # A certificate whose static key its owner never vouched for: do not encrypt to it.
    cert = Certificate(bob.verify_key, alice.static_keypair.public, None, bytes(64))
    with pytest.raises(AuthenticationError):
        seal(SECRET, sender=alice, recipient=cert, now=NOW)


def test_seal_refuses_a_low_order_recipient_key(alice: Identity, bob: Identity) -> None:
    low = b"\x01" + bytes(31)  # the X25519 point of order 1 (identity)
    cert = Certificate(
        bob.verify_key, low, None, bob.sign(Certificate.signed_bytes(bob.verify_key, low, None))
    )
    with pytest.raises(AuthenticationError) as exc_info:
        seal(SECRET, sender=alice, recipient=cert, now=NOW)
    assert _reason(exc_info) == "low_order_key"


# -- time -------------------------------------------------------------------------------------


def test_expired_sender_certificate_is_refused(bob: Identity) -> None:
    dave = Identity.generate("dave", cert_expires=int(NOW) + 100)
    data = seal(SECRET, sender=dave, recipient=bob.public, now=NOW)
    assert open_sealed(data, recipient=bob, now=NOW + 99).message == SECRET
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(data, recipient=bob, now=NOW + 100)
    assert _reason(exc_info) == "certificate_expired"


def test_seal_refuses_expired_certificates(alice: Identity, bob: Identity) -> None:
    dave = Identity.generate("dave", cert_expires=int(NOW))
    with pytest.raises(UsageError):
        seal(SECRET, sender=dave, recipient=bob.public, now=NOW)
    with pytest.raises(AuthenticationError) as exc_info:
        seal(SECRET, sender=alice, recipient=dave.public, now=NOW)
    assert _reason(exc_info) == "certificate_expired"


def test_max_age(bob: Identity, blob: bytes) -> None:
    assert open_sealed(blob, recipient=bob, now=NOW + 60, max_age=60).message == SECRET
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(blob, recipient=bob, now=NOW + 60.5, max_age=60)
    assert _reason(exc_info) == "sealed_expired"
    # Without max_age, old mail is fine: store-and-forward may take days.
    assert open_sealed(blob, recipient=bob, now=NOW + 30 * 86400).message == SECRET


def test_future_timestamp_is_refused(alice: Identity, bob: Identity) -> None:
    data = seal(SECRET, sender=alice, recipient=bob.public, now=NOW + DEFAULT_MAX_SKEW)
    assert open_sealed(data, recipient=bob, now=NOW).message == SECRET  # within the skew
    early = seal(SECRET, sender=alice, recipient=bob.public, now=NOW + DEFAULT_MAX_SKEW + 1)
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(early, recipient=bob, now=NOW)
    assert _reason(exc_info) == "sealed_from_future"
    assert open_sealed(early, recipient=bob, now=NOW, max_skew=400).message == SECRET


@pytest.mark.parametrize("created", [float("nan"), float("inf"), float("-inf"), -1.0])
def test_non_finite_or_negative_created_is_malformed(
    alice: Identity, bob: Identity, created: float
) -> None:
    # NaN compares false with everything: it would pass both age checks if it got that far.
    data = _box(_inner(alice, bob, created=created), bob)
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(data, recipient=bob, now=NOW, max_age=60)
    assert _reason(exc_info) == "malformed_sealed"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_bad_clock_values_are_usage_errors(
    alice: Identity, bob: Identity, blob: bytes, bad: float
) -> None:
    with pytest.raises(UsageError):
        seal(SECRET, sender=alice, recipient=bob.public, now=bad)
    with pytest.raises(UsageError):
        open_sealed(blob, recipient=bob, now=bad)
    with pytest.raises(UsageError):
        open_sealed(blob, recipient=bob, now=NOW, max_age=bad)
    with pytest.raises(UsageError):
        open_sealed(blob, recipient=bob, now=NOW, max_skew=bad)


# -- sizes ------------------------------------------------------------------------------------


def test_oversize_is_refused_before_decrypting(
    bob: Identity, blob: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_box(*args: object) -> None:
        raise AssertionError("decryption attempted on an oversize blob")

    monkeypatch.setattr(sealed, "SealedBox", no_box)
    with pytest.raises(LimitExceededError) as exc_info:
        open_sealed(blob, recipient=bob, now=NOW, max_size=len(blob) - 1)
    assert _reason(exc_info) == "sealed_too_large"
    with pytest.raises(LimitExceededError):
        open_sealed(bytes(sealed.DEFAULT_MAX_SEALED_SIZE + 1), recipient=bob, now=NOW)


def test_size_limit_is_inclusive(bob: Identity, blob: bytes) -> None:
    assert open_sealed(blob, recipient=bob, now=NOW, max_size=len(blob)).message == SECRET


def test_seal_refuses_what_the_recipient_would_refuse(alice: Identity, bob: Identity) -> None:
    with pytest.raises(LocalProtocolError):
        seal(bytes(1000), sender=alice, recipient=bob.public, now=NOW, max_size=1000)
    data = seal(bytes(1000), sender=alice, recipient=bob.public, now=NOW, max_size=2000)
    assert len(data) <= 2000
    assert len(data) > 1000 + SEAL_OVERHEAD


# -- hostile input ----------------------------------------------------------------------------


def test_random_garbage_raises_only_zmqcomm_errors(bob: Identity) -> None:
    rng = random.Random(20240601)
    for _ in range(300):
        data = rng.randbytes(rng.choice([0, 1, 47, 48, 49, rng.randrange(400)]))
        with pytest.raises(ZmqCommError):
            open_sealed(data, recipient=bob, now=NOW)


def test_random_garbage_inside_a_valid_box_is_malformed(bob: Identity) -> None:
    # Anyone may seal to Bob, so the parser behind the box sees attacker bytes too.
    rng = random.Random(7)
    for _ in range(300):
        inner = bytes([0x97]) + rng.randbytes(rng.randrange(300))  # claims a 7-array
        with pytest.raises(ZmqCommError):
            open_sealed(_box(inner, bob), recipient=bob, now=NOW)


def _with_field(alice: Identity, bob: Identity, index: int, value: object) -> bytes:
    fields = msgpack.unpackb(_inner(alice, bob), raw=False)
    fields[index] = value
    return bytes(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, SEALED_VERSION + 1),
        (0, True),
        (0, 1.0),
        (1, "certificate"),
        (2, b"\x00" * 31),
        (3, None),
        (4, int(NOW)),
        (5, "text message"),
        (6, b"\x00" * 63),
    ],
)
def test_malformed_fields(alice: Identity, bob: Identity, index: int, value: object) -> None:
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(_box(_with_field(alice, bob, index, value), bob), recipient=bob, now=NOW)
    assert _reason(exc_info) == "malformed_sealed"


def test_malformed_certificate(alice: Identity, bob: Identity) -> None:
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(_box(_with_field(alice, bob, 1, b"junk"), bob), recipient=bob, now=NOW)
    assert _reason(exc_info) == "bad_certificate"


@pytest.mark.parametrize(
    "inner",
    [
        b"",
        msgpack.packb([]),
        msgpack.packb({"a": 1}),
        msgpack.packb([1, 2, 3, 4, 5, 6, 7, 8]),
        b"\x91" * 5000 + b"\xc0",  # deep nesting
        b"\xc6\xff\xff\xff\xff",  # a bin claiming 4 GiB
        msgpack.packb(msgpack.ExtType(1, b"x")),
    ],
)
def test_malformed_structures(bob: Identity, inner: bytes) -> None:
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(_box(inner, bob), recipient=bob, now=NOW)
    assert _reason(exc_info) == "malformed_sealed"


def test_trailing_bytes_are_refused_without_leaking(alice: Identity, bob: Identity) -> None:
    # msgpack's ExtraData carries the decoded object: it must not ride along in the chain.
    with pytest.raises(AuthenticationError) as exc_info:
        open_sealed(_box(_inner(alice, bob) + b"\x00", bob), recipient=bob, now=NOW)
    assert _reason(exc_info) == "malformed_sealed"
    assert exc_info.value.__cause__ is None and exc_info.value.__context__ is None
    _assert_no_leak(exc_info.value)


# -- trust ------------------------------------------------------------------------------------


def test_trust_store_accepts_a_trusted_sender(
    tmp_path: Path, alice: Identity, bob: Identity, blob: bytes
) -> None:
    store = TrustStore(tmp_path / "trust")
    store.add(alice.public, ["worker"])
    assert open_sealed(blob, recipient=bob, now=NOW, trust=store).message == SECRET


def test_trust_store_errors_propagate(
    tmp_path: Path, alice: Identity, bob: Identity, blob: bytes
) -> None:
    store = TrustStore(tmp_path / "trust")
    with pytest.raises(UnknownPeerError) as exc_info:
        open_sealed(blob, recipient=bob, now=NOW, trust=store)
    assert _reason(exc_info) == "unknown_peer"
    store.add(alice.public)
    store.revoke(alice.agent_id)
    with pytest.raises(UnknownPeerError) as exc_info:
        open_sealed(blob, recipient=bob, now=NOW, trust=store)
    assert _reason(exc_info) == "revoked"


def test_tofu_never_pins_a_forged_sender(
    tmp_path: Path, alice: Identity, bob: Identity, carol: Identity
) -> None:
    store = TrustStore(tmp_path / "trust", tofu=True)
    forged = _box(_inner(carol, bob, certificate=alice.certificate), bob)
    with pytest.raises(AuthenticationError):
        open_sealed(forged, recipient=bob, now=NOW, trust=store)
    assert alice.agent_id not in store
    genuine = seal(SECRET, sender=alice, recipient=bob.public, now=NOW)
    open_sealed(genuine, recipient=bob, now=NOW, trust=store)
    assert alice.agent_id in store


# -- purity -----------------------------------------------------------------------------------


def test_module_is_pure() -> None:
    """No clocks, sockets, threads or randomness of its own: time comes in as ``now``."""
    forbidden = {"zmq", "socket", "asyncio", "time", "random", "threading", "selectors"}
    tree = ast.parse(Path(sealed.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported
    assert not imported & forbidden
    assert len(Path(sealed.__file__).read_text().splitlines()) < 250
