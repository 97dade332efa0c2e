"""``zmqcomm swarm`` end to end: a broker and agents as real processes, on loopback only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmqcomm.swarm.layout import create

COMMAND = (sys.executable, "-m", "zmqcomm")
#: A swarm of three agents for one second takes about 5 s; allow for a slow machine.
SWARM_TIMEOUT = 90.0


def zmqcomm(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``zmqcomm ARGS`` to completion (bounded by ``timeout``)."""
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # The swarm binds ipc under --keep: stay well inside the 107-byte ipc path limit.
    directory = Path(tempfile.mkdtemp(prefix="zc-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _check_summary(summary: dict[str, object], agents: int) -> None:
    assert summary["lost"] == 0
    assert summary["request_failures"] == 0
    assert summary["duplicates"] == 0
    assert isinstance(summary["messages"], int) and summary["messages"] > 0
    assert summary["received"] == summary["messages"]
    rows = summary["rows"]
    assert isinstance(rows, list)
    assert sorted(row["agent"] for row in rows) == [f"agent-{i}" for i in range(agents)]
    for row in rows:
        assert row["sent"] > 0 and row["received"] > 0, row
        assert row["lost"] == 0 and row["duplicates"] == 0, row
    assert sum(row["sent"] for row in rows) == summary["messages"]


def test_swarm_help_shows_examples() -> None:
    result = zmqcomm("swarm", "--help")
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout
    assert "zmqcomm swarm --agents 20 --duration 10 --rate 100" in result.stdout
    assert "--json" in result.stdout and "--keep" in result.stdout


@pytest.mark.slow
def test_swarm_json_reports_no_loss() -> None:
    result = zmqcomm(
        "swarm", "--agents", "3", "--duration", "1", "--rate", "50", "--json",
        timeout=SWARM_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)  # stdout is the JSON object and nothing else
    assert summary["agents"] == 3
    assert summary["transport"] == "ipc"
    _check_summary(summary, 3)
    assert summary["broker"]["routed"] > 0
    assert "started: 3 agents ready" in result.stderr  # progress goes to stderr


@pytest.mark.slow
def test_swarm_peer_to_peer_reports_no_loss() -> None:
    result = zmqcomm(
        "swarm", "--mode", "p2p", "--agents", "3", "--duration", "1", "--rate", "50", "--json",
        timeout=SWARM_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["mode"] == "p2p"
    _check_summary(summary, 3)
    assert summary["published"] > 0 and summary["topic_received"] == 2 * summary["published"]
    assert summary["broker"]["routed"] is None  # there was no broker


@pytest.mark.slow
def test_swarm_table_over_tcp_keeps_its_files(short_dir: Path) -> None:
    keep = short_dir / "run"
    result = zmqcomm(
        "swarm", "--agents", "2", "--duration", "1", "--rate", "50", "--transport", "tcp",
        "--keep", str(keep),
        timeout=SWARM_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lost = 0" in result.stdout
    assert "agent-0" in result.stdout and "agent-1" in result.stdout
    assert (keep / "keys" / "broker.key").exists()
    stats = json.loads((keep / "data" / "stats.json").read_text())
    assert stats["endpoints"][0].startswith("tcp://127.0.0.1:")
    assert stats["handshakes"] >= 2
    for index in range(2):
        result_file = json.loads((keep / f"agent-{index}.result.json").read_text())
        assert result_file["name"] == f"agent-{index}"
    assert (keep / "audit.jsonl").exists()
    assert _processes_mentioning(str(keep)) == []


SWARM_BAD_USAGE = {
    "one agent": (["--agents", "1"], "--agents must be between 2 and 200, got 1"),
    "too many agents": (["--agents", "201"], "--agents must be between 2 and 200"),
    "no duration": (["--duration", "0"], "--duration must be in (0, 3600]"),
    "tiny size": (["--size", "8"], "--size must be 16 B to 1 MiB"),
    "zero rate": (["--rate", "0"], "must be positive"),
    "zero rekey": (["--rekey-every", "0"], "must be positive"),
}


@pytest.mark.parametrize("case", list(SWARM_BAD_USAGE))
def test_swarm_bad_usage_exits_2_with_one_clear_line(case: str) -> None:
    arguments, expected = SWARM_BAD_USAGE[case]
    result = zmqcomm("swarm", *arguments, timeout=20.0)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("zmqcomm swarm: error: ")
    assert expected in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--transport", "udp"], "invalid choice: 'udp'"),
        (["--agents", "three"], "invalid int value: 'three'"),
    ],
)
def test_swarm_argparse_errors_exit_2(arguments: list[str], expected: str) -> None:
    result = zmqcomm("swarm", *arguments, timeout=20.0)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert expected in result.stderr


def test_swarm_with_an_ipc_path_over_the_limit_fails_clearly(short_dir: Path) -> None:
    keep = short_dir / ("d" * 100)
    result = zmqcomm(
        "swarm", "--agents", "2", "--duration", "1", "--keep", str(keep), timeout=SWARM_TIMEOUT
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("zmqcomm swarm: error: ")
    assert "the broker exited (2)" in result.stderr
    broker_log = (keep / "logs" / "0.log").read_text()
    assert "over this system's limit" in broker_log
    assert _processes_mentioning(str(keep)) == []


def _start_long_swarm(err: Path, *arguments: str) -> subprocess.Popen[bytes]:
    """A two-agent swarm meant to be stopped early, returned once all its agents run."""
    with err.open("wb") as sink:
        process = subprocess.Popen(
            [*COMMAND, "swarm", "--agents", "2", "--duration", "60", "--rate", "20", "--json",
             *arguments],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )  # fmt: skip
    deadline = time.monotonic() + 60.0
    while b"started: 2 agents" not in err.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"the swarm never started: {err.read_text()}")
        time.sleep(0.1)
    return process


@pytest.mark.slow
def test_interrupted_swarm_exits_130_and_leaves_no_processes(short_dir: Path) -> None:
    keep = short_dir / "run"
    err = short_dir / "stderr"
    process = _start_long_swarm(err, "--keep", str(keep))
    try:
        # The orchestrator, the broker and both agents all name the --keep directory.
        assert len(_processes_mentioning(str(keep))) == 4
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends the orchestrator
        assert process.wait(timeout=30.0) == 130
        text = err.read_text()
        assert "zmqcomm: interrupted" in text
        assert "Traceback" not in text
        assert _processes_mentioning(str(keep)) == []  # broker and agents were stopped
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10.0)
        for pid in _processes_mentioning(str(keep)):  # only children of this test's swarm
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_terminated_swarm_removes_its_directory_and_the_keys_in_it(short_dir: Path) -> None:
    before = set(Path("/tmp").glob("zmqcomm-swarm-*"))
    err = short_dir / "stderr"
    process = _start_long_swarm(err)
    try:
        made = set(Path("/tmp").glob("zmqcomm-swarm-*")) - before
        assert len(made) == 1
        run_directory = made.pop()
        assert any((run_directory / "keys").glob("*.key"))
        process.send_signal(signal.SIGTERM)  # what timeout(1), kill and CI cancels send
        assert process.wait(timeout=30.0) == 130
        assert not run_directory.exists()
        assert _processes_mentioning(str(run_directory)) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_swarm_refuses_a_non_empty_keep_directory_clearly(tmp_path: Path) -> None:
    # A second run into the same --keep used to fail on the first key file with "use
    # --force", an option swarm does not have; now it is refused before anything starts.
    keep = tmp_path / "run"
    create(keep, 2)  # what a previous run left
    before = sorted(p.relative_to(keep) for p in keep.rglob("*"))
    result = zmqcomm("swarm", "--agents", "2", "--duration", "1", "--keep", str(keep))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--force" not in result.stderr
    assert "not an empty directory" in result.stderr and str(keep) in result.stderr
    assert sorted(p.relative_to(keep) for p in keep.rglob("*")) == before
