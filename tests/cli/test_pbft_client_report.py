"""How ``zmqcomm pbft client`` reports a result, and ``python -m zmqcomm.cli.pbft`` (what
LocalCluster runs) failing like ``zmqcomm pbft``: one line, the same exit code."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from zmqcomm.cli.pbft_client import _report
from zmqcomm.patterns.pbft.cluster import LocalCluster
from zmqcomm.patterns.pbft.normal import ERROR_RESULT
from zmqcomm.patterns.pbft.statemachine import KeyValueStore, encode_op


def _args(operation: str, key: str = "k", *, json: bool = False) -> argparse.Namespace:
    return argparse.Namespace(operation=operation, key=key, json=json)


@pytest.mark.parametrize(
    ("ops", "last", "printed", "code"),
    [
        ([("put", b"k", b"v")], ("get", b"k"), "v\n", 0),
        ([], ("get", b"k"), "", 1),  # no such key: nothing printed, exit 1
        ([], ("put", b"k", b"v"), "ok (new key)\n", 0),
        ([("put", b"k", b"v")], ("put", b"k", b"w"), "ok (was: v)\n", 0),
        ([], ("delete", b"k"), "ok (no such key)\n", 0),
        ([("put", b"k", b"\xff")], ("get", b"k"), "base64:/w==\n", 0),
    ],
)
def test_results_of_the_key_value_store_are_printed_as_text(
    ops: list[tuple[object, ...]],
    last: tuple[object, ...],
    printed: str,
    code: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = KeyValueStore()
    for op in ops:
        store.apply(encode_op(*op))
    result = store.apply(encode_op(*last))
    assert _report(_args(str(last[0])), result) == code
    assert capsys.readouterr().out == printed


def test_a_get_of_a_missing_key_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a walkthrough: it printed nothing, and --json said status ok beside exit 1."""
    missing = KeyValueStore().apply(encode_op("get", b"colour"))
    assert _report(_args("get", "colour"), missing) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "zmqcomm pbft client: no such key: colour\n"
    assert _report(_args("get", "colour", json=True), missing) == 1
    assert json.loads(capsys.readouterr().out)["found"] is False
    store = KeyValueStore()
    store.apply(encode_op("put", b"colour", b"blue"))
    assert _report(_args("get", "colour", json=True), store.apply(encode_op("get", b"colour"))) == 0
    assert json.loads(capsys.readouterr().out)["found"] is True


def test_a_replicas_own_error_result_is_said_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    """Found in review: it came out as 'error: error: exception' (or, before, as a result
    that could not be read)."""
    assert _report(_args("get"), ERROR_RESULT) == 1
    assert (
        capsys.readouterr().out == "error: the replicas' state machine raised an exception on it\n"
    )


def test_the_module_entry_fails_in_one_line_like_the_command(tmp_path: Path) -> None:
    """Found in review: a data directory it cannot make gave a 20-line traceback through
    'python -m zmqcomm.cli.pbft' and one line through 'zmqcomm pbft'."""
    with LocalCluster(4, directory=tmp_path / "c", client_names=()) as cluster:
        config = cluster.config_path(0)
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        text = config.read_text().replace('data = "data/replica-0"', f'data = "{blocker}/data"')
        assert text != config.read_text()
        config.write_text(text)
        for command in (["-m", "zmqcomm.cli.pbft"], ["-m", "zmqcomm", "pbft"]):
            done = subprocess.run(
                [sys.executable, *command, "replica", "--config", str(config)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 1, done.stderr
            assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
            assert done.stderr.startswith("zmqcomm pbft replica: error: ")
