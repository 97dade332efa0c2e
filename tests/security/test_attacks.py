"""The attack suite: each attack is refused, delivers no plaintext, changes no state, writes
one audit line, and legitimate traffic on the same link keeps flowing.

Attacks run against the pure channel table (the exact code the socket drivers run), with an
attacker who sees and can inject every frame; the downgrade attack also runs over real
sockets on inproc, ipc and tcp.
"""

from __future__ import annotations

import base64
import os
import random
import struct
import threading
from pathlib import Path

import pytest
import zmq
from nacl.public import Box, PrivateKey

from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.channel_table import HandshakeLimits
from zmqcomm.crypto.handshake import SUITE_XX_25519_CHACHAPOLY_BLAKE2B, prologue
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.noise import KeyPair, xx_handshake
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import SecurityError, ZmqCommError
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.transport import open_socket
from zmqcomm.wire import MessageType, WireCodec

from .conftest import Cast, establish
from .harness import ALICE_ROUTE, BOB_ROUTE, Link, delivered, established, fingerprint, make_link

SECRET = "the launch code is 0000"


@pytest.fixture
def link(cast: Cast) -> Link:
    link = make_link(cast.alice, cast.bob, cast.alice_trust, cast.bob_trust, bob_audit=cast.audit)
    link.connect()
    return link


def refused(link: Link, frames: list[bytes], *, reason: str | None = None) -> str:
    """Inject into Bob; check the four properties of a refusal; return the reason."""
    audit = link.bob.audit
    assert isinstance(audit, MemoryAuditLog)
    before = fingerprint(link.bob_channel)
    lines = len(audit.records)
    events = link.inject_to_bob(frames)
    assert events == [], "an attack frame produced events"
    assert fingerprint(link.bob_channel) == before, "an attack frame changed Bob's state"
    new = audit.records[lines:]
    assert len(new) == 1 and new[0]["event"] == "reject", new
    assert reason is None or new[0]["reason"] == reason, new[0]
    return str(new[0]["reason"])


def still_flowing(link: Link) -> None:
    assert link.send_alice_to_bob({"ok": 1}) == {"ok": 1}


# -- 1. man in the middle ------------------------------------------------------------------------


def test_mitm_with_an_unlisted_key_is_refused_by_the_responder(cast: Cast, link: Link) -> None:
    mallory = make_link(
        cast.mallory, cast.bob, cast.alice_trust, cast.bob_trust, bob_audit=cast.audit
    )
    mallory.bob = link.bob  # Mallory talks to the same Bob, on her own route
    lines = len(cast.audit.records)
    init = mallory.alice.connect(BOB_ROUTE, now=link.now)
    reply = link.bob.receive(b"mallory", [bytes(f) for f in init], now=link.now)
    finish = mallory.alice.receive(BOB_ROUTE, [bytes(f) for f in reply[0].frames], now=link.now)
    before = fingerprint(link.bob_channel)
    assert link.bob.receive(b"mallory", [bytes(f) for f in finish[0].frames], now=link.now) == []
    assert fingerprint(link.bob_channel) == before
    assert [r["reason"] for r in cast.audit.records[lines:]] == ["unknown_peer"]
    assert link.bob.peers == [cast.alice.agent_id]
    still_flowing(link)


def test_mitm_answering_for_bob_is_refused_by_the_initiator(cast: Cast, tmp_path: Path) -> None:
    # Mallory sits where Bob should be; Alice's trust store lists only Bob.
    mallory_trust = TrustStore(tmp_path / "mallory-trust")
    mallory_trust.add(cast.alice.public, roles=["agent"])
    alice_audit = MemoryAuditLog()
    fake = make_link(
        cast.alice,
        cast.mallory,
        cast.alice_trust,
        mallory_trust,
        bob_audit=MemoryAuditLog(),
        alice_audit=alice_audit,
    )
    fake._carry("alice", ALICE_ROUTE, fake.alice.connect(BOB_ROUTE, now=fake.now))
    assert not fake.alice_channel.established
    assert [r["reason"] for r in alice_audit.events("reject")] == ["unknown_peer"]


