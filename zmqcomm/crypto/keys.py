"""Identities, certificates and key files.

An agent *is* its long-term Ed25519 signing key. Its ids are fingerprints of the 32-byte public
(verify) key:

- :func:`sender_id`: BLAKE2b with a 16-byte digest, the ``sender`` field of the wire header;
- :func:`agent_id`: the same 16 bytes in lowercase RFC 4648 base32 without padding, 26
  characters from ``a-z2-7`` (easy to read aloud, safe in file names, URLs and topics).

The X25519 static key used in Noise handshakes is generated independently and vouched for by a
:class:`Certificate`: the Ed25519 key signs ``"zmqcomm/1 static-key"``, its own public key, the
X25519 public key and an optional expiry, so a peer that trusts the Ed25519 key can check the
static key it met in the handshake.

Key files (JSON, formats in ``docs/keys.md``): ``NAME.key`` holds the secrets, is created
whole (written to a temporary file, then linked in place, never over an existing file) with
mode 0600, may be sealed under a passphrase (Argon2id + XChaCha20-Poly1305), and
is refused on load when group or others may read it; ``NAME.pub`` holds the public half.
No secret appears in any ``repr``, ``str`` or exception message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import msgpack
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
    crypto_scalarmult_base,
)
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.pwhash import argon2id
from nacl.signing import SigningKey, VerifyKey

from zmqcomm.crypto.noise import KeyPair
from zmqcomm.errors import AuthenticationError, KeyFileError, UsageError

KEY_LEN = 32
SIGNATURE_LEN = 64
SENDER_ID_LEN = 16
AGENT_ID_LEN = 26
#: Domain separation: a certificate signature can never be mistaken for any other signature.
CERT_TAG = b"zmqcomm/1 static-key"
CERT_VERSION = 1
SECRET_FORMAT = "zmqcomm-secret-key"
PUBLIC_FORMAT = "zmqcomm-public-key"
FILE_VERSION = 1
SECRET_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
AEAD = "xchacha20poly1305-ietf"
#: Binds the sealed secret to its own public keys: swapping blobs between files fails the tag.
_SEAL_TAG = b"zmqcomm/1 secret-key"
#: Argon2id cost written into new files. Module attributes, read at call time, so tests can
#: monkeypatch them down to the minimum instead of spending 256 MiB per key.
DEFAULT_OPSLIMIT: int = argon2id.OPSLIMIT_MODERATE
DEFAULT_MEMLIMIT: int = argon2id.MEMLIMIT_MODERATE
#: A crafted file must not make us allocate gigabytes or spin for minutes.
_MAX_OPSLIMIT = 4 * argon2id.OPSLIMIT_SENSITIVE
_MAX_MEMLIMIT = argon2id.MEMLIMIT_SENSITIVE
_MAX_FILE_SIZE = 64 * 1024
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


def check_name(name: str) -> str:
    """Names become file names: 1-64 of ``A-Z a-z 0-9 . _ -``, not starting with a dot."""
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
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


# -- files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPaths:
    secret: Path
    public: Path


@dataclass(frozen=True)
class SecretFileInfo:
    """What a secret key file says about itself, read without the passphrase."""

    path: Path
    public: PublicIdentity
    encrypted: bool
    mode: int

    @property
    def mode_ok(self) -> bool:
        return self.mode & 0o077 == 0


def key_paths(directory: str | os.PathLike[str], name: str) -> KeyPaths:
    base = Path(directory) / check_name(name)
    return KeyPaths(
        base.with_name(base.name + SECRET_SUFFIX), base.with_name(base.name + PUBLIC_SUFFIX)
    )


def atomic_write(path: Path, data: bytes, *, mode: int, replace: bool) -> None:
    """Create ``path`` holding ``data``, whole or not at all, and never clobber by accident.

    The data is written and fsynced to a hidden temporary file in the same directory (created
    with ``mode``: a secret is owner-only from its first byte), which then takes the final name
    in one step: ``os.link`` without ``replace`` (it fails if the name exists, like
    ``O_EXCL``), ``os.replace`` with it. Readers and concurrent writers see no file or the
    whole file, never an empty or half-written one, and a crash leaves at most a hidden
    temporary file. The directory is fsynced last, so the new name survives a power cut.
    """
    temporary = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode & 0o077 == 0:
                os.fchmod(handle.fileno(), mode)  # whatever the umask, exactly owner-only
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} already exists; refusing to overwrite it") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        # After os.replace it is gone already; after os.link it is a second name to drop.
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a new name in ``directory`` durable; best effort (not every system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, path: Path, field: str) -> bytes:
    if not isinstance(value, str):
        _corrupt(path, f"field {field!r} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        _corrupt(path, f"field {field!r} is not valid base64")


def _unhex(value: object, path: Path, field: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * KEY_LEN:
        _corrupt(path, f"field {field!r} is missing or not {KEY_LEN} bytes of hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        _corrupt(path, f"field {field!r} is not hex")


def _corrupt(path: Path, why: str) -> NoReturn:
    raise KeyFileError(f"{path} is not a valid zmqcomm key file: {why}", reason="corrupt_key_file")


def _public_fields(public: PublicIdentity) -> dict[str, Any]:
    return {
        "name": public.name,
        "agent_id": public.agent_id,
        "ed25519_public": public.verify_key.hex(),
        "x25519_public": public.static_public.hex(),
        "certificate": _b64(public.certificate.encode()),
    }


def public_file_bytes(public: PublicIdentity, **extra: Any) -> bytes:
    """The ``.pub`` format; ``extra`` adds fields such as the trust store's ``roles``."""
    document = {"format": PUBLIC_FORMAT, "version": FILE_VERSION, **_public_fields(public)}
    document.update(extra)
    return (json.dumps(document, indent=2) + "\n").encode()


