"""Section ``relay``: messages per second through a broker, against a raw ROUTER relay.

A sender, a relay and a receiver process over ipc, 64-byte messages. raw = a pyzmq ROUTER
that forwards ``[to, payload]`` to ``to`` (with ``ROUTER_MANDATORY``, so it waits rather than
drops), one recv/send per message. zmqcomm = the :class:`~zmqcomm.broker.server.Broker`; the
sender's :meth:`Node.send_many` sends batches (end-to-end encrypted to the receiver inside its
hop session), the broker opens only its hop layer and re-seals for the receiver. Clock at the
receiver, first message to last; alternating rounds.
"""

from __future__ import annotations

import os
import time
from typing import Any

import zmq

from zmqcomm.bench.common import RECEIVE_TIMEOUT, WORKER_LINGER_MS, BenchError, worker_context
from zmqcomm.bench.fleet import agent_identity, broker_identity, fleet
from zmqcomm.bench.harness import BenchContext
from zmqcomm.bench.stats import alternating, median, ratio
from zmqcomm.broker.server import Broker
from zmqcomm.node import Node
from zmqcomm.transport import SocketOptions

NAME = "relay"
TITLE = "Broker relay (sender -> relay -> receiver, three processes, ipc)"
_DEEP = SocketOptions(send_hwm=200_000, receive_hwm=200_000, linger=5.0)
BATCH = 256
SIZE = 64


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
    sock.close(linger=WORKER_LINGER_MS)
    context.term()


def _raw_sender(endpoint: str, count: int, size: int) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 200_000)
    sock.setsockopt(zmq.ROUTING_ID, b"sender")
    sock.connect(endpoint)
    payload = os.urandom(size)
    send = sock.send_multipart
    for _ in range(count):
        send([b"receiver", payload])
    sock.close(linger=WORKER_LINGER_MS)
    context.term()


def _zmqcomm_relay(endpoint: str, directory: str, ready: Any, stop: Any) -> None:
    identity, trust = broker_identity(directory)
    broker = Broker([endpoint], identity=identity, trust=trust, options=_DEEP)
    ready.set()
    broker.serve(until=stop.is_set)
    broker.close()


def _zmqcomm_sender(endpoint: str, directory: str, receiver: str, count: int, batch: int) -> None:
    identity, trust = agent_identity(directory, 0)
    context: zmq.Context[Any] = zmq.Context()
    node = Node(identity, trust, broker=endpoint, options=_DEEP, context=context)
    payload = os.urandom(SIZE)
    sent = 0
    while sent < count:
        now = min(batch, count - sent)
        if now == 1:
            node.send(receiver, payload)
        else:
            node.send_many(receiver, [payload] * now)
        sent += now
        node.pump(0.0)
    node.close(timeout=30)
    # A worker leaves without exit handlers: only term() waits for the queued messages.
    context.term()


def _measure_raw(count: int, size: int, directory: str) -> float:
    spawn = worker_context()
    endpoint = f"ipc://{directory}/relay-raw-{time.monotonic_ns()}.sock"
    ready = spawn.Event()
    relay = spawn.Process(target=_raw_relay, args=(endpoint, count, ready))
    relay.start()
    context: zmq.Context[Any] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sender = None
    try:
        sock.setsockopt(zmq.RCVHWM, 200_000)
        sock.setsockopt(zmq.RCVTIMEO, int(RECEIVE_TIMEOUT * 1000))
        sock.setsockopt(zmq.ROUTING_ID, b"receiver")
        sock.connect(endpoint)
        sock.send_multipart([b"hello", b""])
        if not ready.wait(RECEIVE_TIMEOUT):
            raise BenchError("the raw relay did not start")
        sender = spawn.Process(target=_raw_sender, args=(endpoint, count, size))
        sender.start()
        sock.recv_multipart()
        started = time.perf_counter()
        for _ in range(count - 1):
            sock.recv_multipart()
        elapsed = time.perf_counter() - started
    except zmq.Again as exc:
        raise BenchError(f"raw relay: a message did not arrive within {RECEIVE_TIMEOUT} s") from exc
    finally:
        sock.close(linger=0)
        context.term()
        for process in (relay, sender):
            if process is not None:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
    return (count - 1) / elapsed


def _measure_zmqcomm(count: int, size: int, directory: str, batch: int) -> float:
    spawn = worker_context()
    endpoint = f"ipc://{directory}/relay-zc-{time.monotonic_ns()}.sock"
    ready, stop = spawn.Event(), spawn.Event()
    relay = spawn.Process(target=_zmqcomm_relay, args=(endpoint, directory, ready, stop))
    relay.start()
    sender = None
    try:
        if not ready.wait(RECEIVE_TIMEOUT):
            raise BenchError("the broker did not start")
        identity, trust = agent_identity(directory, 1)
        node = Node(identity, trust, broker=endpoint, options=_DEEP)
        try:
            sender = spawn.Process(
                target=_zmqcomm_sender,
                args=(endpoint, directory, node.agent_id, count, batch),
            )
            sender.start()
            node.receive(timeout=RECEIVE_TIMEOUT)
            received = 1
            started = time.perf_counter()
            while received < count:
                node.receive(timeout=RECEIVE_TIMEOUT)
                received += 1
            elapsed = time.perf_counter() - started
        finally:
            node.close()
    finally:
        stop.set()
        for process in (sender, relay):
            if process is not None:
                process.join(timeout=60)
                if process.is_alive():
                    process.kill()
    return (count - 1) / elapsed


def run(context: BenchContext) -> dict[str, Any]:
    settings, progress = context.settings, context.progress
    count = settings.relay_count
    directory = str(fleet(context.workdir, 2))
    progress.section(NAME, 2 * settings.rounds)
    runs: dict[str, list[float]] = {"raw": [], "zmqcomm": []}
    for round_index in range(settings.rounds):
        for mode in alternating(["raw", "zmqcomm"], round_index):
            if mode == "raw":
                rate = _measure_raw(count, SIZE, directory)
            else:
                rate = _measure_zmqcomm(count, SIZE, directory, BATCH)
            runs[mode].append(rate)
            progress.step(f"{mode} round {round_index + 1}/{settings.rounds}: {rate:,.0f} msg/s")
    medians = {mode: median(values) for mode, values in runs.items()}
    return {
        "title": TITLE,
        "size": SIZE,
        "count": count,
        "batch": BATCH,
        "runs_msg_per_s": runs,
        "msg_per_s": medians,
        "ratio_vs_raw": ratio(medians["zmqcomm"], medians["raw"]),
    }
