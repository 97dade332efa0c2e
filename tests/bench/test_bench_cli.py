"""``zmqcomm bench --quick`` end to end (once, in a subprocess) and the report arithmetic.

Figures are never compared with targets or with each other here: only that the harness ran,
measured something positive in every cell, and wrote every output.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zmqcomm.bench import plots, runner
from zmqcomm.bench.common import BenchError
from zmqcomm.bench.harness import Progress
from zmqcomm.bench.plots import plot_latency, plot_throughput
from zmqcomm.bench.report import claims, find_row, to_markdown
from zmqcomm.bench.runner import OUTPUTS, SECTIONS, run_benchmarks, section_modules
from zmqcomm.bench.settings import MODES, BenchSettings, format_size, parse_size
from zmqcomm.bench.stats import (
    QUANTILE_POINTS,
    alternating,
    latency_quantiles,
    latency_summary,
    median,
    percentile,
    ratio,
)
from zmqcomm.cli.bench import main
from zmqcomm.errors import UsageError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The quick run takes about 20 s here; allow for a loaded machine.
QUICK_TIMEOUT = 150.0


@pytest.fixture(scope="module")
def quick_run() -> Iterator[tuple[subprocess.CompletedProcess[str], Path]]:
    # A short directory: the harness binds ipc sockets under /tmp, results go here.
    out = Path(tempfile.mkdtemp(prefix="zcb-test-", dir="/tmp")) / "results"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "zmqcomm.cli.bench", "--quick", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=QUICK_TIMEOUT,
            check=False,
        )
        yield done, out
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def results(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> dict[str, Any]:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-3000:]
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


# -- the quick run ---------------------------------------------------------------------------


def test_quick_run_writes_every_output(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-3000:]
    for name in OUTPUTS:
        assert (out / name).is_file(), name
        assert name in done.stdout
    for name in ("throughput.png", "latency.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    # The progress display went to stderr, one line per step.
    assert "[1/" in done.stderr and "throughput" in done.stderr
    # Each target's line: the ratio to three decimals, not judged (one short round).
    lines = [line for line in done.stdout.splitlines() if "target" in line]
    assert len(lines) == 3 and all("not judged (quick run)" in line for line in lines)
    assert all(re.search(r" \d+\.\d{3}x  target ", line) for line in lines), lines


def test_results_json_records_machine_versions_and_settings(results: dict[str, Any]) -> None:
    assert results["schema"] == 1
    assert results["machine"]["cpus"] >= 1
    assert results["versions"]["pyzmq"] and results["versions"]["libzmq"]
    assert results["settings"]["quick"] is True
    assert results["settings"]["sizes"] == [64, 65536]
    assert results["seconds"] > 0
    assert list(results["sections"]) == list(SECTIONS)


def test_throughput_has_every_mode_and_cell_with_positive_figures(
    results: dict[str, Any],
) -> None:
    rows = results["sections"]["throughput"]["rows"]
    for transport in ("inproc", "ipc"):
        for size in (64, 65536):
            for mode in MODES:
                row = find_row(rows, transport=transport, size=size, mode=mode)
                if transport == "inproc" and mode == "curve":
                    assert row is None  # CURVE does nothing on inproc
                    continue
                assert row is not None, (transport, size, mode)
                assert row["msg_per_s"] > 0 and row["mb_per_s"] > 0
                assert row["runs_msg_per_s"] and all(r > 0 for r in row["runs_msg_per_s"])
                assert math.isclose(row["mb_per_s"], row["msg_per_s"] * size / 1e6)
                raw = find_row(rows, transport=transport, size=size, mode="raw")
                assert raw is not None
                assert math.isclose(row["ratio_vs_raw"], row["msg_per_s"] / raw["msg_per_s"])
    skipped = results["sections"]["throughput"]["skipped"]
    assert skipped == [{"transport": "inproc", "mode": "curve", "reason": skipped[0]["reason"]}]


def test_latency_has_percentiles_in_order_for_every_cell(results: dict[str, Any]) -> None:
    rows = results["sections"]["latency"]["rows"]
    assert len(rows) == 2 * 4 + 2 * 5  # inproc without CURVE, ipc with
    for row in rows:
        assert 0 < row["min_us"] <= row["p50_us"] <= row["p90_us"] <= row["p99_us"]
        assert row["p99_us"] <= row["max_us"]
        assert row["trips"] == (200 if row["size"] == 64 else 50)
        assert [q for q, _ in row["quantiles_us"]] == list(QUANTILE_POINTS)
        assert row["ratio_p50_vs_raw"] > 0


def test_other_sections_measured_something(results: dict[str, Any]) -> None:
    sections = results["sections"]
    memory = sections["memory"]
    assert memory["connections"] == 50
    assert memory["rss_kib"]["raw"] > 0 and memory["rss_kib"]["zmqcomm"] > 0
    handshakes = sections["handshakes"]
    assert handshakes["noise_in_process_per_s"] > 0
    assert set(handshakes["per_s"]) == {"raw", "curve", "encrypted"}
    assert all(value > 0 for value in handshakes["per_s"].values())
    relay = sections["relay"]
    assert relay["msg_per_s"]["raw"] > 0 and relay["msg_per_s"]["zmqcomm"] > 0
    gossip = sections["gossip"]["rows"]
    assert [row["nodes"] for row in gossip] == [50]
    assert gossip[0]["coverage"] > 0 and gossip[0]["rounds_to_full"] >= 1
    pbft = sections["pbft"]
    assert [row["n"] for row in pbft["rows"]] == [4, 7, 10]
    if pbft["status"] == "measured":
        for row in pbft["rows"]:
            assert row["ops_per_s"] > 0 and row["p50_ms"] > 0 and row["complete"] is True
            assert row["runs"][0]["ops"] == 200 and row["runs"][0]["replicas"] == row["n"]
    else:  # no figure rather than a made-up one, when PBFT cannot be imported
        assert pbft["status"] == "not yet measured"
        assert all(row["ops_per_s"] is None for row in pbft["rows"])


def test_claims_are_reported_with_values(results: dict[str, Any]) -> None:
    assert [claim["claim"] for claim in results["claims"]] == [
        "encrypted msg/s vs pyzmq+CURVE",
        "encrypted msg/s vs raw pyzmq",
        "encrypted round-trip p50 vs raw pyzmq",
    ]
    for claim in results["claims"]:
        # One short round says nothing about a target: a quick run measures, never judges.
        assert claim["value"] > 0 and claim["met"] is None and claim["judged"] is False


def test_markdown_has_the_tables(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = quick_run
    text = (out / "results.md").read_text()
    assert "| transport | size | mode | msg/s | MB/s | vs raw | vs CURVE |" in text
    assert "| ipc | 64 B | zmqcomm encrypted |" in text
    assert "| inproc | 64 KiB | raw pyzmq |" in text
    for title in ("## Targets", "## Throughput", "## Round-trip", "## Memory", "## PBFT"):
        assert title in text


# -- units -----------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    samples = [4.0, 1.0, 3.0, 2.0]
    assert percentile(samples, 0.0) == 1.0
    assert percentile(samples, 1.0) == 4.0
    assert percentile(samples, 0.5) == 2.5
    assert percentile(list(range(101)), 0.99) == 99.0
    assert percentile([7.0], 0.9) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


def test_latency_summary_is_in_microseconds() -> None:
    summary = latency_summary([0.000_100] * 98 + [0.001, 0.002])
    assert summary["p50_us"] == pytest.approx(100.0)
    assert summary["max_us"] == pytest.approx(2000.0)
    assert summary["samples"] == 100
    assert summary["p99_us"] > summary["p90_us"]
    quantiles = latency_quantiles([0.001, 0.002, 0.003])
    assert quantiles[0] == [0.0, pytest.approx(1000.0)]
    assert quantiles[-1] == [1.0, pytest.approx(3000.0)]


def test_ratio_median_and_alternation() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert alternating(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert alternating(["a", "b", "c"], 1) == ["c", "b", "a"]


def test_sizes_parse_and_format() -> None:
    assert parse_size("64") == 64
    assert parse_size("1k") == parse_size("1KiB") == 1024
    assert parse_size("64KiB") == 65536
    assert parse_size("1m") == 1 << 20
    assert format_size(64) == "64 B" and format_size(65536) == "64 KiB"
    assert format_size(1 << 20) == "1 MiB" and format_size(1500) == "1500 B"
    for bad in ("abc", "0", "-5"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_settings_refuse_what_cannot_be_measured() -> None:
    with pytest.raises(UsageError, match="udp"):
        BenchSettings(transports=("udp",))
    with pytest.raises(UsageError, match="raw"):
        BenchSettings(modes=("encrypted",))
    with pytest.raises(UsageError, match="rounds"):
        BenchSettings(rounds=0)
    with pytest.raises(UsageError, match="nosuch"):
        section_modules(("nosuch",))
    settings = BenchSettings()
    assert settings.stream_count(64) == settings.stream_max_count
    assert settings.stream_count(1 << 20) == settings.stream_min_count
    assert settings.trip_count(64) == settings.trips
    assert settings.trip_count(65536) == settings.trips_large
    assert settings.trip_count(1 << 20) == settings.trips_huge


def test_bad_usage_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sizes", "lots", "--out", "/nonexistent-never-written"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zmqcomm bench: error:") and "lots" in err
    assert err.count("\n") == 1


def _row(mode: str, **fields: Any) -> dict[str, Any]:
    return {"transport": "ipc", "size": 64, "mode": mode, **fields}


def _synthetic() -> dict[str, Any]:
    quantiles = [[q, 100.0 + 50 * q] for q in QUANTILE_POINTS]
    throughput = [
        _row("raw", msg_per_s=1000.0, mb_per_s=0.064, ratio_vs_raw=1.0, ratio_vs_curve=2.0),
        _row("curve", msg_per_s=500.0, mb_per_s=0.032, ratio_vs_raw=0.5, ratio_vs_curve=1.0),
        _row("encrypted", msg_per_s=900.0, mb_per_s=0.0576, ratio_vs_raw=0.9, ratio_vs_curve=1.8),
    ]
    latency = [
        _row(
            mode,
            p50_us=p50,
            p90_us=p50 * 2,
            p99_us=p50 * 3,
            ratio_p50_vs_raw=p50 / 100,
            ratio_p50_vs_curve=None,
            quantiles_us=quantiles,
        )
        for mode, p50 in (("raw", 100.0), ("encrypted", 140.0))
    ]
    sections = {
        "throughput": {"title": "Throughput", "rows": throughput, "skipped": []},
        "latency": {"title": "Round-trip latency", "rows": latency, "skipped": []},
        "custom": {"title": "A section without a renderer", "value": 42},
    }
    return {
        "started": "2026-01-01T00:00:00+00:00",
        "seconds": 1.0,
        "command": "zmqcomm bench --test",
        "machine": {"machine": "x86_64", "cpus": 2, "platform": "Linux", "python": "3.11"},
        "versions": {"pyzmq": "27", "matplotlib": None},
        "claims": claims(sections),
        "sections": sections,
    }


def test_claims_compare_the_ipc_64_byte_encrypted_row() -> None:
    found = {claim["claim"]: claim for claim in _synthetic()["claims"]}
    assert found["encrypted msg/s vs pyzmq+CURVE"]["value"] == 1.8
    assert found["encrypted msg/s vs pyzmq+CURVE"]["met"] is True
    assert found["encrypted msg/s vs raw pyzmq"]["met"] is True  # 0.9 >= 0.8
    assert found["encrypted round-trip p50 vs raw pyzmq"]["value"] == pytest.approx(1.4)
    assert found["encrypted round-trip p50 vs raw pyzmq"]["met"] is False  # 1.4 > 1.3
    assert all(claim["met"] is None for claim in claims({}))
    sections = _synthetic()["sections"]
    unjudged = claims(sections, judge=False)
    assert [claim["value"] for claim in unjudged] == [c["value"] for c in claims(sections)]
    assert all(claim["met"] is None and not claim["judged"] for claim in unjudged)


def test_markdown_renders_rows_ratios_and_unknown_sections() -> None:
    text = to_markdown(_synthetic())
    assert "| ipc | 64 B | zmqcomm encrypted | 900 | 0.1 | 0.90x | 1.80x |" in text
    assert "| ipc | 64 B | zmqcomm encrypted | 140.0 | 280.0 | 420.0 | 1.40x | - |" in text
    assert "| encrypted round-trip p50 vs raw pyzmq | <= 1.3x | 1.40x | **no** |" in text
    assert "## A section without a renderer" in text and '"value": 42' in text
    assert "matplotlib" not in text  # versions that are missing are left out


def test_plots_are_drawn_from_results(tmp_path: Path) -> None:
    results = _synthetic()
    for draw, name in ((plot_throughput, "t.png"), (plot_latency, "l.png")):
        path = draw(results, tmp_path / name)
        assert path.read_bytes().startswith(PNG_MAGIC)


def test_plots_of_a_run_without_those_sections_are_drawn_without_warnings(
    tmp_path: Path,
) -> None:
    results = {"sections": {"pbft": {"rows": []}}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for draw, name in ((plot_throughput, "t.png"), (plot_latency, "l.png")):
            path = draw(results, tmp_path / name)
            assert path.read_bytes().startswith(PNG_MAGIC)


def test_progress_prints_one_line_per_step() -> None:
    out = io.StringIO()
    progress = Progress(out)
    progress.section("throughput", 2)
    progress.step("ipc 64 B raw: 1 msg/s")
    progress.step("ipc 64 B curve: 1 msg/s")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[1].endswith("[1/2] throughput ipc 64 B raw: 1 msg/s")
    assert "[2/2]" in lines[2]
    quiet = io.StringIO()
    Progress(quiet, quiet=True).section("x", 1)
    assert quiet.getvalue() == ""


def test_results_record_the_command_that_made_them(
    quick_run: tuple[subprocess.CompletedProcess[str], Path], results: dict[str, Any]
) -> None:
    _, out = quick_run
    assert results["command"] == f"zmqcomm bench --quick --out {out}"


def test_a_failing_section_is_recorded_and_the_others_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(context: Any) -> dict[str, Any]:
        raise BenchError("the peer process exited with 1")

    for name, run in (("bad", failing), ("good", lambda context: {"title": "Good", "n": 7})):
        module = types.ModuleType(f"zc_bench_test_{name}")
        module.NAME, module.TITLE, module.run = name, name.title(), run  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(runner, "SECTIONS", {n: f"zc_bench_test_{n}" for n in ("bad", "good")})
    out = tmp_path / "out"
    outcome = run_benchmarks(BenchSettings(), out, progress=Progress(quiet=True), plots=False)
    assert outcome.failed == ["bad"]
    assert outcome.results["sections"]["good"]["n"] == 7
    assert outcome.results["sections"]["bad"]["error"] == "the peer process exited with 1"
    assert "**Failed**: the peer process exited with 1" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["sections"]["good"]["n"] == 7


def test_a_run_into_an_old_directory_leaves_no_stale_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An earlier run's plots stayed beside new results written without plots.
    module = types.ModuleType("zc_bench_test_only")
    module.NAME, module.TITLE = "only", "Only"  # type: ignore[attr-defined]
    module.run = lambda context: {"title": "Only", "n": 1}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(runner, "SECTIONS", {"only": "zc_bench_test_only"})
    out = tmp_path / "out"
    out.mkdir()
    for old in ("throughput.png", "latency.png"):
        (out / old).write_bytes(b"an earlier run's plot")
    run_benchmarks(BenchSettings(), out, progress=Progress(quiet=True), plots=False)
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]


def test_the_module_entry_point_reports_a_bad_out_directory_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["--only", "gossip", "--quick", "--out", str(blocker / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("zmqcomm bench: error:") and err.count("\n") == 1


def test_the_single_purpose_scripts_exit_1_when_a_section_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # benchmarks/*.py printed "**Failed**" in the table and exited 0.
    def failing(context: Any) -> dict[str, Any]:
        raise BenchError("no message from the benchmark peer within 60.0 s")

    module = types.ModuleType("zc_bench_test_failing")
    module.NAME, module.TITLE, module.run = "failing", "Failing", failing  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(runner, "SECTIONS", {"failing": "zc_bench_test_failing"})
    assert runner.print_table(BenchSettings()) == 1
    assert "**Failed**" in capsys.readouterr().out


def test_without_matplotlib_the_run_stops_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not after every section has run: the plots are checked for first."""

    def missing() -> Any:
        raise UsageError("the plots need matplotlib: pip install 'zmqcomm[bench]'")

    monkeypatch.setattr(plots, "_pyplot", missing)
    monkeypatch.setattr(runner, "run_benchmarks", lambda *a, **k: pytest.fail("it ran"))
    assert main(["--only", "gossip", "--quick", "--out", str(tmp_path / "out")]) == 2
    assert "matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_out_directory_holding_earlier_results_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "results.json").write_text('{"kept": true}')
    assert main(["--quick", "--only", "gossip", "--out", str(out)]) == 2
    assert "already holds the results of an earlier run" in capsys.readouterr().err
    assert (out / "results.json").read_text() == '{"kept": true}'
