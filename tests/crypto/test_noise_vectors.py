"""Conformance: the cacophony vectors byte for byte, and Wycheproof's low-order X25519 keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from zmqcomm.crypto.noise import HandshakeState, KeyPair, xx_handshake
from zmqcomm.errors import AuthenticationError, SecurityError

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "noise"
NOISE = json.loads((VECTORS / "noise_25519_chachapoly_blake2b.json").read_text())["vectors"]
LOW_ORDER = json.loads((VECTORS / "x25519_low_order.json").read_text())["tests"]


def _key(vector: dict[str, Any], name: str) -> bytes | None:
    value = vector.get(name)
    return bytes.fromhex(value) if value else None


def _side(vector: dict[str, Any], prefix: str, initiator: bool) -> HandshakeState:
    static = _key(vector, f"{prefix}_static")
    ephemeral = _key(vector, f"{prefix}_ephemeral")
    return HandshakeState(
        vector["protocol_name"],
        initiator=initiator,
        prologue=_key(vector, f"{prefix}_prologue") or b"",
        s=KeyPair.from_private(static) if static else None,
        e=KeyPair.from_private(ephemeral) if ephemeral else None,
        rs=_key(vector, f"{prefix}_remote_static"),
        psks=tuple(bytes.fromhex(p) for p in vector.get(f"{prefix}_psks", [])),
    )


def test_every_vector_file_pattern_is_run() -> None:
    names = {v["protocol_name"].split("_")[1] for v in NOISE}
    assert names == {"NN", "NK", "KK", "XK", "IK", "XX", "XXpsk3"}


@pytest.mark.parametrize("vector", NOISE, ids=lambda v: v["protocol_name"])
def test_cacophony_vector(vector: dict[str, Any]) -> None:
    initiator = _side(vector, "init", True)
    responder = _side(vector, "resp", False)
    messages = vector["messages"]
    sides = [initiator, responder]
    index = 0
    # Handshake messages alternate, initiator first, until both sides are complete.
    while not (initiator.complete and responder.complete):
        writer, reader = sides[index % 2], sides[(index + 1) % 2]
        payload = bytes.fromhex(messages[index]["payload"])
        wire = writer.write_message(payload)
        assert wire.hex() == messages[index]["ciphertext"], f"handshake message {index}"
        assert reader.read_message(wire) == payload
        index += 1
    assert initiator.handshake_hash.hex() == vector["handshake_hash"]
    assert responder.handshake_hash.hex() == vector["handshake_hash"]
    # Transport messages keep alternating under the split cipher states.
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    for number, message in enumerate(messages[index:], start=index):
        send, recv = (i_send, r_recv) if number % 2 == 0 else (r_send, i_recv)
        payload = bytes.fromhex(message["payload"])
        wire = send.encrypt_with_ad(b"", payload)
        assert wire.hex() == message["ciphertext"], f"transport message {number}"
        assert recv.decrypt_with_ad(b"", wire) == payload


@pytest.mark.parametrize("case", LOW_ORDER, ids=lambda c: f"tc{c['tcId']}")
def test_low_order_ephemeral_keys_are_refused(case: dict[str, Any]) -> None:
    responder = xx_handshake(
        initiator=False,
        static=KeyPair.from_private(bytes(range(32))),
        generate_keypair=lambda: KeyPair.from_private(bytes(range(1, 33))),
    )
    # XX message 1 is the initiator's bare ephemeral key: substitute the low-order point.
    responder.read_message(bytes.fromhex(case["public"]))
    with pytest.raises(SecurityError) as caught:
        responder.write_message(b"")  # "ee" meets the low-order key here
    assert isinstance(caught.value, AuthenticationError)
    assert caught.value.reason == "low_order_key"
