"""PBFT over real sockets: replicas as separate processes over ipc, SQLite stores with fsync.

    python benchmarks/pbft_bench.py            # the full set (a few minutes)
    python benchmarks/pbft_bench.py --quick    # fewer operations per run (about a minute)
    python benchmarks/pbft_bench.py --no-fsync # stores survive SIGKILL but not a power cut

Runs, each on a fresh local cluster (``zmqcomm pbft local`` underneath):

- n = 4 throughput with batching (batch 256, 512 clients in flight);
- latency at light load (one client, one operation at a time);
- n = 7, 10, 13 (batch 256);
- batch sizes 1, 10, 100, 1000 at n = 4 (clients = 2 x batch, at least 16);
- view-change duration: SIGKILL the primary mid-load; the longest gap between two results
  around the kill is how long the service was unavailable (detection + view change);
- messages and bytes per committed operation and per sequence number (a batch).

``replica_cpu_us_per_op`` is the CPU time the replicas spent per operation: on a busy
machine, throughput shows the share of the cores we got, this shows what the work costs.
Prints a table and, with ``--json PATH``, writes every summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from typing import Any

from zmqcomm.patterns.pbft.cluster import LocalCluster, LocalOptions, run_local


def view_change_run(ops: int, fsync: bool) -> dict[str, Any]:
    """Kill the primary a third of the way in; measure the longest gap between results."""
    with LocalCluster(4, fsync=fsync) as cluster:
        cluster.start_all()
        cluster.wait_ready()
        times: list[float] = []
        killed_at: list[float] = []

        def on_result(done: int) -> None:
            times.append(time.monotonic())
            if done == ops // 3:
                killed_at.append(time.monotonic())
                cluster.kill(cluster.primary())

        with cluster.load_generator(clients=64, timeout=0.25) as load:
            report = load.run(ops, on_result=on_result, max_seconds=120)
        after = [t for t in times if killed_at and t >= killed_at[0]]
        gap = max((b - a for a, b in itertools.pairwise(after)), default=float("nan"))
        first_after = after[1] - killed_at[0] if len(after) > 1 else float("nan")
        return {
            "run": "view change (n=4, view_change_timeout 1 s, client timeout 0.25 s)",
            **report.summary(),
            "outage_s": round(max(gap, first_after), 3),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations per run")
    parser.add_argument("--no-fsync", action="store_true", help="stores without fsync")
    parser.add_argument("--json", metavar="PATH", help="write all summaries here")
    parser.add_argument("--only", help="comma-separated run names: n4,light,sizes,batches,vc")
    args = parser.parse_args()
    scale = 0.3 if args.quick else 1.0
    fsync = not args.no_fsync
    only = set(args.only.split(",")) if args.only else {"n4", "light", "sizes", "batches", "vc"}
    base = LocalOptions(fsync=fsync)

    def ops(count: int) -> int:
        return max(100, int(count * scale))

    plans: list[tuple[str, LocalOptions]] = []
    if "n4" in only:
        plans.append(("n=4 batched", base.with_changes(ops=ops(20_000), clients=512)))
    if "light" in only:
        plans.append(("n=4 light load", base.with_changes(ops=ops(500), clients=1)))
    if "sizes" in only:
        for n in (7, 10, 13):
            plans.append((f"n={n}", base.with_changes(replicas=n, ops=ops(6000), clients=512)))
    if "batches" in only:
        for batch in (1, 10, 100, 1000):
            count = ops(1500 if batch == 1 else 8000)
            clients = max(16, 2 * batch)
            options = base.with_changes(batch=batch, clients=clients, ops=count)
            plans.append((f"batch {batch}", options))
    results: list[dict[str, Any]] = []
    for name, options in plans:
        print(f"... {name}", file=sys.stderr, flush=True)
        results.append({"run": name, **run_local(options)})
    if "vc" in only:
        print("... view change", file=sys.stderr, flush=True)
        results.append(view_change_run(ops(6000), fsync))
    columns = ("run", "ops", "throughput", "p50_ms", "p99_ms", "messages_per_op", "bytes_per_op",
               "messages_per_sequence", "replica_cpu_us_per_op", "outage_s")  # fmt: skip
    print(" | ".join(columns))
    for row in results:
        print(" | ".join(str(row.get(c, "")) for c in columns))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
