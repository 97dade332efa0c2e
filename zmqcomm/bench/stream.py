"""Throughput: one side sends ``count`` messages as fast as it can, the other counts them.

- raw / curve: PUSH -> PULL, one ``send`` and one ``recv`` per message (curve: CURVE on the
  hop, a ZAP handler admitting the one client key);
- plain: zmqcomm's ``BatchingSender`` (msgpack, batch frames, wire header) -> ``WireCodec.decode``;
- encrypted / compressed: a ``SecureDealer``'s batching sender (one ChaCha20-Poly1305 call per
  batch, end to end; compressed: zstd on each batch body when it pays) -> a ``SecureRouter``
  that opens every frame.

The receiver binds and measures; its clock runs from the moment the first message can be read
to the moment the last one is decoded, so process start-up and handshakes are outside the
figure, and every timed message was received and decoded (or opened) inside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import zmq

from zmqcomm.bench.common import (
    DEEP,
    RECEIVE_TIMEOUT,
    WORKER_LINGER_MS,
    BenchError,
    Job,
    Peer,
    codec_for,
    enable_curve_peer,
    endpoint_for,
    payload_pool,
    payload_stream,
    start_curve_server,
    wait_readable,
)
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.transport.batching import BatchingSender
from zmqcomm.transport.sockets import send_frames
from zmqcomm.wire import MessageType

#: Large frames go zero-copy in raw pyzmq (it pays above about 64 KiB).
ZERO_COPY_FROM = 64 * 1024
#: A partial batch waits at most this long before it leaves.
BATCH_DELAY = 0.01


@dataclass(frozen=True)
class StreamRun:
    messages: int
    seconds: float

    @property
    def msg_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def stream_sender(job: Job, shared: zmq.Context[Any] | None = None) -> None:
    """The sending side (a worker process, or a thread on ``shared`` for inproc)."""
    mode, count, size = job.mode, job.count, job.size
    pool = payload_pool(size, job.seed)
    if mode in ("encrypted", "compressed"):
        _send_secure(job, pool, shared)
        return
    context = shared if shared is not None else zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, DEEP.send_hwm)
    if mode == "curve":
        enable_curve_peer(sock, job.keys)
    sock.connect(job.endpoint)
    if mode == "plain":
        sender = BatchingSender(
            lambda frames: send_frames(sock, frames), codec_for(mode), max_delay=BATCH_DELAY
        )
        enqueue, data = sender.send, MessageType.DATA
        for message in payload_stream(pool, count):
            enqueue(data, message)
        sender.close()
    else:
        send, copy = sock.send, size < ZERO_COPY_FROM
        for message in payload_stream(pool, count):
            send(message, copy=copy)
    sock.close(linger=WORKER_LINGER_MS)  # deliver everything before leaving
    if shared is None:
        context.term()


def _send_secure(job: Job, pool: list[bytes], shared: zmq.Context[Any] | None) -> None:
    identity, trust = job.keys.load("client")
    context = shared if shared is not None else zmq.Context()
    with SecureDealer(
        job.endpoint,
        identity=identity,
        trust=trust,
        codec=codec_for(job.mode),
        options=DEEP,
        context=context,
        send_timeout=None,
        connect_timeout=RECEIVE_TIMEOUT,
    ) as dealer:
        # Wait for the receiver's word: what it opened while taking in the handshake was
        # not timed, and a quick run over inproc could send everything by then.
        dealer.receive(timeout=RECEIVE_TIMEOUT)
        sender = dealer.batching_sender(max_delay=BATCH_DELAY)
        enqueue, data = sender.send, MessageType.DATA
        for index, message in enumerate(payload_stream(pool, job.count)):
            enqueue(data, message)
            if index & 0x3FFF == 0:
                dealer.pump()  # lets rekeys and the router's confirmations through
        sender.close()
        dealer.socket.setsockopt(zmq.LINGER, -1)
    if shared is None:
        # A worker leaves without running exit handlers: only term() waits for the queue.
        context.term()


def measure_stream(job: Job) -> StreamRun:
    """One run; inproc runs the sender as a thread of this process, others as a process."""
    if job.mode == "curve" and job.inproc:
        raise BenchError("CURVE does nothing on inproc: libzmq has no security there")
    job = job.bound_to(endpoint_for(job.transport, job.workdir, f"s-{job.mode}"))
    context: zmq.Context[Any] = zmq.Context()
    try:
        if job.mode in ("encrypted", "compressed"):
            return _receive_secure(job, context)
        return _receive_plain(job, context)
    finally:
        context.term()


def _receive_plain(job: Job, context: zmq.Context[Any]) -> StreamRun:
    mode, count = job.mode, job.count
    sock = context.socket(zmq.PULL)
    authenticator = None
    try:
        sock.setsockopt(zmq.RCVHWM, DEEP.receive_hwm)
        sock.setsockopt(zmq.RCVTIMEO, int(RECEIVE_TIMEOUT * 1000))
        if mode == "curve":
            authenticator = start_curve_server(context, sock, job.keys)
        sock.bind(job.endpoint)
        bound = job.bound_to(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        peer = Peer(stream_sender, (bound, context if job.inproc else None), thread=job.inproc)
        try:
            if mode == "plain":
                run = _count_plain(sock, peer, mode, count)
            else:
                run = _count_raw(sock, peer, count, job.size)
        except zmq.Again as exc:
            peer.kill()
            raise BenchError(f"{mode} stream: no message within {RECEIVE_TIMEOUT} s") from exc
        except BaseException:
            peer.kill()  # an interrupt or any other error must not leave the worker behind
            raise
        peer.join(RECEIVE_TIMEOUT)
        return run
    finally:
        sock.close(linger=0)
        if authenticator is not None:
            authenticator.stop()


def _count_raw(sock: zmq.Socket[Any], peer: Peer, count: int, size: int) -> StreamRun:
    recv, copy = sock.recv, size < ZERO_COPY_FROM
    wait_readable(sock, peer)
    started = time.perf_counter()
    for _ in range(count):
        recv(copy=copy)
    return StreamRun(count, time.perf_counter() - started)


def _count_plain(sock: zmq.Socket[Any], peer: Peer, mode: str, count: int) -> StreamRun:
    decode, recv = codec_for(mode).decode, sock.recv_multipart
    wait_readable(sock, peer)
    received = 0
    started = time.perf_counter()
    while received < count:
        received += len(decode(recv()).payloads)
    elapsed = time.perf_counter() - started
    if received != count:
        raise BenchError(f"{mode} stream: received {received} of {count} messages")
    return StreamRun(count, elapsed)


def _receive_secure(job: Job, context: zmq.Context[Any]) -> StreamRun:
    mode, count = job.mode, job.count
    identity, trust = job.keys.load("server")
    with SecureRouter(
        job.endpoint,
        identity=identity,
        trust=trust,
        codec=codec_for(mode),
        options=DEEP,
        context=context,
    ) as router:
        args = (job.bound_to(router.endpoint), context if job.inproc else None)
        peer = Peer(stream_sender, args, thread=job.inproc)
        try:
            while not router.peers:  # the handshake, outside the clock
                peer.check_alive()
                router.pump(0.05)
            router.send(router.peers[0], None)  # go: the sender waits for it
            # Messages the handshake's pump already opened were not timed: leave them out.
            early = sum(len(delivered.message.payloads) for delivered in router.inbox)
            router.inbox.clear()
            if early < count:
                wait_readable(router.socket, peer)
            received = 0
            started = time.perf_counter()
            while early + received < count:
                received += len(router.receive(timeout=RECEIVE_TIMEOUT).message.payloads)
            elapsed = time.perf_counter() - started
        except BaseException:
            peer.kill()
            raise
        peer.join(RECEIVE_TIMEOUT)
        router.socket.setsockopt(zmq.LINGER, 0)
    if early + received != count or received == 0:
        raise BenchError(f"{mode} stream: received {early + received} of {count} messages")
    return StreamRun(received, elapsed)
