"""Key files: writing an identity to disk and reading it back.

This module turns an :class:`~zmqcomm.crypto.keys.Identity` into the two JSON files described
in ``docs/keys.md`` and back again: ``NAME.pub`` with the public half, and ``NAME.key`` with
the secrets, created whole and owner-only, optionally sealed under a passphrase (Argon2id and
XChaCha20-Poly1305), and refused on load when group or others could read it or when anything
in it fails to check. What an identity is, and its ids and signatures, live in
:mod:`zmqcomm.crypto.keys`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
    crypto_scalarmult_base,
)
from nacl.exceptions import CryptoError
from nacl.pwhash import argon2id
from nacl.signing import SigningKey

from zmqcomm.crypto.keys import (
    KEY_LEN,
    Certificate,
    Identity,
    PublicIdentity,
    check_name,
    is_key_name,
)
from zmqcomm.errors import AuthenticationError, KeyFileError, UsageError

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
                raise KeyFileError(
                    f"{path} already exists; replace it with --force (force=True from Python)"
                )
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
    if not isinstance(name, str) or not is_key_name(name):
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
