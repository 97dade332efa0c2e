"""A throw-away local PBFT cluster: identities, trust, configs and one process per replica.

Everything lives under one directory (removed by :meth:`LocalCluster.close` unless kept)::

    keys/            replica-N.key/.pub, and one identity per client (load generators)
    trust/           every replica's and client's .pub: the one trust store all share
    replica-N.toml   the configuration of replica N (``zmqcomm pbft replica --config``)
    data/replica-N/  its SQLite store, status.json and, after a clean stop, state.json
    sock/            ipc endpoints

:meth:`LocalCluster.start` runs ``python -m zmqcomm.cli.pbft replica --config ...`` for a
replica; :meth:`kill` sends SIGKILL, :meth:`stop` SIGTERM (the replica then writes
state.json). :func:`run_local` is what ``zmqcomm pbft local`` does: a cluster, a load
generator, optionally killing the primary mid-run, and a summary.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from zmqcomm.checks import check_seconds
from zmqcomm.crypto.key_files import save_identity
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import UsageError, ZmqCommError
from zmqcomm.patterns.pbft.config import ReplicaConfig, ReplicaEntry
from zmqcomm.patterns.pbft.driver import STATE_FILE, STATUS_FILE
from zmqcomm.patterns.pbft.loadgen import LoadGenerator, LoadReport
from zmqcomm.patterns.pbft.quorum import Quorum
from zmqcomm.transport.endpoints import ipc_temporary_directory

__all__ = ["LocalCluster", "LocalOptions", "free_tcp_port", "run_local"]


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LocalCluster:
    """``n`` replicas as processes on this host, with throw-away identities."""

    def __init__(
        self,
        n: int = 4,
        *,
        transport: str = "ipc",
        batch_size: int = 256,
        batch_delay: float = 0.002,
        checkpoint_interval: int = 16,
        view_change_timeout: float = 1.0,
        fsync: bool = True,
        reply_all: bool = False,
        client_signatures: bool = False,
        client_names: tuple[str, ...] = ("loadgen",),
        directory: str | os.PathLike[str] | None = None,
        endpoints: list[str] | None = None,
        log: IO[str] | None = None,
    ) -> None:
        Quorum(n)  # a UsageError for a committee size PBFT cannot run
        if transport not in ("ipc", "tcp"):
            raise UsageError(f"transport must be ipc or tcp, got {transport!r}")
        self.n = n
        self.keep = directory is not None
        # Absolute: the ipc endpoints written into the configs must not depend on the
        # working directory of whoever runs 'pbft replica --config' with them later.
        self.directory = Path(directory or ipc_temporary_directory("zc-pbft-")).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = log
        try:
            self._populate(
                transport,
                endpoints,
                client_names,
                batch_size=batch_size,
                batch_delay=batch_delay,
                checkpoint_interval=checkpoint_interval,
                view_change_timeout=view_change_timeout,
                fsync=fsync,
                reply_all=reply_all,
                client_signatures=client_signatures,
            )
        except BaseException:
            # A refused setting (or Ctrl-C) must not leave private keys behind in /tmp.
            if not self.keep:
                shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        #: Prefix for each replica's command line, e.g. ``["ip", "netns", "exec", "ns0"]``.
        self.wrappers: dict[int, list[str]] = {}

    def _populate(
        self,
        transport: str,
        endpoints: list[str] | None,
        client_names: tuple[str, ...],
        **settings: Any,
    ) -> None:
        """Identities, the trust store and one configuration file per replica."""
        n = self.n
        keys, trust_dir = self.directory / "keys", self.directory / "trust"
        trust = TrustStore(trust_dir, watch=False)
        identities = [Identity.generate(f"replica-{i}") for i in range(n)]
        self.clients = {name: Identity.generate(name) for name in client_names}
        for identity in (*identities, *self.clients.values()):
            save_identity(identity, keys, force=True)
            trust.add(identity.public, roles=["pbft"])
        if endpoints is None:
            if transport == "ipc":
                (self.directory / "sock").mkdir(exist_ok=True)
                endpoints = [f"ipc://{self.directory}/sock/r{i}" for i in range(n)]
            else:
                endpoints = [f"tcp://127.0.0.1:{free_tcp_port()}" for _ in range(n)]
        entries = tuple(
            ReplicaEntry(e, i.public) for e, i in zip(endpoints, identities, strict=True)
        )
        self.trust_dir = trust_dir
        self.configs = [
            ReplicaConfig(
                replica=i,
                replicas=entries,
                keys=keys,
                trust=trust_dir,
                data=self.directory / "data" / f"replica-{i}",
                audit=self.directory / f"audit-{i}.jsonl",
                **settings,
            )
            for i in range(n)
        ]
        for config in self.configs:
            self.config_path(config.replica).write_text(
                config.to_toml(self.directory), encoding="utf-8"
            )

    def config_path(self, replica: int) -> Path:
        return self.directory / f"replica-{replica}.toml"

    @property
    def endpoints(self) -> list[str]:
        return self.configs[0].endpoints

    @property
    def agent_ids(self) -> list[str]:
        return self.configs[0].agent_ids

    # -- processes --------------------------------------------------------------------------

    def start(self, replica: int) -> None:
        command = [
            *self.wrappers.get(replica, []),
            sys.executable,
            "-m",
            "zmqcomm.cli.pbft",
            "replica",
            "--config",
            str(self.config_path(replica)),
        ]
        status = self.configs[replica].data / STATUS_FILE
        status.unlink(missing_ok=True)
        stderr = open(self.directory / f"replica-{replica}.log", "ab")  # noqa: SIM115
        try:
            self.processes[replica] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,  # the parent's stdin is not theirs to read
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        finally:
            stderr.close()

    def start_all(self) -> None:
        for replica in range(self.n):
            self.start(replica)

    def kill(self, replica: int) -> None:
        """SIGKILL: the replica gets no chance to flush or say goodbye."""
        process = self.processes.pop(replica, None)
        if process is not None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self, replica: int, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; the replica writes its final status and state.json."""
        process = self.processes.pop(replica, None)
        if process is None:
            return None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=10)

    def alive(self, replica: int) -> bool:
        process = self.processes.get(replica)
        return process is not None and process.poll() is None

    def status(self, replica: int) -> dict[str, Any] | None:
        return _read_json(self.configs[replica].data / STATUS_FILE)

    def state(self, replica: int) -> dict[str, Any] | None:
        return _read_json(self.configs[replica].data / STATE_FILE)

    def wait_ready(self, replicas: list[int] | None = None, timeout: float = 20.0) -> None:
        """Until each replica reports sessions with all the others, both ways (after a
        restart the others' dealers reconnect with a backoff of up to a few seconds)."""
        wanted = list(range(self.n)) if replicas is None else replicas
        deadline = time.monotonic() + timeout
        while True:
            waiting = []
            for r in wanted:
                status = self.status(r)
                peers = self.n - 1
                if status is None or (status["connected"], status["inbound"]) != (peers, peers):
                    waiting.append(r)
                if r in self.processes and not self.alive(r):
                    raise ZmqCommError(f"replica {r} exited: see {self.directory}/replica-{r}.log")
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise ZmqCommError(f"replicas {waiting} not connected within {timeout} s")
            time.sleep(0.05)

    def primary(self) -> int:
        """The primary of the highest view a running replica reports."""
        views = [s["view"] for r in range(self.n) if (s := self.status(r)) is not None]
        return max(views, default=0) % self.n

    def load_generator(self, name: str = "loadgen", **options: Any) -> LoadGenerator:
        return LoadGenerator(
            self.clients[name],
            TrustStore(self.trust_dir, watch=False),
            endpoints=self.endpoints,
            replica_agents=self.agent_ids,
            sign_requests=self.configs[0].client_signatures,
            **options,
        )

    def close(self) -> None:
        try:
            for replica in list(self.processes):
                self.stop(replica, timeout=5.0)
        finally:
            # Interrupted (a second Ctrl-C): the replicas not yet stopped must not outlive us.
            for process in self.processes.values():
                process.kill()
            self.processes.clear()
            if not self.keep:
                shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


