"""A PBFT cluster as real processes: SIGKILL the primary mid-load, a garbage client, and the
same partition story across network namespaces (skipped where ``ip netns`` is not allowed).

Every replica runs ``python -m zmqcomm.cli.pbft replica --config ...`` with an SQLite store
(fsync on); the load generator runs in the test process (or, for the namespaces, in a
process inside its own namespace).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zmqcomm.actions import Send
from zmqcomm.cli.pbft import main as pbft_main
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.patterns.pbft import Request, encode
from zmqcomm.patterns.pbft.cluster import LocalCluster
from zmqcomm.patterns.pbft.config import load_config
from zmqcomm.patterns.pbft.driver import client_agent, group_sends
from zmqcomm.patterns.pbft.messages import Commit, Prepare
from zmqcomm.secure import SecureDealer

N = 4
SETTINGS: dict[str, Any] = {
    "batch_size": 32,
    "checkpoint_interval": 8,
    "view_change_timeout": 0.5,
}


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, cluster: LocalCluster | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (
                "" if cluster is None else f"; statuses: {describe(cluster)}"
            ))  # fmt: skip
        time.sleep(0.05)


def describe(cluster: LocalCluster) -> list[Any]:
    keys = ("view", "changing", "last_executed", "stable_sequence", "connected", "inbound")
    statuses = [cluster.status(r) for r in range(N)]
    return [None if s is None else {k: s.get(k) for k in keys} for s in statuses]


def converged(cluster: LocalCluster, replicas: list[int], *, same_view: bool = True) -> bool:
    """All ``replicas`` report the same stable checkpoint (sequence, digest) and, with
    ``same_view``, the same view with no view change under way."""
    statuses = [cluster.status(r) for r in replicas]
    if any(s is None or (same_view and s["changing"]) for s in statuses):
        return False
    marks = {
        (s["view"] if same_view else 0, s["stable_sequence"], s["stable_digest"])
        for s in statuses
        if s
    }
    return len(marks) == 1


def check_final_states(cluster: LocalCluster, acknowledged: set[str]) -> None:
    """Stop every replica; each one that executed as far as any holds every acknowledged key,
    and a quorum got that far."""
    for replica in range(N):
        assert cluster.stop(replica) == 0, cluster.directory / f"replica-{replica}.log"
    states = [cluster.state(r) for r in range(N)]
    assert all(s is not None for s in states)
    top = max(s["last_executed"] for s in states if s)
    at_top = [s for s in states if s and s["last_executed"] == top]
    assert len(at_top) >= 3
    assert len({s["digest"] for s in at_top}) == 1
    for state in at_top:
        missing = acknowledged - set(state["keys"])
        assert not missing, f"acknowledged operations lost: {sorted(missing)[:5]}"


def no_contradictions(cluster: LocalCluster, replicas: list[int]) -> None:
    for replica in replicas:
        status = cluster.status(replica)
        assert status is not None
        conflicts = {k: v for k, v in status["rejected"].items() if k.startswith("conflicting")}
        assert not conflicts, f"replica {replica} saw contradictions: {conflicts}"


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(N, client_names=("loadgen", "junk"), **SETTINGS) as running:
        running.start_all()
        running.wait_ready(timeout=30)
        yield running


def test_sigkill_primary_mid_load_then_restart_and_catch_up(cluster: LocalCluster) -> None:
    primary = cluster.primary()
    assert primary == 0
    killed: list[int] = []

    def on_result(done: int) -> None:
        if done == 150:
            cluster.kill(primary)  # mid-load: requests are in flight
            killed.append(done)

    with cluster.load_generator(clients=16, timeout=0.3) as load:
        first = load.run(600, on_result=on_result, max_seconds=30)
        assert killed == [150]
        assert first.ops == 600
        assert first.max_view >= 1  # the clients saw replies from a new view
        # Same data directory: it recovers from its SQLite store, learns the new view and
        # catches up by state transfer while the load goes on.
        cluster.start(primary)
        cluster.wait_ready([primary], timeout=20)
        second = load.run(400, max_seconds=30)
        assert second.ops == 400
    wait_for(
        lambda: converged(cluster, list(range(N))), 15, "the restarted replica to catch up", cluster
    )
    restarted = cluster.status(primary)
    assert restarted is not None and restarted["view"] >= 1
    no_contradictions(cluster, list(range(N)))
    acknowledged = {key.hex() for key in first.acknowledged + second.acknowledged}
    check_final_states(cluster, acknowledged)


def test_garbage_client_leaves_the_cluster_running(cluster: LocalCluster) -> None:
    junk = cluster.clients["junk"]
    trust = TrustStore(cluster.trust_dir, watch=False)
    victim = f"{cluster.clients['loadgen'].agent_id}/0"
    dealers = [
        SecureDealer(endpoint, identity=junk, trust=trust, expect_peer=agent, connect_timeout=10)
        for endpoint, agent in zip(cluster.endpoints, cluster.agent_ids, strict=True)
    ]
    try:
        for dealer in dealers:
            dealer.send_many(
                [
                    b"\xc1\xc1 not msgpack",
                    {"not": "bytes"},
                    b"\xd4\x63\x00",  # an extension type pbft does not know
                    encode(Prepare(0, 1, bytes(32), 1, b"forged")),  # posing as replica 1
                    encode(Request(victim, 1, b"op")),  # speaking for another agent's client
                    encode(Request(junk.agent_id, 1, b"\xc1 not an op")),  # its own: allowed
                ]
            )
            dealer.pump(0.1)
        with cluster.load_generator(clients=8, timeout=0.3) as load:
            report = load.run(200, max_seconds=30)
        assert report.ops == 200
        assert report.max_view == 0  # junk did not cost a view change
    finally:
        for dealer in dealers:
            dealer.close()

    def refreshed(replica: int) -> bool:  # status.json is rewritten every 0.25 s
        status = cluster.status(replica)
        return status is not None and status["executed"] >= 200

    for replica in range(N):
        wait_for(lambda r=replica: refreshed(r), 10, f"replica {replica}'s status", cluster)
        status = cluster.status(replica)
        assert status is not None
        drops = status["drops"]
        assert drops.get("malformed", 0) >= 1
        assert drops.get("not_bytes", 0) >= 1
        assert drops.get("not_from_replica", 0) >= 1  # the forged prepare
        assert drops.get("client_id_mismatch", 0) >= 1  # the request for another's client
        assert drops.get("unknown_type", 0) >= 1
    audit = (cluster.directory / "audit-1.jsonl").read_text()
    assert '"reason":"client_id_mismatch"' in audit.replace(" ", "")
    no_contradictions(cluster, list(range(N)))


def test_client_ids_belong_to_the_agent_before_the_slash() -> None:
    assert client_agent("abc/7") == "abc"
    assert client_agent("abc") == "abc"
    assert client_agent("abc/7/x") == "abc"
    assert client_agent("") is None
    assert client_agent(5) is None


def test_group_sends_batches_per_destination_and_encodes_a_broadcast_once() -> None:
    prepare = Prepare(0, 1, bytes(32), 1, b"s")
    commit = Commit(0, 1, bytes(32), 1)
    actions = [Send(0, prepare), Send(2, prepare), "other", Send(0, commit), Send("c/1", commit)]
    encoded: dict[int, bytes] = {}
    sends, others = group_sends(actions, encoded)
    assert sends == {
        0: [encode(prepare), encode(commit)],
        2: [encode(prepare)],
        "c/1": [encode(commit)],
    }
    assert others == ["other"]
    assert sends[0][0] is sends[2][0]  # one encoding shared by both destinations
    assert len(encoded) == 2


def test_written_configs_load_back_and_bad_ones_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LocalCluster(N, directory=tmp_path / "c", **SETTINGS) as cluster:
        loaded = load_config(cluster.config_path(2))
        assert loaded == cluster.configs[2]
        assert loaded.agent_ids == cluster.agent_ids
        valid = cluster.config_path(2).read_text()
    bad = tmp_path / "c" / "bad.toml"  # beside the keys the valid file names
    for text, message in [
        ("replica = 0\nspeed = 1\n", "unknown setting(s) speed"),
        ("replica = 0\n", "missing setting 'keys'"),
        ("replica = [\n", "not valid TOML"),
        # It did not say which file.
        (valid.replace("replica = 2", "replica = 9"), f"{bad}: replica must be an index 0..3"),
    ]:
        bad.write_text(text)
        assert pbft_main(["replica", "--config", str(bad)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert err.startswith("zmqcomm pbft replica: error: ")
    for argv, message in [
        (["--replicas", "3"], "--replicas must be 4 to 31"),
        (["--replicas", "0"], "--replicas must be 4 to 31"),  # it said "at least 1"
        (["--view-change-timeout", "0"], "more than 0 and at most 600 seconds, got 0.0"),
        (["--ops", "0"], "--ops must be at least 1"),
    ]:
        assert pbft_main(["local", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("reply_all", [False, True])
def test_designated_repliers_or_all_of_them_over_real_sockets(
    tmp_path: Path, reply_all: bool
) -> None:
    """64 requests in one or two batches. Counted once every replica has executed them all,
    with the load generator still connected (a reply to a client that already left is
    dropped, not sent): each sequence number costs 2n(n-1) = 24 messages between replicas,
    and the rest are replies, f + 1 = 2 per request by default and n = 4 with reply_all (a
    stalled machine may add a few resent COMMITs)."""
    directory = tmp_path / "c"
    with LocalCluster(N, directory=directory, batch_size=64, reply_all=reply_all) as cluster:
        cluster.start_all()
        cluster.wait_ready()
        with cluster.load_generator(clients=64) as load:
            report = load.run(64, max_seconds=30)
            assert report.ops == 64 and report.retransmissions == 0

            def executed_everything() -> bool:
                statuses = [cluster.status(r) for r in range(N)]
                return all(s is not None and s["executed"] == 64 for s in statuses)

            wait_for(executed_everything, 10, "every replica to execute 64 requests", cluster)
            statuses = [cluster.status(r) or {} for r in range(N)]
    sequences = max(s["last_executed"] for s in statuses)
    replies = sum(s["messages_sent"] for s in statuses) - 24 * sequences
    per_request = N if reply_all else 2
    assert 64 * per_request <= replies <= 64 * per_request + 24


# -- the same across four network namespaces ---------------------------------------------------

_LOADGEN = textwrap.dedent(
    """
    import json, sys
    from zmqcomm.crypto.key_files import load_identity
    from zmqcomm.crypto.trust import TrustStore
    from zmqcomm.patterns.pbft.loadgen import LoadGenerator
    info = json.loads(sys.argv[1])
    load = LoadGenerator(load_identity(info["key"]), TrustStore(info["trust"], watch=False),
                         endpoints=info["endpoints"], replica_agents=info["agents"],
                         clients=8, timeout=0.3, connect_timeout=20)
    def progress(done):
        if done % 50 == 0:
            print("progress", done, flush=True)
    report = load.run(info["ops"], on_result=progress, max_seconds=60)
    print("done", json.dumps({"ops": report.ops, "max_view": report.max_view,
          "acknowledged": [k.hex() for k in report.acknowledged]}), flush=True)
    load.close()
    """
)


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=10)


def _must(*args: str) -> None:
    done = _ip(*args)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    """Four replica hosts and a client host on one bridge (in its own namespace)."""
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    tag = f"zcpb{os.getpid() % 100000}"
    hosts = [f"{tag}-{i}" for i in range(N + 1)]
    bridge = f"{tag}-br"
    created: list[str] = []
    try:
        for ns in [bridge, *hosts]:
            done = _ip("netns", "add", ns)
            if done.returncode != 0:
                if not created:
                    pytest.skip(f"cannot create a network namespace: {done.stderr.strip()}")
                raise AssertionError(f"ip netns add {ns}: {done.stderr}")
            created.append(ns)
        _must("-n", bridge, "link", "add", "br0", "type", "bridge")
        _must("-n", bridge, "link", "set", "br0", "up")
        for i, ns in enumerate(hosts):
            _must("-n", ns, "link", "add", "veth0", "type", "veth", "peer", "name", f"p{i}",
                  "netns", bridge)  # fmt: skip
            _must("-n", bridge, "link", "set", f"p{i}", "master", "br0")
            _must("-n", bridge, "link", "set", f"p{i}", "up")
            _must("-n", ns, "addr", "add", f"10.77.0.{i + 1}/24", "dev", "veth0")
            _must("-n", ns, "link", "set", "veth0", "up")
            _must("-n", ns, "link", "set", "lo", "up")
        yield hosts
    finally:
        for ns in created:
            _ip("netns", "del", ns)


def test_four_namespaces_primary_cut_off_then_back(namespaces: list[str]) -> None:
    endpoints = [f"tcp://10.77.0.{i + 1}:7100" for i in range(N)]
    with LocalCluster(N, endpoints=endpoints, **SETTINGS) as cluster:
        for i in range(N):
            cluster.wrappers[i] = ["ip", "netns", "exec", namespaces[i]]
        cluster.start_all()
        cluster.wait_ready(timeout=30)
        info = {
            "key": str(cluster.directory / "keys" / "loadgen.key"),
            "trust": str(cluster.trust_dir),
            "endpoints": endpoints,
            "agents": cluster.agent_ids,
            "ops": 600,
        }
        argv = ["ip", "netns", "exec", namespaces[N], sys.executable, "-c", _LOADGEN]
        proc = subprocess.Popen([*argv, json.dumps(info)], stdout=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def read_lines() -> None:
            for line in stdout:
                lines.put(line)

        reader = threading.Thread(target=read_lines, daemon=True)
        reader.start()
        result: dict[str, Any] = {}
        try:
            deadline = time.monotonic() + 60
            while not result:
                assert time.monotonic() < deadline, "the load generator did not finish in 60 s"
                try:
                    line = lines.get(timeout=0.5)
                except queue.Empty:
                    assert proc.poll() is None, f"the load generator exited ({proc.returncode})"
                    continue
                if line.startswith("progress 150"):
                    _must("-n", f"{namespaces[0][:-2]}-br", "link", "set", "p0", "down")
                elif line.startswith("progress 350"):
                    _must("-n", f"{namespaces[0][:-2]}-br", "link", "set", "p0", "up")
                elif line.startswith("done "):
                    result = json.loads(line[5:])
        finally:
            proc.kill()
            proc.wait(timeout=10)
        assert result["ops"] == 600
        assert result["max_view"] >= 1  # cutting off the primary forced a new view
        # While cut off, replica 0 timed out into view changes of its own (views 1, 2...);
        # having sent VIEW-CHANGE for a view above the others' it may not go back to theirs,
        # so it rejoins their work when they next change view. Its state catches up at once,
        # by state transfer: the stable checkpoints (sequence and digest) must agree.
        wait_for(
            lambda: converged(cluster, list(range(N)), same_view=False),
            20,
            "replica 0's state to catch up",
            cluster,
        )
        no_contradictions(cluster, list(range(N)))
        check_final_states(cluster, set(result["acknowledged"]))


def _client(
    cluster: LocalCluster, *args: str, timeout: str = "20"
) -> subprocess.CompletedProcess[str]:
    """``zmqcomm pbft client`` as a user runs it against the cluster's files."""
    command = [
        sys.executable, "-m", "zmqcomm", "pbft", "client", *args,
        "--cluster", str(cluster.config_path(0)), "--keys", str(cluster.directory / "keys"),
        "--name", "client-0", "--trust", str(cluster.trust_dir), "--timeout", timeout,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_the_client_command_puts_gets_and_deletes_with_one_replica_down(tmp_path: Path) -> None:
    """A deployed cluster had no client but a load generator that would not start with any
    replica down, though a quorum (3 of 4) is all the cluster needs."""
    directory = tmp_path / "c"
    with LocalCluster(N, directory=directory, client_names=("client-0",), **SETTINGS) as cluster:
        cluster.start_all()
        cluster.wait_ready()
        put = _client(cluster, "put", "colour", "blue")
        assert (put.returncode, put.stdout) == (0, "ok (new key)\n"), put.stderr
        backup = (cluster.primary() + 1) % N
        cluster.kill(backup)
        status = cluster.status(backup)
        assert status is not None and status["running"]  # SIGKILL: it could not say
        got = _client(cluster, "get", "colour")
        assert (got.returncode, got.stdout) == (0, "blue\n"), got.stderr
        down = cluster.endpoints[backup]
        assert f"warning: no session with the replica at {down}" in got.stderr
        # ... but its "updated" stood still while a live replica's went on.
        live = cluster.status((backup + 1) % N)
        assert cluster.status(backup) == status
        assert live is not None and live["updated"] > status["updated"] + 0.5
        replaced = _client(cluster, "put", "colour", "green", "--json")
        assert replaced.returncode == 0, replaced.stderr
        assert json.loads(replaced.stdout) == {
            "operation": "put", "key": "colour", "status": "ok", "value": "blue",
        }  # fmt: skip
        deleted = _client(cluster, "delete", "colour")
        assert (deleted.returncode, deleted.stdout) == (0, "ok (was: green)\n")
        missing = _client(cluster, "get", "colour")
        assert (missing.returncode, missing.stdout) == (1, "")
        bad = _client(cluster, "put", "colour")
        assert bad.returncode == 2 and "put KEY VALUE" in bad.stderr


def test_the_client_command_says_what_is_missing_without_a_quorum(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with LocalCluster(N, directory=directory, client_names=("client-0",), **SETTINGS) as cluster:
        cluster.start(0)
        wait_for(lambda: cluster.status(0) is not None, 20, "replica 0 to start", cluster)
        refused = _client(cluster, "get", "colour", timeout="3")
    assert refused.returncode == 1
    assert "no authenticated session with 3 of 4 replicas" in refused.stderr, refused.stderr
