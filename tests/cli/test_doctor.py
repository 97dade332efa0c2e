from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from zmqcomm.cli.doctor import latency_micros
from zmqcomm.cli.main import main


def test_doctor_reports_versions_and_every_transport(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--count", "20"]) == 0
    out = capsys.readouterr().out
    for name in ("pyzmq", "libzmq", "pynacl", "msgpack", "zstandard", "python"):
        assert name in out
    for transport in ("inproc", "ipc", "tcp"):
        assert f"  {transport:<7} ok" in out
    assert "all transports ok" in out


def test_doctor_json_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--count", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert [r["transport"] for r in report["round_trips"]] == ["inproc", "ipc", "tcp"]
    assert all(r["round_trips"] == 5 and r["p50_us"] > 0 for r in report["round_trips"])
    assert report["round_trips"][2]["endpoint"].startswith("tcp://127.0.0.1:")


def test_doctor_ipc_works_under_a_long_tmpdir(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A TMPDIR this long left no room for the socket name: ipc was reported broken.
    long_tmp = tmp_path / ("t" * 60) / ("u" * 40)
    long_tmp.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    assert main(["doctor", "--count", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ipc = report["round_trips"][1]
    assert (ipc["transport"], ipc["ok"]) == ("ipc", True), ipc
    assert report["ok"] is True


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--count", "0"], "must be at least 1"),
        (["--count", "abc"], "a whole number is needed, got 'abc'"),
        (["--timeout", "-1"], "must be above 0 and at most 3600 seconds, got -1"),
        (["--timeout", "nan"], "must be above 0"),
        (["--timeout", "inf"], "must be above 0"),
        (["--timeout", "1e12"], "must be above 0"),
        (["--timeout", "soon"], "a number of seconds is needed, got 'soon'"),
    ],
)
def test_bad_usage_exits_2_with_one_line(
    arguments: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["doctor", *arguments])
    assert caught.value.code == 2
    assert expected in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "doctor" in capsys.readouterr().out


def test_the_installed_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zmqcomm", "doctor", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "examples:" in result.stdout


def test_doctor_p99_of_100_round_trips_is_the_99th_not_the_slowest() -> None:
    # micros[int(n * 0.99)] named the maximum for up to 100 samples: one slow round trip
    # (here the 100 µs one) became the p99.
    samples = [micros * 1e-6 for micros in (*range(51, 101), *range(1, 51))]  # not in order
    assert latency_micros(samples) == (50.5, 99.0)
    assert latency_micros([5e-6]) == (5.0, 5.0)
