"""Sealed one-shot messages: signed mail to a known public key, no session (pure).

For store-and-forward delivery: a broker holds the blob while the recipient is offline and the
recipient opens it later. Format (``docs/security.md``, "Sealed one-shot messages")::

    blob      = crypto_box_seal(inner, recipient X25519 key)   # ephemeral key, 48 bytes extra
    inner     = msgpack [version, sender certificate, recipient X25519 key,
                         recipient Ed25519 key, created (float), message, signature]
    signature = Ed25519 by the sender over  "zmqcomm/1 sealed" || version
                || recipient X25519 key || recipient Ed25519 key || created (>d) || message

The sealed box gives confidentiality to the recipient only; the signature gives sender
authenticity. Signing the recipient's keys binds the mail to its recipient: B, having opened
mail from A, cannot re-seal it to C as if A had written to C. The sender's certificate rides
inside the box, so the broker does not learn who wrote.

No forward secrecy (a stolen recipient key opens all stored mail) and no replay protection:
put a message id in ``message`` and remember the ids seen for ``max_age``.

Pure: no clocks, sockets or threads; time comes in as ``now`` (epoch seconds).
"""

from __future__ import annotations

import hmac
import math
import struct
from dataclasses import dataclass, field

import msgpack
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from zmqcomm.checks import check_seconds
from zmqcomm.crypto.handshake import CertificateChecker
from zmqcomm.crypto.keys import (
    KEY_LEN,
    SIGNATURE_LEN,
    Certificate,
    Identity,
    PublicIdentity,
    agent_id,
    verify_signature,
)
from zmqcomm.errors import AuthenticationError, LimitExceededError, LocalProtocolError, UsageError

#: Domain separation: distinct from every other signature zmqcomm makes (certificates).
SEALED_TAG = b"zmqcomm/1 sealed"
SEALED_VERSION = 1
#: crypto_box_seal adds an ephemeral public key (32) and a Poly1305 tag (16).
SEAL_OVERHEAD = 48
DEFAULT_MAX_SEALED_SIZE = 1024 * 1024
DEFAULT_MAX_SKEW = 300.0
_FIELDS = 7
#: (recipient X25519 key, recipient Ed25519 key, created, message): what the sender signs.
_Signed = tuple[bytes, bytes, float, bytes]


@dataclass(frozen=True)
class SealedMessage:
    """An opened sealed message. Whether to trust its sender is the caller's decision."""

    sender_certificate: Certificate
    created: float
    message: bytes = field(repr=False)

    @property
    def agent_id(self) -> str:
        """The sender's agent id."""
        return self.sender_certificate.agent_id

    def __repr__(self) -> str:
        # The plaintext stays out of logs; its size is enough to debug with.
        return (
            f"SealedMessage(agent_id={self.agent_id!r}, created={self.created!r}, "
            f"size={len(self.message)})"
        )


def _signed_bytes(signed: _Signed) -> bytes:
    r_static, r_verify, created, message = signed
    # Fixed-length fields first, the message last: an unambiguous layout with no encoder in it.
    head = SEALED_TAG + bytes([SEALED_VERSION]) + r_static + r_verify
    return head + struct.pack(">d", created) + message


def _pack(certificate: bytes, signed: _Signed, signature: bytes) -> bytes:
    packed: bytes = msgpack.packb(
        [SEALED_VERSION, certificate, *signed, signature], use_bin_type=True
    )
    return packed


def _malformed() -> AuthenticationError:
    return AuthenticationError("malformed sealed message", reason="malformed_sealed")


def _unpack(inner: bytes, max_size: int) -> tuple[bytes, _Signed, bytes]:
    """Parse the decrypted body under strict limits: anyone can seal to us, so it is hostile."""
    try:
        fields: object = msgpack.unpackb(
            inner,
            raw=False,
            max_bin_len=max_size,
            max_str_len=0,
            max_array_len=_FIELDS,
            max_map_len=0,
            max_ext_len=0,
            strict_map_key=True,
        )
    except Exception:  # msgpack raises many types on garbage
        fields = None
    # Raised outside the handler: msgpack errors (ExtraData) hold decrypted bytes and would
    # ride along as __context__.
    if not isinstance(fields, list) or len(fields) != _FIELDS:
        raise _malformed()
    version, certificate, r_static, r_verify, created, message, signature = fields
    if not (
        type(version) is int  # not True, not 1.0
        and version == SEALED_VERSION
        and isinstance(certificate, bytes)
        and isinstance(r_static, bytes)
        and len(r_static) == KEY_LEN
        and isinstance(r_verify, bytes)
        and len(r_verify) == KEY_LEN
        # NaN or infinity would slip past every time comparison below.
        and type(created) is float
        and math.isfinite(created)
        and created >= 0
        and isinstance(message, bytes)
        and isinstance(signature, bytes)
        and len(signature) == SIGNATURE_LEN
    ):
        raise _malformed()
    return certificate, (r_static, r_verify, created, message), signature


