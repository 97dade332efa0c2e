"""ChaCha20-Poly1305 (IETF, 96-bit nonce) for the per-message hot path.

PyNaCl's public binding checks and converts every argument in Python, which costs about
three times the cipher itself on a 64-byte message. Sessions call libsodium through
PyNaCl's own cffi handle instead, with the checks they need done once: keys are 32 bytes
and nonces 12 by construction (see ``session.py``). Should that handle ever move (it is not
PyNaCl's public API), the public binding takes over with the same results, only slower.
"""

from __future__ import annotations

from collections.abc import Callable

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

TAG_SIZE = 16

Buffer = bytes | bytearray | memoryview
Encrypt = Callable[[bytes, bytes, bytes, bytes], bytes]
Decrypt = Callable[[bytes, bytes, bytes, bytes], "bytes | None"]
EncryptInto = Callable[[bytes, bytes, bytes, Buffer, "bytearray | memoryview"], None]
DecryptBuffer = Callable[[bytes, bytes, bytes, Buffer], "bytearray | None"]


def _public_encrypt(key: bytes, nonce: bytes, associated: bytes, plaintext: bytes) -> bytes:
    sealed: bytes = crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, associated, nonce, key)
    return sealed


def _public_decrypt(key: bytes, nonce: bytes, associated: bytes, sealed: bytes) -> bytes | None:
    if len(sealed) < TAG_SIZE:
        return None
    try:
        plaintext: bytes = crypto_aead_chacha20poly1305_ietf_decrypt(sealed, associated, nonce, key)
    except CryptoError:
        return None
    return plaintext


def _public_encrypt_into(
    key: bytes, nonce: bytes, associated: bytes, plaintext: Buffer, out: bytearray | memoryview
) -> None:
    sealed = _public_encrypt(key, nonce, associated, bytes(plaintext))
    if memoryview(out).nbytes != len(sealed):
        raise ValueError("the output buffer must be exactly plaintext + tag long")
    out[:] = sealed


def _public_decrypt_buffer(
    key: bytes, nonce: bytes, associated: bytes, sealed: Buffer
) -> bytearray | None:
    plaintext = _public_decrypt(key, nonce, associated, bytes(sealed))
    return None if plaintext is None else bytearray(plaintext)


try:
    from nacl._sodium import ffi, lib  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on PyNaCl's layout
    ffi = lib = None


def _direct() -> tuple[Encrypt, Decrypt, EncryptInto, DecryptBuffer] | None:
    if ffi is None or lib is None:  # pragma: no cover
        return None
    null = ffi.NULL
    from_buffer = ffi.from_buffer
    encrypt_c = lib.crypto_aead_chacha20poly1305_ietf_encrypt
    decrypt_c = lib.crypto_aead_chacha20poly1305_ietf_decrypt

    # libsodium writes straight into a bytearray and its length pointers may be NULL (the
    # lengths are known): half the cost of a cffi array, a length cell and a buffer copy.
    def encrypt(key: bytes, nonce: bytes, associated: bytes, plaintext: bytes) -> bytes:
        out = bytearray(len(plaintext) + TAG_SIZE)
        encrypt_c(
            from_buffer(out),
            null,
            plaintext,
            len(plaintext),
            associated,
            len(associated),
            null,
            nonce,
            key,
        )
        return bytes(out)

    def decrypt(key: bytes, nonce: bytes, associated: bytes, sealed: bytes) -> bytes | None:
        size = len(sealed) - TAG_SIZE
        if size < 0:
            return None
        out = bytearray(size)
        failed = decrypt_c(
            from_buffer(out),
            null,
            null,
            sealed,
            len(sealed),
            associated,
            len(associated),
            nonce,
            key,
        )
        if failed:
            return None
        return bytes(out)

    # For large messages: read any buffer in place and write where the caller says, so a
    # 1 MiB message costs no copy and no fresh buffer (~400 us of page faults each) beyond
    # the one it ends up in.
    def encrypt_into(
        key: bytes, nonce: bytes, associated: bytes, plaintext: Buffer, out: bytearray | memoryview
    ) -> None:
        if type(plaintext) is bytes:
            source, size = plaintext, len(plaintext)
        else:
            source, size = from_buffer(plaintext), memoryview(plaintext).nbytes
        if memoryview(out).nbytes != size + TAG_SIZE:
            raise ValueError("the output buffer must be exactly plaintext + tag long")
        encrypt_c(
            from_buffer(out, require_writable=True),
            null,
            source,
            size,
            associated,
            len(associated),
            null,
            nonce,
            key,
        )

    def decrypt_buffer(
        key: bytes, nonce: bytes, associated: bytes, sealed: Buffer
    ) -> bytearray | None:
        if type(sealed) is bytes:
            source, length = sealed, len(sealed)
        else:
            source, length = from_buffer(sealed), memoryview(sealed).nbytes
        if length < TAG_SIZE:
            return None
        out = bytearray(length - TAG_SIZE)
        failed = decrypt_c(
            from_buffer(out),
            null,
            null,
            source,
            length,
            associated,
            len(associated),
            nonce,
            key,
        )
        return None if failed else out

    return encrypt, decrypt, encrypt_into, decrypt_buffer


_DIRECT = _direct()
#: ``encrypt(key, nonce, associated, plaintext) -> ciphertext with tag``.
encrypt: Encrypt = _DIRECT[0] if _DIRECT else _public_encrypt
#: ``decrypt(key, nonce, associated, sealed) -> plaintext``, or None if the tag is wrong.
decrypt: Decrypt = _DIRECT[1] if _DIRECT else _public_decrypt
#: ``encrypt_into(key, nonce, associated, plaintext, out)``: ciphertext with tag into ``out``
#: (a writable buffer exactly that long); ``plaintext`` may be any contiguous buffer.
encrypt_into: EncryptInto = _DIRECT[2] if _DIRECT else _public_encrypt_into
#: ``decrypt_buffer(key, nonce, associated, sealed) -> plaintext`` from any contiguous buffer,
#: with no copy of it, or None if the tag is wrong.
decrypt_buffer: DecryptBuffer = _DIRECT[3] if _DIRECT else _public_decrypt_buffer
