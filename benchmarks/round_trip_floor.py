"""How close to raw pyzmq can an encrypted round trip get in Python at all?

Two processes over ipc, a ROUTER that times each trip and a DEALER that echoes, 64-byte
messages, in three modes, alternating round by round:

- ``raw``: the payload as one frame, nothing else;
- ``floor``: the least a Python sender can do to seal each message and a receiver to open
  it: one frame of a 16-byte clear header (``struct``) and the ciphertext of one
  ChaCha20-Poly1305 call with the header as associated data, msgpack for the payload, a
  counter that must only go up. No handshake, trust store, rekey, batching, typed errors,
  socket options or audit: a lower bound, not a protocol;
- ``zmqcomm``: ``SecureRouter`` and ``SecureDealer`` after a Noise XX handshake, as
  ``zmqcomm bench`` measures them.

Issue 3 asks for the encrypted round trip p50 within 1.3x of raw pyzmq's; what ``floor``
costs over ``raw`` is what no implementation of per-message encryption in Python escapes.

    python benchmarks/round_trip_floor.py                 # 5,000 trips, 3 rounds
    python benchmarks/round_trip_floor.py --trips 1000 --rounds 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
from zmq.backend import zmq_poll

from zmqcomm.bench.common import BenchKeys, codec_for
from zmqcomm.crypto import aead
from zmqcomm.errors import ReceiveTimeout
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.wire import MessageType

MODES = ("raw", "floor", "zmqcomm")
MESSAGE = b"x" * 64
WARM_UP = 200
TIMEOUT_MS = 10_000
#: version, type, flags, session, counter: the fields a real clear header cannot do without.
_HEADER = struct.Struct("<BBHIQ")
_NONCE = struct.Struct("<IQ")


class FloorSession:
    """One direction's key each way and a counter: seal and open, nothing more."""

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        self.send_key, self.receive_key = send_key, receive_key
        self.sent = 0
        self.highest = -1

    def seal(self, payload: bytes) -> bytes:
        counter = self.sent
        self.sent += 1
        header = _HEADER.pack(1, 2, 0, 7, counter)
        body = msgpack.packb(payload)
        return header + aead.encrypt(self.send_key, _NONCE.pack(0, counter), header, body)

    def open(self, frame: bytes) -> bytes:
        header, sealed = frame[: _HEADER.size], frame[_HEADER.size :]
        counter = _HEADER.unpack(header)[4]
        if counter <= self.highest:
            raise ValueError("replayed or reordered")
        body = aead.decrypt(self.receive_key, _NONCE.pack(0, counter), header, sealed)
        if body is None:
            raise ValueError("bad tag")
        self.highest = counter
        payload: bytes = msgpack.unpackb(body)
        return payload


def _echo(mode: str, endpoint: str, keys: BenchKeys, floor_keys: tuple[bytes, bytes]) -> None:
    """The echoing process: answers until the measuring side closes."""
    context: zmq.Context[Any] = zmq.Context()
    if mode == "zmqcomm":
        identity, trust = keys.load("client")
        with SecureDealer(
            endpoint,
            identity=identity,
            trust=trust,
            codec=codec_for("encrypted"),
            context=context,
            connect_timeout=TIMEOUT_MS / 1000,
        ) as dealer:
            while True:
                try:
                    message = dealer.receive(timeout=TIMEOUT_MS / 1000)
                except ReceiveTimeout:
                    break  # the measuring side died
                if message.message.payload == b"stop":
                    break
                dealer.send(message.message.payload, msg_type=MessageType.REPLY)
    else:
        sock = context.socket(zmq.DEALER)
        sock.connect(endpoint)
        session = FloorSession(floor_keys[1], floor_keys[0])
        sock.send(b"hello")
        while zmq_poll([(sock, zmq.POLLIN)], TIMEOUT_MS):
            frames = sock.recv_multipart(zmq.NOBLOCK)
            if mode == "raw":
                if frames[0] == b"stop":
                    break
                sock.send_multipart(frames)
                continue
            payload = session.open(frames[0])
            if payload == b"stop":
                break
            sock.send(session.seal(payload))
        sock.close(linger=1000)
    context.term()


