"""What the socket scenarios share: throw-away keys, payloads, endpoints and worker processes."""

from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import zmq

from zmqcomm.crypto.key_files import load_identity, save_identity
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import ZmqCommError
from zmqcomm.transport import SocketOptions
from zmqcomm.transport.curve import (
    CurveAuthenticator,
    CurveKeys,
    curve_available,
    enable_curve_client,
    enable_curve_server,
)
from zmqcomm.wire import CompressionConfig, WireCodec

#: Deep queues: the stream runs measure throughput, not back-pressure.
DEEP = SocketOptions(send_hwm=100_000, receive_hwm=100_000)
#: How long any receive in a benchmark waits before the run is declared failed.
RECEIVE_TIMEOUT = 60.0
#: How long a worker's socket may take to deliver what it queued when it closes: bounded, so a
#: worker whose receiver is gone (an interrupted run) still ends.
WORKER_LINGER_MS = int(RECEIVE_TIMEOUT * 1000)
#: Modules the worker processes need, imported once in the fork server.
_PRELOAD = ["zmq", "zmqcomm.bench.stream", "zmqcomm.bench.roundtrip", "zmqcomm.secure"]


class BenchError(ZmqCommError):
    """A measurement could not complete (a peer process died, a message went missing)."""


def worker_context() -> Any:
    """Worker processes: a fork server with the heavy modules preloaded starts each worker in
    milliseconds, and never forks a process that holds a ZeroMQ context."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def codec_for(mode: str) -> WireCodec:
    """The codec of a zmqcomm mode: compression only in ``compressed`` (zstd level 3,
    bodies of 1 KiB and more, kept only when smaller)."""
    if mode == "compressed":
        return WireCodec(compression=CompressionConfig(level=3, threshold=1024))
    return WireCodec(compression=CompressionConfig(enabled=False))


def payload_pool(size: int, seed: int = 0) -> list[bytes]:
    """Distinct payloads of ``size`` bytes: hex text of random bytes, which zstd shrinks to
    about 55-60 %, like typical structured text. Cycling through several of them keeps a batch
    of identical messages from flattering compression."""
    # Payload bytes need not be secret, only different; a seeded generator keeps runs alike.
    rng = random.Random(seed * 1_000_003 + size)
    count = max(2, min(61, (8 * 1024 * 1024) // size))
    return [rng.randbytes((size + 1) // 2).hex().encode()[:size] for _ in range(count)]


def payload_stream(pool: list[bytes], count: int) -> Any:
    """An iterator over ``count`` payloads from ``pool``, cheap enough for the hot loop."""
    return islice(cycle(pool), count)


_LOADED: dict[str, dict[str, tuple[Identity, TrustStore]]] = {}


@dataclass(frozen=True)
class BenchKeys:
    """Throw-away identities (Noise sessions) and CURVE key pairs, in ``directory``."""

    directory: str
    curve_server: CurveKeys | None
    curve_client: CurveKeys | None

    @classmethod
    def create(cls, directory: Path) -> BenchKeys:
        server, client = Identity.generate("server"), Identity.generate("client")
        for identity, peer in ((server, client), (client, server)):
            save_identity(identity, directory / "keys")
            TrustStore(directory / f"trust-{identity.name}").add(peer.public, roles=["bench"])
        if curve_available():
            return cls(str(directory), CurveKeys.generate(), CurveKeys.generate())
        return cls(str(directory), None, None)

    def load(self, name: str) -> tuple[Identity, TrustStore]:
        """``server`` or ``client``: the identity and the trust store listing the other."""
        base = Path(self.directory)
        return load_identity(base / "keys" / f"{name}.key"), TrustStore(base / f"trust-{name}")

    def load_cached(self, name: str) -> tuple[Identity, TrustStore]:
        """:meth:`load`, read from disk once per process (loops that connect many times)."""
        cache = _LOADED.setdefault(self.directory, {})
        if name not in cache:
            cache[name] = self.load(name)
        return cache[name]

    def curve_pair(self) -> tuple[CurveKeys, CurveKeys]:
        if self.curve_server is None or self.curve_client is None:
            raise BenchError("this libzmq has no CURVE support (zmq.has('curve') is False)")
        return self.curve_server, self.curve_client


@dataclass(frozen=True)
class Job:
    """One measurement as both sides need it (picklable, for a worker process). ``count`` is
    messages for a stream and trips for a round trip; ``endpoint`` is set once bound."""

    mode: str
    transport: str
    size: int
    count: int
    keys: BenchKeys
    workdir: str
    seed: int = 1
    endpoint: str = ""

    @property
    def inproc(self) -> bool:
        return self.transport == "inproc"

    def bound_to(self, endpoint: str) -> Job:
        return replace(self, endpoint=endpoint)


def endpoint_for(transport: str, workdir: str, tag: str) -> str:
    """A fresh endpoint to bind; tcp asks for a free loopback port."""
    unique = f"{tag}-{os.getpid()}-{time.monotonic_ns()}"
    if transport == "inproc":
        return f"inproc://{unique}"
    if transport == "ipc":
        return f"ipc://{workdir}/{unique}.sock"
    return "tcp://127.0.0.1:*"


def start_curve_server(
    context: zmq.Context[Any], sock: zmq.Socket[Any], keys: BenchKeys
) -> CurveAuthenticator:
    """CURVE server settings on ``sock`` (before it binds) and a ZAP handler allowing the
    bench client; the caller stops the returned authenticator."""
    server, client = keys.curve_pair()
    authenticator = CurveAuthenticator(context, [client.public])
    authenticator.start()
    enable_curve_server(sock, server)
    return authenticator


def enable_curve_peer(sock: zmq.Socket[Any], keys: BenchKeys) -> None:
    server, client = keys.curve_pair()
    enable_curve_client(sock, client, server.public)


class Peer:
    """The other side of a measurement: a worker process, or a thread for inproc (which
    needs the measuring side's ZeroMQ context)."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], *, thread: bool):
        self._thread: threading.Thread | None = None
        self._process: Any = None
        self._errors: list[BaseException] = []
        if thread:

            def guarded() -> None:
                try:
                    target(*args)
                except BaseException as exc:  # reported by join()
                    self._errors.append(exc)

            self._thread = threading.Thread(target=guarded, daemon=True, name="bench-peer")
            self._thread.start()
        else:
            self._process = worker_context().Process(target=target, args=args, daemon=True)
            _LIVE_PEERS.add(self)  # before start(): an interrupt inside it is still cleaned up
            self._process.start()

    def join(self, timeout: float = 30.0) -> None:
        """Wait for the peer; raise :class:`BenchError` if it failed or hangs."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise BenchError(f"the benchmark peer thread did not finish within {timeout} s")
            if self._errors:
                raise BenchError(f"the benchmark peer failed: {self._errors[0]!r}") from (
                    self._errors[0]
                )
            return
        self._process.join(timeout)
        _LIVE_PEERS.discard(self)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
            raise BenchError(f"the benchmark peer process did not finish within {timeout} s")
        if self._process.exitcode != 0:
            raise BenchError(f"the benchmark peer process exited with {self._process.exitcode}")

    def check_alive(self) -> None:
        """Raise :class:`BenchError` if the peer already failed (instead of waiting on it)."""
        if self._thread is not None:
            if self._errors:
                raise BenchError(f"the benchmark peer failed: {self._errors[0]!r}")
        elif not self._process.is_alive() and self._process.exitcode not in (0, None):
            raise BenchError(f"the benchmark peer process exited with {self._process.exitcode}")

    def kill(self) -> None:
        _LIVE_PEERS.discard(self)
        if self._process is not None and self._process.pid is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)


#: Worker processes started and not yet killed: an interrupt can come between a worker's
#: start and the line that would have kept its Peer, and it must not outlive the run.
_LIVE_PEERS: set[Peer] = set()


def kill_all_peers() -> None:
    """Kill every worker process still running (the harness's last word on the way out)."""
    for peer in list(_LIVE_PEERS):
        peer.kill()


def wait_readable(sock: zmq.Socket[Any], peer: Peer, timeout: float = RECEIVE_TIMEOUT) -> None:
    """Wait for the first message, noticing at once when the peer died before sending it."""
    deadline = time.monotonic() + timeout
    while not sock.poll(100, zmq.POLLIN):
        peer.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"no message from the benchmark peer within {timeout} s")
