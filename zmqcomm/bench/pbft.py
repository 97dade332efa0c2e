"""Section ``pbft``: operations per second of a PBFT committee for n = 4, 7 and 10.

Each run starts a local cluster (replicas as separate processes over ipc, SQLite stores,
fsync on by default) and a load generator with many clients in flight, through
:func:`zmqcomm.patterns.pbft.cluster.run_local`, the code behind ``zmqcomm pbft local``.
There is no raw-pyzmq baseline for consensus; the figures stand alone. If the PBFT package
is missing, the section says so instead of giving a number.
"""

from __future__ import annotations

import importlib
from typing import Any

from zmqcomm.bench.harness import BenchContext
from zmqcomm.bench.stats import median_known

NAME = "pbft"
TITLE = "PBFT committee throughput (local cluster, ipc)"
#: Row key -> the key of ``run_local``'s summary whose median across rounds it holds.
ROW_FIELDS = {
    "ops_per_s": "throughput",
    "p50_ms": "p50_ms",
    "p99_ms": "p99_ms",
    "messages_per_op": "messages_per_op",
    "replica_cpu_us_per_op": "replica_cpu_us_per_op",
}


def _cluster() -> Any | None:
    try:
        return importlib.import_module("zmqcomm.patterns.pbft.cluster")
    except ImportError:
        return None


def run(context: BenchContext) -> dict[str, Any]:
    settings, progress = context.settings, context.progress
    committees = settings.pbft_committees
    cluster = _cluster()
    if cluster is None:
        progress.section(NAME, 1)
        progress.step("not yet measured")
        return {
            "title": TITLE,
            "status": "not yet measured",
            "reason": "zmqcomm.patterns.pbft.cluster cannot be imported",
            "rows": [{"n": n, "ops_per_s": None} for n in committees],
        }
    progress.section(NAME, len(committees) * settings.rounds)
    rows = []
    for n in committees:
        runs = []
        for round_index in range(settings.rounds):
            options = cluster.LocalOptions(
                replicas=n,
                ops=settings.pbft_ops,
                clients=settings.pbft_clients,
                fsync=settings.pbft_fsync,
            )
            summary = cluster.run_local(options)
            runs.append(summary)
            throughput = summary.get("throughput")
            figure = "no figure" if throughput is None else f"{throughput:,.0f} ops/s"
            progress.step(f"n={n} round {round_index + 1}/{settings.rounds}: {figure}")
        # run_local leaves out what it could not tell (CPU time without /proc, per-op
        # figures when no operation finished): such a cell is None, never a crash.
        row: dict[str, Any] = {"n": n}
        for key, field in ROW_FIELDS.items():
            row[key] = median_known([run.get(field) for run in runs])
        row["complete"] = all(run.get("complete", False) for run in runs)
        row["runs"] = runs
        rows.append(row)
    return {
        "title": TITLE,
        "status": "measured",
        "ops": settings.pbft_ops,
        "clients": settings.pbft_clients,
        "fsync": settings.pbft_fsync,
        "rows": rows,
    }
