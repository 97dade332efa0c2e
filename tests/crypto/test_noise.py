"""The XX handshake as zmqcomm runs it: keys, failures that change nothing, misuse."""

from __future__ import annotations

import os

import pytest

from zmqcomm.crypto.noise import (
    MAX_NONCE,
    ZMQCOMM_PROLOGUE,
    CipherState,
    HandshakeState,
    KeyPair,
    parse_protocol_name,
    xx_handshake,
)
from zmqcomm.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError


def _keypair() -> KeyPair:
    return KeyPair.from_private(os.urandom(32))


def _pair(
    prologue_i: bytes = ZMQCOMM_PROLOGUE, prologue_r: bytes = ZMQCOMM_PROLOGUE
) -> tuple[HandshakeState, HandshakeState, KeyPair, KeyPair]:
    si, sr = _keypair(), _keypair()
    init = xx_handshake(initiator=True, static=si, generate_keypair=_keypair, prologue=prologue_i)
    resp = xx_handshake(initiator=False, static=sr, generate_keypair=_keypair, prologue=prologue_r)
    return init, resp, si, sr


def _run(init: HandshakeState, resp: HandshakeState) -> list[bytes]:
    m1 = init.write_message(b"hello")
    assert resp.read_message(m1) == b"hello"
    m2 = resp.write_message(b"responder cert")
    assert init.read_message(m2) == b"responder cert"
    m3 = init.write_message(b"initiator cert")
    assert resp.read_message(m3) == b"initiator cert"
    return [m1, m2, m3]


def test_xx_authenticates_both_statics_and_splits_one_key_per_direction() -> None:
    init, resp, si, sr = _pair()
    _run(init, resp)
    assert init.complete and resp.complete
    assert init.remote_static == sr.public
    assert resp.remote_static == si.public
    assert init.handshake_hash == resp.handshake_hash
    i_send, i_recv = init.split_keys()
    r_send, r_recv = resp.split_keys()
    assert i_send == r_recv and i_recv == r_send
    assert i_send != i_recv  # a reflected message cannot open


def test_static_keys_are_encrypted_on_the_wire() -> None:
    init, resp, si, sr = _pair()
    m1, m2, m3 = _run(init, resp)
    assert sr.public not in m2
    assert si.public not in m3
    assert len(m1) == 32 + 5  # a bare ephemeral key and the clear payload


def test_different_prologues_fail_no_downgrade() -> None:
    init, resp, _, _ = _pair(prologue_r=b"zmqcomm/0 something older")
    resp.read_message(init.write_message(b""))
    with pytest.raises(AuthenticationError) as caught:
        init.read_message(resp.write_message(b""))
    assert caught.value.reason == "bad_handshake_tag"


@pytest.mark.parametrize("stage", [1, 2])
def test_tampering_fails_and_leaves_the_state_unchanged(stage: int) -> None:
    init, resp, _, _ = _pair()
    m1 = init.write_message(b"")
    resp.read_message(m1)
    m2 = resp.write_message(b"payload")
    reader, message = init, m2
    if stage == 2:
        init.read_message(m2)
        reader, message = resp, init.write_message(b"payload")
    for position in range(len(message)):
        tampered = bytearray(message)
        tampered[position] ^= 0x01
        with pytest.raises((AuthenticationError, RemoteProtocolError)):
            reader.read_message(bytes(tampered))
    for cut in (0, 10, 31, 32, 47, len(message) - 1):
        with pytest.raises((AuthenticationError, RemoteProtocolError)):
            reader.read_message(message[:cut])
    # After every failure the genuine message still works.
    assert reader.read_message(message) == b"payload"


def test_wrong_turn_and_incomplete_use_are_local_errors() -> None:
    init, resp, _, _ = _pair()
    with pytest.raises(LocalProtocolError, match="not our turn"):
        resp.write_message(b"")
    with pytest.raises(LocalProtocolError, match="not expecting"):
        init.read_message(b"x" * 32)
    with pytest.raises(LocalProtocolError, match="not complete"):
        init.split_keys()
    _run(init, resp)
    with pytest.raises(LocalProtocolError):
        init.write_message(b"")


def test_a_failed_write_abandons_the_handshake() -> None:
    init, resp, _, _ = _pair()
    init.write_message(b"")
    resp.read_message(bytes(32))  # the all-zero point is of low order
    with pytest.raises(AuthenticationError):
        resp.write_message(b"")
    with pytest.raises(LocalProtocolError, match="failed"):
        resp.write_message(b"")


def test_no_secret_in_repr() -> None:
    pair = _keypair()
    init, resp, _, _ = _pair()
    _run(init, resp)
    send, _ = init.split()
    texts = [repr(pair), repr(init), repr(send), str(pair)]
    for text in texts:
        assert pair.private.hex() not in text
        assert init.split_keys()[0].hex() not in text
    assert "private" not in repr(pair)


def test_cipher_state_nonces_rekey_and_exhaustion() -> None:
    key = os.urandom(32)
    sender, receiver = CipherState(key), CipherState(key)
    first = sender.encrypt_with_ad(b"ad", b"one")
    assert receiver.decrypt_with_ad(b"ad", first) == b"one"
    with pytest.raises(AuthenticationError):
        receiver.decrypt_with_ad(b"ad", first)  # nonce moved on: a replay fails
    assert receiver.n == 1
    sender.rekey()
    receiver.rekey()
    assert sender.key != key
    assert receiver.decrypt_with_ad(b"", sender.encrypt_with_ad(b"", b"two")) == b"two"
    worn = CipherState(key, n=MAX_NONCE)
    with pytest.raises(LocalProtocolError, match="exhausted"):
        worn.encrypt_with_ad(b"", b"x")


@pytest.mark.parametrize(
    "name",
    [
        "Noise_XX_448_ChaChaPoly_BLAKE2b",
        "Noise_XX_25519_AESGCM_SHA256",
        "Noise_QQ_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXfallback_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXpsk9_25519_ChaChaPoly_BLAKE2b",
    ],
)
def test_unsupported_protocols_are_refused(name: str) -> None:
    with pytest.raises(LocalProtocolError):
        HandshakeState(name, initiator=True, s=_keypair(), psks=(bytes(32),))


def test_protocol_names_parse() -> None:
    assert parse_protocol_name("Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b") == ("XX", [3])
    assert parse_protocol_name("Noise_NN_25519_ChaChaPoly_BLAKE2b") == ("NN", [])
