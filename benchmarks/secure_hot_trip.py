"""The Python cost of one encrypted round trip, hot, with no other process to wait for.

A SecureRouter and a SecureDealer in one thread over inproc: the router sends a 64-byte
request, the dealer receives it and answers, the router receives the answer. Beside it, the
same trip on a raw ROUTER/DEALER pair. What separates the two is what the secure path costs
in Python per round trip (two seals, two opens, the pumps); across two processes each side
runs it cache-cold after the other wakes it, at about twice that.

    python benchmarks/secure_hot_trip.py               # 20,000 trips, 3 rounds
    python benchmarks/secure_hot_trip.py --trips 2000  # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from zmqcomm.bench.common import BenchKeys, codec_for
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.wire import MessageType

MESSAGE = b"x" * 64


def _per_trip(trip: Callable[[], None], trips: int) -> float:
    for _ in range(min(1000, trips)):  # warm up
        trip()
    started = time.perf_counter()
    for _ in range(trips):
        trip()
    return (time.perf_counter() - started) / trips * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trips", type=int, default=20_000, help="round trips per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    with tempfile.TemporaryDirectory() as directory:
        keys = BenchKeys.create(Path(directory))
        server, server_trust = keys.load("server")
        client, client_trust = keys.load("client")
        codec = codec_for("encrypted")
        router = SecureRouter(
            "inproc://hot-secure", identity=server, trust=server_trust, codec=codec, context=context
        )
        dealer = SecureDealer(
            "inproc://hot-secure",
            identity=client,
            trust=client_trust,
            codec=codec_for("encrypted"),
            context=context,
            connect_timeout=None,
        )
        while not (router.peers and dealer.established):
            router.pump(0.01)
            dealer.pump(0.01)
        agent = router.peers[0]

        def secure_trip() -> None:
            router.send(agent, MESSAGE, msg_type=MessageType.REQUEST)
            dealer.send(dealer.receive(timeout=1).message.payload, msg_type=MessageType.REPLY)
            router.receive(timeout=1)

        raw_router = context.socket(zmq.ROUTER)
        raw_router.bind("inproc://hot-raw")
        raw_dealer = context.socket(zmq.DEALER)
        raw_dealer.setsockopt(zmq.IDENTITY, b"d")
        raw_dealer.connect("inproc://hot-raw")

        def raw_trip() -> None:
            raw_router.send_multipart([b"d", MESSAGE])
            raw_dealer.send_multipart(raw_dealer.recv_multipart())
            raw_router.recv_multipart()

        secure, raw = [], []
        for _ in range(args.rounds):  # alternating, so drift in the machine hits both
            secure.append(_per_trip(secure_trip, args.trips))
            raw.append(_per_trip(raw_trip, args.trips))
        router.close()
        dealer.close()
        raw_router.close(linger=0)
        raw_dealer.close(linger=0)
    context.term()
    print(f"encrypted round trip, one thread, inproc: {statistics.median(secure):.1f} us")
    print(f"raw ROUTER/DEALER round trip, same:       {statistics.median(raw):.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
