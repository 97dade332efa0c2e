"""Section ``latency``: round-trip p50/p90/p99 per transport, size and mode, as ratios."""

from __future__ import annotations

from typing import Any

from zmqcomm.bench import throughput
from zmqcomm.bench.common import Job
from zmqcomm.bench.harness import BenchContext
from zmqcomm.bench.roundtrip import measure_round_trip
from zmqcomm.bench.settings import format_size
from zmqcomm.bench.stats import alternating, latency_quantiles, latency_summary, ratio

NAME = "latency"
TITLE = "Round-trip latency (one message out, its echo back)"


def run(context: BenchContext) -> dict[str, Any]:
    settings, progress = context.settings, context.progress
    plan = throughput.cells(context)
    progress.section(NAME, sum(len(modes) for _, _, modes in plan) * settings.rounds)
    rows = []
    workdir = str(context.workdir)
    for transport, size, modes in plan:
        trips = settings.trip_count(size)
        samples: dict[str, list[float]] = {mode: [] for mode in modes}
        for round_index in range(settings.rounds):
            for mode in alternating(modes, round_index):
                job = Job(mode, transport, size, trips, context.keys, workdir, settings.seed)
                taken = measure_round_trip(job)
                samples[mode].extend(taken)
                progress.step(
                    f"{transport} {format_size(size)} {mode} "
                    f"round {round_index + 1}/{settings.rounds}: "
                    f"p50 {latency_summary(taken)['p50_us']:,.0f} us"
                )
        summaries = {mode: latency_summary(values) for mode, values in samples.items()}
        raw_p50 = summaries["raw"]["p50_us"] if "raw" in summaries else None
        curve_p50 = summaries["curve"]["p50_us"] if "curve" in summaries else None
        for mode in modes:
            rows.append(
                {
                    "transport": transport,
                    "size": size,
                    "mode": mode,
                    "trips": len(samples[mode]),
                    **summaries[mode],
                    "ratio_p50_vs_raw": ratio(summaries[mode]["p50_us"], raw_p50),
                    "ratio_p50_vs_curve": ratio(summaries[mode]["p50_us"], curve_p50),
                    "quantiles_us": latency_quantiles(samples[mode]),
                }
            )
    return {"title": TITLE, "rows": rows, "skipped": throughput.skipped(context)}
