"""The fast AEAD path agrees with PyNaCl's public binding, byte for byte."""

from __future__ import annotations

import random

import pytest
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


def test_in_place_entry_points_match_the_copying_ones_on_any_buffer() -> None:
    rng = random.Random(11)
    for encrypt_into, decrypt_buffer in (
        (aead.encrypt_into, aead.decrypt_buffer),
        (aead._public_encrypt_into, aead._public_decrypt_buffer),
    ):
        for size in (0, 1, 64, 70_000):
            key, nonce, associated = rng.randbytes(32), rng.randbytes(12), rng.randbytes(40)
            plaintext = rng.randbytes(size)
            expected = aead.encrypt(key, nonce, associated, plaintext)
            for source in (plaintext, bytearray(plaintext), memoryview(plaintext)):
                out = bytearray(b"HEAD") + bytearray(len(expected))
                encrypt_into(key, nonce, associated, source, memoryview(out)[4:])
                assert out == b"HEAD" + expected  # the bytes before the window are untouched
                whole = bytearray(len(expected))
                encrypt_into(key, nonce, associated, source, whole)
                assert whole == expected
            for sealed in (expected, bytearray(expected), memoryview(b"xx" + expected)[2:]):
                opened = decrypt_buffer(key, nonce, associated, sealed)
                assert isinstance(opened, bytearray) and opened == plaintext
            flipped = bytearray(expected)
            flipped[rng.randrange(len(flipped))] ^= 1
            assert decrypt_buffer(key, nonce, associated, memoryview(flipped)) is None
            assert decrypt_buffer(key, nonce, associated, expected[: aead.TAG_SIZE - 1]) is None


def test_in_place_encryption_refuses_an_output_of_the_wrong_size() -> None:
    key, nonce = bytes(32), bytes(12)
    for encrypt_into in (aead.encrypt_into, aead._public_encrypt_into):
        for wrong in (5 + aead.TAG_SIZE - 1, 5 + aead.TAG_SIZE + 1):
            out = bytearray(wrong)
            with pytest.raises(ValueError, match="plaintext \\+ tag"):
                encrypt_into(key, nonce, b"", b"hello", out)
            assert out == bytes(wrong)
