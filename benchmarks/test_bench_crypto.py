"""pytest-benchmark cases for the security layer's hot functions.

    pytest benchmarks/test_bench_crypto.py --benchmark-columns=min,median,ops
    pytest benchmarks/test_bench_crypto.py --benchmark-autosave / --benchmark-compare

The handshake cases time a whole XX handshake with certificates and trust-store checks, both
sides on one core (half of it is one side's CPU), and the initiator's costly step alone.
Each case checks its result, so a broken path cannot produce a fast, wrong figure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from zmqcomm.crypto import aead
from zmqcomm.crypto.channel import Delivered, SecureChannel, Transmit
from zmqcomm.crypto.handshake import Handshake
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.wire import MessageType

PAYLOAD = os.urandom(64)


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ...]:
    directory: Path = tmp_path_factory.mktemp("trust")
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    alice_trust, bob_trust = TrustStore(directory / "a"), TrustStore(directory / "b")
    alice_trust.add(bob.public, roles=["agent"])
    bob_trust.add(alice.public, roles=["agent"])
    return alice, bob, alice_trust, bob_trust


def _pair(parties: tuple[Any, ...]) -> tuple[SecureChannel, SecureChannel]:
    alice, bob, alice_trust, bob_trust = parties
    a = SecureChannel(identity=alice, trust=alice_trust, random_bytes=os.urandom)
    b = SecureChannel(identity=bob, trust=bob_trust, random_bytes=os.urandom)
    reply = b.receive(a.connect(now=0.0), now=0.0)[0]
    assert isinstance(reply, Transmit)
    finish = a.receive(reply.frames, now=0.0)[0]
    assert isinstance(finish, Transmit)
    confirm = b.receive(finish.frames, now=0.0)[1]
    assert isinstance(confirm, Transmit)
    a.receive(confirm.frames, now=0.0)
    assert a.established and b.established
    return a, b


def _handshakes(parties: tuple[Any, ...], session_id: int) -> tuple[Handshake, Handshake]:
    alice, bob, alice_trust, bob_trust = parties
    common = {"session_id": session_id, "epoch": 0, "random_bytes": os.urandom}
    return (
        Handshake(initiator=True, identity=alice, trust=alice_trust, **common),
        Handshake(initiator=False, identity=bob, trust=bob_trust, **common),
    )


def test_handshake_initiator_reads_reply_writes_finish(
    benchmark: Any, parties: tuple[Any, ...]
) -> None:
    def setup() -> tuple[tuple[Handshake, bytes], dict[str, Any]]:
        initiator, responder = _handshakes(parties, 9)
        reply = responder.respond(initiator.start(), now=0.0)
        return (initiator, reply), {}

    def initiator_share(initiator: Handshake, reply: bytes) -> bytes:
        return initiator.finish(reply, now=0.0)  # the initiator's costly step (2 DH + checks)

    benchmark.pedantic(initiator_share, setup=setup, rounds=200)


def test_handshake_full_both_sides(benchmark: Any, parties: tuple[Any, ...]) -> None:
    def one_side() -> None:
        initiator, responder = _handshakes(parties, 9)
        init = initiator.start()
        reply = responder.respond(init, now=0.0)
        finish = initiator.finish(reply, now=0.0)
        responder.accept(finish, now=0.0)

    # A full handshake, both sides on one core: halve it for one side's CPU.
    benchmark.pedantic(one_side, rounds=200)


def test_aead_encrypt_64_bytes(benchmark: Any) -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    sealed = benchmark(aead.encrypt, key, nonce, b"header", PAYLOAD)
    assert aead.decrypt(key, nonce, b"header", sealed) == PAYLOAD


def test_aead_decrypt_64_bytes(benchmark: Any) -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    sealed = aead.encrypt(key, nonce, b"header", PAYLOAD)
    assert benchmark(aead.decrypt, key, nonce, b"header", sealed) == PAYLOAD


def test_seal_64_bytes(benchmark: Any, parties: tuple[Any, ...]) -> None:
    a, b = _pair(parties)
    frames = benchmark(a.seal, MessageType.DATA, PAYLOAD, now=1.0)
    assert isinstance(b.receive(frames, now=1.0)[0], Delivered)


def test_open_64_bytes(benchmark: Any, parties: tuple[Any, ...]) -> None:
    a, b = _pair(parties)
    batch = iter([a.seal(MessageType.DATA, PAYLOAD, now=1.0) for _ in range(200_000)])
    events = benchmark(lambda: b.receive(next(batch), now=1.0))
    assert isinstance(events[0], Delivered) and events[0].message.payload == PAYLOAD


def test_seal_batch_of_1024(benchmark: Any, parties: tuple[Any, ...]) -> None:
    a, b = _pair(parties)
    payloads = [PAYLOAD] * 1024
    frames = benchmark(a.seal_many, MessageType.DATA, payloads, now=1.0)
    event = b.receive(frames, now=1.0)[0]
    assert isinstance(event, Delivered) and len(event.message.payloads) == 1024


def test_open_batch_of_1024(benchmark: Any, parties: tuple[Any, ...]) -> None:
    a, b = _pair(parties)
    payloads = [PAYLOAD] * 1024
    batches = iter([a.seal_many(MessageType.DATA, payloads, now=1.0) for _ in range(3_000)])
    events = benchmark.pedantic(lambda: b.receive(next(batches), now=1.0), rounds=2_500)
    assert isinstance(events[0], Delivered) and len(events[0].message.payloads) == 1024


def test_seal_64_kib(benchmark: Any, parties: tuple[Any, ...]) -> None:
    a, b = _pair(parties)
    blob = os.urandom(64 * 1024)
    frames = benchmark(a.seal, MessageType.DATA, blob, now=1.0)
    event = b.receive(frames, now=1.0)[0]
    assert isinstance(event, Delivered) and event.message.payload == blob


def test_open_64_kib(benchmark: Any, parties: tuple[Any, ...]) -> None:
    a, b = _pair(parties)
    blob = os.urandom(64 * 1024)
    sealed = iter([a.seal(MessageType.DATA, blob, now=1.0) for _ in range(1_200)])
    events = benchmark.pedantic(lambda: b.receive(next(sealed), now=1.0), rounds=1_000)
    assert isinstance(events[0], Delivered) and events[0].message.payload == blob