def save_identity(
    identity: Identity,
    directory: str | os.PathLike[str],
    *,
    passphrase: str | bytes | None = None,
    force: bool = False,
    opslimit: int | None = None,
    memlimit: int | None = None,
) -> KeyPaths:
    """Write ``NAME.key`` (0600) and ``NAME.pub`` into ``directory`` (made 0700 if missing).

    Refuses to overwrite either file unless ``force``; with ``force`` each file is replaced
    atomically. ``opslimit``/``memlimit`` default to :data:`DEFAULT_OPSLIMIT` and
    :data:`DEFAULT_MEMLIMIT` and are recorded in the file.
    """
    paths = key_paths(directory, identity.name)
    # A missing key directory is made private (0700): it will hold secrets.
    paths.secret.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not force:
        for path in (paths.secret, paths.public):
            if os.path.lexists(path):
                raise KeyFileError(f"{path} already exists; use --force (force=True) to replace it")
    secret_doc = {
        "format": SECRET_FORMAT,
        "version": FILE_VERSION,
        **_public_fields(identity.public),
        **_seal(identity, passphrase, opslimit, memlimit),
    }
    atomic_write(
        paths.secret, (json.dumps(secret_doc, indent=2) + "\n").encode(), mode=0o600, replace=force
    )
    try:
        atomic_write(paths.public, public_file_bytes(identity.public), mode=0o644, replace=force)
    except KeyFileError:
        if not force:  # do not leave half a key pair behind
            paths.secret.unlink(missing_ok=True)
        raise
    return paths


def _seal_ad(verify_key: bytes, static_public: bytes) -> bytes:
    return _SEAL_TAG + verify_key + static_public


def _seal(
    identity: Identity, passphrase: str | bytes | None, opslimit: int | None, memlimit: int | None
) -> dict[str, Any]:
    secret = identity._secret_bytes()
    if passphrase is None:
        return {"kdf": None, "aead": None, "nonce": None, "secret": _b64(secret)}
    password = _password(passphrase)
    ops = DEFAULT_OPSLIMIT if opslimit is None else opslimit
    mem = DEFAULT_MEMLIMIT if memlimit is None else memlimit
    if not (
        argon2id.OPSLIMIT_MIN <= ops <= _MAX_OPSLIMIT
        and argon2id.MEMLIMIT_MIN <= mem <= _MAX_MEMLIMIT
    ):
        raise UsageError(f"Argon2id limits out of range: opslimit={ops}, memlimit={mem}")
    salt = os.urandom(argon2id.SALTBYTES)
    nonce = os.urandom(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES)
    key = argon2id.kdf(KEY_LEN, password, salt, opslimit=ops, memlimit=mem)
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
        secret, _seal_ad(identity.verify_key, identity.static_keypair.public), nonce, key
    )
    return {
        "kdf": {"alg": "argon2id", "opslimit": ops, "memlimit": mem, "salt": _b64(salt)},
        "aead": AEAD,
        "nonce": _b64(nonce),
        "secret": _b64(bytes(sealed)),
    }