def test_mitm_presenting_bobs_certificate_with_its_own_static_key(cast: Cast, link: Link) -> None:
    # Mallory replays Bob's (public) certificate but cannot make Noise use Bob's static key.
    thief = Identity("bob", os.urandom(32), os.urandom(32))
    object.__setattr__(thief, "certificate", cast.bob.certificate)
    alice_audit = MemoryAuditLog()
    fake = make_link(
        cast.alice,
        thief,
        cast.alice_trust,
        cast.bob_trust,
        bob_audit=MemoryAuditLog(),
        alice_audit=alice_audit,
    )
    fake._carry("alice", ALICE_ROUTE, fake.alice.connect(BOB_ROUTE, now=fake.now))
    assert not fake.alice_channel.established
    assert [r["reason"] for r in alice_audit.events("reject")] == ["static_key_mismatch"]


def test_changed_static_key_under_tofu_is_refused(cast: Cast, tmp_path: Path) -> None:
    seed = os.urandom(32)
    carol = Identity("carol", seed, os.urandom(32))
    carol_new_static = Identity("carol", seed, os.urandom(32))  # same Ed25519, new X25519
    tofu = TrustStore(tmp_path / "tofu", tofu=True, tofu_roles=["agent"])
    carol_trust = TrustStore(tmp_path / "carol")
    carol_trust.add(cast.bob.public, roles=["agent"])
    audit = MemoryAuditLog()
    first = make_link(carol, cast.bob, carol_trust, tofu, bob_audit=audit)
    first.connect()  # pinned on first use
    second = make_link(carol_new_static, cast.bob, carol_trust, tofu, bob_audit=audit)
    second.bob = first.bob
    init = second.alice.connect(BOB_ROUTE, now=second.now)
    reply = first.bob.receive(b"carol-2", [bytes(f) for f in init], now=second.now)
    finish = second.alice.receive(BOB_ROUTE, [bytes(f) for f in reply[0].frames], now=second.now)
    assert first.bob.receive(b"carol-2", [bytes(f) for f in finish[0].frames], now=second.now) == []
    assert [r["reason"] for r in audit.events("reject")] == ["key_changed"]
    assert first.send_alice_to_bob("pinned key still works") == "pinned key still works"


# -- 2. bit flips --------------------------------------------------------------------------------


def test_a_bit_flip_anywhere_in_a_frame_is_refused(link: Link) -> None:
    reasons = set()
    for position in range(len(link.seal_from_alice(SECRET)[0])):
        for bit in range(8):
            frame = bytearray(link.seal_from_alice(SECRET)[0])
            frame[position] ^= 1 << bit
            reasons.add(refused(link, [bytes(frame)]))
            still_flowing(link)  # the next valid message opens (and resets the failure count)
    # Flips land in the header (parsed and refused early) and in the ciphertext (bad tag).
    assert "bad_tag" in reasons and len(reasons) > 3


def test_consecutive_failures_close_the_session(cast: Cast) -> None:
    link = make_link(
        cast.alice, cast.bob, cast.alice_trust, cast.bob_trust, bob_audit=cast.audit, max_failures=5
    )
    link.connect()
    for _ in range(4):
        frame = bytearray(link.seal_from_alice(SECRET)[0])
        frame[-1] ^= 1
        refused(link, [bytes(frame)], reason="bad_tag")
    frame = bytearray(link.seal_from_alice(SECRET)[0])
    frame[-1] ^= 1
    assert link.inject_to_bob([bytes(frame)]) == []
    assert ALICE_ROUTE not in link.bob.channels
    assert cast.audit.events("close", reason="too_many_failures")


# -- 3. truncation -------------------------------------------------------------------------------


def test_every_truncation_of_a_frame_is_refused(link: Link) -> None:
    frame = link.seal_from_alice(SECRET)[0]
    for length in range(len(frame)):
        refused(link, [frame[:length]])
        still_flowing(link)  # also keeps the failure count from closing the session
    refused(link, [], reason="truncated")
    still_flowing(link)


# -- 4. replay -----------------------------------------------------------------------------------


def test_replayed_message_is_refused(link: Link) -> None:
    frames = link.seal_from_alice(SECRET)
    assert delivered(link.inject_to_bob(frames))[0].message.payload == SECRET
    refused(link, frames, reason="replay")
    still_flowing(link)


def test_old_epoch_is_refused_after_the_grace_period(cast: Cast) -> None:
    policy = RekeyPolicy(grace_period=30.0)
    link = make_link(
        cast.alice, cast.bob, cast.alice_trust, cast.bob_trust, bob_audit=cast.audit, policy=policy
    )
    link.connect()
    old = link.seal_from_alice(SECRET)
    late = link.seal_from_alice(SECRET + "!")
    link.rekey()
    assert delivered(link.inject_to_bob(old))[0].message.payload == SECRET  # within grace
    link.now += 31
    link.bob.on_timer(now=link.now)
    refused(link, late, reason="stale_epoch")
    still_flowing(link)