# -- zmqcomm pbft local --------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalOptions:
    replicas: int = 4
    ops: int = 10_000
    batch: int = 256
    clients: int = 256
    transport: str = "ipc"
    kill_primary_at: float | None = None
    view_change_timeout: float = 1.0
    checkpoint_interval: int = 16
    fsync: bool = True
    reply_all: bool = False
    client_signatures: bool = False
    keep: str | None = None

    def with_changes(self, **changes: Any) -> LocalOptions:
        return replace(self, **changes)


def run_local(options: LocalOptions, *, progress: IO[str] | None = None) -> dict[str, Any]:
    """Run a local cluster and a load generator; returns the summary (see docs/patterns.md)."""
    if options.ops < 1 or options.clients < 1:
        raise UsageError("--ops and --clients must be at least 1")
    if options.kill_primary_at is not None:
        check_seconds(options.kill_primary_at, "--kill-primary-at")

    def say(text: str) -> None:
        if progress is not None:
            print(text, file=progress, flush=True)

    cluster = LocalCluster(
        options.replicas,
        transport=options.transport,
        batch_size=options.batch,
        checkpoint_interval=options.checkpoint_interval,
        view_change_timeout=options.view_change_timeout,
        fsync=options.fsync,
        reply_all=options.reply_all,
        client_signatures=options.client_signatures,
        directory=options.keep,
    )
    with cluster:
        say(f"starting {options.replicas} replicas in {cluster.directory}")
        starting = time.monotonic()
        cluster.start_all()
        cluster.wait_ready()
        started_in = time.monotonic() - starting
        killed: dict[str, Any] = {}
        timer: threading.Timer | None = None
        if options.kill_primary_at is not None:

            def kill_primary() -> None:
                primary = cluster.primary()
                killed.update(replica=primary, at=time.monotonic())
                cluster.kill(primary)
                say(f"killed the primary (replica {primary}) with SIGKILL")

            timer = threading.Timer(options.kill_primary_at, kill_primary)
        with cluster.load_generator(clients=min(options.clients, options.ops)) as load:
            say(f"{options.ops} operations from {len(load.clients)} clients")
            if timer is not None:
                timer.start()
            pids = [p.pid for p in cluster.processes.values()]
            cpu_before = [cpu_seconds(pid) for pid in pids]
            try:
                report = load.run(options.ops)
            finally:
                if timer is not None:
                    timer.cancel()
            cpu_after = [cpu_seconds(pid) for pid in pids]
        time.sleep(0.3)  # let the replicas write their status once more
        summary = _summary(
            options, load, report, [cluster.status(r) for r in range(options.replicas)]
        )
        summary["killed"] = killed.get("replica")
        # The operations' own time excludes this, so that ops/s is the cluster's rate.
        summary["start_seconds"] = round(started_in, 3)
        if options.kill_primary_at is not None and not killed:
            say(
                f"the load ended before --kill-primary-at {options.kill_primary_at:g} s: "
                "nothing was killed; give more --ops"
            )
        used = [b - a for a, b in zip(cpu_before, cpu_after, strict=True) if a is not None and b]
        if report.ops and used and options.kill_primary_at is None:
            # CPU time the replicas spent per operation: what the work costs, whatever share
            # of the cores this run got on a busy machine.
            summary["replica_cpu_us_per_op"] = round(sum(used) / report.ops * 1e6, 1)
        return summary


def _summary(
    options: LocalOptions, load: LoadGenerator, report: LoadReport, statuses: list[Any]
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "replicas": options.replicas,
        "transport": options.transport,
        "batch": options.batch,
        "fsync": options.fsync,
        "reply_all": options.reply_all,
        "client_signatures": options.client_signatures,
        "clients": len(load.clients),
        **report.summary(),
        "replica_view": max((s["view"] for s in statuses if s), default=0),
        "complete": report.ops == options.ops,
    }
    sent = sum(s["messages_sent"] for s in statuses if s)
    size = sum(s["bytes_sent"] for s in statuses if s)
    sequences = max((s["last_executed"] for s in statuses if s), default=0)
    if sequences:
        summary["sequences"] = sequences
        summary["messages_per_sequence"] = round(sent / sequences, 1)
        summary["bytes_per_sequence"] = round(size / sequences)
    if report.ops:
        summary["messages_per_op"] = round(sent / report.ops, 2)
        summary["bytes_per_op"] = round(size / report.ops, 1)
    summary["executed_per_replica"] = [s["executed"] for s in statuses if s]
    return summary
