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

Encrypt = Callable[[bytes, bytes, bytes, bytes], bytes]
Decrypt = Callable[[bytes, bytes, bytes, bytes], "bytes | None"]


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


try:
    from nacl._sodium import ffi, lib  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on PyNaCl's layout
    ffi = lib = None


def _direct() -> tuple[Encrypt, Decrypt] | None:
    if ffi is None or lib is None:  # pragma: no cover
        return None
    null = ffi.NULL
    encrypt_c = lib.crypto_aead_chacha20poly1305_ietf_encrypt
    decrypt_c = lib.crypto_aead_chacha20poly1305_ietf_decrypt

    def encrypt(key: bytes, nonce: bytes, associated: bytes, plaintext: bytes) -> bytes:
        out = ffi.new("unsigned char[]", len(plaintext) + TAG_SIZE)
        out_len = ffi.new("unsigned long long *")
        encrypt_c(
            out, out_len, plaintext, len(plaintext), associated, len(associated), null, nonce, key
        )
        return bytes(ffi.buffer(out, out_len[0]))

    def decrypt(key: bytes, nonce: bytes, associated: bytes, sealed: bytes) -> bytes | None:
        if len(sealed) < TAG_SIZE:
            return None
        out = ffi.new("unsigned char[]", max(1, len(sealed) - TAG_SIZE))
        out_len = ffi.new("unsigned long long *")
        failed = decrypt_c(
            out, out_len, null, sealed, len(sealed), associated, len(associated), nonce, key
        )
        if failed:
            return None
        return bytes(ffi.buffer(out, out_len[0]))

    return encrypt, decrypt


_PAIR = _direct()
#: ``encrypt(key, nonce, associated, plaintext) -> ciphertext with tag``.
encrypt: Encrypt = _PAIR[0] if _PAIR else _public_encrypt
#: ``decrypt(key, nonce, associated, sealed) -> plaintext``, or None if the tag is wrong.
decrypt: Decrypt = _PAIR[1] if _PAIR else _public_decrypt
