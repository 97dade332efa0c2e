"""The audit trail: valid JSON lines with the documented fields, and never key material."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import threading
from enum import IntEnum
from pathlib import Path

import pytest

from zmqcomm.crypto import audit
from zmqcomm.crypto.audit import AuditLog, MemoryAuditLog, NullAuditLog
from zmqcomm.crypto.keys import Identity
from zmqcomm.errors import ClosedError, LocalProtocolError, UsageError

NOW = 1_778_312_125.123456
PEER = "o2wboarqgjlijufzo7cms2zcnq"


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_reject_line_has_the_documented_fields(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        log.record(audit.REJECT, now=NOW, peer=PEER, reason=audit.REPLAY, session=7, counter=1041)
    (line,) = path.read_text().splitlines()
    assert line.startswith('{"time":"2026-05-09T07:35:25.123456Z","ts":1778312125.123456,')
    assert json.loads(line) == {
        "time": "2026-05-09T07:35:25.123456Z",
        "ts": 1778312125.123456,
        "event": "reject",
        "peer": PEER,
        "reason": "replay",
        "session": 7,
        "counter": 1041,
    }


def test_every_event_kind_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.record(audit.HANDSHAKE, now=NOW, peer=PEER, role="initiator", roles=["worker"])
    log.record(audit.REKEY, now=NOW + 1, peer=PEER, epoch=3, counters={"sent": 10, "recv": 9})
    for reason in (audit.REPLAY, audit.BAD_TAG, audit.UNKNOWN_KEY, audit.DENIED):
        log.record(audit.REJECT, now=NOW + 2, peer=None, reason=reason, source="tcp://10.0.0.9")
    log.record(audit.REJECT, now=NOW + 3, peer=PEER, reason=audit.RATE_LIMITED, dropped=120)
    log.close()
    records = _lines(path)
    assert [r["event"] for r in records] == ["handshake", "rekey", *["reject"] * 5]
    assert records[1]["counters"] == {"sent": 10, "recv": 9}
    assert records[2]["peer"] is None
    assert {r["reason"] for r in records[2:]} == {
        "replay",
        "bad_tag",
        "unknown_key",
        "denied",
        "rate_limited",
    }
    for record in records:
        assert set(record) >= {"time", "ts", "event", "peer", "reason"}


def test_the_file_is_private_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    for index in range(2):
        with AuditLog(path) as log:
            log.record("handshake", now=NOW, index=index)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [r["index"] for r in _lines(path)] == [0, 1]


def test_each_line_is_flushed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.record("handshake", now=NOW)
    assert len(_lines(path)) == 1  # readable before close
    log.close()


@pytest.mark.parametrize(
    "value",
    [
        b"\x01" * 32,
        bytearray(32),
        memoryview(b"k" * 32),
        [b"k"],
        {"inner": b"k"},
        {"deep": [1, {"x": b"k"}]},
    ],
)
def test_bytes_are_refused_wherever_they_hide(value: object) -> None:
    stream = io.StringIO()
    log = AuditLog(stream)
    with pytest.raises(LocalProtocolError, match="bytes"):
        log.record("handshake", now=NOW, peer=PEER, extra=value)
    assert stream.getvalue() == ""  # nothing written, not even half a line


def test_peer_must_be_an_agent_id_string() -> None:
    with pytest.raises(LocalProtocolError):
        NullAuditLog().record("reject", now=NOW, peer=b"\x00" * 16)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["secret", "private_key", "passphrase", "Password", "seed"])
def test_names_that_smell_of_secrets_are_refused(name: str) -> None:
    with pytest.raises(LocalProtocolError):
        MemoryAuditLog().record("handshake", now=NOW, **{name: "x"})
    with pytest.raises(LocalProtocolError):
        MemoryAuditLog().record("handshake", now=NOW, info={name: "x"})


def test_hex_encoded_keys_are_redacted() -> None:
    identity = Identity.generate("alice")
    secret_hex = identity.static_keypair.private.hex()
    log = MemoryAuditLog()
    record = log.record("reject", now=NOW, topic=f"t/{secret_hex}", note=secret_hex.upper())
    assert record["topic"] == "t/[redacted]" and record["note"] == "[redacted]"
    assert secret_hex not in log.lines[0] and secret_hex.upper() not in log.lines[0]
    # Agent ids and short hex (a session id, say) pass untouched.
    kept = log.record("handshake", now=NOW, peer=identity.agent_id, session="ab" * 8)
    assert kept["peer"] == identity.agent_id and kept["session"] == "ab" * 8


@pytest.mark.parametrize("value", [object(), {1, 2}, float("nan"), float("inf"), 1j])
def test_non_json_values_are_refused(value: object) -> None:
    with pytest.raises(LocalProtocolError):
        NullAuditLog().record("handshake", now=NOW, value=value)


def test_nesting_and_size_are_bounded() -> None:
    with pytest.raises(LocalProtocolError, match="deep"):
        NullAuditLog().record("x", now=NOW, value=[[[[["too deep"]]]]])
    with pytest.raises(LocalProtocolError):
        NullAuditLog().record("x", now=NOW, value=list(range(1000)))
    with pytest.raises(LocalProtocolError):
        NullAuditLog().record("x", now=NOW, value={1: "non-string key"})


def test_long_and_hostile_strings_stay_one_line() -> None:
    log = MemoryAuditLog()
    log.record("reject", now=NOW, reason="bad\nline\r\u2028{}", topic="x" * 5000)
    (line,) = log.lines
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    record = json.loads(line)
    assert record["reason"] == "bad\nline\r\u2028{}"
    assert len(record["topic"]) == audit.MAX_STRING + 3


def test_reserved_and_invalid_names(tmp_path: Path) -> None:
    log = MemoryAuditLog()
    with pytest.raises(UsageError):
        log.record("x", now=NOW, time="later")
    with pytest.raises(UsageError):
        log.record("x", now=NOW, ts=1)
    for event in ("", "Handshake", "has space", "9lives"):
        with pytest.raises(UsageError):
            log.record(event, now=NOW)
    with pytest.raises(UsageError):
        log.record("x", now=float("nan"))
    assert log.records == []


def test_enums_become_numbers() -> None:
    class Kind(IntEnum):
        DATA = 3

    log = MemoryAuditLog()
    log.record("x", now=NOW, kind=Kind.DATA)
    assert json.loads(log.lines[0])["kind"] == 3


def test_memory_log_filters_and_limit() -> None:
    log = MemoryAuditLog(limit=3)
    for index, reason in enumerate(["replay", "bad_tag", "replay", "denied"]):
        log.record("reject", now=NOW, reason=reason, index=index)
    log.record("handshake", now=NOW)
    assert len(log.records) == 3 == len(log.lines)
    assert [r["index"] for r in log.events("reject")] == [2, 3]
    assert [r["index"] for r in log.events(reason="replay")] == [2]
    assert len(log.events("handshake")) == 1


def test_threads_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)

    def writer(worker: int) -> None:
        for index in range(250):
            log.record("reject", now=NOW, peer=PEER, reason="replay", worker=worker, i=index)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    records = _lines(path)
    assert len(records) == 2000
    assert {(r["worker"], r["i"]) for r in records} == {
        (w, i) for w in range(8) for i in range(250)
    }


def test_rotation_by_size(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, max_bytes=500, backups=2)
    for index in range(40):
        log.record("handshake", now=NOW, peer=PEER, index=index)
    log.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["audit.log", "audit.log.1", "audit.log.2"]
    for name in names:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
        assert all(isinstance(r["index"], int) for r in _lines(tmp_path / name))
    assert path.stat().st_size < 500
    # Oldest to newest: .2, .1, the live file; together the most recent lines, in order.
    kept = [r["index"] for name in reversed(names) for r in _lines(tmp_path / name)]
    assert kept == list(range(40 - len(kept), 40))


def test_rotation_needs_a_path_and_sane_limits() -> None:
    with pytest.raises(UsageError):
        AuditLog(io.StringIO(), max_bytes=100)
    with pytest.raises(UsageError):
        AuditLog(io.StringIO(), max_bytes=0)


def test_streams_are_flushed_not_closed_and_closed_logs_refuse() -> None:
    stream = io.StringIO()
    log = AuditLog(stream)
    log.record("handshake", now=0)
    log.close()
    assert not stream.closed
    assert json.loads(stream.getvalue())["time"] == "1970-01-01T00:00:00Z"
    with pytest.raises(ClosedError):
        log.record("handshake", now=0)
    assert "stream" in repr(log)


def test_an_unwritable_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        AuditLog(tmp_path / "missing-dir" / "audit.log")


def test_a_symbolic_link_where_the_log_goes_is_refused(tmp_path: Path) -> None:
    """A link planted in a shared directory would have the trail appended to the file it
    names (another user's, or one the node must not touch)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    link = tmp_path / "audit.log"
    link.symlink_to(victim)
    with pytest.raises(UsageError, match="symbolic link"):
        AuditLog(link)
    assert victim.read_text() == "untouched\n"


def test_a_log_others_can_write_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("")
    path.chmod(0o662)
    with pytest.raises(UsageError, match=f"chmod 600 {path}"):
        AuditLog(path)
    path.chmod(0o644)  # readable by others: allowed (the trail holds no key material)
    with AuditLog(path) as log:
        log.record("handshake", now=NOW)
    assert len(_lines(path)) == 1


def test_a_log_with_another_name_elsewhere_is_refused(tmp_path: Path) -> None:
    """O_NOFOLLOW does not see hard links: the lines would also land in the other file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    victim.chmod(0o600)
    os.link(victim, tmp_path / "audit.log")
    with pytest.raises(UsageError, match="hard links"):
        AuditLog(tmp_path / "audit.log")
    assert victim.read_text() == "untouched\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_log_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("")
    path.chmod(0o600)
    os.chown(path, 65534, 65534)  # nobody
    with pytest.raises(UsageError, match="belongs to another user"):
        AuditLog(path)


def test_a_pipe_is_refused_rather_than_left_to_block(tmp_path: Path) -> None:
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match=r"not a regular file|cannot open"):
        AuditLog(fifo)  # with no reader: refused at once, never a hang


def test_a_sink_that_cannot_write_counts_the_failure_and_never_raises() -> None:
    """Records are made while refusing a peer's frame, inside pump(): a full disk must not
    turn a peer's garbage into an exception that stops the node."""
    log = AuditLog("/dev/full")
    log.record("reject", now=1.0, peer="x", reason="bad_tag")
    log.record("reject", now=2.0, peer="x", reason="bad_tag")
    assert log.write_errors == 2
    assert log.last_error is not None and "No space left" in log.last_error
    log.close()


def test_a_rotation_that_fails_keeps_the_log_usable(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    log = AuditLog(directory / "audit.log", max_bytes=200)
    shutil.rmtree(directory)  # rename and reopen now fail
    for _ in range(5):
        log.record("reject", now=1.0, reason="y" * 100)  # none raises
    assert log.write_errors >= 1
    directory.mkdir()  # the directory is back: rotation works again
    for _ in range(5):
        log.record("reject", now=2.0, reason="z" * 100)
    log.close()
    assert (directory / "audit.log").exists()
