"""The broker against raw pyzmq: relay rate, and memory with many connected agents.

- relay: a sender process, a relay process and a receiver process over ipc, 64-byte
  messages. raw = a pyzmq ROUTER that forwards ``[to, payload]`` to ``to``, one message per
  recv/send. zmqcomm = ``zmqcomm.broker.Broker``; the sender's Node sends batches with
  ``send_many`` (end-to-end encrypted to the receiver, inside its hop session to the broker),
  the broker opens only its hop layer and re-seals for the receiver. The receiver's clock
  runs from the first message to the last. Alternating runs, median of the rounds.
- memory: the resident memory (VmRSS) of the relay process once ``--agents`` clients are
  connected (and, for zmqcomm, authenticated): raw ROUTER with raw DEALERs, against the
  Broker with Nodes. Clients run in 4 processes.

    python benchmarks/broker_bench.py            # 1,000,000 messages x 3 rounds, 1000 agents
    python benchmarks/broker_bench.py --quick    # a few seconds
    python benchmarks/broker_bench.py --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from zmqcomm.broker.server import Broker
from zmqcomm.cli.common import load_node_identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.node import Node
from zmqcomm.swarm.layout import create
from zmqcomm.transport import SocketOptions

_DEEP = SocketOptions(send_hwm=200_000, receive_hwm=200_000, linger=5.0)
BATCH = 256


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- relay -------------------------------------------------------------------------------------


def _raw_relay(endpoint: str, count: int, ready: Any) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.RCVHWM, 200_000)
    sock.setsockopt(zmq.SNDHWM, 200_000)
    # Without it a ROUTER drops silently at the high-water mark; with it, it waits.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(endpoint)
    recv, send = sock.recv_multipart, sock.send_multipart
    recv()  # the receiver's hello: from now on it can be routed to
    ready.set()
    for _ in range(count):
        source, *rest = recv()
        send([rest[0], source, rest[1]])
    time.sleep(0.5)
    sock.close(linger=1000)


def _raw_sender(endpoint: str, count: int, size: int, go: Any) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 200_000)
    sock.setsockopt(zmq.ROUTING_ID, b"sender")
    sock.connect(endpoint)
    go.wait()
    payload = os.urandom(size)
    send = sock.send_multipart
    for _ in range(count):
        send([b"receiver", payload])
    sock.close(linger=-1)


def _zmqcomm_relay(endpoint: str, directory: str, ready: Any, stop: Any) -> None:
    broker = Broker(
        [endpoint],
        identity=load_node_identity(Path(directory) / "keys", "broker"),
        trust=TrustStore(Path(directory) / "trust" / "broker"),
        options=_DEEP,
    )
    ready.set()
    broker.serve(until=stop.is_set)
    broker.close()


def _zmqcomm_sender(
    endpoint: str, directory: str, receiver: str, count: int, size: int, go: Any, batch: int
) -> None:
    node = Node(
        load_node_identity(Path(directory) / "keys", "agent-0"),
        TrustStore(Path(directory) / "trust" / "agents"),
        broker=endpoint,
        options=_DEEP,
    )
    go.wait()
    payload = os.urandom(size)
    sent = 0
    while sent < count:
        size_now = min(batch, count - sent)
        if size_now == 1:
            node.send(receiver, payload)
        else:
            node.send_many(receiver, [payload] * size_now)
        sent += size_now
        node.pump(0.0)
    node.close(timeout=30)


def measure_relay(mode: str, count: int, size: int, directory: str, batch: int = BATCH) -> float:
    spawn = multiprocessing.get_context("spawn")
    go = spawn.Event()
    endpoint = f"ipc://{directory}/relay-{mode}-{time.monotonic_ns()}.sock"
    processes = []
    if mode == "raw":
        relay_ready = spawn.Event()
        processes.append(spawn.Process(target=_raw_relay, args=(endpoint, count, relay_ready)))
        processes[0].start()
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVHWM, 200_000)
        sock.setsockopt(zmq.RCVTIMEO, 60_000)
        sock.setsockopt(zmq.ROUTING_ID, b"receiver")
        sock.connect(endpoint)
        sock.send_multipart([b"hello", b""])
        relay_ready.wait(60)
        sender = spawn.Process(target=_raw_sender, args=(endpoint, count, size, go))
        sender.start()
        go.set()
        sock.recv_multipart()
        started = time.perf_counter()
        for _ in range(count - 1):
            sock.recv_multipart()
        elapsed = time.perf_counter() - started
        sock.close(linger=0)
        context.term()
        for process in (*processes, sender):
            process.join(timeout=30)
        return (count - 1) / elapsed
    ready, stop = spawn.Event(), spawn.Event()
    relay = spawn.Process(target=_zmqcomm_relay, args=(endpoint, directory, ready, stop))
    relay.start()
    ready.wait(30)
    node = Node(
        load_node_identity(Path(directory) / "keys", "agent-1"),
        TrustStore(Path(directory) / "trust" / "agents"),
        broker=endpoint,
        options=_DEEP,
    )
    sender = spawn.Process(
        target=_zmqcomm_sender,
        args=(endpoint, directory, node.agent_id, count, size, go, batch),
    )
    sender.start()
    go.set()
    received = len([node.receive(timeout=60)])
    started = time.perf_counter()
    while received < count:
        node.receive(timeout=60)
        received += 1
    elapsed = time.perf_counter() - started
    sender.join(timeout=60)
    node.close()
    stop.set()
    relay.join(timeout=30)
    return (count - 1) / elapsed


# -- memory ------------------------------------------------------------------------------------


def _raw_clients(endpoint: str, first: int, number: int, done: Any, hold: Any) -> None:
    context = zmq.Context()
    sockets = []
    for index in range(first, first + number):
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, f"client-{index}".encode())
        sock.connect(endpoint)
        sock.send(b"hello")
        sockets.append(sock)
    done.set()
    hold.wait(120)
    for sock in sockets:
        sock.close(linger=0)


def _zmqcomm_clients(
    endpoint: str, directory: str, first: int, number: int, done: Any, hold: Any
) -> None:
    trust = TrustStore(Path(directory) / "trust" / "agents")
    nodes = [
        Node(
            load_node_identity(Path(directory) / "keys", f"agent-{index}"),
            trust,
            broker=endpoint,
            connect_timeout=120,
        )
        for index in range(first, first + number)
    ]
    done.set()
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
    for _ in range(agents):
        sock.recv_multipart()
    report.put(_rss_kib(os.getpid()))
    hold.wait(120)
    sock.close(linger=0)


def _broker_for_memory(endpoint: str, directory: str, agents: int, report: Any, hold: Any) -> None:
    broker = Broker(
        [endpoint],
        identity=load_node_identity(Path(directory) / "keys", "broker"),
        trust=TrustStore(Path(directory) / "trust" / "broker"),
    )
    deadline = time.monotonic() + 180
    while len(broker.core.agents) < agents and time.monotonic() < deadline:
        broker.step(0.05)
    report.put(_rss_kib(os.getpid()) if len(broker.core.agents) == agents else -1)
    while not hold.is_set():
        broker.step(0.05)
    broker.close()


def measure_memory(mode: str, agents: int, directory: str) -> int:
    spawn = multiprocessing.get_context("spawn")
    report, hold = spawn.Queue(), spawn.Event()
    endpoint = f"ipc://{directory}/memory-{mode}-{time.monotonic_ns()}.sock"
    target: Any = _raw_router if mode == "raw" else _broker_for_memory
    server_args = (endpoint, agents) if mode == "raw" else (endpoint, directory, agents)
    server = spawn.Process(target=target, args=(*server_args, report, hold))
    server.start()
    time.sleep(0.3)
    clients, done = [], []
    share = agents // 4
    for part in range(4):
        number = share if part < 3 else agents - 3 * share
        event = spawn.Event()
        args: tuple[Any, ...] = (endpoint, part * share, number, event, hold)
        if mode != "raw":
            args = (endpoint, directory, part * share, number, event, hold)
        process = spawn.Process(
            target=_raw_clients if mode == "raw" else _zmqcomm_clients, args=args
        )
        process.start()
        clients.append(process)
        done.append(event)
    rss = int(report.get(timeout=240))
    hold.set()
    for process in (server, *clients):
        process.join(timeout=60)
    if rss < 0:
        raise RuntimeError("not every agent connected to the broker")
    return rss


def run(count: int, size: int, rounds: int, agents: int, batch: int = BATCH) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"raw": [], "zmqcomm": []}
    with tempfile.TemporaryDirectory(prefix="zc-bb-", dir="/tmp") as directory:
        create(Path(directory), max(agents, 2))
        for index in range(rounds):
            for mode in ("raw", "zmqcomm") if index % 2 == 0 else ("zmqcomm", "raw"):
                rate = measure_relay(mode, count, size, directory, batch)
                rates[mode].append(rate)
                print(f"  relay round {index + 1}/{rounds} {mode:<8} {rate:>12,.0f} msg/s",
                      file=sys.stderr)  # fmt: skip
        memory = {mode: measure_memory(mode, agents, directory) for mode in ("raw", "zmqcomm")}
        print(f"  memory with {agents} agents: {memory}", file=sys.stderr)
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    return {
        "size": size,
        "count": count,
        "rounds": rounds,
        "batch": batch,
        "relay_msg_per_s": medians,
        "relay_runs": rates,
        "relay_ratio": medians["zmqcomm"] / medians["raw"],
        "agents": agents,
        "rss_kib": memory,
        "rss_extra_mib": (memory["zmqcomm"] - memory["raw"]) / 1024,
        "versions": {"pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version()},
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=BATCH, help="messages per send_many")
    parser.add_argument("--quick", action="store_true", help="100,000 messages, 100 agents")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds, args.agents = 100_000, 1, 100
    result = run(args.count, args.size, args.rounds, args.agents, args.batch)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rates = result["relay_msg_per_s"]
    print(f"relay, ipc, {args.size} B, median of {args.rounds}")
    print(f"  raw pyzmq ROUTER relay             {rates['raw']:>12,.0f} msg/s")
    print(f"  zmqcomm broker, batches of {args.batch:<6} {rates['zmqcomm']:>10,.0f} msg/s")
    print(f"  ratio                              {result['relay_ratio']:>12.2f}x")
    memory = result["rss_kib"]
    print(f"memory with {args.agents} connected agents (relay process RSS)")
    print(f"  raw pyzmq ROUTER  {memory['raw'] / 1024:8.1f} MiB")
    print(f"  zmqcomm broker    {memory['zmqcomm'] / 1024:8.1f} MiB")
    print(f"  difference        {result['rss_extra_mib']:8.1f} MiB")


if __name__ == "__main__":
    main()