def seal(
    message: bytes,
    *,
    sender: Identity,
    recipient: PublicIdentity | Certificate,
    now: float,
    max_size: int = DEFAULT_MAX_SEALED_SIZE,
) -> bytes:
    """Encrypt ``message`` to ``recipient`` and sign it as ``sender``; see the module doc.

    The recipient's certificate must verify at ``now`` (:class:`AuthenticationError`
    otherwise): we only encrypt to a static key its owner vouches for. A blob larger than
    ``max_size`` is refused (:class:`LocalProtocolError`) since the recipient would refuse it.
    """
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise UsageError(f"a sealed message is bytes, got {type(message).__name__}")
    check_seconds(now, "now")
    certificate = recipient if isinstance(recipient, Certificate) else recipient.certificate
    certificate.verify(now=now)
    own = sender.certificate
    if own.expires is not None and now >= own.expires:
        raise UsageError("our certificate has expired: issue a new one before sealing")
    signed = (certificate.static_public, certificate.verify_key, float(now), bytes(message))
    inner = _pack(own.encode(), signed, sender.sign(_signed_bytes(signed)))
    if len(inner) + SEAL_OVERHEAD > max_size:
        raise LocalProtocolError(
            f"sealed message of {len(inner) + SEAL_OVERHEAD} bytes exceeds max_size ({max_size})",
            reason="sealed_too_large",
        )
    try:
        return bytes(SealedBox(PublicKey(certificate.static_public)).encrypt(inner))
    except CryptoError:  # libsodium refuses a low-order key (all-zero shared secret)
        raise AuthenticationError(
            f"the X25519 key of {certificate.agent_id} has low order", reason="low_order_key"
        ) from None


def open_sealed(
    data: bytes,
    *,
    recipient: Identity,
    now: float,
    max_size: int = DEFAULT_MAX_SEALED_SIZE,
    max_age: float | None = None,
    max_skew: float = DEFAULT_MAX_SKEW,
    trust: CertificateChecker | None = None,
) -> SealedMessage:
    """Open a blob made by :func:`seal` for ``recipient``, or raise.

    Checks, in order: size (:class:`LimitExceededError`, before any cryptography), the box
    (``bad_seal``), the inner structure (``malformed_sealed``), the sender's certificate at
    ``now`` (an expired one is refused even if it was valid when sealed: an old key must not
    keep writing), the sender's signature (``bad_signature``), that the mail was addressed to
    us (``wrong_recipient``), and its age: ``created`` more than ``max_skew`` seconds ahead of
    ``now`` (``sealed_from_future``) or more than ``max_age`` behind (``sealed_expired``). All
    but the size are :class:`AuthenticationError`.

    Whether the sender is *trusted* is not decided here: the caller gets the verified
    certificate and decides. Given a ``trust`` store, its ``check_certificate`` runs last (after
    every cryptographic check, so a TOFU store never pins a forged sender) and its errors
    propagate. Replays are not detected: see the module doc.
    """
    if len(data) > max_size:
        raise LimitExceededError(
            f"sealed message of {len(data)} bytes exceeds max_size ({max_size})",
            reason="sealed_too_large",
        )
    check_seconds(now, "now")
    check_seconds(max_skew, "max_skew")
    if max_age is not None:
        check_seconds(max_age, "max_age")
    try:
        inner = SealedBox(PrivateKey(recipient.static_keypair.private)).decrypt(bytes(data))
    except CryptoError:
        raise AuthenticationError(
            "sealed message does not open with our key", reason="bad_seal"
        ) from None
    cert_bytes, signed, signature = _unpack(inner, max_size)
    r_static, r_verify, created, message = signed
    certificate = Certificate.decode(cert_bytes)
    certificate.verify(now=now)
    verify_signature(certificate.verify_key, _signed_bytes(signed), signature)
    if not (
        hmac.compare_digest(r_static, recipient.static_keypair.public)
        and hmac.compare_digest(r_verify, recipient.verify_key)
    ):
        raise AuthenticationError(
            f"sealed message from {certificate.agent_id} was addressed to {agent_id(r_verify)}",
            reason="wrong_recipient",
        )
    if created > now + max_skew:
        raise AuthenticationError(
            f"sealed message from {certificate.agent_id} is dated in the future",
            reason="sealed_from_future",
        )
    if max_age is not None and now - created > max_age:
        raise AuthenticationError(
            f"sealed message from {certificate.agent_id} is older than {max_age} s",
            reason="sealed_expired",
        )
    if trust is not None:
        trust.check_certificate(certificate, now=now)
    return SealedMessage(certificate, created, message)
