"""Identities, certificates, ids and signatures.

An agent *is* its long-term Ed25519 signing key. Its ids are fingerprints of the 32-byte public
(verify) key:

- :func:`sender_id`: BLAKE2b with a 16-byte digest, the ``sender`` field of the wire header;
- :func:`agent_id`: the same 16 bytes in lowercase RFC 4648 base32 without padding, 26
  characters from ``a-z2-7`` (easy to read aloud, safe in file names, URLs and topics).

The X25519 static key used in Noise handshakes is generated independently and vouched for by a
:class:`Certificate`: the Ed25519 key signs ``"zmqcomm/1 static-key"``, its own public key, the
X25519 public key and an optional expiry, so a peer that trusts the Ed25519 key can check the
static key it met in the handshake.

Saving identities to key files and loading them back is :mod:`zmqcomm.crypto.key_files`.
No secret appears in any ``repr``, ``str`` or exception message.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from zmqcomm.crypto.noise import KeyPair
from zmqcomm.errors import AuthenticationError, UsageError

KEY_LEN = 32
SIGNATURE_LEN = 64
SENDER_ID_LEN = 16
AGENT_ID_LEN = 26
#: Domain separation: a certificate signature can never be mistaken for any other signature.
CERT_TAG = b"zmqcomm/1 static-key"
CERT_VERSION = 1
_MAX_CERT_SIZE = 256
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_AGENT_ID_RE = re.compile(r"[a-z2-7]{26}")


# -- ids --------------------------------------------------------------------------------------


def sender_id(verify_key: bytes) -> bytes:
    """The 16-byte id of an Ed25519 public key (the wire header's ``sender``)."""
    if len(verify_key) != KEY_LEN:
        raise UsageError(f"an Ed25519 public key is {KEY_LEN} bytes, got {len(verify_key)}")
    return hashlib.blake2b(verify_key, digest_size=SENDER_ID_LEN).digest()


def agent_id_from_sender(sender: bytes) -> str:
    """The readable form of a 16-byte sender id."""
    if len(sender) != SENDER_ID_LEN:
        raise UsageError(f"a sender id is {SENDER_ID_LEN} bytes, got {len(sender)}")
    return base64.b32encode(sender).decode("ascii").rstrip("=").lower()


def agent_id(verify_key: bytes) -> str:
    """The agent id: 26 lowercase base32 characters of :func:`sender_id`."""
    return agent_id_from_sender(sender_id(verify_key))


def is_agent_id(text: str) -> bool:
    return _AGENT_ID_RE.fullmatch(text) is not None


def sender_from_agent_id(text: str) -> bytes:
    """Inverse of :func:`agent_id_from_sender`."""
    if not is_agent_id(text):
        raise UsageError(f"not an agent id (26 characters a-z, 2-7): {text!r}")
    # 26 base32 characters carry 130 bits; the 2 spare bits must be zero to be canonical.
    decoded = base64.b32decode(text.upper() + "======")
    if agent_id_from_sender(decoded) != text:
        raise UsageError(f"not a canonical agent id: {text!r}")
    return decoded


def is_key_name(text: str) -> bool:
    return _NAME_RE.fullmatch(text) is not None


def check_name(name: str) -> str:
    """Names become file names: 1-64 of ``A-Z a-z 0-9 . _ -``, not starting with a dot."""
    if not isinstance(name, str) or not is_key_name(name):
        raise UsageError(
            f"invalid key name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return name


def verify_signature(verify_key: bytes, message: bytes, signature: bytes) -> None:
    """Check a detached Ed25519 signature; :class:`AuthenticationError` if it does not verify."""
    try:
        VerifyKey(bytes(verify_key)).verify(bytes(message), bytes(signature))
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise AuthenticationError("bad Ed25519 signature", reason="bad_signature") from exc


def signature_valid(verify_key: bytes, message: bytes, signature: bytes) -> bool:
    """:func:`verify_signature` as a yes or no, for callers that count bad signatures."""
    try:
        verify_signature(verify_key, message, signature)
    except AuthenticationError:
        return False
    return True


# -- certificates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """An Ed25519 key vouching for an X25519 static key, until ``expires`` (epoch seconds)."""

    verify_key: bytes
    static_public: bytes
    expires: int | None
    signature: bytes

    @staticmethod
    def signed_bytes(verify_key: bytes, static_public: bytes, expires: int | None) -> bytes:
        # Fixed layout, no encoder in the signed bytes: 0 stands for "no expiry".
        return CERT_TAG + verify_key + static_public + struct.pack(">Q", expires or 0)

    # Cached: every authenticated message looks its sender up by these.
    @functools.cached_property
    def agent_id(self) -> str:
        return agent_id(self.verify_key)

    @functools.cached_property
    def sender_id(self) -> bytes:
        return sender_id(self.verify_key)

    def verify(self, *, now: float | None = None) -> None:
        """Check the signature, and the expiry when ``now`` is given."""
        verify_signature(
            self.verify_key,
            self.signed_bytes(self.verify_key, self.static_public, self.expires),
            self.signature,
        )
        if now is not None and self.expires is not None and now >= self.expires:
            raise AuthenticationError(
                f"certificate of {self.agent_id} expired", reason="certificate_expired"
            )

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(
            [CERT_VERSION, self.verify_key, self.static_public, self.expires, self.signature],
            use_bin_type=True,
        )
        return packed

    @classmethod
    def decode(cls, data: bytes) -> Certificate:
        """Parse (not verify) a certificate from a peer; bounded, so garbage stays cheap."""
        bad = AuthenticationError("malformed certificate", reason="bad_certificate")
        if len(data) > _MAX_CERT_SIZE:
            raise bad
        try:
            fields = msgpack.unpackb(
                data,
                raw=False,
                max_bin_len=SIGNATURE_LEN,
                max_str_len=0,
                max_array_len=5,
                max_map_len=0,
                max_ext_len=0,
                strict_map_key=True,
            )
        except Exception as exc:  # msgpack raises many types on garbage
            raise bad from exc
        if not isinstance(fields, list) or len(fields) != 5 or fields[0] != CERT_VERSION:
            raise bad
        _, verify_key, static_public, expires, signature = fields
        if not (
            isinstance(verify_key, bytes)
            and len(verify_key) == KEY_LEN
            and isinstance(static_public, bytes)
            and len(static_public) == KEY_LEN
            and isinstance(signature, bytes)
            and len(signature) == SIGNATURE_LEN
            and (expires is None or (type(expires) is int and 0 < expires < 2**63))
        ):
            raise bad
        return cls(verify_key, static_public, expires, signature)

    def __repr__(self) -> str:
        return f"Certificate(agent_id={self.agent_id!r}, expires={self.expires!r})"


# -- identities -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicIdentity:
    """The shareable half of an identity: what a ``.pub`` file holds."""

    name: str
    certificate: Certificate

    @property
    def verify_key(self) -> bytes:
        return self.certificate.verify_key

    @property
    def static_public(self) -> bytes:
        return self.certificate.static_public

    @property
    def agent_id(self) -> str:
        return self.certificate.agent_id

    @property
    def sender_id(self) -> bytes:
        return self.certificate.sender_id

    def __repr__(self) -> str:
        return f"PublicIdentity(name={self.name!r}, agent_id={self.agent_id!r})"


class Identity:
    """An Ed25519 signing key plus the X25519 static key it vouches for."""

    __slots__ = ("_signing", "_static", "certificate", "name")

    def __init__(
        self,
        name: str,
        signing_seed: bytes,
        static_private: bytes,
        *,
        certificate: Certificate | None = None,
        cert_expires: int | None = None,
    ) -> None:
        self.name = check_name(name)
        if len(signing_seed) != KEY_LEN or len(static_private) != KEY_LEN:
            raise UsageError(f"identity secrets are {KEY_LEN} bytes each")
        self._signing = SigningKey(bytes(signing_seed))
        self._static = KeyPair.from_private(bytes(static_private))
        if certificate is None:
            certificate = self.issue_certificate(expires=cert_expires)
        elif (
            certificate.verify_key != self.verify_key
            or certificate.static_public != self._static.public
        ):
            raise UsageError("the certificate does not belong to these keys")
        self.certificate = certificate

    @classmethod
    def generate(cls, name: str, *, cert_expires: int | None = None) -> Identity:
        """Fresh keys from the OS random source."""
        return cls(name, os.urandom(KEY_LEN), os.urandom(KEY_LEN), cert_expires=cert_expires)

    @property
    def verify_key(self) -> bytes:
        return bytes(self._signing.verify_key)

    @property
    def static_keypair(self) -> KeyPair:
        """The X25519 key pair for the Noise handshake (``s``)."""
        return self._static

    @property
    def agent_id(self) -> str:
        return agent_id(self.verify_key)

    @property
    def sender_id(self) -> bytes:
        return sender_id(self.verify_key)

    @property
    def public(self) -> PublicIdentity:
        return PublicIdentity(self.name, self.certificate)

    def sign(self, message: bytes) -> bytes:
        """A detached 64-byte Ed25519 signature."""
        return bytes(self._signing.sign(bytes(message)).signature)

    def issue_certificate(self, *, expires: int | None = None) -> Certificate:
        """Vouch for our static key until ``expires`` (epoch seconds), or with no expiry."""
        if expires is not None and not 0 < expires < 2**63:
            raise UsageError(f"certificate expiry out of range: {expires}")
        static_public = self._static.public
        body = Certificate.signed_bytes(self.verify_key, static_public, expires)
        return Certificate(self.verify_key, static_public, expires, self.sign(body))

    def _secret_bytes(self) -> bytes:
        return bytes(self._signing.encode()) + self._static.private

    def __repr__(self) -> str:
        return f"Identity(name={self.name!r}, agent_id={self.agent_id!r})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        # Pickles end up in caches and logs; secrets leave only through save_identity().
        raise TypeError("an Identity cannot be pickled; save it with save_identity()")


# -- key files --------------------------------------------------------------------------------

# Saving and loading moved to zmqcomm.crypto.key_files, which imports this module. The names
# docs/keys.md showed here stay importable from here, fetched on first use to break the cycle.
_KEY_FILE_API = frozenset(
    {
        "KeyPaths",
        "SecretFileInfo",
        "inspect_secret_file",
        "key_file_kind",
        "load_identity",
        "load_public",
        "load_public_document",
        "save_identity",
    }
)

if TYPE_CHECKING:
    from zmqcomm.crypto import key_files

    KeyPaths = key_files.KeyPaths
    SecretFileInfo = key_files.SecretFileInfo
    inspect_secret_file = key_files.inspect_secret_file
    key_file_kind = key_files.key_file_kind
    load_identity = key_files.load_identity
    load_public = key_files.load_public
    load_public_document = key_files.load_public_document
    save_identity = key_files.save_identity
else:

    def __getattr__(name: str) -> object:
        if name in _KEY_FILE_API:
            from zmqcomm.crypto import key_files  # noqa: PLC0415 - it imports this module

            return getattr(key_files, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