def _round(mode: str, trips: int, workdir: str, keys: BenchKeys) -> list[float]:
    """One round of ``trips`` timed trips (after a warm-up); seconds per trip."""
    endpoint = f"ipc://{workdir}/{mode}-{time.monotonic_ns()}"
    floor_keys = (os.urandom(32), os.urandom(32))
    context: zmq.Context[Any] = zmq.Context()
    spawn = multiprocessing.get_context("spawn")
    peer = spawn.Process(target=_echo, args=(mode, endpoint, keys, floor_keys), daemon=True)
    clock = time.perf_counter
    samples: list[float] = []
    try:
        if mode == "zmqcomm":
            identity, trust = keys.load("server")
            with SecureRouter(
                endpoint,
                identity=identity,
                trust=trust,
                codec=codec_for("encrypted"),
                context=context,
            ) as router:
                peer.start()
                deadline = time.monotonic() + TIMEOUT_MS / 1000
                while not router.peers and time.monotonic() < deadline:
                    router.pump(0.05)
                if not router.peers:
                    raise SystemExit("zmqcomm mode: the echo process never connected")
                (agent,) = router.peers
                send, receive = router.send, router.receive
                for _ in range(trips + WARM_UP):
                    started = clock()
                    send(agent, MESSAGE, msg_type=MessageType.REQUEST)
                    receive(timeout=TIMEOUT_MS / 1000)
                    samples.append(clock() - started)
                send(agent, b"stop", msg_type=MessageType.REQUEST)
                router.socket.setsockopt(zmq.LINGER, 1000)
        else:
            sock = context.socket(zmq.ROUTER)
            sock.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
            sock.bind(endpoint)
            peer.start()
            route = sock.recv_multipart()[0]
            session = FloorSession(*floor_keys)
            for _ in range(trips + WARM_UP):
                started = clock()
                if mode == "raw":
                    sock.send_multipart([route, MESSAGE])
                    sock.recv_multipart()
                else:
                    sock.send_multipart([route, session.seal(MESSAGE)])
                    session.open(sock.recv_multipart()[1])
                samples.append(clock() - started)
            stop = b"stop" if mode == "raw" else session.seal(b"stop")
            sock.send_multipart([route, stop])
        peer.join(TIMEOUT_MS / 1000)
    finally:
        if peer.is_alive():
            peer.kill()
        # linger 0: after an error (the echo process died, an interrupt), term() must not
        # wait for a socket still open here; on success the stop frame went long ago.
        context.destroy(linger=0)
    return samples[WARM_UP:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trips", type=int, default=5000, help="timed round trips per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every mode")
    args = parser.parse_args()
    if args.trips < 1 or args.rounds < 1:
        parser.error("--trips and --rounds must be at least 1")
    p50: dict[str, list[float]] = {mode: [] for mode in MODES}
    # Per round, not across: the host's wake-up latency changes between rounds (raw at
    # about 50 or about 110 us here), and the ratio means something only within one.
    with tempfile.TemporaryDirectory() as workdir:
        keys = BenchKeys.create(Path(workdir))
        for number in range(args.rounds):  # alternating, so drift in the machine hits all
            for mode in MODES if number % 2 == 0 else MODES[::-1]:
                median = statistics.median(_round(mode, args.trips, workdir, keys)) * 1e6
                p50[mode].append(median)
                print(f"round {number + 1}/{args.rounds} {mode:>8}: p50 {median:6.1f} us")
    print()
    for mode in MODES[1:]:
        ratios = [ours / raw for ours, raw in zip(p50[mode], p50["raw"], strict=True)]
        shown = ", ".join(f"{ratio:.2f}x" for ratio in ratios)
        print(f"{mode:>8} / raw per round: {shown} (median {statistics.median(ratios):.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