def _password(passphrase: str | bytes, *, loading: Path | None = None) -> bytes:
    """The passphrase as bytes; ``loading``: the protected file it is meant to open."""
    password = passphrase.encode() if isinstance(passphrase, str) else bytes(passphrase)
    if not password:
        if loading is not None:
            raise UsageError(f"empty passphrase; {loading} is protected: give its passphrase")
        raise UsageError("empty passphrase; give none to store the key unprotected")
    return password


def _read_json(path: Path, *, secret: bool) -> tuple[dict[str, Any], int]:
    """Read a key file; for secret files, refuse unsafe modes (checked on the open fd)."""
    try:
        # O_NONBLOCK: a FIFO planted in place of a key file must not hang us.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as exc:
        raise KeyFileError(f"no such key file: {path}") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot open {path}: {exc.strerror}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise KeyFileError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        mode = stat.S_IMODE(info.st_mode)
        if secret and mode & 0o077:
            raise KeyFileError(
                f"secret key file {path} is accessible to group or others (mode {mode:04o}); "
                f"run: chmod 600 {path}",
                reason="unsafe_key_file_mode",
            )
        raw = handle.read(_MAX_FILE_SIZE + 1)
    if len(raw) > _MAX_FILE_SIZE:
        _corrupt(path, "too large")
    why: str | None = None
    try:
        document = json.loads(raw)
    except RecursionError:  # "[[[[..." fits in the size limit and nests past the stack
        why = "JSON nested too deeply"
    except (UnicodeDecodeError, json.JSONDecodeError):
        why = "not JSON (truncated or damaged?)"
    except ValueError:  # an integer longer than sys.get_int_max_str_digits()
        why = "a JSON number too long to read"
    if why is not None:
        # Raised outside the handlers: the decode error holds the file text (secrets included)
        # and would ride along as __context__.
        _corrupt(path, why)
    if not isinstance(document, dict):
        _corrupt(path, "not a JSON object")
    return document, mode


def _parse_public(document: dict[str, Any], path: Path) -> PublicIdentity:
    if document.get("version") != FILE_VERSION:
        _corrupt(path, f"unsupported version {document.get('version')!r}")
    name = document.get("name")
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        _corrupt(path, "missing or invalid name")
    try:
        certificate = Certificate.decode(_unb64(document.get("certificate"), path, "certificate"))
        certificate.verify()
    except AuthenticationError:
        _corrupt(path, "the certificate is malformed or its signature does not verify")
    if (
        _unhex(document.get("ed25519_public"), path, "ed25519_public") != certificate.verify_key
        or _unhex(document.get("x25519_public"), path, "x25519_public") != certificate.static_public
        or document.get("agent_id") != certificate.agent_id
    ):
        _corrupt(path, "the public keys, agent id and certificate disagree")
    return PublicIdentity(name, certificate)


def _parse_secret_header(path: Path, *, check_mode: bool) -> tuple[dict[str, Any], SecretFileInfo]:
    document, mode = _read_json(path, secret=check_mode)
    if document.get("format") != SECRET_FORMAT:
        _corrupt(path, f"format is {document.get('format')!r}, expected {SECRET_FORMAT!r}")
    public = _parse_public(document, path)
    return document, SecretFileInfo(path, public, document.get("kdf") is not None, mode)


def inspect_secret_file(path: str | os.PathLike[str]) -> SecretFileInfo:
    """The public part of a secret key file, without the passphrase and without the mode check."""
    return _parse_secret_header(Path(path), check_mode=False)[1]