def test_replayed_handshake_messages_are_refused(link: Link) -> None:
    init, reply, finish = link.wire[0][1], link.wire[1][1], link.wire[2][1]
    refused(link, init, reason="handshake_replay")
    refused(link, finish, reason="unexpected_handshake")
    before = fingerprint(link.alice_channel)
    assert link.inject_to_alice(reply) == []
    assert fingerprint(link.alice_channel) == before
    still_flowing(link)


# -- 5. reflection -------------------------------------------------------------------------------


def test_reflected_message_is_refused(link: Link) -> None:
    frames = link.seal_from_alice(SECRET)
    before = fingerprint(link.alice_channel)
    assert link.inject_to_alice(frames) == []
    assert fingerprint(link.alice_channel) == before
    assert link.alice.rejected["wrong_sender"] == 1
    still_flowing(link)


def test_reflection_control_a_shared_key_box_would_open_it() -> None:
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    alice_box = Box(alice, bob.public_key)
    sent_to_bob = alice_box.encrypt(SECRET.encode())
    # Reflected back to Alice: one key for both directions, so her own box opens it.
    assert alice_box.decrypt(sent_to_bob) == SECRET.encode()


def test_reflection_with_our_own_sender_field_still_fails_authentication(link: Link) -> None:
    # Even a frame that carried Bob's sender id cannot open: the directions use different keys.
    channel = link.alice_channel
    assert channel.secure is not None
    link.seal_from_alice("skip")  # past the counter of Bob's CONFIRM, so no replay check hits
    link.seal_from_alice("skip")
    channel.secure.sender = link.bob.identity.sender_id
    frames = link.seal_from_alice(SECRET)
    channel.secure.sender = link.alice.identity.sender_id
    assert link.inject_to_alice(frames) == []
    assert link.alice.rejected["bad_tag"] == 1


# -- 6. reordering and drops ---------------------------------------------------------------------


def test_reordered_and_dropped_messages_inside_the_window_open_once(link: Link) -> None:
    batch = [link.seal_from_alice(index) for index in range(500)]
    kept = [frames for index, frames in enumerate(batch) if index % 7]
    random.Random(5).shuffle(kept)
    got = [delivered(link.inject_to_bob(frames))[0].message.payload for frames in kept]
    assert sorted(got) == [index for index in range(500) if index % 7]
    for frames in kept[:10]:
        refused(link, frames, reason="replay")
    still_flowing(link)


def test_messages_older_than_the_window_are_refused(link: Link) -> None:
    too_old = link.seal_from_alice(SECRET)
    for index in range(4096):
        link.inject_to_bob(link.seal_from_alice(index))
    refused(link, too_old, reason="replay")
    still_flowing(link)


# -- 7. nonce reuse ------------------------------------------------------------------------------


def test_no_nonce_is_used_twice_across_threads_and_rekeys(link: Link) -> None:
    codec = WireCodec()
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def sender() -> None:
        local = []
        for _ in range(2000):
            while True:
                try:
                    frame = link.seal_from_alice(b"x")[0]
                    break
                except SecurityError as exc:  # sealed across a rekey: allocate again
                    assert exc.reason == "stale_epoch"
            header = codec.parse([frame]).header
            local.append((header.epoch, header.counter))
        with lock:
            seen.extend(local)

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(5):
        link.rekey()
    for thread in threads:
        thread.join()
    assert len(seen) == 8000 and len(set(seen)) == 8000


# -- 8. key-compromise impersonation and forward secrecy -----------------------------------------


def test_bobs_stolen_key_does_not_let_anyone_pose_as_alice_to_bob(cast: Cast, link: Link) -> None:
    # The attacker holds Bob's full identity, and Alice's public certificate and static key,
    # but not Alice's static private key: Noise's "se" cannot be computed.
    session_id = 77
    forged_static = KeyPair(os.urandom(32), cast.alice.static_keypair.public)
    noise = xx_handshake(
        initiator=True,
        static=forged_static,
        generate_keypair=lambda: KeyPair.from_private(os.urandom(32)),
        prologue=prologue(session_id, 0),
    )
    codec = WireCodec()
    init = codec.assemble(
        MessageType.HANDSHAKE_INIT,
        bytes([SUITE_XX_25519_CHACHAPOLY_BLAKE2B]) + noise.write_message(),
        session=session_id,
    )
    reply = link.bob.receive(b"impostor", init, now=link.now)
    noise.read_message(codec.parse(reply[0].frames).body.tobytes())
    finish = codec.assemble(
        MessageType.HANDSHAKE_FINISH,
        noise.write_message(cast.alice.certificate.encode()),
        session=session_id,
    )
    lines = len(cast.audit.records)
    assert link.bob.receive(b"impostor", finish, now=link.now) == []
    assert [r["reason"] for r in cast.audit.records[lines:]] == ["bad_handshake_tag"]
    assert link.bob.route_of(cast.alice.agent_id) == ALICE_ROUTE
    still_flowing(link)


