"""Sessions: per-direction keys, header as associated data, replay, rotation with a fake clock."""

from __future__ import annotations

import os
import random
import threading
from typing import Any

import numpy as np
import pytest
from nacl.public import Box, PrivateKey

from zmqcomm.crypto import aead
from zmqcomm.crypto.envelope import SecureCodec
from zmqcomm.crypto.noise import KeyPair, xx_handshake
from zmqcomm.crypto.session import RekeyPolicy, Session, keeps_initiator_role
from zmqcomm.errors import (
    AuthenticationError,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayError,
    SecurityError,
    UsageError,
)
from zmqcomm.wire import BatchBuilder, MessageType, WireCodec
from zmqcomm.wire.header import parse_sealed_frame


def _handshake_keys() -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    def keypair() -> KeyPair:
        return KeyPair.from_private(os.urandom(32))

    init = xx_handshake(initiator=True, static=keypair(), generate_keypair=keypair)
    resp = xx_handshake(initiator=False, static=keypair(), generate_keypair=keypair)
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    resp.read_message(init.write_message())
    return init.split_keys(), resp.split_keys()


def _pair(now: float = 0.0, policy: RekeyPolicy | None = None) -> tuple[SecureCodec, SecureCodec]:
    (a_send, a_recv), (b_send, b_recv) = _handshake_keys()
    a = Session(session_id=7, send_key=a_send, receive_key=a_recv, now=now, policy=policy)
    b = Session(session_id=7, send_key=b_send, receive_key=b_recv, now=now, policy=policy)
    return SecureCodec(a, sender=b"A" * 16), SecureCodec(b, sender=b"B" * 16)


def test_round_trip_both_ways_and_the_body_is_not_in_the_clear() -> None:
    a, b = _pair()
    frames = a.encode(MessageType.DATA, {"secret": "attack at dawn"}, topic="t", now=1.0)
    assert b"attack at dawn" not in frames[0]
    message = b.decode(frames, now=1.0)
    assert message.payload == {"secret": "attack at dawn"}
    assert message.header.sender == b"A" * 16
    assert message.header.is_encrypted
    assert a.decode(b.encode(MessageType.REPLY, "ok", now=1.0), now=1.0).payload == "ok"


def test_counters_strictly_increase() -> None:
    a, _b = _pair()
    counters = [
        a.codec.parse(a.encode(MessageType.DATA, i, now=0)).header.counter for i in range(5)
    ]
    assert counters == [0, 1, 2, 3, 4]


def test_header_is_authenticated() -> None:
    a, b = _pair()
    frame = bytes(a.encode(MessageType.DATA, "x", topic="orders", now=0)[0])
    # Change the message type byte (offset 5): same body, different header.
    forged = frame[:5] + bytes([MessageType.REQUEST]) + frame[6:]
    with pytest.raises(AuthenticationError) as caught:
        b.decode([forged], now=0)
    assert caught.value.reason == "bad_tag"
    assert b.decode([frame], now=0).payload == "x"  # the genuine frame still opens


def test_bit_flip_does_not_consume_the_counter() -> None:
    a, b = _pair()
    frame = bytearray(a.encode(MessageType.DATA, "payload", now=0)[0])
    frame[-1] ^= 1
    with pytest.raises(AuthenticationError):
        b.decode([bytes(frame)], now=0)
    frame[-1] ^= 1
    assert b.decode([bytes(frame)], now=0).payload == "payload"


def test_replay_is_refused() -> None:
    a, b = _pair()
    frames = a.encode(MessageType.DATA, 1, now=0)
    b.decode(frames, now=0)
    with pytest.raises(ReplayError):
        b.decode(frames, now=0)


def test_reflection_fails_but_a_shared_key_box_would_open_it() -> None:
    a, _ = _pair()
    frames = a.encode(MessageType.DATA, "mine", now=0)
    with pytest.raises(AuthenticationError):
        a.decode(frames, now=0)
    # Control: nacl Box derives one key for both directions, so a reflected box opens.
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    sealed = Box(alice, bob.public_key).encrypt(b"mine")
    assert Box(alice, bob.public_key).decrypt(sealed) == b"mine"


def test_plaintext_and_other_sessions_are_refused() -> None:
    _a, b = _pair()
    with pytest.raises(AuthenticationError) as caught:
        b.decode(WireCodec().encode(MessageType.DATA, "plain"), now=0)
    assert caught.value.reason == "plaintext_refused"
    other = Session(session_id=8, send_key=bytes(32), receive_key=bytes(32), now=0)
    with pytest.raises(AuthenticationError) as caught:
        b.decode(SecureCodec(other).encode(MessageType.DATA, 1, now=0), now=0)
    assert caught.value.reason == "wrong_session"


