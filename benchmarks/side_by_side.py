"""Raw pyzmq against zmqcomm's transport + wire (no encryption), side by side in one run.

A thin front end to the harness (``zmqcomm bench``, :mod:`zmqcomm.bench.stream`): PUSH/PULL
between two processes, runs alternating raw and zmqcomm plain; prints the Markdown table.

    python benchmarks/side_by_side.py                  # ipc, 64 B, 500,000 messages, 5 rounds
    python benchmarks/side_by_side.py --quick          # a few seconds
    python benchmarks/side_by_side.py --transport tcp --size 1024
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
    parser.add_argument("--count", type=int, default=500_000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each mode")
    parser.add_argument("--quick", action="store_true", help="100,000 messages, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds = 100_000, 3
    settings = BenchSettings(
        sections=("throughput",),
        transports=(args.transport,),
        sizes=(args.size,),
        modes=("raw", "plain"),
        rounds=args.rounds,
        stream_bytes=args.count * args.size,
        stream_max_count=args.count,
        stream_min_count=args.count,
    )
    return print_table(settings)


if __name__ == "__main__":
    sys.exit(main())
