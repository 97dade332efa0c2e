"""``zmqcomm doctor``: check that this machine can run zmqcomm, and show what it runs on."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import msgpack
import nacl
import zmq
import zstandard

from zmqcomm import __version__
from zmqcomm.cli.help_format import HelpFormatter
from zmqcomm.errors import ZmqCommError
from zmqcomm.quantiles import nearest_rank
from zmqcomm.transport.endpoints import ipc_temporary_directory
from zmqcomm.transport.sockets import SocketOptions, bind, connect, open_socket, shared_context
from zmqcomm.wire import MessageType, WireCodec

EXAMPLES = """\
examples:
  zmqcomm doctor                 versions and a round trip over inproc, ipc and tcp
  zmqcomm doctor --count 2000    more round trips for steadier latency figures
  zmqcomm doctor --json          the same as one JSON object, for scripts
"""


@dataclass(frozen=True)
class RoundTripReport:
    transport: str
    endpoint: str
    ok: bool
    round_trips: int
    p50_us: float | None
    p99_us: float | None
    error: str | None = None


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "doctor",
        help="show versions and test the wire codec over inproc, ipc and tcp",
        description=(
            "Print the versions of Python, pyzmq/libzmq, PyNaCl, msgpack and zstandard, then "
            "send messages through the zmqcomm wire codec over inproc, ipc and tcp (loopback "
            "only) and report each round trip. Exits 1 if any transport fails."
        ),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--count", type=_positive_int, default=200, help="round trips per transport (default 200)"
    )
    parser.add_argument(
        "--timeout", type=_reply_timeout, default=5.0,
        help="seconds to wait for each reply, above 0 and at most 3600 (default 5)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number is needed, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _reply_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of seconds is needed, got {text!r}") from None
    # NaN fails both comparisons; libzmq takes a whole number of milliseconds.
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 3600 seconds, got {text}")
    return value


def versions() -> dict[str, str]:
    """Versions of everything zmqcomm stands on."""
    libzstd = ".".join(map(str, zstandard.ZSTD_VERSION))
    found = {
        "zmqcomm": __version__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        # PyNaCl bundles libsodium and does not expose its version at run time.
        "pynacl": f"{nacl.__version__} (bundled libsodium)",
        "msgpack": ".".join(map(str, msgpack.version)),
        "zstandard": f"{zstandard.__version__} (libzstd {libzstd})",
    }
    try:
        found["numpy"] = importlib.import_module("numpy").__version__
    except ImportError:
        found["numpy"] = "not installed (tensors disabled)"
    return found


def round_trip(endpoint: str, *, count: int, timeout: float) -> RoundTripReport:
    """Echo ``count`` messages through the codec between two DEALER sockets."""
    transport = endpoint.split("://", 1)[0]
    codec = WireCodec()
    options = SocketOptions(linger=0)
    server = open_socket(zmq.DEALER, options)
    client = open_socket(zmq.DEALER, options)
    timeout_ms = int(timeout * 1000)
    for sock in (server, client):
        sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
    samples: list[float] = []
    try:
        bound = bind(server, endpoint)
        connect(client, bound)
        for index in range(count):
            payload = {"seq": index, "text": "doctor", "blob": os.urandom(16)}
            started = time.perf_counter()
            client.send_multipart(codec.encode(MessageType.REQUEST, payload, counter=index))
            request = codec.decode(server.recv_multipart(copy=True))
            server.send_multipart(codec.encode(MessageType.REPLY, request.payload, counter=index))
            reply = codec.decode(client.recv_multipart(copy=True))
            samples.append(time.perf_counter() - started)
            if reply.payload != payload:
                raise ZmqCommError(f"round trip {index} came back altered")
    except zmq.Again:
        return RoundTripReport(
            transport, endpoint, False, len(samples), None, None, f"no reply within {timeout} s"
        )
    except (ZmqCommError, zmq.ZMQError) as exc:
        return RoundTripReport(transport, endpoint, False, len(samples), None, None, str(exc))
    finally:
        server.close(linger=0)
        client.close(linger=0)
    p50, p99 = latency_micros(samples)
    return RoundTripReport(transport, bound, True, count, p50, p99)


def latency_micros(samples: Sequence[float]) -> tuple[float, float]:
    """The median and the nearest-rank p99 of ``samples`` (seconds, non-empty), in µs to 0.1.

    Of 100 samples the p99 is the 99th smallest, not the 100th: ``micros[int(n * 0.99)]``
    named the maximum for up to 100 samples, so one slow round trip became the p99.
    """
    micros = sorted(sample * 1e6 for sample in samples)
    return round(statistics.median(micros), 1), round(nearest_rank(micros, 0.99), 1)


def run(args: argparse.Namespace) -> int:
    shared_context()
    directory = ipc_temporary_directory("zmqcomm-doctor-")
    try:
        endpoints = [
            f"inproc://zmqcomm-doctor-{os.getpid()}",
            f"ipc://{directory}/doctor.sock",
            "tcp://127.0.0.1:0",
        ]
        reports = [round_trip(ep, count=args.count, timeout=args.timeout) for ep in endpoints]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    found = versions()
    healthy = all(report.ok for report in reports)
    if args.json:
        print(
            json.dumps(
                {"versions": found, "round_trips": [asdict(r) for r in reports], "ok": healthy},
                indent=2,
            )
        )
    else:
        width = max(map(len, found))
        for name, version in found.items():
            print(f"{name:<{width}}  {version}")
        print()
        print(f"round trips through the wire codec ({args.count} each, loopback only):")
        for report in reports:
            if report.ok:
                print(
                    f"  {report.transport:<7} ok    p50 {report.p50_us:8.1f} us   "
                    f"p99 {report.p99_us:8.1f} us   {report.endpoint}"
                )
            else:
                print(f"  {report.transport:<7} FAIL  {report.error}   {report.endpoint}")
        print()
        print("all transports ok" if healthy else "some transports failed (see above)")
    return 0 if healthy else 1
