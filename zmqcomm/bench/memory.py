"""Section ``memory``: resident memory of one process holding many connections.

raw = a pyzmq ROUTER with N raw DEALER peers (each has said hello); zmqcomm = the
:class:`~zmqcomm.broker.server.Broker` with N authenticated :class:`~zmqcomm.node.Node` peers
(each with a hop session, replay window and routing entries). The figure is ``VmRSS`` of the
binding process once every peer is in; the peers run in four other processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import zmq

from zmqcomm.bench.common import BenchError, worker_context
from zmqcomm.bench.fleet import agent_identity, agent_trust, broker_identity, fleet
from zmqcomm.bench.harness import BenchContext
from zmqcomm.broker.server import Broker
from zmqcomm.node import Node

NAME = "memory"
TITLE = "Memory of one process holding N connections"
CLIENT_PROCESSES = 4
#: How long the peers may take to connect (and authenticate) before the run fails. A broker
#: takes in 1000 Nodes in a few minutes here, slower per peer as the count grows.
CONNECT_BUDGET = 900.0


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError("no VmRSS line in /proc/PID/status (not Linux?)")


def _raw_clients(endpoint: str, first: int, number: int, hold: Any) -> None:
    context = zmq.Context()
    sockets = []
    for index in range(first, first + number):
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, f"client-{index}".encode())
        sock.connect(endpoint)
        sock.send(b"hello")
        sockets.append(sock)
    hold.wait(CONNECT_BUDGET)
    for sock in sockets:
        sock.close(linger=0)
    context.term()


def _zmqcomm_clients(endpoint: str, directory: str, first: int, number: int, hold: Any) -> None:
    nodes = []
    # One store for all: each agent loading its own made connecting grow as N^2 (every
    # agent checked all N entries' signatures), and measured the bench, not the broker.
    shared = agent_trust(directory)
    for index in range(first, first + number):
        if hold.is_set():  # the run gave up: stop connecting
            break
        identity, trust = agent_identity(directory, index, shared)
        nodes.append(Node(identity, trust, broker=endpoint, connect_timeout=CONNECT_BUDGET))
    while not hold.is_set():
        for node in nodes:
            node.pump(0.0)
        time.sleep(0.05)
    for node in nodes:
        node.close(timeout=0)


def _raw_router(endpoint: str, agents: int, report: Any, hold: Any) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.bind(endpoint)
    started = time.monotonic()
    for _ in range(agents):
        sock.recv_multipart()
    report.put((rss_kib(os.getpid()), time.monotonic() - started))
    hold.wait(CONNECT_BUDGET)
    sock.close(linger=0)
    context.term()


def _broker(endpoint: str, directory: str, agents: int, report: Any, hold: Any) -> None:
    identity, trust = broker_identity(directory)
    broker = Broker([endpoint], identity=identity, trust=trust)
    started = time.monotonic()
    deadline = started + CONNECT_BUDGET
    while len(broker.core.agents) < agents and time.monotonic() < deadline:
        broker.step(0.05)
    seconds = time.monotonic() - started
    report.put((rss_kib(os.getpid()) if len(broker.core.agents) == agents else -1, seconds))
    while not hold.is_set():
        broker.step(0.05)
    broker.close()


def measure_memory(mode: str, agents: int, directory: str) -> tuple[int, float]:
    """VmRSS in KiB of the binding process with ``agents`` peers connected, and the seconds
    they took to connect."""
    spawn = worker_context()
    report, hold = spawn.Queue(), spawn.Event()
    endpoint = f"ipc://{directory}/memory-{mode}-{time.monotonic_ns()}.sock"
    if mode == "raw":
        server = spawn.Process(target=_raw_router, args=(endpoint, agents, report, hold))
    else:
        server = spawn.Process(target=_broker, args=(endpoint, directory, agents, report, hold))
    server.start()
    clients = []
    share = agents // CLIENT_PROCESSES
    for part in range(CLIENT_PROCESSES):
        number = share if part < CLIENT_PROCESSES - 1 else agents - part * share
        args: tuple[Any, ...] = (endpoint, part * share, number, hold)
        if mode == "raw":
            process = spawn.Process(target=_raw_clients, args=args)
        else:
            process = spawn.Process(target=_zmqcomm_clients, args=(endpoint, directory, *args[1:]))
        process.start()
        clients.append(process)
    try:
        rss, seconds = report.get(timeout=CONNECT_BUDGET + 30)
    finally:
        hold.set()
        for process in (server, *clients):
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    if rss < 0:
        raise BenchError(f"not every one of {agents} agents connected to the broker")
    return int(rss), float(seconds)


def run(context: BenchContext) -> dict[str, Any]:
    agents = context.settings.connections
    progress = context.progress
    progress.section(NAME, 2)
    directory = str(fleet(context.workdir, agents))
    rss: dict[str, int] = {}
    connect_seconds: dict[str, float] = {}
    for mode in ("raw", "zmqcomm"):
        rss[mode], connect_seconds[mode] = measure_memory(mode, agents, directory)
        progress.step(
            f"{mode} with {agents} peers: {rss[mode] / 1024:.1f} MiB "
            f"(all in after {connect_seconds[mode]:.1f} s)"
        )
    return {
        "title": TITLE,
        "connections": agents,
        "rss_kib": rss,
        "connect_seconds": connect_seconds,
        "extra_mib": (rss["zmqcomm"] - rss["raw"]) / 1024,
        "extra_kib_per_connection": (rss["zmqcomm"] - rss["raw"]) / agents,
        "raw": "pyzmq ROUTER, raw DEALER peers",
        "zmqcomm": "zmqcomm Broker, authenticated Node peers",
    }
