"""Raw pyzmq against zmqcomm's encrypted channel, side by side, two processes.

Two measurements, each alternating raw and zmqcomm runs so that load drift hits both alike:

- stream: one process sends ``count`` messages of ``size`` bytes, the other receives them.
  raw = PUSH/PULL, one ``send``/``recv`` per message. zmqcomm = a SecureDealer's
  ``batching_sender`` (msgpack, batch frames, one ChaCha20-Poly1305 call per batch) to a
  SecureRouter that opens every frame and counts the payloads. The receiver's clock runs from
  the first message to the last.
- round trip: a client sends a message and waits for the answer, ``trips`` times.
  raw = REQ/REP; zmqcomm = SecureDealer.send -> SecureRouter.receive -> send back. Reported as
  p50/p90/p99 in microseconds.

Both sides authenticate with throw-away identities written to a temporary directory (Noise XX
with certificates, trust stores listing each other). Loopback and ipc only.

    python benchmarks/secure_side_by_side.py            # ipc, 64 B, 1,000,000 messages, 5 rounds
    python benchmarks/secure_side_by_side.py --quick    # a few seconds
    python benchmarks/secure_side_by_side.py --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from zmqcomm.crypto.keys import Identity, load_identity, save_identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.transport import SocketOptions
from zmqcomm.wire import MessageType

MODES = ("raw", "zmqcomm")
_OPTIONS = SocketOptions(send_hwm=100_000, receive_hwm=100_000)


def make_keys(directory: Path) -> None:
    """Two identities that trust each other: ``server`` and ``client``."""
    server, client = Identity.generate("server"), Identity.generate("client")
    for identity, peer in ((server, client), (client, server)):
        save_identity(identity, directory / "keys")
        TrustStore(directory / f"trust-{identity.name}").add(peer.public, roles=["bench"])


def _load(directory: Path, name: str) -> tuple[Identity, TrustStore]:
    return load_identity(directory / "keys" / f"{name}.key"), TrustStore(
        directory / f"trust-{name}"
    )


# -- stream --------------------------------------------------------------------------------------


def _stream_sender(
    mode: str, endpoint: str, count: int, size: int, directory: str, go: Any
) -> None:
    message = os.urandom(size)
    if mode == "raw":
        context = zmq.Context()
        sock = context.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.connect(endpoint)
        go.wait()
        send = sock.send
        for _ in range(count):
            send(message)
        sock.close(linger=-1)
        context.term()
        return
    identity, trust = _load(Path(directory), "client")
    with SecureDealer(
        endpoint, identity=identity, trust=trust, options=_OPTIONS, send_timeout=None
    ) as dealer:
        go.wait()
        sender = dealer.batching_sender(max_delay=0.01)
        enqueue, data = sender.send, MessageType.DATA
        for index in range(count):
            enqueue(data, message)
            if index & 0x3FFF == 0:
                dealer.pump()  # lets rekeys and the router's confirmations through
        sender.close()
        dealer.socket.setsockopt(zmq.LINGER, -1)


def measure_stream(mode: str, transport: str, count: int, size: int, directory: str) -> float:
    spawn = multiprocessing.get_context("spawn")
    go = spawn.Event()
    endpoint = (
        f"ipc://{directory}/{mode}-{time.monotonic_ns()}.sock"
        if transport == "ipc"
        else "tcp://127.0.0.1:0"
    )
    if mode == "raw":
        context = zmq.Context()
        sock = context.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.bind(endpoint)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        process = spawn.Process(
            target=_stream_sender, args=(mode, endpoint, count, size, directory, go)
        )
        process.start()
        time.sleep(0.2)
        go.set()
        recv = sock.recv
        recv()
        started = time.perf_counter()
        for _ in range(count - 1):
            recv()
        elapsed = time.perf_counter() - started
        process.join(timeout=60)
        sock.close(linger=0)
        context.term()
        return (count - 1) / elapsed
    identity, trust = _load(Path(directory), "server")
    with SecureRouter(endpoint, identity=identity, trust=trust, options=_OPTIONS) as router:
        process = spawn.Process(
            target=_stream_sender, args=(mode, router.endpoint, count, size, directory, go)
        )
        process.start()
        while not router.peers:
            router.pump(0.05)
        go.set()
        received = len(router.receive(timeout=60).message.payloads)
        started = time.perf_counter()
        while received < count:
            received += len(router.receive(timeout=60).message.payloads)
        elapsed = time.perf_counter() - started
        process.join(timeout=60)
    if received != count:
        raise RuntimeError(f"{mode}: received {received} of {count}")
    return (count - 1) / elapsed


# -- round trip ----------------------------------------------------------------------------------


def _echo_server(mode: str, endpoint: str, trips: int, directory: str, ready: Any) -> None:
    if mode == "raw":
        context = zmq.Context()
        sock = context.socket(zmq.REP)
        sock.bind(endpoint)
        ready.set()
        for _ in range(trips):
            sock.send(sock.recv())
        sock.close(linger=-1)
        context.term()
        return
    identity, trust = _load(Path(directory), "server")
    with SecureRouter(endpoint, identity=identity, trust=trust) as router:
        ready.set()
        for _ in range(trips):
            request = router.receive(timeout=60)
            router.send(request.agent_id, request.message.payload, msg_type=MessageType.REPLY)
        router.socket.setsockopt(zmq.LINGER, -1)


def measure_round_trip(mode: str, trips: int, size: int, directory: str) -> list[float]:
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    endpoint = f"ipc://{directory}/rt-{mode}-{time.monotonic_ns()}.sock"
    process = spawn.Process(target=_echo_server, args=(mode, endpoint, trips, directory, ready))
    process.start()
    ready.wait(30)
    message = os.urandom(size)
    samples: list[float] = []
    clock = time.perf_counter
    if mode == "raw":
        context = zmq.Context()
        sock = context.socket(zmq.REQ)
        sock.connect(endpoint)
        for _ in range(trips):
            started = clock()
            sock.send(message)
            sock.recv()
            samples.append(clock() - started)
        sock.close(linger=0)
        context.term()
    else:
        identity, trust = _load(Path(directory), "client")
        with SecureDealer(endpoint, identity=identity, trust=trust) as dealer:
            for _ in range(trips):
                started = clock()
                dealer.send(message, msg_type=MessageType.REQUEST)
                dealer.receive(timeout=10)
                samples.append(clock() - started)
    process.join(timeout=30)
    return samples


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6  # noqa: E731
    return {"p50_us": pick(0.50), "p90_us": pick(0.90), "p99_us": pick(0.99)}


def run(transport: str, size: int, count: int, trips: int, rounds: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    trip_samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="zc-bench-", dir="/tmp") as directory:
        make_keys(Path(directory))
        for index in range(rounds):
            for mode in MODES if index % 2 == 0 else reversed(MODES):
                rate = measure_stream(mode, transport, count, size, directory)
                rates[mode].append(rate)
                trip_samples[mode] += measure_round_trip(mode, trips, size, directory)
                print(
                    f"  round {index + 1}/{rounds} {mode:<8} {rate:>12,.0f} msg/s", file=sys.stderr
                )
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    latency = {mode: _percentiles(values) for mode, values in trip_samples.items()}
    return {
        "transport": transport,
        "size": size,
        "count": count,
        "trips_per_round": trips,
        "rounds": rounds,
        "stream_msg_per_s": medians,
        "stream_runs": rates,
        "stream_ratio": medians["zmqcomm"] / medians["raw"],
        "round_trip": latency,
        "round_trip_p50_ratio": latency["zmqcomm"]["p50_us"] / latency["raw"]["p50_us"],
        "versions": {"pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version()},
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=("ipc", "tcp"), default="ipc")
    parser.add_argument("--size", type=int, default=64, help="message size in bytes")
    parser.add_argument("--count", type=int, default=1_000_000, help="stream messages per run")
    parser.add_argument("--trips", type=int, default=5_000, help="round trips per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each mode")
    parser.add_argument("--quick", action="store_true", help="200,000 messages, 3 rounds")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if args.quick:
        args.count, args.trips, args.rounds = 200_000, 1_000, 3
    result = run(args.transport, args.size, args.count, args.trips, args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rates, latency = result["stream_msg_per_s"], result["round_trip"]
    print(f"{args.transport}, {args.size} B, median of {args.rounds} runs each")
    print(f"  stream  raw pyzmq PUSH/PULL           {rates['raw']:>12,.0f} msg/s")
    print(f"  stream  zmqcomm encrypted, batched    {rates['zmqcomm']:>12,.0f} msg/s")
    print(f"  stream  ratio                         {result['stream_ratio']:>12.2f}x")
    for mode in MODES:
        figures = latency[mode]
        p50, p90, p99 = figures["p50_us"], figures["p90_us"], figures["p99_us"]
        print(f"  round trip {mode:<8} p50 {p50:7.1f} us  p90 {p90:7.1f} us  p99 {p99:7.1f} us")
    print(f"  round trip p50 ratio               {result['round_trip_p50_ratio']:>12.2f}x")


if __name__ == "__main__":
    main()
