"""Round-trip latency: send one message, wait for its echo, ``trips`` times.

The measuring side binds and times each trip; the peer (a worker process, or a thread for
inproc) connects and echoes. raw = DEALER/REP; curve = DEALER/REP with CURVE on the hop; plain =
ROUTER/DEALER with every message encoded and decoded by ``WireCodec``; encrypted and
compressed = ``SecureRouter`` and ``SecureDealer``: each message sealed, sent, opened and
answered end to end. A few untimed warm-up trips come first in every mode.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import zmq

from zmqcomm.bench.common import (
    RECEIVE_TIMEOUT,
    WORKER_LINGER_MS,
    BenchError,
    Job,
    Peer,
    codec_for,
    enable_curve_peer,
    endpoint_for,
    payload_pool,
    start_curve_server,
    wait_readable,
)
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.wire import MessageType

WARM_UP = 20


def echo_peer(job: Job, shared: zmq.Context[Any] | None) -> None:
    """Answer ``job.count`` messages with the same payload, then leave."""
    mode, endpoint, trips, keys = job.mode, job.endpoint, job.count, job.keys
    context = shared if shared is not None else zmq.Context()
    if mode in ("encrypted", "compressed"):
        identity, trust = keys.load("client")
        with SecureDealer(
            endpoint,
            identity=identity,
            trust=trust,
            codec=codec_for(mode),
            context=context,
            connect_timeout=RECEIVE_TIMEOUT,
        ) as dealer:
            receive, send, reply = dealer.receive, dealer.send, MessageType.REPLY
            for _ in range(trips):
                send(receive(timeout=RECEIVE_TIMEOUT).message.payload, msg_type=reply)
            dealer.socket.setsockopt(zmq.LINGER, -1)
    else:
        sock = context.socket(zmq.DEALER if mode == "plain" else zmq.REP)
        sock.setsockopt(zmq.RCVTIMEO, int(RECEIVE_TIMEOUT * 1000))
        if mode == "curve":
            enable_curve_peer(sock, keys)
        sock.connect(endpoint)
        if mode == "plain":
            codec = codec_for(mode)
            sock.send_multipart(codec.encode(MessageType.DATA, b"hello"))
            for _ in range(trips):
                request = codec.decode(sock.recv_multipart())
                sock.send_multipart(codec.encode(MessageType.REPLY, request.payload))
        else:
            for _ in range(trips):
                sock.send(sock.recv(copy=False), copy=False)
        sock.close(linger=WORKER_LINGER_MS)
    if shared is None:
        context.term()  # a worker exits without exit handlers: deliver the last reply first


def measure_round_trip(job: Job) -> list[float]:
    """Seconds per trip, ``job.count`` samples (warm-up trips excluded)."""
    if job.mode == "curve" and job.inproc:
        raise BenchError("CURVE does nothing on inproc: libzmq has no security there")
    endpoint = endpoint_for(job.transport, job.workdir, f"r-{job.mode}")
    # The peer answers the warm-up trips too.
    job = replace(job.bound_to(endpoint), count=job.count + WARM_UP)
    context: zmq.Context[Any] = zmq.Context()
    message = payload_pool(job.size, job.seed)[0]
    try:
        if job.mode in ("encrypted", "compressed"):
            samples = _secure_trips(job, message, context)
        else:
            samples = _zmq_trips(job, message, context)
    finally:
        context.term()
    return samples[WARM_UP:]


def _zmq_trips(job: Job, message: bytes, context: zmq.Context[Any]) -> list[float]:
    mode, total = job.mode, job.count
    # Not REQ: with a ZAP handler on its context, a binding REQ as CURVE server never sees
    # the replies (libzmq 4.3.5); a DEALER speaking REQ's envelope does.
    sock = context.socket(zmq.ROUTER if mode == "plain" else zmq.DEALER)
    authenticator = None
    samples: list[float] = []
    clock = time.perf_counter
    try:
        sock.setsockopt(zmq.RCVTIMEO, int(RECEIVE_TIMEOUT * 1000))
        if mode == "curve":
            authenticator = start_curve_server(context, sock, job.keys)
        sock.bind(job.endpoint)
        bound = job.bound_to(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        peer = Peer(echo_peer, (bound, context if job.inproc else None), thread=job.inproc)
        try:
            if mode == "plain":
                codec = codec_for(mode)
                wait_readable(sock, peer)
                route = sock.recv_multipart()[0]  # the peer's hello
                for _ in range(total):
                    started = clock()
                    sock.send_multipart([route, *codec.encode(MessageType.REQUEST, message)])
                    codec.decode(sock.recv_multipart()[1:])
                    samples.append(clock() - started)
            else:
                # The DEALER queues the first request until the peer connects: a warm-up
                # trip. The empty frame is the envelope REP expects.
                send, recv = sock.send_multipart, sock.recv_multipart
                for _ in range(total):
                    started = clock()
                    send([b"", message])
                    recv(copy=False)
                    samples.append(clock() - started)
        except zmq.Again as exc:
            peer.kill()
            raise BenchError(f"{mode} round trip: no answer within {RECEIVE_TIMEOUT} s") from exc
        except BaseException:
            peer.kill()  # an interrupt or any other error must not leave the worker behind
            raise
        peer.join(RECEIVE_TIMEOUT)
    finally:
        sock.close(linger=0)
        if authenticator is not None:
            authenticator.stop()
    return samples


def _secure_trips(job: Job, message: bytes, context: zmq.Context[Any]) -> list[float]:
    mode, total = job.mode, job.count
    identity, trust = job.keys.load("server")
    samples: list[float] = []
    clock = time.perf_counter
    with SecureRouter(
        job.endpoint, identity=identity, trust=trust, codec=codec_for(mode), context=context
    ) as router:
        args = (job.bound_to(router.endpoint), context if job.inproc else None)
        peer = Peer(echo_peer, args, thread=job.inproc)
        try:
            deadline = time.monotonic() + RECEIVE_TIMEOUT
            while not router.peers:
                peer.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"{mode} round trip: the peer never connected")
                router.pump(0.05)
            agent = router.peers[0]
            send, receive, request = router.send, router.receive, MessageType.REQUEST
            for _ in range(total):
                started = clock()
                send(agent, message, msg_type=request)
                receive(timeout=RECEIVE_TIMEOUT)
                samples.append(clock() - started)
        except BaseException:
            peer.kill()
            raise
        peer.join(RECEIVE_TIMEOUT)
        router.socket.setsockopt(zmq.LINGER, 0)
    return samples
