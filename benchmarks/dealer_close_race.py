"""What a DEALER with ZMQ_IMMEDIATE loses when its peer closes right after sending.

A ROUTER (bound on ipc) and a DEALER in another process trade 2,000 messages; then the
router sends "stop" and closes at once (LINGER 1000, so libzmq does deliver it). With
IMMEDIATE the dealer's libzmq (4.3.5 here) ends the connection's queue as soon as the
connection drops, discarding what arrived on it and was not read yet: "stop" is then lost
in some runs. Without IMMEDIATE the queue outlives the connection and nothing is lost.

This is why ``SecureDealer`` does not set IMMEDIATE (docs/security.md says what it does
instead). Pure pyzmq: no zmqcomm code runs here.

    python benchmarks/dealer_close_race.py             # 30 runs each way
    python benchmarks/dealer_close_race.py --runs 10
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from typing import Any

import zmq

TRADES = 2000


def _dealer(endpoint: str, immediate: bool, report: Any) -> None:
    context: zmq.Context[Any] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.IMMEDIATE, int(immediate))
    sock.connect(endpoint)
    sock.send(b"hello")
    while sock.poll(10_000):
        message = sock.recv()
        if message == b"stop":
            report.send(True)
            break
        sock.send(message)
    else:
        report.send(False)  # ten seconds and no "stop": it was lost
    sock.close(linger=0)
    context.term()


def _run(directory: str, immediate: bool) -> bool:
    """Whether the dealer got the "stop" sent just before the router closed."""
    endpoint = f"ipc://{directory}/race-{time.monotonic_ns()}"
    context: zmq.Context[Any] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(endpoint)
    spawn = multiprocessing.get_context("spawn")
    report, report_sender = spawn.Pipe(duplex=False)
    peer = spawn.Process(target=_dealer, args=(endpoint, immediate, report_sender))
    peer.start()
    try:
        route = router.recv_multipart()[0]
        for _ in range(TRADES):
            router.send_multipart([route, b"x" * 64])
            router.recv_multipart()
        router.send_multipart([route, b"stop"])
        router.close(linger=1000)
        got: bool = report.recv() if report.poll(15) else False
    finally:
        peer.join(15)
        if peer.is_alive():
            peer.kill()
        context.destroy(linger=0)
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="runs with and without IMMEDIATE")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    with tempfile.TemporaryDirectory() as directory:
        for immediate in (True, False):
            lost = sum(not _run(directory, immediate) for _ in range(args.runs))
            label = "with IMMEDIATE   " if immediate else "without IMMEDIATE"
            print(f"{label}: the last message lost in {lost} of {args.runs} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