def _count_aead_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch both ways of encrypting; the list names each call made."""
    calls: list[str] = []
    for name in ("encrypt", "encrypt_into"):
        real = getattr(aead, name)

        def counting(*args: object, _real: Any = real, _name: str = name) -> object:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(aead, name, counting)
    return calls


@pytest.mark.parametrize("items", [500, 2])
def test_a_batch_is_one_aead_call(monkeypatch: pytest.MonkeyPatch, items: int) -> None:
    # 500 small items: one call of encrypt; 2 items of 40 KB (over 64 KiB together): one
    # call of encrypt_into, straight into the frame.
    a, b = _pair()
    calls = _count_aead_calls(monkeypatch)
    builder = BatchBuilder(a.codec)
    payloads = [{"n": i, "pad": os.urandom(40_000 if items == 2 else 1)} for i in range(items)]
    for payload in payloads:
        builder.add(payload)
    frames = a.seal(MessageType.DATA, builder.take(), now=0)
    assert calls == ["encrypt" if items == 500 else "encrypt_into"]
    assert b.decode(frames, now=0).payloads == payloads


def test_out_of_band_tensors_are_encrypted_too() -> None:
    a, b = _pair()
    array = np.arange(40_000, dtype=np.float32)
    frames = a.encode(MessageType.DATA, array, now=0)
    assert len(frames) == 2
    assert array.tobytes()[:64] not in frames[1]
    assert np.array_equal(b.decode(frames, now=0).payload, array)
    tampered = [frames[0], frames[1][:-1] + bytes([frames[1][-1] ^ 1])]
    frames2 = a.encode(MessageType.DATA, array, now=0)
    with pytest.raises(AuthenticationError):
        b.decode([frames2[0], tampered[1]], now=0)  # frame from another message: refused
    assert np.array_equal(b.decode(frames2, now=0).payload, array)


def test_authenticated_garbage_is_still_a_protocol_error() -> None:
    a, b = _pair()
    head_only = a.seal(MessageType.DATA, a.codec.build_body(1)._replace(data=b"\xc1"), now=0)
    with pytest.raises(RemoteProtocolError):
        b.decode(head_only, now=0)


def test_hard_limit_refuses_to_send() -> None:
    policy = RekeyPolicy(max_messages=3, hard_max_messages=5, jitter=0.0)
    a, _ = _pair(policy=policy)
    for index in range(5):
        a.encode(MessageType.DATA, index, now=0)
        assert a.session.needs_rekey(now=0) is (index >= 2)
    with pytest.raises(SecurityError) as caught:
        a.encode(MessageType.DATA, 5, now=0)
    assert caught.value.reason == "rekey_overdue"


def test_age_limits_with_jitter() -> None:
    policy = RekeyPolicy(max_age=100.0, hard_max_age=150.0, jitter=0.5)
    (send, recv), _ = _handshake_keys()
    session = Session(session_id=1, send_key=send, receive_key=recv, now=0.0, policy=policy,
                      jitter=0.5)  # fmt: skip
    assert session.rekey_deadline() == 75.0  # shortened by 0.5 * 0.5
    assert not session.needs_rekey(now=74.0)
    assert session.needs_rekey(now=75.0)
    with pytest.raises(SecurityError):
        session.allocate(now=150.0)


def test_rotation_keeps_every_message_exactly_once_across_a_simultaneous_rekey() -> None:
    policy = RekeyPolicy(max_messages=50, hard_max_messages=100, jitter=0.0, grace_period=5.0)
    a, b = _pair(policy=policy)
    rng = random.Random(3)
    in_flight: list[tuple[str, list[bytes], int]] = []
    delivered: dict[str, list[int]] = {"a": [], "b": []}
    now = 0.0
    for index in range(50):
        in_flight.append(("b", a.encode(MessageType.DATA, index, now=now), index))
        in_flight.append(("a", b.encode(MessageType.DATA, index, now=now), index))
    # Both sides hit the limit in the same tick and both want to initiate.
    assert a.session.needs_rekey(now=now) and b.session.needs_rekey(now=now)
    a_id, b_id = a.sender, b.sender
    assert keeps_initiator_role(a_id, b_id) != keeps_initiator_role(b_id, a_id)
    (a_send, a_recv), (b_send, b_recv) = _handshake_keys()
    now = 1.0
    assert a.session.install(a_send, a_recv, now=now) == 1
    assert b.session.install(b_send, b_recv, now=now) == 1
    for index in range(50, 100):
        in_flight.append(("b", a.encode(MessageType.DATA, index, now=now), index))
        in_flight.append(("a", b.encode(MessageType.DATA, index, now=now), index))
    rng.shuffle(in_flight)  # old- and new-epoch messages arrive interleaved
    for target, frames, _ in in_flight:
        receiver = a if target == "a" else b
        delivered[target].append(receiver.decode(frames, now=now + 2.0).payload)
    assert sorted(delivered["a"]) == list(range(100))
    assert sorted(delivered["b"]) == list(range(100))
    # After the grace period, the old epoch is gone.
    late = next(f for t, f, i in in_flight if t == "b" and i < 50)
    assert b.session.next_deadline() == 6.0
    b.session.on_timer(now=6.0)
    assert b.session.open_epochs == [1]
    with pytest.raises(ReplayError) as caught:
        b.decode(late, now=6.0)
    assert caught.value.reason == "stale_epoch"


def test_no_nonce_is_used_twice_across_threads() -> None:
    a, _ = _pair()
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [a.session.allocate(now=0) for _ in range(5000)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == len(set(seen)) == 20_000


def test_bad_settings_and_ids() -> None:
    with pytest.raises(UsageError):
        RekeyPolicy(jitter=1.0)
    with pytest.raises(UsageError):
        RekeyPolicy(max_messages=10, hard_max_messages=5)
    with pytest.raises(UsageError):
        Session(session_id=2**32, send_key=bytes(32), receive_key=bytes(32), now=0)
    with pytest.raises(UsageError):
        Session(session_id=1, send_key=b"short", receive_key=bytes(32), now=0)
    with pytest.raises(SecurityError):
        keeps_initiator_role(b"x" * 16, b"x" * 16)
    assert "key" not in repr(
        Session(session_id=1, send_key=bytes(32), receive_key=bytes(32), now=0)
    )


_NAN = float("nan")


@pytest.mark.parametrize(
    "settings",
    [
        {"hard_max_messages": _NAN},  # switched the hard send limit off
        {"max_messages": _NAN, "hard_max_messages": _NAN},
        {"max_messages": 1.5},
        {"max_messages": 10.0, "hard_max_messages": 20},
        {"max_messages": True},
        {"hard_max_messages": float("inf")},
        {"max_messages": 0},
        {"max_messages": 1, "hard_max_messages": 2**64},
        {"max_messages": "10"},
        {"max_age": _NAN},
        {"hard_max_age": _NAN},
        {"max_age": float("inf"), "hard_max_age": float("inf")},
        {"grace_period": _NAN},
        {"grace_period": -1.0},
        {"jitter": _NAN},
        {"jitter": "0.1"},
    ],
    ids=repr,
)
def test_rekey_policy_refuses_nan_and_non_integer_limits(settings: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        RekeyPolicy(**settings)  # type: ignore[arg-type]


def test_rekey_policy_accepts_the_extremes_of_its_ranges() -> None:
    RekeyPolicy(max_messages=1, hard_max_messages=1)
    RekeyPolicy(max_messages=2**64 - 1, hard_max_messages=2**64 - 1)
    RekeyPolicy(jitter=0, grace_period=0)


def test_the_key_our_held_finish_supersedes_stays_open_then_gets_a_grace_period() -> None:
    """A rekey's initiator whose FINISH waits for room pauses the expiry of the key it
    superseded: the peer still seals under it, however long the FINISH waits. Resumed,
    that key gets one grace period from then (not from the install)."""
    policy = RekeyPolicy(jitter=0.0, grace_period=5.0)
    a, b = _pair(policy=policy)
    (a_send, a_recv), _ = _handshake_keys()
    old_epoch = b.encode(MessageType.DATA, "under epoch 0", now=0.0)
    later = b.encode(MessageType.DATA, "also epoch 0", now=0.0)
    a.session.install(a_send, a_recv, now=1.0)
    a.session.pause_expiry(now=1.0)
    a.session.on_timer(now=100.0)
    assert a.decode(old_epoch, now=100.0).payload == "under epoch 0"
    a.session.resume_expiry(now=100.0)
    assert a.session.next_deadline() == 105.0
    assert a.decode(later, now=104.0).payload == "also epoch 0"
    a.session.on_timer(now=105.0)
    assert a.session.open_epochs == [1]


def test_a_paused_key_still_expires_at_the_hard_age_and_older_ones_are_not_revived() -> None:
    """A peer that never reads keeps our FINISH held for ever: the key it seals under stays
    open at most ``hard_max_age`` (the longest any key may be used). Only the epoch just
    superseded is paused; an older one keeps its expiry."""
    policy = RekeyPolicy(max_age=10.0, hard_max_age=20.0, jitter=0.0, grace_period=5.0)
    a, b = _pair(policy=policy)
    epoch_0 = b.encode(MessageType.DATA, "epoch 0", now=0.0)
    keys_1, keys_2 = _handshake_keys()[0], _handshake_keys()[0]  # (send, receive) each
    a.session.install(*keys_1, now=1.0)  # epoch 0 expires at 6
    a.session.install(*keys_2, now=10.0)  # epoch 1 expires at 15
    a.session.pause_expiry(now=10.0)  # epoch 1 now at 10 + 20
    with pytest.raises(ReplayError):
        a.decode(epoch_0, now=10.0)
    assert a.session.next_deadline() == 6.0
    a.session.on_timer(now=29.0)
    assert a.session.open_epochs == [1, 2]
    a.session.on_timer(now=30.0)
    assert a.session.open_epochs == [2]


# -- the one-frame shortcut the channel takes for most messages ----------------------------


def _shortcut(codec: SecureCodec, frame: bytes, sender: bytes = b"A" * 16) -> Any:
    return codec.open_frame(frame, sender)


def test_the_shortcut_opens_what_decode_opens_and_counts_the_message_once() -> None:
    a, b = _pair()
    frames = a.encode(MessageType.DATA, {"n": 1}, topic="t", now=0)
    message = _shortcut(b, frames[0])
    assert message.payload == {"n": 1}
    assert message.header == parse_sealed_frame(frames[0])[0]  # type: ignore[index]
    assert _shortcut(b, frames[0]) is None  # a replay: the general path says so
    with pytest.raises(ReplayError):
        b.decode(frames, now=0)


def test_the_shortcut_opens_a_large_frame_in_place_and_a_batch() -> None:
    a, b = _pair()
    big = os.urandom(200_000)
    assert _shortcut(b, a.encode(MessageType.DATA, big, now=0)[0]).payload == big
    body = a.codec.build_batch_of(["x", 2, None])
    assert _shortcut(b, a.seal(MessageType.DATA, body, now=0)[0]).payloads == ["x", 2, None]


def test_a_bad_tag_is_left_to_the_general_path_and_the_window_stays() -> None:
    a, b = _pair()
    frame = bytearray(a.encode(MessageType.DATA, "payload", now=0)[0])
    frame[-1] ^= 1
    assert _shortcut(b, bytes(frame)) is None
    with pytest.raises(AuthenticationError) as caught:
        b.decode([bytes(frame)], now=0)
    assert caught.value.reason == "bad_tag"
    frame[-1] ^= 1
    assert _shortcut(b, bytes(frame)).payload == "payload"


def test_the_shortcut_opens_only_data_from_the_sender_it_is_told() -> None:
    a, b = _pair()
    frame = a.encode(MessageType.DATA, "payload", now=0)[0]
    assert _shortcut(b, frame, sender=b"\x01" * 16) is None
    confirm = a.encode(MessageType.HANDSHAKE_CONFIRM, None, now=0)[0]
    assert _shortcut(b, confirm) is None  # a security type is never data
    assert _shortcut(b, frame).payload == "payload"  # neither spent its counter


def test_the_sealing_shortcut_writes_the_frame_seal_writes() -> None:
    # Two senders with the same keys and counters: one takes encode()'s shortcut (one small
    # payload, no topic), the other the general seal(); the frames must be the same bytes.
    (send, receive), _ = _handshake_keys()
    short = SecureCodec(Session(session_id=3, send_key=send, receive_key=receive, now=0))
    general = SecureCodec(Session(session_id=3, send_key=send, receive_key=receive, now=0))
    for payload in ("x", b"y" * 100, {"n": [1, 2]}, None):
        shortcut_frames = short.encode(MessageType.REQUEST, payload, now=0)
        body = general.codec.build_body(payload)
        assert shortcut_frames == general.seal(MessageType.REQUEST, body, now=0)
    with pytest.raises(LocalProtocolError):
        short.encode(256, "type out of range", now=0)


def test_the_shortcut_leaves_older_epochs_and_other_sessions_to_the_general_path() -> None:
    policy = RekeyPolicy(jitter=0.0, grace_period=5.0)
    a, b = _pair(policy=policy)
    (b_send, b_recv), _ = _handshake_keys()
    under_epoch_0 = a.encode(MessageType.DATA, "old keys", now=0.0)
    b.session.install(b_send, b_recv, now=1.0)
    assert _shortcut(b, under_epoch_0[0]) is None
    assert b.decode(under_epoch_0, now=2.0).payload == "old keys"  # its grace period
    other = Session(session_id=8, send_key=bytes(32), receive_key=bytes(32), now=0)
    from_other = SecureCodec(other, sender=b"A" * 16).encode(MessageType.DATA, 1, now=0)[0]
    assert _shortcut(b, from_other) is None
