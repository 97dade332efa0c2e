"""Review of the PBFT driver side (SQLite store, config, local cluster, load generator).

Each test in the first part shows one bug found in review (now fixed); all but the SIGTERM
one are in-process and fast (that one starts ``pbft local``, ~5 s). The last part checks
details of the fixes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import msgpack
import pytest

from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import CorruptStoreError, StoreError, UsageError, ZmqCommError
from zmqcomm.patterns.pbft import (
    KeyValueStore,
    Prepare,
    Replica,
    Reply,
    Request,
    StableCheckpoint,
    encode_op,
    material,
)
from zmqcomm.patterns.pbft.checkpoint import state_bytes, state_digest
from zmqcomm.patterns.pbft.cluster import LocalCluster
from zmqcomm.patterns.pbft.config import ReplicaConfig, ReplicaEntry, load_config
from zmqcomm.patterns.pbft.driver import (
    STATUS_FILE,
    STORE_FILE,
    ReplicaDriver,
    _lock_data_directory,
    build_replica,
    client_verifier,
    run_replica,
)
from zmqcomm.patterns.pbft.loadgen import LoadGenerator, LoadReport, percentile
from zmqcomm.patterns.pbft.messages import encode
from zmqcomm.patterns.pbft.sqlite_store import SQLiteStore

DIGEST_A = bytes(range(32))
DIGEST_B = bytes(range(32, 64))


def _replica_on(store: SQLiteStore) -> Replica:
    return Replica(
        1,
        4,
        state_machine=KeyValueStore(),
        store=store,
        sign=lambda m: b"",
        verify=lambda r, m, s: True,
        now=0.0,
    )


# -- durability ---------------------------------------------------------------------------------


def test_group_commit_never_reports_success_for_rolled_back_saves(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = SQLiteStore(path, group_commit=True)
    store.save_vote(0, 1, "prepare", DIGEST_A)
    store.commit()
    # The replica saves its PREPARE vote for sequence 2 and returns the PREPARE ...
    store.save_vote(0, 2, "prepare", DIGEST_B)
    # ... then, in the same burst, a later save hits a full disk (here: a page limit).
    assert store._db is not None
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    big = StableCheckpoint(2, DIGEST_A, (), b"x" * 200_000)
    with pytest.raises((sqlite3.Error, ZmqCommError)):
        store.save_checkpoint(big)
    # The driver commits before sending: that commit must either fail (nothing is sent) or
    # have made the vote for sequence 2 durable.
    try:
        store.commit()
        committed = True
    except (sqlite3.Error, ZmqCommError):
        committed = False
    store.close()
    if committed:
        with SQLiteStore(path) as again:
            assert again.load_votes().get((0, 2, "prepare")) == DIGEST_B


def _checkpointed_store(path: Path) -> bytes:
    """A store whose stable checkpoint (sequence 16) holds one key; returns its digest."""
    machine = KeyValueStore()
    machine.data = {b"key": b"good"}
    blob = state_bytes(machine.snapshot(), {})
    digest = state_digest(blob)
    with SQLiteStore(path) as store:
        store.save_checkpoint(StableCheckpoint(16, digest, (), blob))
    return digest


def _tampered(kind: str) -> bytes:
    if kind == "garbage":
        return b"\xc1 not a checkpoint state"
    machine = KeyValueStore()
    machine.data = {b"key": b"evil"}  # a flipped value: still parses, wrong digest
    return state_bytes(machine.snapshot(), {})


@pytest.mark.parametrize("kind", ["garbage", "wrong_state"])
def test_corrupt_checkpoint_snapshot_is_a_typed_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "c.db"
    _checkpointed_store(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE checkpoint SET snapshot = ? WHERE id = 0", (_tampered(kind),))
    db.commit()
    db.close()
    with SQLiteStore(path) as store, pytest.raises(CorruptStoreError):
        _replica_on(store)


def test_a_checkpoint_the_state_machine_cannot_restore_is_a_typed_error(tmp_path: Path) -> None:
    """Digest and shape are right, but the snapshot is in a format this key-value store does
    not read (the sorted pairs an earlier version wrote)."""
    blob = state_bytes(msgpack.packb([[b"key", b"good"]]), {})
    with SQLiteStore(tmp_path / "v.db") as store:
        store.save_checkpoint(StableCheckpoint(16, state_digest(blob), (), blob))
        with pytest.raises(CorruptStoreError, match="another version"):
            _replica_on(store)


def test_damaged_database_page_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with SQLiteStore(path) as store:
        for sequence in range(200):
            store.save_vote(0, sequence, "prepare", DIGEST_A)
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * page_size
    data[2 * page_size : 2 * page_size + 200] = b"\xab" * 200  # page 3: the votes table
    path.write_bytes(bytes(data))
    with SQLiteStore(path) as store, pytest.raises(CorruptStoreError):
        store.load_votes()


# -- configuration ------------------------------------------------------------------------------


def _entries() -> tuple[ReplicaEntry, ...]:
    return tuple(
        ReplicaEntry(f"ipc:///tmp/never-bound-{i}", Identity.generate(f"r{i}").public)
        for i in range(4)
    )


@pytest.mark.parametrize("setting", ["batch_delay", "view_change_timeout"])
def test_non_numeric_timing_setting_is_a_usage_error(tmp_path: Path, setting: str) -> None:
    with pytest.raises(UsageError):
        ReplicaConfig(
            replica=0,
            replicas=_entries(),
            keys=tmp_path,
            trust=tmp_path,
            data=tmp_path,
            **{setting: "0.5"},  # type: ignore[arg-type]
        )


def test_reply_all_is_written_and_read_back(tmp_path: Path) -> None:
    cluster = LocalCluster(4, directory=tmp_path / "c", client_names=())
    config = dataclasses.replace(cluster.configs[0], reply_all=True)
    path = tmp_path / "c" / "reply-all.toml"
    path.write_text(config.to_toml(path.parent))
    assert "reply_all = true" in path.read_text()
    assert load_config(path) == config
    assert load_config(cluster.config_path(0)).reply_all is False


def test_config_file_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "replica-0.toml"
    path.write_bytes(b"replica = 0\n\xff\xfe\n")
    with pytest.raises(UsageError):
        load_config(path)


# -- local cluster ------------------------------------------------------------------------------


def test_refused_local_cluster_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(UsageError):
        LocalCluster(4, batch_size=100_000, client_names=())
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- load generator -----------------------------------------------------------------------------


def test_loadgen_percentile_is_not_one_rank_high() -> None:
    assert percentile([float(v) for v in range(1, 101)], 0.99) < 100.0
    assert percentile([1.0, 2.0], 0.50) < 2.0


def test_reply_with_unhashable_client_from_a_faulty_replica_is_dropped() -> None:
    load = object.__new__(LoadGenerator)
    load.clients = {}
    load.dropped = Counter()
    load._report = LoadReport()
    hostile = Reply(0, 1, {"not": "hashable"}, 2, b"")  # type: ignore[arg-type]
    assert load._on_reply(2, hostile) == []
    assert sum(load.dropped.values()) == 1


def test_written_config_with_a_quote_in_its_path_loads_back(tmp_path: Path) -> None:
    cluster = LocalCluster(4, directory=tmp_path / 'we"ird', client_names=())
    assert load_config(cluster.config_path(0)) == cluster.configs[0]


def test_kept_configs_name_absolute_ipc_endpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 'pbft local --keep c' wrote ipc://c/sock/r0: a replica later started with
    # 'pbft replica --config c/replica-0.toml' from another directory bound elsewhere.
    monkeypatch.chdir(tmp_path)
    cluster = LocalCluster(4, directory="c", client_names=())
    monkeypatch.chdir("/")
    config = load_config(tmp_path / "c" / "replica-0.toml")
    for entry in config.replicas:
        assert entry.endpoint.startswith(f"ipc://{tmp_path}/c/sock/"), entry.endpoint
    assert config == cluster.configs[0]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_sigterm_to_pbft_local_stops_its_replicas(tmp_path: Path) -> None:
    keep = tmp_path / "c"
    command = [sys.executable, "-m", "zmqcomm.cli.pbft", "local", "--ops", "1000000"]
    command += ["--clients", "4", "--keep", str(keep)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(pids) < 4:
            assert time.monotonic() < deadline, "the replicas did not start"
            assert process.poll() is None, "pbft local exited early"
            pids = []
            for i in range(4):
                try:
                    status = json.loads((keep / f"data/replica-{i}/status.json").read_text())
                except (OSError, ValueError):
                    break
                pids.append(status["pid"])
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        deadline = time.monotonic() + 8
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in pids if _alive(pid)] == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pid in pids:  # the leaked replicas of this test, by pid
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# -- follow-ups to the fixes above --------------------------------------------------------------


class _FailingReplica:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.rejected: Counter[str] = Counter()

    def on_message(self, sender: object, message: object, *, now: float) -> list[object]:
        raise self.error


def _driver_feeding(error: Exception) -> ReplicaDriver:
    driver = object.__new__(ReplicaDriver)
    driver.replica = _FailingReplica(error)  # type: ignore[assignment]
    driver.index = {"replica-agent": 1}
    driver.drops = Counter()
    driver.audit = None
    return driver


@pytest.mark.parametrize(
    "error",
    [StoreError("disk full"), sqlite3.OperationalError("disk I/O error"), OSError(28, "full")],
)
def test_store_failure_while_feeding_stops_the_driver(error: Exception) -> None:
    driver = _driver_feeding(error)
    payload = encode(Prepare(0, 5, DIGEST_A, 1, b"s"))
    with pytest.raises(type(error)):
        driver._feed("replica-agent", payload, 0.0)
    assert driver.drops == Counter()


def test_bug_in_the_core_is_still_dropped_not_raised() -> None:
    driver = _driver_feeding(KeyError("a bug"))
    payload = encode(Prepare(0, 5, DIGEST_A, 1, b"s"))
    assert driver._feed("replica-agent", payload, 0.0) == []
    assert driver.drops == Counter({"replica_exception": 1})


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("batch_delay", True),
        ("view_change_timeout", False),
        ("batch_size", True),
        ("name", 7),
        ("fsync", "yes"),
        ("reply_all", "yes"),
    ],
)
def test_bool_or_wrong_type_setting_is_a_usage_error(
    tmp_path: Path, setting: str, value: object
) -> None:
    with pytest.raises(UsageError, match=setting):
        ReplicaConfig(
            replica=0,
            replicas=_entries(),
            keys=tmp_path,
            trust=tmp_path,
            data=tmp_path,
            **{setting: value},  # type: ignore[arg-type]
        )


def test_replica_on_a_corrupt_store_exits_1_with_one_line(tmp_path: Path) -> None:
    cluster = LocalCluster(4, directory=tmp_path / "c", client_names=())
    _checkpointed_store(cluster.configs[0].data / STORE_FILE)
    db = sqlite3.connect(cluster.configs[0].data / STORE_FILE)
    db.execute("UPDATE checkpoint SET snapshot = ? WHERE id = 0", (_tampered("wrong_state"),))
    db.commit()
    db.close()
    command = [sys.executable, "-m", "zmqcomm.cli.pbft", "replica"]
    command += ["--config", str(cluster.config_path(0))]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "move the data directory aside" in lines[0]


def test_batch_bytes_follow_the_window_and_bad_sizes_are_one_line_errors(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(4, directory=tmp_path / "c", client_names=())
    config = load_config(cluster.config_path(0))
    assert config == cluster.configs[0]
    assert (config.max_request_bytes, config.batch_bytes) == (64 * 1024, 512 * 1024)
    # A wider window carries more batches in a VIEW-CHANGE: the default shrinks to fit.
    wide = dataclasses.replace(config, checkpoint_interval=64, max_batch_bytes=None)
    assert wide.batch_bytes * wide.window <= 32 * 1024 * 1024
    for settings, message in [
        ({"max_request_bytes": 0}, "max_request_bytes must be a positive integer"),
        ({"max_request_bytes": True}, "max_request_bytes must be a positive integer"),
        ({"max_batch_bytes": 100, "max_request_bytes": 200}, "at least max_request_bytes"),
        ({"max_batch_bytes": 64 * 1024 * 1024}, "more than a view change may carry"),
    ]:
        with pytest.raises(UsageError, match=message):
            dataclasses.replace(config, **settings)


def _kept_config(tmp_path: Path, **changes: object) -> ReplicaConfig:
    cluster = LocalCluster(4, directory=tmp_path / "c", client_names=())
    return dataclasses.replace(cluster.configs[0], **changes)


def _stop_at_once() -> bool:
    return True


def test_a_misspelt_trust_directory_is_refused_not_created(tmp_path: Path) -> None:
    # TrustStore created it empty, and the replica refused every peer for ever.
    config = _kept_config(tmp_path, trust=tmp_path / "c" / "trsut")
    with pytest.raises(UsageError, match="trust directory"):
        run_replica(config, stop=_stop_at_once)
    assert not (tmp_path / "c" / "trsut").exists()


def test_two_replicas_cannot_share_a_data_directory(tmp_path: Path) -> None:
    config = _kept_config(tmp_path)
    config.data.mkdir(parents=True, exist_ok=True)
    held = _lock_data_directory(config.data)  # as a running replica holds it
    try:
        with pytest.raises(UsageError, match="in use by another replica"):
            run_replica(config, stop=_stop_at_once)
    finally:
        held.close()
    assert run_replica(config, stop=_stop_at_once)["replica"] == 0  # free again


def test_a_replica_that_fails_says_so_in_its_status_file(tmp_path: Path) -> None:
    config = _kept_config(tmp_path)

    def broken() -> bool:
        raise RuntimeError("stands in for a disk that fills up")

    with pytest.raises(RuntimeError):
        run_replica(config, stop=broken)
    status = json.loads((config.data / STATUS_FILE).read_text())
    assert status["running"] is False and status["failed"] is True


def test_a_start_callback_that_raises_still_closes_everything(tmp_path: Path) -> None:
    """Found in review: on_started ran outside the cleanup, so a failure there (a closed
    stderr for the 'running' line) left the socket file and the store open, unreported."""
    config = _kept_config(tmp_path)

    def broken() -> None:
        raise BrokenPipeError("stands in for a closed stderr")

    with pytest.raises(BrokenPipeError):
        run_replica(config, stop=_stop_at_once, on_started=broken)
    status = json.loads((config.data / STATUS_FILE).read_text())
    assert status["running"] is False and status["failed"] is True
    endpoint = config.replicas[config.replica].endpoint
    assert not Path(endpoint.removeprefix("ipc://")).exists()
    assert run_replica(config, stop=_stop_at_once)["replica"] == 0  # the lock was let go


def test_two_replicas_with_one_endpoint_are_a_configuration_error(tmp_path: Path) -> None:
    config = _kept_config(tmp_path)
    first = config.replicas[0]
    twice = (first, dataclasses.replace(config.replicas[1], endpoint=first.endpoint))
    with pytest.raises(UsageError, match="same endpoint"):
        dataclasses.replace(config, replicas=twice + config.replicas[2:])


def test_a_long_view_change_timeout_still_doubles(tmp_path: Path) -> None:
    # The cap stayed at 60 s: a first timeout of 120 s was halved after a failed view.
    config = _kept_config(tmp_path, view_change_timeout=120.0)
    store = SQLiteStore(tmp_path / "store.sqlite3")
    try:
        replica = build_replica(
            config,
            identity=Identity.generate("r"),
            store=store,
            machine=KeyValueStore(),
            trust=TrustStore(config.trust),
        )
        assert replica.max_timeout >= 2 * 120.0
    finally:
        store.close()


def test_client_signatures_are_checked_against_the_agent_before_the_slash(
    tmp_path: Path,
) -> None:
    config = _kept_config(tmp_path, client_signatures=True)
    trust = TrustStore(config.trust)
    verify = client_verifier(trust)
    client = Identity.generate("client")
    stranger = Identity.generate("stranger")
    trust.add(client.public)
    request = Request(f"{client.agent_id}/7", 1, encode_op("put", b"k", b"v"))
    signed = material(request)
    assert verify(request.client, signed, client.sign(signed))
    assert not verify(request.client, signed, stranger.sign(signed))
    assert not verify(f"{stranger.agent_id}/7", signed, stranger.sign(signed))  # untrusted
    trust.revoke(client.agent_id)
    assert not verify(request.client, signed, client.sign(signed))
    store = SQLiteStore(tmp_path / "store.sqlite3")
    try:
        replica = build_replica(
            config, identity=Identity.generate("r"), store=store, machine=KeyValueStore(),
            trust=trust,
        )  # fmt: skip
        assert replica.verify_client is not None
    finally:
        store.close()


def test_a_cluster_with_client_signatures_serves_signed_requests(tmp_path: Path) -> None:
    # Without them a replica started from a configuration could not check clients at all,
    # and any trusted client could force a view change per request (found by a review).
    with LocalCluster(4, directory=tmp_path / "c", client_signatures=True) as cluster:
        assert load_config(cluster.config_path(1)).client_signatures is True
        cluster.start_all()
        cluster.wait_ready()
        with cluster.load_generator(clients=4) as load:
            report = load.run(20, max_seconds=30)
    assert report.ops == 20
