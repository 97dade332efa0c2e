"""Section ``throughput``: msg/s and MB/s per transport, size and mode, as ratios."""

from __future__ import annotations

from typing import Any

from zmqcomm.bench.common import Job
from zmqcomm.bench.harness import BenchContext
from zmqcomm.bench.settings import format_size
from zmqcomm.bench.stats import alternating, median, ratio
from zmqcomm.bench.stream import measure_stream

NAME = "throughput"
TITLE = "Throughput (stream of messages, one direction)"


def cells(context: BenchContext) -> list[tuple[str, int, list[str]]]:
    """(transport, size, modes) to measure; CURVE has nothing to do on inproc."""
    settings = context.settings
    result: list[tuple[str, int, list[str]]] = []
    for transport in settings.transports:
        modes = [m for m in settings.modes if not (m == "curve" and transport == "inproc")]
        result.extend((transport, size, modes) for size in settings.sizes)
    return result


def skipped(context: BenchContext) -> list[dict[str, str]]:
    if "curve" in context.settings.modes and "inproc" in context.settings.transports:
        return [
            {
                "transport": "inproc",
                "mode": "curve",
                "reason": "libzmq applies no security mechanism on inproc",
            }
        ]
    return []


def run(context: BenchContext) -> dict[str, Any]:
    settings, progress = context.settings, context.progress
    plan = cells(context)
    progress.section(NAME, sum(len(modes) for _, _, modes in plan) * settings.rounds)
    rows = []
    workdir = str(context.workdir)
    for transport, size, modes in plan:
        count = settings.stream_count(size)
        runs: dict[str, list[float]] = {mode: [] for mode in modes}
        for round_index in range(settings.rounds):
            for mode in alternating(modes, round_index):
                job = Job(mode, transport, size, count, context.keys, workdir, settings.seed)
                result = measure_stream(job)
                runs[mode].append(result.msg_per_s)
                progress.step(
                    f"{transport} {format_size(size)} {mode} "
                    f"round {round_index + 1}/{settings.rounds}: "
                    f"{result.msg_per_s:,.0f} msg/s"
                )
        medians = {mode: median(values) for mode, values in runs.items()}
        for mode in modes:
            rows.append(
                {
                    "transport": transport,
                    "size": size,
                    "mode": mode,
                    "placement": "one process, two threads"
                    if transport == "inproc"
                    else "two processes",
                    "count": count,
                    "runs_msg_per_s": runs[mode],
                    "msg_per_s": medians[mode],
                    "mb_per_s": medians[mode] * size / 1e6,
                    "ratio_vs_raw": ratio(medians[mode], medians.get("raw")),
                    "ratio_vs_curve": ratio(medians[mode], medians.get("curve")),
                }
            )
    return {"title": TITLE, "rows": rows, "skipped": skipped(context)}
