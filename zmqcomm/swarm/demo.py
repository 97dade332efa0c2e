"""``zmqcomm swarm``: a broker and N agents as separate processes, and what they measured.

The orchestrator writes throw-away identities, starts ``zmqcomm broker`` and the agents
(``python -m zmqcomm.swarm.agent``), waits until every agent has its session with the
broker, gives the go signal, shows a live progress line, then collects each agent's result
and reports: messages, msg/s, request latency p50/p99, rekeys, rejections, and lost messages
(sent to a peer minus distinct messages that peer received from us).
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from zmqcomm.errors import TransportError, UsageError
from zmqcomm.swarm.agent import ENDPOINTS_FILE, GO_FILE
from zmqcomm.swarm.layout import AgentSettings, create, read_json, write_json
from zmqcomm.swarm.report import summarize

_START_TIMEOUT = 60.0
_P = TypeVar("_P")


@dataclass
class SwarmOptions:
    agents: int = 8
    duration: float = 5.0
    transport: str = "ipc"
    size: int = 64
    rate: float = 200.0
    request_every: int = 20
    rekey_every: int = 500
    mode: str = "broker"
    keep: str | None = None
    seed: int = 1

    def check(self) -> None:
        if not 2 <= self.agents <= 200:
            raise UsageError(f"--agents must be between 2 and 200, got {self.agents}")
        if not 0 < self.duration <= 3600:
            raise UsageError(f"--duration must be in (0, 3600] seconds, got {self.duration}")
        if self.mode not in ("broker", "p2p"):
            raise UsageError(f"--mode is broker or p2p, got {self.mode!r}")
        if self.transport not in ("ipc", "tcp"):
            raise UsageError(f"--transport is ipc or tcp, got {self.transport!r}")
        if not 16 <= self.size <= 1024 * 1024:
            raise UsageError(f"--size must be 16 B to 1 MiB, got {self.size}")
        if not 0 < self.rate < math.inf or self.request_every < 1 or self.rekey_every < 1:
            raise UsageError(
                "--rate (messages/s, finite), --request-every and --rekey-every must be positive"
            )


def run_swarm(options: SwarmOptions, *, out: TextIO = sys.stdout) -> dict[str, Any]:
    options.check()
    if options.keep is not None and Path(options.keep).exists():
        keep = Path(options.keep)
        if not keep.is_dir() or any(keep.iterdir()):
            # A previous run's keys and results: never mix runs or overwrite them.
            raise UsageError(f"--keep {keep}: not an empty directory; give a new or empty one")
    directory = Path(options.keep or tempfile.mkdtemp(prefix="zmqcomm-swarm-", dir="/tmp"))
    directory.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        _, members = create(directory, options.agents)
        peer_to_peer = options.mode == "p2p"
        endpoint = _endpoint(directory, "broker", options.transport)
        if not peer_to_peer:
            broker = _start_broker(directory, endpoint)
            processes.append(broker)
            endpoint = _wait_for_endpoint(directory, broker, kept=options.keep is not None)
        ids = [member.agent_id for member in members]
        settings = []
        for index, member in enumerate(members):
            agent = AgentSettings(
                index=index,
                name=member.name,
                directory=str(directory),
                endpoint=endpoint,
                peers=[peer for peer in ids if peer != member.agent_id],
                duration=options.duration,
                size=options.size,
                rate=options.rate,
                request_every=options.request_every,
                rekey_every=options.rekey_every,
                seed=options.seed * 1000 + index,
                listen=_endpoint(directory, member.name, options.transport)
                if peer_to_peer
                else None,
            )
            agent.save()
            settings.append(agent)
            processes.append(_start(["-m", "zmqcomm.swarm.agent", str(agent.path)], directory))
        _wait_ready(settings, processes, out)
        if peer_to_peer:
            listed = [
                [member.agent_id, (read_json(agent.status_path) or {}).get("endpoint")]
                for member, agent in zip(members, settings, strict=True)
            ]
            write_json(directory / ENDPOINTS_FILE, listed)
        (directory / GO_FILE).touch()
        started = time.monotonic()
        agents = agent_processes(processes, peer_to_peer=peer_to_peer)
        _progress(settings, processes, options, started, out, agents=agents)
        results = [read_json(agent.result_path) for agent in settings]
        missing = [
            agent.name for agent, result in zip(settings, results, strict=True) if result is None
        ]
        if missing:
            where = directory if options.keep is not None else "rerun with --keep DIR"
            raise TransportError(f"agents {', '.join(missing)} wrote no result; see {where}")
        broker_stats = {} if peer_to_peer else read_json(directory / "data" / "stats.json") or {}
        return summarize([r for r in results if r is not None], broker_stats, options)
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        if options.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


def agent_processes(processes: Sequence[_P], *, peer_to_peer: bool) -> list[_P]:
    """The agents among a run's ``processes``, whose end the orchestrator waits for.

    With a broker it was started first and comes first; in p2p mode there is none and every
    process is an agent (taking the first for the broker skipped agent-0: a slower agent-0
    was still running when its result was read, and failed the run).
    """
    return list(processes) if peer_to_peer else list(processes[1:])


def _endpoint(directory: Path, name: str, transport: str) -> str:
    return f"ipc://{directory}/{name}.sock" if transport == "ipc" else "tcp://127.0.0.1:0"


def _start(arguments: list[str], directory: Path) -> subprocess.Popen[bytes]:
    log = (directory / "logs").joinpath(f"{len(list(directory.glob('logs/*')))}.log")
    log.parent.mkdir(exist_ok=True)
    with log.open("wb") as sink:
        # The parent's stdin is not theirs to read (a typed line meant for the shell).
        return subprocess.Popen(
            [sys.executable, *arguments], stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
        )


def _start_broker(directory: Path, endpoint: str) -> subprocess.Popen[bytes]:
    arguments = [
        "-m", "zmqcomm", "broker",
        "--bind", endpoint,
        "--keys", str(directory / "keys"),
        "--trust", str(directory / "trust" / "broker"),
        "--policy", str(directory / "policy.toml"),
        "--data", str(directory / "data"),
        "--audit", str(directory / "audit.jsonl"),
    ]  # fmt: skip
    return _start(arguments, directory)


def _wait_for_endpoint(directory: Path, broker: subprocess.Popen[bytes], *, kept: bool) -> str:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        stats = read_json(directory / "data" / "stats.json")
        if stats is not None:
            endpoints = stats.get("endpoints")
            if isinstance(endpoints, list) and endpoints:
                return str(endpoints[0])
        if broker.poll() is not None:
            # Without --keep the directory is removed on the way out: pointing at it would not help.
            where = f"see {directory}/logs" if kept else "rerun with --keep DIR for its logs"
            raise TransportError(f"the broker exited ({broker.returncode}); {where}")
        time.sleep(0.05)
    raise TransportError(f"the broker did not start within {_START_TIMEOUT} s")


def _wait_ready(
    settings: list[AgentSettings], processes: list[subprocess.Popen[bytes]], out: TextIO
) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        ready = sum(read_json(agent.status_path) is not None for agent in settings)
        if ready == len(settings):
            _line(out, f"started: {ready} agents ready", final=True)
            return
        _line(out, f"starting: {ready}/{len(settings)} agents ready")
        _check_alive(processes)
        if time.monotonic() > deadline:
            raise TransportError(f"only {ready} of {len(settings)} agents started")
        time.sleep(0.1)


def _check_alive(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is not None and process.returncode != 0:
            raise TransportError(f"a swarm process exited with status {process.returncode}")


def _progress(
    settings: list[AgentSettings],
    processes: list[subprocess.Popen[bytes]],
    options: SwarmOptions,
    started: float,
    out: TextIO,
    *,
    agents: list[subprocess.Popen[bytes]],
) -> None:
    """Report progress until every agent process has ended (``processes`` includes the
    broker, which must stay alive meanwhile)."""
    deadline = started + options.duration + 90.0
    while any(process.poll() is None for process in agents):
        statuses = [read_json(agent.status_path) or {} for agent in settings]
        total = {
            key: sum(int(str(status.get(key, 0))) for status in statuses)
            for key in ("sent", "received", "requests", "rekeys", "rejected")
        }
        elapsed = time.monotonic() - started
        draining = sum(status.get("phase") in ("draining", "done") for status in statuses)
        phase = f"draining {draining}/{len(settings)}" if draining else "running"
        _line(
            out,
            f"[{min(elapsed, options.duration):5.1f}/{options.duration:.0f} s] {phase:<14} "
            f"sent {total['sent']:>9,}  received {total['received']:>9,}  "
            f"requests {total['requests']:>6,}  rekeys {total['rekeys']:>4}  "
            f"rejects {total['rejected']}",
        )
        _check_alive(processes)
        if time.monotonic() > deadline:
            raise TransportError("the swarm did not finish in time")
        time.sleep(0.25)
    _line(out, "", final=True)
    _check_alive(processes)


_last_plain_line = [0.0]


def _line(out: TextIO, text: str, *, final: bool = False) -> None:
    """A live line on a terminal; elsewhere (logs, CI) a plain line every 2 s."""
    if out.isatty():
        out.write(f"\r{text}" + ("\n" if final else ""))
        out.flush()
        return
    now = time.monotonic()
    if text and (final or now - _last_plain_line[0] >= 2.0):
        _last_plain_line[0] = now
        out.write(text + "\n")
        out.flush()