def test_recorded_sessions_do_not_open_with_both_long_term_secrets(cast: Cast, link: Link) -> None:
    recorded = link.seal_from_alice(SECRET)
    init = link.wire[0][1]
    header = WireCodec().parse(init).header
    # With both static private keys, an attacker re-runs Bob's side on the recorded INIT:
    # the ephemeral secrets are gone, so the keys come out different.
    noise = xx_handshake(
        initiator=False,
        static=cast.bob.static_keypair,
        generate_keypair=lambda: KeyPair.from_private(os.urandom(32)),
        prologue=prologue(header.session, 0),
    )
    noise.read_message(WireCodec().parse(init).body.tobytes()[1:])
    noise.write_message(b"")
    assert not noise.complete
    guess = make_link(
        cast.alice, cast.bob, cast.alice_trust, cast.bob_trust, bob_audit=MemoryAuditLog()
    )
    guess.connect()
    assert guess.inject_to_bob(recorded) == []  # another session's keys: refused
    assert SECRET.encode() not in b"".join(frame for _, frames in link.wire for frame in frames)
    assert SECRET.encode() not in recorded[0]


# -- 9. downgrade --------------------------------------------------------------------------------


def test_plaintext_and_unknown_version_are_refused(link: Link) -> None:
    codec = WireCodec()
    plaintext = codec.encode(MessageType.DATA, SECRET, sender=link.alice.identity.sender_id)
    refused(link, [bytes(f) for f in plaintext], reason="plaintext_refused")
    future = bytearray(link.seal_from_alice(SECRET)[0])
    future[2] = 2  # major version 2
    refused(link, [bytes(future)], reason="unsupported_version")
    still_flowing(link)


def test_downgrades_over_sockets_are_refused(cast: Cast, endpoint: str) -> None:
    with (
        SecureRouter(endpoint, identity=cast.bob, trust=cast.bob_trust, audit=cast.audit) as router,
        SecureDealer(
            router.endpoint, identity=cast.alice, trust=cast.alice_trust, connect_timeout=None
        ) as dealer,
    ):
        establish(router, dealer)
        codec = WireCodec()
        # On the legitimate connection: a plaintext frame and a frame of a future version.
        dealer.socket.send_multipart(codec.encode(MessageType.DATA, SECRET))
        future = bytearray(codec.encode(MessageType.DATA, SECRET)[0])
        future[2] = 2
        dealer.socket.send_multipart([bytes(future)])
        # On a new connection: a handshake offering an unknown suite.
        raw = open_socket(zmq.DEALER)
        raw.connect(router.endpoint)
        raw.send_multipart(
            codec.assemble(MessageType.HANDSHAKE_INIT, b"\x09" + bytes(32), session=5)
        )
        dealer.send("legitimate")
        got = router.receive(timeout=5)
        deadline = router.clock() + 5
        while sum(router.table.rejected.values()) < 3 and router.clock() < deadline:
            router.pump(0.01)
        raw.close(linger=0)
        assert got.message.payload == "legitimate"
        assert router.table.rejected == {
            "plaintext_refused": 1,
            "unsupported_version": 1,
            "unknown_suite": 1,
        }
        assert len(cast.audit.events("reject")) == 3
        assert router.inbox == type(router.inbox)()


# -- 10. splicing --------------------------------------------------------------------------------


def test_frames_moved_between_sessions_topics_or_epochs_are_refused(cast: Cast, link: Link) -> None:
    # Another session of the same two agents (a second connection).
    other = make_link(
        cast.alice, cast.bob, cast.alice_trust, cast.bob_trust, bob_audit=MemoryAuditLog()
    )
    other.connect()
    refused(link, other.seal_from_alice(SECRET), reason="wrong_session")
    # The topic is authenticated: move a frame to another topic of the same length.
    frame = link.seal_from_alice(SECRET, topic="alpha")[0]
    refused(link, [frame.replace(b"alpha", b"omega", 1)], reason="bad_tag")
    # The epoch is authenticated too.
    frame = bytearray(link.seal_from_alice(SECRET)[0])
    struct.pack_into(">I", frame, 12, 1)
    refused(link, [bytes(frame)])
    still_flowing(link)


