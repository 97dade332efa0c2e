"""Gossip in the simulator at swarm scale: the issue's figures over many seeds.

For each N, runs ``--seeds`` seeded swarms (10 % loss, 1-20 ms reordering latencies, 20 random
peers per node, mesh degree 6, Ed25519-signed messages), publishes ``--messages`` messages at
once and reports, over the seeds, coverage, time and heartbeat rounds to 50/90/99/100 %,
relay hops, duplicates per node per message, control messages per node per message and
estimated bytes per node per second, plus the wall time of one run.

    python benchmarks/gossip_sim.py                    # N=1000 over 30 seeds, N=10000 once
    python benchmarks/gossip_sim.py --nodes 200 --seeds 5 --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from zmqcomm.sim.gossip_metrics import DEGREE, measure_gossip, summarize


def run(nodes: int, seeds: int, messages: int, loss: float) -> dict[str, Any]:
    started = time.perf_counter()
    runs = []
    for seed in range(seeds):
        runs.append(measure_gossip(nodes, seed, loss=loss, messages=messages))
        print(
            f"\r  N={nodes}: seed {seed + 1}/{seeds} ({time.perf_counter() - started:.0f}s)",
            end="",
            file=sys.stderr,
            flush=True,
        )
    print(file=sys.stderr)
    return {
        "nodes": nodes,
        "seeds": seeds,
        "messages": messages,
        "loss": loss,
        "round_bound": math.ceil(math.log2(nodes)) + 4,
        "duplicate_bound": DEGREE,
        "summary": summarize(runs),
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| N | seeds | coverage | rounds to 100 % (max; bound) | s to 50/90/99/100 % (p50) "
        "| max hops | dup/node/msg (max; bound) | control/node/msg | B/node/s | wall s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["summary"]
        times = "/".join(f"{s[f'seconds_to_{level}']['p50']:.2f}" for level in (50, 90, 99, 100))
        lines.append(
            f"| {r['nodes']} | {r['seeds']} | {s['coverage']['mean']:.4f} "
            f"| {s['rounds_to_full']['max']:.0f}; {r['round_bound']} | {times} "
            f"| {s['max_hops']['max']:.0f} "
            f"| {s['duplicates_per_node_message']['max']:.2f}; {r['duplicate_bound']} "
            f"| {s['control_per_node_message']['mean']:.1f} "
            f"| {s['bytes_per_node_second']['mean']:.0f} | {s['wall_seconds']['mean']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="*", help="swarm sizes (default 1000)")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--loss", type=float, default=0.1)
    parser.add_argument(
        "--large", type=int, default=10_000, help="one more run at this size (0: none)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    results = [run(n, args.seeds, args.messages, args.loss) for n in (args.nodes or [1000])]
    if args.large:
        results.append(run(args.large, 1, args.messages, args.loss))
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
