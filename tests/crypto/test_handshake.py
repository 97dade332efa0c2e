"""The authenticated handshake: Noise XX carrying certificates, checked against a trust store."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from zmqcomm.crypto.handshake import (
    INIT_SIZE,
    MAX_HANDSHAKE_MESSAGE,
    PROLOGUE_TAG,
    SUITE_XX_25519_CHACHAPOLY_BLAKE2B,
    Handshake,
    HandshakeResult,
    RandomBytes,
    check_init,
    prologue,
)
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.noise import DHLEN, TAGLEN, HandshakeState, KeyPair, xx_handshake
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import (
    AuthenticationError,
    LocalProtocolError,
    RemoteProtocolError,
    UnknownPeerError,
)

NOW = 1_800_000_000.0
SESSION = 7


def _rng(seed: int) -> RandomBytes:
    return random.Random(seed).randbytes


def _reason(exc_info: pytest.ExceptionInfo[BaseException]) -> str:
    return str(getattr(exc_info.value, "reason", ""))


@pytest.fixture
def alice() -> Identity:
    return Identity.generate("alice")


@pytest.fixture
def bob() -> Identity:
    return Identity.generate("bob")


@pytest.fixture
def alice_trust(tmp_path: Path, bob: Identity) -> TrustStore:
    """What alice trusts: bob, as a server."""
    store = TrustStore(tmp_path / "alice-trust")
    store.add(bob.public, ["server"])
    return store


@pytest.fixture
def bob_trust(tmp_path: Path, alice: Identity) -> TrustStore:
    """What bob trusts: alice, as a worker and a sensor."""
    store = TrustStore(tmp_path / "bob-trust")
    store.add(alice.public, ["worker", "sensor"])
    return store


def _initiator(
    identity: Identity,
    trust: TrustStore,
    *,
    session_id: int = SESSION,
    epoch: int = 0,
    seed: int = 1,
    expect_peer: str | None = None,
) -> Handshake:
    return Handshake(
        initiator=True,
        identity=identity,
        trust=trust,
        session_id=session_id,
        epoch=epoch,
        random_bytes=_rng(seed),
        expect_peer=expect_peer,
    )


def _responder(
    identity: Identity,
    trust: TrustStore,
    *,
    session_id: int = SESSION,
    epoch: int = 0,
    seed: int = 2,
    expect_peer: str | None = None,
) -> Handshake:
    return Handshake(
        initiator=False,
        identity=identity,
        trust=trust,
        session_id=session_id,
        epoch=epoch,
        random_bytes=_rng(seed),
        expect_peer=expect_peer,
    )


def _run(initiator: Handshake, responder: Handshake) -> tuple[HandshakeResult, HandshakeResult]:
    reply = responder.respond(initiator.start(), now=NOW)
    finish = initiator.finish(reply, now=NOW)
    accepted = responder.accept(finish, now=NOW)
    assert initiator.result is not None
    return initiator.result, accepted


def _raw(identity: Identity, *, initiator: bool, seed: int, epoch: int = 0) -> HandshakeState:
    """A bare Noise XX state with the zmqcomm prologue: a peer that skips the certificate checks
    and writes whatever payload it likes."""
    random_bytes = _rng(seed)
    return xx_handshake(
        initiator=initiator,
        static=identity.static_keypair,
        generate_keypair=lambda: KeyPair.from_private(random_bytes(DHLEN)),
        prologue=prologue(SESSION, epoch),
    )


# -- success ----------------------------------------------------------------------------------


def test_full_handshake_agrees_on_keys_and_names_both_peers(
    alice: Identity, bob: Identity, alice_trust: TrustStore, bob_trust: TrustStore
) -> None:
    initiator = _initiator(alice, alice_trust)
    responder = _responder(bob, bob_trust)
    init = initiator.start()
    assert len(init) == INIT_SIZE and init[0] == SUITE_XX_25519_CHACHAPOLY_BLAKE2B
    reply = responder.respond(init, now=NOW)
    assert (initiator.complete, responder.complete) == (False, False)
    finish = initiator.finish(reply, now=NOW)
    assert (initiator.complete, responder.complete) == (True, False)
    accepted = responder.accept(finish, now=NOW)
    assert responder.result is accepted and (initiator.complete, responder.complete) == (True, True)
    ours = initiator.result
    assert ours is not None

    assert ours.send_key == accepted.receive_key and ours.receive_key == accepted.send_key
    assert ours.send_key != ours.receive_key and len(ours.send_key) == 32
    assert ours.handshake_hash == accepted.handshake_hash
    # Each side learns who the other is, with the roles its own trust store gives.
    assert ours.agent_id == bob.agent_id and ours.peer.agent_id == bob.agent_id
    assert ours.peer.roles == frozenset({"server"})
    assert ours.certificate == bob.certificate
    assert accepted.agent_id == alice.agent_id
    assert accepted.peer.roles == frozenset({"worker", "sensor"})
    assert accepted.certificate == alice.certificate
    # Keys never show in a repr.
    assert ours.send_key.hex() not in repr(ours) and ours.receive_key.hex() not in repr(ours)


def test_ephemeral_keys_come_from_the_injected_random_source(
    alice: Identity, bob: Identity, alice_trust: TrustStore, bob_trust: TrustStore
) -> None:
    first = _initiator(alice, alice_trust, seed=11).start()
    assert _initiator(alice, alice_trust, seed=11).start() == first
    assert _initiator(alice, alice_trust, seed=12).start() != first
    # Same ephemerals on both sides twice: the same keys; another seed: other keys.
    a1, b1 = _run(_initiator(alice, alice_trust, seed=3), _responder(bob, bob_trust, seed=4))
    a2, _ = _run(_initiator(alice, alice_trust, seed=3), _responder(bob, bob_trust, seed=4))
    a3, _ = _run(_initiator(alice, alice_trust, seed=5), _responder(bob, bob_trust, seed=4))
    assert a1.send_key == a2.send_key == b1.receive_key
    assert a3.send_key != a1.send_key


def test_expect_peer_accepts_the_expected_agent(
    alice: Identity, bob: Identity, alice_trust: TrustStore, bob_trust: TrustStore
) -> None:
    ours, theirs = _run(
        _initiator(alice, alice_trust, expect_peer=bob.agent_id),
        _responder(bob, bob_trust, expect_peer=alice.agent_id),
    )
    assert ours.agent_id == bob.agent_id and theirs.agent_id == alice.agent_id


# -- refusing the peer ------------------------------------------------------------------------


def test_initiator_refuses_an_untrusted_responder_at_reply(
    tmp_path: Path, alice: Identity, bob: Identity, bob_trust: TrustStore
) -> None:
    empty = TrustStore(tmp_path / "empty")
    initiator = _initiator(alice, empty)
    reply = _responder(bob, bob_trust).respond(initiator.start(), now=NOW)
    with pytest.raises(UnknownPeerError) as caught:
        initiator.finish(reply, now=NOW)
    assert _reason(caught) == "unknown_peer"
    assert not initiator.complete and initiator.result is None


def test_responder_refuses_an_untrusted_initiator_at_finish(
    tmp_path: Path, alice: Identity, bob: Identity, alice_trust: TrustStore
) -> None:
    responder = _responder(bob, TrustStore(tmp_path / "empty"))
    initiator = _initiator(alice, alice_trust)
    # The responder cannot know who the initiator is before FINISH: REPLY goes out.
    reply = responder.respond(initiator.start(), now=NOW)
    finish = initiator.finish(reply, now=NOW)
    with pytest.raises(UnknownPeerError) as caught:
        responder.accept(finish, now=NOW)
    assert _reason(caught) == "unknown_peer"
    assert not responder.complete and responder.result is None


def test_a_revoked_peer_is_refused(
    alice: Identity, bob: Identity, alice_trust: TrustStore, bob_trust: TrustStore
) -> None:
    bob_trust.revoke(alice.agent_id)
    initiator, responder = _initiator(alice, alice_trust), _responder(bob, bob_trust)
    finish = initiator.finish(responder.respond(initiator.start(), now=NOW), now=NOW)
    with pytest.raises(UnknownPeerError) as caught:
        responder.accept(finish, now=NOW)
    assert _reason(caught) == "revoked"


def test_an_expired_certificate_is_refused(
    tmp_path: Path, alice: Identity, bob_trust: TrustStore
) -> None:
    carol = Identity.generate("carol", cert_expires=int(NOW) - 1)
    store = TrustStore(tmp_path / "trusts-carol")
    store.add(carol.public)
    initiator = _initiator(alice, store)
    reply = _responder(carol, bob_trust).respond(initiator.start(), now=NOW)
    with pytest.raises(AuthenticationError) as caught:
        initiator.finish(reply, now=NOW)
    assert _reason(caught) == "certificate_expired"


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_a_certificate_for_another_static_key_is_refused(
    side: str, alice: Identity, bob: Identity, alice_trust: TrustStore, bob_trust: TrustStore
) -> None:
    # Mallory runs the handshake with her own static key but shows a trusted peer's
    # certificate (genuine and signed, only not for the key Noise authenticated).
    mallory = Identity.generate("mallory")
    if side == "initiator":
        mallory.certificate = alice.certificate
        initiator = _initiator(mallory, alice_trust)
        responder = _responder(bob, bob_trust)
        finish = initiator.finish(responder.respond(initiator.start(), now=NOW), now=NOW)
        with pytest.raises(AuthenticationError) as caught:
            responder.accept(finish, now=NOW)
        assert not responder.complete
    else:
        mallory.certificate = bob.certificate
        initiator = _initiator(alice, alice_trust)
        reply = _responder(mallory, bob_trust).respond(initiator.start(), now=NOW)
        with pytest.raises(AuthenticationError) as caught:
            initiator.finish(reply, now=NOW)
        assert not initiator.complete
    assert _reason(caught) == "static_key_mismatch"


def test_initiator_refuses_a_responder_with_its_own_identity(
    tmp_path: Path, alice: Identity, bob_trust: TrustStore
) -> None:
    # Alice even trusts herself: the reflection check must not depend on the trust store.
    store = TrustStore(tmp_path / "trusts-self")
    store.add(alice.public)
    initiator = _initiator(alice, store)
    reply = _responder(alice, store).respond(initiator.start(), now=NOW)
    with pytest.raises(AuthenticationError) as caught:
        initiator.finish(reply, now=NOW)
    assert _reason(caught) == "reflected_id"
    assert not initiator.complete


def test_responder_refuses_an_initiator_with_its_own_identity(
    tmp_path: Path, bob: Identity
) -> None:
    store = TrustStore(tmp_path / "trusts-self")
    store.add(bob.public)
    responder = _responder(bob, store)
    # A raw Noise initiator holding bob's keys (a stolen copy, or a reflected connection).
    raw = _raw(bob, initiator=True, seed=9)
    reply = responder.respond(
        bytes([SUITE_XX_25519_CHACHAPOLY_BLAKE2B]) + raw.write_message(), now=NOW
    )
    assert raw.read_message(reply) == bob.certificate.encode()
    with pytest.raises(AuthenticationError) as caught:
        responder.accept(raw.write_message(bob.certificate.encode()), now=NOW)
    assert _reason(caught) == "reflected_id"
    assert not responder.complete


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_expect_peer_refuses_any_other_trusted_agent(
    side: str,
    alice: Identity,
    bob: Identity,
    alice_trust: TrustStore,
    bob_trust: TrustStore,
) -> None:
    carol = Identity.generate("carol")
    alice_trust.add(carol.public)
    bob_trust.add(carol.public)
    if side == "initiator":
        initiator = _initiator(alice, alice_trust, expect_peer=carol.agent_id)
        reply = _responder(bob, bob_trust).respond(initiator.start(), now=NOW)
        with pytest.raises(AuthenticationError) as caught:
            initiator.finish(reply, now=NOW)
        assert not initiator.complete
    else:
        initiator = _initiator(alice, alice_trust)
        responder = _responder(bob, bob_trust, expect_peer=carol.agent_id)
        finish = initiator.finish(responder.respond(initiator.start(), now=NOW), now=NOW)
        with pytest.raises(AuthenticationError) as caught:
            responder.accept(finish, now=NOW)
        assert not responder.complete
    assert _reason(caught) == "unexpected_peer"


def test_a_malformed_certificate_is_refused(
    alice: Identity, bob: Identity, alice_trust: TrustStore
) -> None:
    initiator = _initiator(alice, alice_trust)
    raw = _raw(bob, initiator=False, seed=8)
    raw.read_message(initiator.start()[1:])
    reply = raw.write_message(b"\x93\x01\x02\x03 not a certificate")
    with pytest.raises(AuthenticationError) as caught:
        initiator.finish(reply, now=NOW)
    assert _reason(caught) == "bad_certificate"


# -- refusing the message ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, INIT_SIZE - 1, INIT_SIZE + 1, 200])
def test_init_of_the_wrong_size_is_bad_handshake(size: int) -> None:
    init = (bytes([SUITE_XX_25519_CHACHAPOLY_BLAKE2B]) + bytes(range(1, 256)))[:size]
    with pytest.raises(RemoteProtocolError) as caught:
        check_init(init)
    assert _reason(caught) == "bad_handshake"


@pytest.mark.parametrize("suite", [0, SUITE_XX_25519_CHACHAPOLY_BLAKE2B + 1, 0x7F, 0xFF])
def test_init_with_an_unknown_suite_is_refused(suite: int) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        check_init(bytes([suite]) + bytes(range(1, DHLEN + 1)))
    assert _reason(caught) == "unknown_suite"


def test_check_init_accepts_a_genuine_init(alice: Identity, alice_trust: TrustStore) -> None:
    check_init(_initiator(alice, alice_trust).start())  # does not raise


def test_a_refused_init_leaves_the_responder_unchanged(
    alice: Identity, bob: Identity, alice_trust: TrustStore, bob_trust: TrustStore
) -> None:
    initiator = _initiator(alice, alice_trust)
    responder = _responder(bob, bob_trust)
    init = initiator.start()
    bad = [init[:-1], init + b"\x00", bytes([2]) + init[1:], bytes([0]) + init[1:]]
    reasons = []
    for body in bad:
        with pytest.raises(RemoteProtocolError) as caught:
            responder.respond(body, now=NOW)
        reasons.append(_reason(caught))
    assert reasons == ["bad_handshake", "bad_handshake", "unknown_suite", "unknown_suite"]
    # The genuine INIT still completes, with the same keys as an untouched responder's.
    reply = responder.respond(init, now=NOW)
    assert reply == _responder(bob, bob_trust).respond(init, now=NOW)
    accepted = responder.accept(initiator.finish(reply, now=NOW), now=NOW)
    assert initiator.result is not None and initiator.result.send_key == accepted.receive_key


@pytest.mark.parametrize("size", [0, DHLEN + TAGLEN, MAX_HANDSHAKE_MESSAGE + 1])
def test_reply_and_finish_outside_the_size_bounds_are_refused_and_change_nothing(
    size: int, alice: Identity, bob: Identity, alice_trust: TrustStore, bob_trust: TrustStore
) -> None:
    initiator = _initiator(alice, alice_trust)
    responder = _responder(bob, bob_trust)
    reply = responder.respond(initiator.start(), now=NOW)
    with pytest.raises(RemoteProtocolError) as caught:
        initiator.finish(bytes(size), now=NOW)
    assert _reason(caught) == "bad_handshake"
    finish = initiator.finish(reply, now=NOW)
    with pytest.raises(RemoteProtocolError) as caught:
        responder.accept(bytes(size), now=NOW)
    assert _reason(caught) == "bad_handshake"
    responder.accept(finish, now=NOW)
    assert responder.complete


def test_a_tampered_reply_fails_and_the_genuine_one_still_completes(
    alice: Identity, bob: Identity, alice_trust: TrustStore, bob_trust: TrustStore
) -> None:
    initiator = _initiator(alice, alice_trust)
    responder = _responder(bob, bob_trust)
    reply = responder.respond(initiator.start(), now=NOW)
    for index in (DHLEN, len(reply) - 1):  # in the encrypted static key, in the last tag
        tampered = bytearray(reply)
        tampered[index] ^= 0x01
        with pytest.raises(AuthenticationError) as caught:
            initiator.finish(bytes(tampered), now=NOW)
        assert _reason(caught) == "bad_handshake_tag"
        assert not initiator.complete
    responder.accept(initiator.finish(reply, now=NOW), now=NOW)
    assert responder.complete


@pytest.mark.parametrize(
    "role", ["responder_start", "initiator_respond", "responder_finish", "initiator_accept"]
)
def test_each_message_belongs_to_one_role(
    role: str, alice: Identity, bob: Identity, alice_trust: TrustStore, bob_trust: TrustStore
) -> None:
    initiator = _initiator(alice, alice_trust)
    responder = _responder(bob, bob_trust)
    init = initiator.start()
    with pytest.raises(LocalProtocolError):
        if role == "responder_start":
            responder.start()
        elif role == "initiator_respond":
            initiator.respond(init, now=NOW)
        elif role == "responder_finish":
            responder.finish(bytes(100), now=NOW)
        else:
            initiator.accept(bytes(100), now=NOW)


# -- prologue binding -------------------------------------------------------------------------


def test_prologue_binds_tag_session_and_epoch() -> None:
    base = prologue(SESSION, 0)
    assert base.startswith(PROLOGUE_TAG)
    assert base == prologue(SESSION, 0)
    others = {prologue(SESSION + 1, 0), prologue(SESSION, 1), prologue(0, SESSION)}
    assert base not in others and len(others) == 3


@pytest.mark.parametrize(("session_id", "epoch"), [(SESSION + 1, 0), (SESSION, 1), (0, 0)])
def test_init_moved_to_another_session_or_epoch_fails_at_reply(
    session_id: int,
    epoch: int,
    alice: Identity,
    bob: Identity,
    alice_trust: TrustStore,
    bob_trust: TrustStore,
) -> None:
    initiator = _initiator(alice, alice_trust)
    # The responder reads the INIT under other frame headers (INIT itself carries no tag).
    moved = _responder(bob, bob_trust, session_id=session_id, epoch=epoch)
    reply = moved.respond(initiator.start(), now=NOW)
    with pytest.raises(AuthenticationError) as caught:
        initiator.finish(reply, now=NOW)
    assert _reason(caught) == "bad_handshake_tag"
    assert not initiator.complete


@pytest.mark.parametrize(("session_id", "epoch"), [(SESSION + 1, 0), (SESSION, 1)])
def test_finish_moved_to_another_session_or_epoch_fails(
    session_id: int,
    epoch: int,
    alice: Identity,
    bob: Identity,
    alice_trust: TrustStore,
    bob_trust: TrustStore,
) -> None:
    initiator = _initiator(alice, alice_trust)
    init = initiator.start()
    finish = initiator.finish(_responder(bob, bob_trust, seed=5).respond(init, now=NOW), now=NOW)
    # Responders with the very same ephemeral key (same seed): only the prologue differs.
    moved = _responder(bob, bob_trust, session_id=session_id, epoch=epoch, seed=5)
    moved.respond(init, now=NOW)
    with pytest.raises(AuthenticationError) as caught:
        moved.accept(finish, now=NOW)
    assert _reason(caught) == "bad_handshake_tag"
    assert not moved.complete
    # Control: under the right session and epoch the same FINISH is accepted.
    same = _responder(bob, bob_trust, seed=5)
    same.respond(init, now=NOW)
    assert same.accept(finish, now=NOW).agent_id == alice.agent_id


def test_a_rekey_handshake_under_a_later_epoch_completes(
    alice: Identity, bob: Identity, alice_trust: TrustStore, bob_trust: TrustStore
) -> None:
    first, _ = _run(_initiator(alice, alice_trust), _responder(bob, bob_trust))
    later, theirs = _run(
        _initiator(alice, alice_trust, epoch=1, expect_peer=bob.agent_id),
        _responder(bob, bob_trust, epoch=1, expect_peer=alice.agent_id),
    )
    assert later.send_key == theirs.receive_key and later.agent_id == bob.agent_id
    # Same ephemerals (seeds), other epoch: the prologue alone gives another transcript.
    assert later.handshake_hash == theirs.handshake_hash != first.handshake_hash
