"""Review of the benchmark harness: the bugs found, now fixed, and what keeps them fixed.

In-process and fast: no section really measures anything here.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from zmqcomm.bench import memory, runner
from zmqcomm.bench import pbft as pbft_section
from zmqcomm.bench.harness import Progress
from zmqcomm.bench.runner import run_benchmarks
from zmqcomm.bench.settings import BenchSettings
from zmqcomm.bench.stats import median_known
from zmqcomm.cli.bench import main
from zmqcomm.cli.common import sigterm_interrupts
from zmqcomm.patterns.pbft import cluster
from zmqcomm.patterns.pbft.loadgen import LoadReport


def _summary_without_cpu(options: cluster.LocalOptions) -> dict[str, Any]:
    """What ``run_local`` returns when the replicas' CPU time is unknown (no /proc, say):
    the real ``_summary`` plus ``killed``, and no ``replica_cpu_us_per_op``."""
    report = LoadReport(ops=options.ops, seconds=1.0, latencies=[0.01] * options.ops)
    status = {"view": 0, "messages_sent": 10, "bytes_sent": 1000, "last_executed": 5}
    status["executed"] = options.ops
    load = types.SimpleNamespace(clients=dict.fromkeys(range(options.clients)))
    summary = cluster._summary(options, load, report, [status] * options.replicas)  # type: ignore[arg-type]
    summary["killed"] = None
    return summary


# Was: bench/pbft.py indexed run["replica_cpu_us_per_op"], a KeyError that aborted the run.
def test_pbft_section_without_cpu_figures_still_writes_the_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = types.SimpleNamespace(LocalOptions=cluster.LocalOptions, run_local=_summary_without_cpu)
    monkeypatch.setattr(pbft_section, "_cluster", lambda: fake)
    settings = BenchSettings.quick_settings().with_changes(sections=("pbft",))
    out = tmp_path / "out"
    outcome = run_benchmarks(settings, out, progress=Progress(quiet=True), plots=False)
    written = json.loads((out / "results.json").read_text())
    assert [row["n"] for row in written["sections"]["pbft"]["rows"]] == [4, 7, 10]
    assert outcome.results["sections"]["pbft"]["rows"][0]["ops_per_s"] > 0


# Was: only ZmqCommError was recorded as a failed section; anything else aborted the run.
def test_a_section_failing_with_os_error_is_recorded_and_outputs_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_more_files(mode: str, agents: int, directory: str) -> tuple[int, float]:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(memory, "fleet", lambda workdir, agents: workdir)
    monkeypatch.setattr(memory, "measure_memory", no_more_files)
    settings = BenchSettings.quick_settings().with_changes(sections=("memory",))
    out = tmp_path / "out"
    outcome = run_benchmarks(settings, out, progress=Progress(quiet=True), plots=False)
    assert outcome.failed == ["memory"]
    assert "Too many open files" in (out / "results.md").read_text()
    error = json.loads((out / "results.json").read_text())["sections"]["memory"]["error"]
    assert error.startswith("OSError: ")


def test_median_known_skips_unknown_values() -> None:
    assert median_known([None, 3.0, None, 1.0, 2.0]) == 2.0
    assert median_known([None, None]) is None
    assert median_known([]) is None


def test_pbft_rows_hold_none_where_no_round_had_the_figure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_ops_done(options: cluster.LocalOptions) -> dict[str, Any]:
        # No operation finished: run_local leaves out the per-op figures and latencies.
        return {"throughput": 0.0, "p50_ms": None, "p99_ms": None, "complete": False}

    fake = types.SimpleNamespace(LocalOptions=cluster.LocalOptions, run_local=no_ops_done)
    monkeypatch.setattr(pbft_section, "_cluster", lambda: fake)
    settings = BenchSettings.quick_settings().with_changes(sections=("pbft",), rounds=3)
    context = types.SimpleNamespace(settings=settings, progress=Progress(quiet=True))
    section = pbft_section.run(context)  # type: ignore[arg-type]
    row = section["rows"][0]
    assert row["ops_per_s"] == 0.0
    assert row["messages_per_op"] is None
    assert row["replica_cpu_us_per_op"] is None
    assert row["p50_ms"] is None
    assert row["complete"] is False
    assert len(row["runs"]) == 3


def _fake_sections(monkeypatch: pytest.MonkeyPatch, seen: list[Path], stop: Any) -> None:
    """Two sections: ``done`` measures 7, ``stopped`` notes its work directory and ``stop``s."""

    def stopped(context: Any) -> dict[str, Any]:
        seen.append(context.workdir)
        (context.workdir / "worker.sock").write_bytes(b"")
        stop()
        return {"title": "Stopped", "n": 0}

    for name, run in (("done", lambda context: {"title": "Done", "n": 7}), ("stopped", stopped)):
        module = types.ModuleType(f"zc_review_bench_{name}")
        module.NAME, module.TITLE, module.run = name, name.title(), run  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(
        runner, "SECTIONS", {n: f"zc_review_bench_{n}" for n in ("done", "stopped")}
    )


def _interrupt() -> None:
    raise KeyboardInterrupt


def test_an_interrupt_writes_the_finished_sections_and_removes_the_work_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []
    _fake_sections(monkeypatch, seen, _interrupt)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_benchmarks(BenchSettings(), out, progress=Progress(quiet=True), plots=False)
    written = json.loads((out / "results.json").read_text())
    assert written["sections"]["done"]["n"] == 7
    assert written["sections"]["stopped"]["status"] == "interrupted"
    assert "**Interrupted**" in (out / "results.md").read_text()
    assert seen and not seen[0].exists()


def test_sigterm_stops_zmqcomm_bench_like_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def terminate() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises long before this ends

    seen: list[Path] = []
    _fake_sections(monkeypatch, seen, terminate)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    assert main(["--out", str(out), "--no-plots", "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # put back afterwards
    assert json.loads((out / "results.json").read_text())["sections"]["done"]["n"] == 7
    assert seen and not seen[0].exists()


def test_sigterm_handler_only_while_inside() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    assert signal.getsignal(signal.SIGTERM) is before