def load_identity(
    path: str | os.PathLike[str], *, passphrase: str | bytes | None = None
) -> Identity:
    """Load a secret key file; :class:`KeyFileError` on unsafe mode, bad passphrase, damage."""
    path = Path(path)
    document, info = _parse_secret_header(path, check_mode=True)
    public = info.public
    secret = _unb64(document.get("secret"), path, "secret")
    kdf = document.get("kdf")
    if kdf is not None:
        if passphrase is None:
            raise KeyFileError(f"{path} is protected by a passphrase; give the passphrase")
        secret = _unseal(
            path,
            document=document,
            kdf=kdf,
            sealed=secret,
            password=_password(passphrase, loading=path),
            public=public,
        )
    elif document.get("aead") is not None:
        _corrupt(path, "an 'aead' without a 'kdf'")
    if len(secret) != 2 * KEY_LEN:
        _corrupt(path, "the secret has the wrong length")
    signing_seed, static_private = secret[:KEY_LEN], secret[KEY_LEN:]
    derived_verify = bytes(SigningKey(signing_seed).verify_key)
    derived_static = bytes(crypto_scalarmult_base(static_private))
    if not (
        hmac.compare_digest(derived_verify, public.verify_key)
        and hmac.compare_digest(derived_static, public.static_public)
    ):
        _corrupt(path, "the secret keys do not match the public keys")
    return Identity(public.name, signing_seed, static_private, certificate=public.certificate)


def _unseal(
    path: Path,
    *,
    document: dict[str, Any],
    kdf: object,
    sealed: bytes,
    password: bytes,
    public: PublicIdentity,
) -> bytes:
    if not isinstance(kdf, dict) or kdf.get("alg") != "argon2id":
        _corrupt(path, "unknown key derivation (expected argon2id)")
    if document.get("aead") != AEAD:
        _corrupt(path, f"unknown cipher {document.get('aead')!r} (expected {AEAD})")
    ops, mem = kdf.get("opslimit"), kdf.get("memlimit")
    if not (
        type(ops) is int
        and type(mem) is int
        and argon2id.OPSLIMIT_MIN <= ops <= _MAX_OPSLIMIT
        and argon2id.MEMLIMIT_MIN <= mem <= _MAX_MEMLIMIT
    ):
        _corrupt(path, "Argon2id limits missing or out of range")
    salt = _unb64(kdf.get("salt"), path, "kdf.salt")
    nonce = _unb64(document.get("nonce"), path, "nonce")
    if (
        len(salt) != argon2id.SALTBYTES
        or len(nonce) != crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
    ):
        _corrupt(path, "salt or nonce has the wrong length")
    key = argon2id.kdf(KEY_LEN, password, salt, opslimit=ops, memlimit=mem)
    try:
        return bytes(
            crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed, _seal_ad(public.verify_key, public.static_public), nonce, key
            )
        )
    except CryptoError:
        raise KeyFileError(
            f"wrong passphrase for {path} (or the file was altered)", reason="bad_passphrase"
        ) from None


def load_public(path: str | os.PathLike[str]) -> PublicIdentity:
    """Load a ``.pub`` file (the certificate's signature is checked, its expiry is not)."""
    return load_public_document(path)[0]


def load_public_document(path: str | os.PathLike[str]) -> tuple[PublicIdentity, dict[str, Any]]:
    """A ``.pub`` file and its raw JSON, for readers of extra fields such as ``roles``."""
    path = Path(path)
    document, _ = _read_json(path, secret=False)
    if document.get("format") != PUBLIC_FORMAT:
        _corrupt(path, f"format is {document.get('format')!r}, expected {PUBLIC_FORMAT!r}")
    return _parse_public(document, path), document


def key_file_kind(path: str | os.PathLike[str]) -> str:
    """``"secret"`` or ``"public"``, from the file's ``format`` field (no mode check)."""
    path = Path(path)
    document, _ = _read_json(path, secret=False)
    kinds = {SECRET_FORMAT: "secret", PUBLIC_FORMAT: "public"}
    kind = kinds.get(document.get("format"))  # type: ignore[arg-type]
    if kind is None:
        _corrupt(path, f"unknown format {document.get('format')!r}")
    return kind
