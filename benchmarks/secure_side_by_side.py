"""Raw pyzmq, pyzmq+CURVE and zmqcomm's encrypted channel, side by side, two processes.

A thin front end to the harness (``zmqcomm bench``; :mod:`zmqcomm.bench.stream` and
:mod:`zmqcomm.bench.roundtrip`): stream throughput and round-trip latency, alternating runs;
prints the Markdown tables.

    python benchmarks/secure_side_by_side.py            # ipc, 64 B, 500,000 messages, 5 rounds
    python benchmarks/secure_side_by_side.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import sys

from zmqcomm.bench.runner import print_table
from zmqcomm.bench.settings import BenchSettings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=("inproc", "ipc", "tcp"), default="ipc")
    parser.add_argument("--size", type=int, default=64, help="message size in bytes")
    parser.add_argument("--count", type=int, default=500_000, help="stream messages per run")
    parser.add_argument("--trips", type=int, default=5_000, help="round trips per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each mode")
    parser.add_argument("--quick", action="store_true", help="100,000 messages, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.count, args.trips, args.rounds = 100_000, 1_000, 3
    settings = BenchSettings(
        sections=("throughput", "latency"),
        transports=(args.transport,),
        sizes=(args.size,),
        modes=("raw", "curve", "encrypted"),
        rounds=args.rounds,
        stream_bytes=args.count * args.size,
        stream_max_count=args.count,
        stream_min_count=args.count,
        trips=args.trips,
        trips_large=args.trips,
        trips_huge=args.trips,
    )
    return print_table(settings)


if __name__ == "__main__":
    sys.exit(main())
