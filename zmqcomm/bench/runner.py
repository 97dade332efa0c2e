"""Runs the sections in order and writes results.json, results.md and the plots.

Adding a section (PBFT, for one) means writing a module with ``NAME``, ``TITLE`` and
``run(context) -> dict`` and listing it in :data:`SECTIONS`; a renderer in
:mod:`zmqcomm.bench.report` gives it a Markdown table (otherwise its JSON is shown).
"""

from __future__ import annotations

import datetime
import importlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from zmqcomm.bench.common import kill_all_peers
from zmqcomm.bench.harness import BenchContext, Progress
from zmqcomm.bench.plots import plot_latency, plot_throughput
from zmqcomm.bench.report import build_results, to_markdown, write_json
from zmqcomm.bench.settings import BenchSettings
from zmqcomm.errors import UsageError, ZmqCommError

#: Section name -> module, in the order they run.
SECTIONS: dict[str, str] = {
    "throughput": "zmqcomm.bench.throughput",
    "latency": "zmqcomm.bench.latency",
    "memory": "zmqcomm.bench.memory",
    "handshakes": "zmqcomm.bench.handshakes",
    "relay": "zmqcomm.bench.relay",
    "gossip": "zmqcomm.bench.gossip",
    "pbft": "zmqcomm.bench.pbft",
}
OUTPUTS = ("results.json", "results.md", "throughput.png", "latency.png")


@dataclass(frozen=True)
class BenchOutcome:
    results: dict[str, Any]
    out: Path
    files: dict[str, Path]

    @property
    def failed(self) -> list[str]:
        """Sections that could not be measured (their error is in the results)."""
        sections = self.results["sections"]
        return [name for name, data in sections.items() if data.get("status") == "failed"]


#: Plot files a run writes (not when interrupted, nor with plots off).
_PLOTS = ("throughput.png", "latency.png")


def section_modules(names: tuple[str, ...]) -> list[ModuleType]:
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise UsageError(
            f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}"
        )
    chosen = [name for name in SECTIONS if not names or name in names]
    return [importlib.import_module(SECTIONS[name]) for name in chosen]


def default_out_dir(base: Path | None = None) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return (base or Path("bench-results")) / stamp


def _failure(exc: Exception) -> str:
    """A failed section's error line: our own errors say what went wrong; anything else
    (OSError, queue.Empty, KeyError) needs its type to be understood."""
    if isinstance(exc, ZmqCommError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_benchmarks(
    settings: BenchSettings,
    out: Path,
    *,
    progress: Progress | None = None,
    command: str = "zmqcomm bench",
    plots: bool = True,
) -> BenchOutcome:
    """Measure every chosen section and write the outputs into ``out`` (created).

    A section that raises is recorded as failed and the others still run. On
    KeyboardInterrupt (Ctrl-C, or SIGTERM through ``zmqcomm bench``) the sections finished so
    far are written (no plots) before the interrupt goes on up.
    """
    modules = section_modules(settings.sections)
    progress = progress if progress is not None else Progress()
    out.mkdir(parents=True, exist_ok=True)
    for stale in _PLOTS:  # an earlier run's plots beside these results would misinform
        (out / stale).unlink(missing_ok=True)
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    meta: dict[str, Any] = {
        "progress": progress,
        "started_at": started_at,
        "started": started,
        "command": command,
    }
    sections: dict[str, Any] = {}
    interrupted = False
    # Sockets and keys live in a short path: ipc socket paths are limited to ~100 bytes.
    workdir = tempfile.mkdtemp(prefix="zcb-", dir="/tmp")
    try:
        context = BenchContext(settings, progress, Path(workdir))
        for module in modules:
            try:
                sections[module.NAME] = module.run(context)
            except KeyboardInterrupt:
                sections[module.NAME] = {"title": module.TITLE, "status": "interrupted"}
                raise
            except Exception as exc:
                # One broken section must not cost the figures of the others.
                error = _failure(exc)
                progress.note(f"{module.NAME}: FAILED: {error}")
                sections[module.NAME] = {"title": module.TITLE, "status": "failed", "error": error}
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        kill_all_peers()  # workers an interrupt caught between start and bookkeeping
        # Removed however the run ends: it holds ipc sockets and the throw-away keys.
        shutil.rmtree(workdir, ignore_errors=True)
        if interrupted:
            progress.note("interrupted: writing the sections finished so far")
            try:
                _write(settings, sections, out, plots=False, **meta)
            except Exception as exc:  # the interrupt, not this, is what goes on up
                progress.note(f"could not write the partial results: {_failure(exc)}")
    return _write(settings, sections, out, plots=plots, **meta)


def _write(
    settings: BenchSettings,
    sections: dict[str, Any],
    out: Path,
    *,
    progress: Progress,
    started_at: str,
    started: float,
    command: str,
    plots: bool,
) -> BenchOutcome:
    results = build_results(
        settings,
        sections,
        started=started_at,
        seconds=time.monotonic() - started,
        command=command,
    )
    files = {"results.json": out / "results.json", "results.md": out / "results.md"}
    write_json(results, files["results.json"])
    files["results.md"].write_text(to_markdown(results), encoding="utf-8")
    if plots:
        files["throughput.png"] = plot_throughput(results, out / "throughput.png")
        files["latency.png"] = plot_latency(results, out / "latency.png")
    progress.note(f"wrote {', '.join(sorted(files))} to {out}")
    return BenchOutcome(results, out, files)


def print_table(settings: BenchSettings) -> int:
    """Run ``settings`` with a progress line and print the Markdown tables (no files kept):
    what the single-purpose scripts in benchmarks/ do. Returns their exit status: 1 if a
    section failed (its error is in the table), else 0."""
    with tempfile.TemporaryDirectory(prefix="zcb-out-") as out:
        outcome = run_benchmarks(settings, Path(out), progress=Progress(), plots=False)
        print((Path(out) / "results.md").read_text())
    return 1 if outcome.failed else 0
