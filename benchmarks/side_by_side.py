"""Raw pyzmq against zmqcomm's transport + wire, side by side in one run.

Two processes (a PUSH sender and a PULL receiver) per measurement. The runs alternate
(raw, zmqcomm, raw, zmqcomm, ...) so that drift in the machine's load hits both alike; the
report gives the median of each and the ratio.

- raw: pyzmq, one ``send`` of the bare bytes per message, one ``recv`` per message.
- zmqcomm: each message goes through ``BatchingSender.send`` (msgpack, batching, wire header)
  and the receiver decodes every frame with ``WireCodec.decode`` and counts the payloads.

The receiver's clock runs from the first message to the last; only messages that arrived and
decoded count. Loopback and ipc only.

    python benchmarks/side_by_side.py                  # ipc, 64 B, 1,000,000 messages, 5 rounds
    python benchmarks/side_by_side.py --quick          # a few seconds
    python benchmarks/side_by_side.py --transport tcp --size 1024 --json
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
from collections.abc import Callable
from typing import Any

import zmq

from zmqcomm.transport.batching import BatchingSender
from zmqcomm.wire import MessageType, WireCodec

Mode = str
MODES: tuple[Mode, ...] = ("raw", "zmqcomm")


def _sender(mode: Mode, endpoint: str, count: int, size: int, go: Any) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.connect(endpoint)
    go.wait()
    message = os.urandom(size)
    if mode == "raw":
        send = sock.send
        for _ in range(count):
            send(message)
    else:
        sender = BatchingSender(sock.send_multipart, max_delay=0.01)
        enqueue = sender.send
        data = MessageType.DATA
        for _ in range(count):
            enqueue(data, message)
        sender.close()
    sock.close(linger=-1)  # deliver everything before exiting
    context.term()


def _receive_raw(sock: zmq.Socket[Any], count: int) -> int:
    recv = sock.recv
    recv()
    for _ in range(count - 1):
        recv()
    return count


def _receive_zmqcomm(sock: zmq.Socket[Any], count: int) -> int:
    codec = WireCodec()
    received = 0
    while received < count:
        received += len(codec.decode(sock.recv_multipart()).payloads)
    return received


def measure(mode: Mode, transport: str, count: int, size: int, directory: str) -> float:
    """One run: returns messages per second seen by the receiver."""
    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.RCVTIMEO, 60_000)
    if transport == "ipc":
        endpoint = f"ipc://{directory}/{mode}-{time.monotonic_ns()}.sock"
        sock.bind(endpoint)
    else:
        sock.bind("tcp://127.0.0.1:*")
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    spawn = multiprocessing.get_context("spawn")
    go = spawn.Event()
    process = spawn.Process(target=_sender, args=(mode, endpoint, count, size, go))
    process.start()
    receive: Callable[[zmq.Socket[Any], int], int] = (
        _receive_raw if mode == "raw" else _receive_zmqcomm
    )
    try:
        time.sleep(0.2)  # let the sender connect so no message waits on a reconnect
        go.set()
        first = sock.recv_multipart() if mode == "zmqcomm" else [sock.recv()]
        started = time.perf_counter()
        already = len(WireCodec().decode(first).payloads) if mode == "zmqcomm" else 1
        received = already + receive(sock, count - already) if count > already else already
        elapsed = time.perf_counter() - started
    finally:
        process.join(timeout=30)
        sock.close(linger=0)
        context.term()
    if received != count:
        raise RuntimeError(f"{mode}: received {received} of {count} messages")
    # The first message started the clock, so count-1 messages arrived in `elapsed`.
    return (count - 1) / elapsed


def run(transport: str, size: int, count: int, rounds: int) -> dict[str, Any]:
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="zmqcomm-bench-") as directory:
        for round_index in range(rounds):
            for mode in MODES if round_index % 2 == 0 else reversed(MODES):
                rate = measure(mode, transport, count, size, directory)
                results[mode].append(rate)
                print(
                    f"  round {round_index + 1}/{rounds} {mode:<8} {rate:>12,.0f} msg/s",
                    file=sys.stderr,
                )
    medians = {mode: statistics.median(rates) for mode, rates in results.items()}
    return {
        "transport": transport,
        "size": size,
        "count": count,
        "rounds": rounds,
        "msg_per_s": medians,
        "runs": results,
        "ratio_zmqcomm_over_raw": medians["zmqcomm"] / medians["raw"],
        "versions": {
            "pyzmq": zmq.pyzmq_version(),
            "libzmq": zmq.zmq_version(),
            "python": sys.version.split()[0],
        },
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=("ipc", "tcp"), default="ipc")
    parser.add_argument("--size", type=int, default=64, help="message size in bytes")
    parser.add_argument("--count", type=int, default=1_000_000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each mode")
    parser.add_argument("--quick", action="store_true", help="200,000 messages, 3 rounds")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds = 200_000, 3
    result = run(args.transport, args.size, args.count, args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rates = result["msg_per_s"]
    print(
        f"{args.transport}, {args.size} B messages, {args.count:,} per run, "
        f"median of {args.rounds} runs each"
    )
    print(f"  raw pyzmq (one send per message)    {rates['raw']:>12,.0f} msg/s")
    print(f"  zmqcomm transport + wire, batched    {rates['zmqcomm']:>12,.0f} msg/s")
    print(f"  ratio zmqcomm / raw                  {result['ratio_zmqcomm_over_raw']:>12.2f}x")


if __name__ == "__main__":
    main()
