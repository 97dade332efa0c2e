"""Section ``handshakes``: new authenticated sessions per second.

- ``noise, in process``: a whole Noise XX handshake with certificates and trust checks, both
  sides computed in this process one after the other (so one side's CPU is about half);
- over ipc, per mode, sequentially: open a socket, connect to a server process, send one
  message and wait for its echo, close. raw = no security (the connection cost alone),
  curve = CURVE handshake with a ZAP check, encrypted = a ``SecureDealer`` session with a
  ``SecureRouter`` (Noise XX, certificates, trust store).
"""

from __future__ import annotations

import os
import time
from typing import Any

import zmq

from zmqcomm.bench.common import (
    RECEIVE_TIMEOUT,
    BenchError,
    BenchKeys,
    enable_curve_peer,
    start_curve_server,
    worker_context,
)
from zmqcomm.bench.harness import BenchContext
from zmqcomm.bench.stats import alternating, median, ratio
from zmqcomm.crypto.handshake import Handshake
from zmqcomm.errors import ReceiveTimeout
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.wire import MessageType

NAME = "handshakes"
TITLE = "Handshakes (new authenticated sessions per second)"
MODES = ("raw", "curve", "encrypted")


def noise_in_process(keys: BenchKeys, count: int) -> float:
    """Full handshakes per second, both sides in this process."""
    client, client_trust = keys.load("client")
    server, server_trust = keys.load("server")
    started = time.perf_counter()
    for index in range(count):
        common: dict[str, Any] = {"session_id": index, "epoch": 0, "random_bytes": os.urandom}
        initiator = Handshake(initiator=True, identity=client, trust=client_trust, **common)
        responder = Handshake(initiator=False, identity=server, trust=server_trust, **common)
        reply = responder.respond(initiator.start(), now=time.time())
        responder.accept(initiator.finish(reply, now=time.time()), now=time.time())
    return count / (time.perf_counter() - started)


def _echo_server(mode: str, endpoint: str, keys: BenchKeys, ready: Any, stop: Any) -> None:
    context: zmq.Context[Any] = zmq.Context()
    if mode == "encrypted":
        identity, trust = keys.load("server")
        with SecureRouter(endpoint, identity=identity, trust=trust, context=context) as router:
            ready.set()
            while not stop.is_set():
                try:
                    request = router.receive(timeout=0.05)
                except ReceiveTimeout:
                    continue
                router.send(request.agent_id, b"ok", msg_type=MessageType.REPLY)
            router.socket.setsockopt(zmq.LINGER, 0)
    else:
        sock = context.socket(zmq.ROUTER)
        authenticator = start_curve_server(context, sock, keys) if mode == "curve" else None
        sock.bind(endpoint)
        ready.set()
        while not stop.is_set():
            if sock.poll(50):
                route, *_ = sock.recv_multipart()
                sock.send_multipart([route, b"ok"])
        sock.close(linger=0)
        if authenticator is not None:
            authenticator.stop()
    context.term()


def _connect_once(mode: str, endpoint: str, keys: BenchKeys, context: zmq.Context[Any]) -> None:
    if mode == "encrypted":
        identity, trust = keys.load_cached("client")
        with SecureDealer(
            endpoint,
            identity=identity,
            trust=trust,
            context=context,
            connect_timeout=RECEIVE_TIMEOUT,
        ) as dealer:
            dealer.send(b"hi", msg_type=MessageType.REQUEST)
            dealer.receive(timeout=RECEIVE_TIMEOUT)
            dealer.socket.setsockopt(zmq.LINGER, 0)
        return
    sock = context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.RCVTIMEO, int(RECEIVE_TIMEOUT * 1000))
        if mode == "curve":
            enable_curve_peer(sock, keys)
        sock.connect(endpoint)
        sock.send(b"hi")
        sock.recv()
    except zmq.Again as exc:
        raise BenchError(f"{mode} handshake: no answer within {RECEIVE_TIMEOUT} s") from exc
    finally:
        sock.close(linger=0)


def measure_connects(mode: str, count: int, keys: BenchKeys, workdir: str) -> float:
    """Connect-authenticate-echo-close cycles per second over ipc."""
    spawn = worker_context()
    ready, stop = spawn.Event(), spawn.Event()
    endpoint = f"ipc://{workdir}/hs-{mode}-{time.monotonic_ns()}.sock"
    server = spawn.Process(target=_echo_server, args=(mode, endpoint, keys, ready, stop))
    server.start()
    context: zmq.Context[Any] = zmq.Context()
    try:
        if not ready.wait(RECEIVE_TIMEOUT):
            raise BenchError(f"{mode} handshake server did not start")
        _connect_once(mode, endpoint, keys, context)  # warm-up: imports, first ZAP request
        started = time.perf_counter()
        for _ in range(count):
            _connect_once(mode, endpoint, keys, context)
        elapsed = time.perf_counter() - started
    finally:
        context.term()
        stop.set()
        server.join(timeout=30)
        if server.is_alive():
            server.kill()
    return count / elapsed


def run(context: BenchContext) -> dict[str, Any]:
    settings, progress = context.settings, context.progress
    count = settings.handshakes
    progress.section(NAME, 1 + len(MODES) * settings.rounds)
    noise = noise_in_process(context.keys, count)
    progress.step(f"noise XX in process, both sides: {noise:,.0f} /s")
    runs: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_index in range(settings.rounds):
        for mode in alternating(MODES, round_index):
            rate = measure_connects(mode, count, context.keys, str(context.workdir))
            runs[mode].append(rate)
            progress.step(f"ipc {mode} round {round_index + 1}/{settings.rounds}: {rate:,.0f} /s")
    medians = {mode: median(values) for mode, values in runs.items()}
    return {
        "title": TITLE,
        "count": count,
        "noise_in_process_per_s": noise,
        "runs_per_s": runs,
        "per_s": medians,
        "ratio_vs_raw": {mode: ratio(medians[mode], medians["raw"]) for mode in MODES},
        "ratio_vs_curve": {mode: ratio(medians[mode], medians["curve"]) for mode in MODES},
    }
