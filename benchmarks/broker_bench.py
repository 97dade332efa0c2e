"""The broker against raw pyzmq: relay rate, and memory with many connected agents.

A thin front end to the harness (``zmqcomm bench --only relay memory``;
:mod:`zmqcomm.bench.relay` and :mod:`zmqcomm.bench.memory`); prints the Markdown tables.

    python benchmarks/broker_bench.py            # 300,000 messages x 3 rounds, 1000 agents
    python benchmarks/broker_bench.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import sys

from zmqcomm.bench.runner import print_table
from zmqcomm.bench.settings import BenchSettings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300_000, help="relayed messages per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agents", type=int, default=1000, help="connections for memory")
    parser.add_argument("--quick", action="store_true", help="20,000 messages, 100 agents")
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds, args.agents = 20_000, 1, 100
    settings = BenchSettings(
        sections=("relay", "memory"),
        rounds=args.rounds,
        relay_count=args.count,
        connections=args.agents,
    )
    return print_table(settings)


if __name__ == "__main__":
    sys.exit(main())
