"""The fast AEAD path agrees with PyNaCl's public binding, byte for byte."""

from __future__ import annotations

import random

from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt

from zmqcomm.crypto import aead


def test_fast_path_matches_the_public_binding_and_refuses_tampering() -> None:
    rng = random.Random(7)
    for size in (0, 1, 15, 16, 17, 64, 1000, 70_000):
        key, nonce = rng.randbytes(32), rng.randbytes(12)
        associated, plaintext = rng.randbytes(rng.randrange(0, 80)), rng.randbytes(size)
        sealed = aead.encrypt(key, nonce, associated, plaintext)
        assert sealed == crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, associated, nonce, key
        )
        assert aead.decrypt(key, nonce, associated, sealed) == plaintext
        flipped = bytearray(sealed)
        flipped[rng.randrange(len(flipped))] ^= 1
        assert aead.decrypt(key, nonce, associated, bytes(flipped)) is None
        assert aead.decrypt(key, nonce, associated + b"x", sealed) is None
        assert aead.decrypt(key, nonce, associated, sealed[: aead.TAG_SIZE - 1]) is None


def test_both_implementations_behave_alike() -> None:
    key, nonce = bytes(32), bytes(12)
    for encrypt, decrypt in (
        (aead.encrypt, aead.decrypt),
        (aead._public_encrypt, aead._public_decrypt),
    ):
        sealed = encrypt(key, nonce, b"ad", b"hello")
        assert decrypt(key, nonce, b"ad", sealed) == b"hello"
        assert decrypt(key, nonce, b"AD", sealed) is None
        assert decrypt(key, nonce, b"ad", b"") is None
