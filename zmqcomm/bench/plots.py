"""throughput.png and latency.png, drawn from the results dict (so also from a results.json).

matplotlib is imported only here, on first use, with the Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zmqcomm.bench.settings import MODE_LABELS, MODES, format_size
from zmqcomm.errors import UsageError

INSTALL_HINT = "pip install 'zmqcomm[bench]'"


def _pyplot() -> Any:
    try:
        import matplotlib  # noqa: PLC0415 - optional, and slow to import
    except ImportError as exc:
        raise UsageError(
            f"the plots need matplotlib: {INSTALL_HINT}, or run with --no-plots"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def check_available() -> None:
    """UsageError now, not after a long run, when the plots cannot be drawn."""
    _pyplot()


def _colour(mode: str) -> str:
    # The same colour for a mode in every panel, whichever modes a panel lacks.
    return f"C{MODES.index(mode)}"


def _null_formatter() -> Any:
    from matplotlib.ticker import NullFormatter  # noqa: PLC0415

    return NullFormatter()


def _transports(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(row["transport"] for row in rows))


def _legend_or_note(axes: Any, rows: list[dict[str, Any]]) -> None:
    # A run of other sections (--only pbft) still writes both files: say why they are empty
    # instead of drawing an empty legend (which matplotlib warns about).
    if rows:
        axes[0][-1].legend(fontsize=7)
    else:
        axes[0][0].text(
            0.5,
            0.5,
            "not measured in this run",
            ha="center",
            va="center",
            transform=axes[0][0].transAxes,
        )


def plot_throughput(results: dict[str, Any], path: Path) -> Path:
    """msg/s against message size, one panel per transport, one line per mode."""
    plt = _pyplot()
    rows = results["sections"].get("throughput", {}).get("rows", [])
    transports = _transports(rows) or ["(not measured)"]
    figure, axes = plt.subplots(
        1, len(transports), figsize=(4.2 * len(transports), 3.6), squeeze=False, sharey=True
    )
    for axis, transport in zip(axes[0], transports, strict=True):
        for mode in MODES:
            points = sorted(
                (row["size"], row["msg_per_s"])
                for row in rows
                if row["transport"] == transport and row["mode"] == mode
            )
            if points:
                sizes, rates = zip(*points, strict=True)
                axis.plot(sizes, rates, marker="o", color=_colour(mode), label=MODE_LABELS[mode])
        axis.set_title(transport)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("message size")
        sizes_seen = sorted({row["size"] for row in rows if row["transport"] == transport})
        axis.set_xticks(sizes_seen, [format_size(size) for size in sizes_seen], fontsize=7)
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("messages per second")
    _legend_or_note(axes, rows)
    figure.suptitle("Throughput (higher is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def plot_latency(results: dict[str, Any], path: Path) -> Path:
    """Round-trip distributions (as CDFs) for the smallest size, one panel per transport."""
    plt = _pyplot()
    rows = results["sections"].get("latency", {}).get("rows", [])
    transports = _transports(rows) or ["(not measured)"]
    size = min((row["size"] for row in rows), default=0)
    figure, axes = plt.subplots(
        1, len(transports), figsize=(4.2 * len(transports), 3.6), squeeze=False, sharey=True
    )
    for axis, transport in zip(axes[0], transports, strict=True):
        for mode in MODES:
            row = next(
                (
                    r
                    for r in rows
                    if r["transport"] == transport and r["mode"] == mode and r["size"] == size
                ),
                None,
            )
            if row is not None:
                quantiles, micros = zip(*row["quantiles_us"], strict=True)
                axis.plot(micros, quantiles, color=_colour(mode), label=MODE_LABELS[mode])
        axis.set_title(f"{transport}, {format_size(size)}")
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(_null_formatter())
        axis.set_xlabel("round trip (µs)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("fraction of trips at most this long")
    _legend_or_note(axes, rows)
    figure.suptitle("Round-trip latency distribution (further left is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