def test_a_frame_for_bob_does_not_open_at_carol(cast: Cast, tmp_path: Path) -> None:
    carol = Identity.generate("carol")
    carol_trust = TrustStore(tmp_path / "carol")
    carol_trust.add(cast.alice.public, roles=["agent"])
    cast.alice_trust.add(carol.public, roles=["agent"])
    to_bob = make_link(cast.alice, cast.bob, cast.alice_trust, cast.bob_trust, bob_audit=cast.audit)
    to_bob.connect()
    carol_audit = MemoryAuditLog()
    to_carol = make_link(cast.alice, carol, cast.alice_trust, carol_trust, bob_audit=carol_audit)
    to_carol.connect()
    refused(to_carol, to_bob.seal_from_alice(SECRET))
    assert to_carol.send_alice_to_bob("hi carol") == "hi carol"


# -- 11. handshake flood -------------------------------------------------------------------------


def test_handshake_flood_is_bounded_and_a_trusted_peer_still_connects(cast: Cast) -> None:
    limits = HandshakeLimits(
        rate=50.0, burst=20.0, per_route_rate=1.0, per_route_burst=2.0, max_pending=64
    )
    link = make_link(
        cast.alice, cast.bob, cast.alice_trust, cast.bob_trust, bob_audit=cast.audit, limits=limits
    )
    strangers = [Identity.generate(f"stranger{index}") for index in range(3)]
    replies = 0
    for round_ in range(20):
        for index in range(100):
            stranger = make_link(
                strangers[index % 3],
                cast.bob,
                cast.alice_trust,
                cast.bob_trust,
                bob_audit=MemoryAuditLog(),
            )
            route = f"flood-{round_}-{index % 40}".encode()
            init = stranger.alice.connect(BOB_ROUTE, now=link.now)
            events = link.bob.receive(route, [bytes(f) for f in init], now=link.now)
            replies += len(events)
        assert len(link.bob.channels) <= limits.max_pending
        link.now += 0.1
    # 2000 attempts in 2 s: the DH work done is what the buckets allowed, not what was asked.
    assert replies <= limits.burst + limits.rate * 2.0 + 1
    assert link.bob.rejected["rate_limited"] >= 2000 - replies
    assert (
        len(cast.audit.events("reject", reason="rate_limited")) == link.bob.rejected["rate_limited"]
    )
    link.now += 1.0  # the flood pauses for a second; the table's bucket refills
    link.connect()
    assert link.bob.route_of(cast.alice.agent_id) == ALICE_ROUTE
    still_flowing(link)


# -- 12. no secret anywhere ----------------------------------------------------------------------


def _encodings(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        base64.b32encode(secret).decode().rstrip("=").lower(),
        repr(secret)[2:-1],
    ]


def test_no_secret_in_logs_exceptions_or_reprs(cast: Cast, link: Link) -> None:
    link.rekey()
    session = link.bob_channel.session
    assert session is not None
    secrets = [
        cast.alice._secret_bytes(),
        cast.bob._secret_bytes(),
        cast.alice.static_keypair.private,
        cast.bob.static_keypair.private,
        session._send.key,
        *[state.key for state in session._receive.values()],
    ]
    texts: list[str] = []
    for frames in ([b"garbage"], link.seal_from_alice(SECRET)[:0] or [b"ZC"], link.wire[0][1]):
        try:
            link.bob_channel.receive(frames, now=link.now)
        except ZmqCommError as exc:
            texts.append(f"{exc!s} {exc!r} {exc.__cause__!r}")
    try:
        link.bob_channel.session.allocate(now=link.now + 10**9)  # type: ignore[union-attr]
    except ZmqCommError as exc:
        texts.append(repr(exc))
    texts += [repr(x) for x in (cast.alice, cast.alice.static_keypair, session, link.bob_channel)]
    texts += [repr(link.bob_channel._pending), str(cast.alice.public), repr(cast.alice.certificate)]
    texts += [str(record) for record in cast.audit.records]
    texts += [repr(e) for e in established(link.bob.receive(ALICE_ROUTE, [], now=link.now))]
    assert len(texts) > 10
    blob = "\n".join(texts)
    for secret in secrets:
        for form in _encodings(secret):
            assert form not in blob
    assert SECRET not in blob
