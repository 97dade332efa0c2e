"""How long a connect takes, and a reconnect after the other end restarts.

- ``SecureDealer``: from construction to an authenticated session with a listening node;
- ``Node.connect``: the same through a node that already has a link of its own;
- reconnect: a node pumping its broker link ``pump(0.05)`` at a time, from a broker restart
  until its hop session is up again.

Each wait used to run out a pump's whole timeout before the handshake started (the
connection event sat on a monitor socket nobody waited on): 50 ms per connect, 52 ms per
reconnect. Figures on this machine are in docs/benchmarks.md.

    python benchmarks/connect_latency.py              # 20 of each
    python benchmarks/connect_latency.py --count 5    # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from zmqcomm.broker.server import Broker
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.node import Node
from zmqcomm.secure import SecureDealer
from zmqcomm.transport.sockets import DEFAULT_SOCKET_OPTIONS

#: Reconnect attempts every 2 ms, so that the figure is the handshake's, not the backoff's.
FAST_RECONNECT = DEFAULT_SOCKET_OPTIONS.with_changes(
    reconnect_interval=0.002, reconnect_interval_max=0.002
)


class Pumping:
    """Pump ``step`` in a thread until stopped (the listening side of a connect)."""

    def __init__(self, step: Callable[[], object]) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(step,), daemon=True)
        self._thread.start()

    def _run(self, step: Callable[[], object]) -> None:
        while not self._stop.is_set():
            step()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _trusting(directory: Path, name: str, others: list[Identity]) -> TrustStore:
    store = TrustStore(directory / name)
    for other in others:
        store.add(other.public, roles=["agent"])
    return store


def _ms(samples: list[float]) -> str:
    return (
        f"median {1e3 * statistics.median(samples):6.1f} ms   "
        f"min {1e3 * min(samples):6.1f}   max {1e3 * max(samples):6.1f}"
    )


def connects(directory: Path, count: int) -> tuple[list[float], list[float]]:
    server, dialler, client = (Identity.generate(n) for n in ("server", "dialler", "client"))
    everyone = [server, dialler, client]
    listening = Node(server, _trusting(directory, "s", everyone), bind=f"ipc://{directory}/n.sock")
    pumping = Pumping(lambda: listening.pump(0.05))
    node = Node(dialler, _trusting(directory, "d", everyone), bind=f"ipc://{directory}/d.sock")
    client_trust = _trusting(directory, "c", everyone)
    by_node, by_dealer = [], []
    try:
        for _ in range(count):
            started = time.perf_counter()
            node.connect(listening.endpoint or "", expect_peer=server.agent_id)
            by_node.append(time.perf_counter() - started)
            started = time.perf_counter()
            with SecureDealer(
                listening.endpoint or "", identity=client, trust=client_trust, connect_timeout=5
            ):
                by_dealer.append(time.perf_counter() - started)
    finally:
        pumping.stop()
        node.close(timeout=0)
        listening.close(timeout=0)
    return by_dealer, by_node


def reconnects(directory: Path, count: int) -> list[float]:
    broker_identity, agent = Identity.generate("broker"), Identity.generate("agent")
    broker_trust = _trusting(directory, "b", [agent])
    endpoint = f"ipc://{directory}/broker.sock"
    node = None
    samples = []
    try:
        for attempt in range(count + 1):
            broker = Broker([endpoint], identity=broker_identity, trust=broker_trust)
            serving = Pumping(lambda broker=broker: broker.step(0.01))  # type: ignore[misc]
            started = time.perf_counter()
            if node is None:
                node = Node(
                    agent,
                    _trusting(directory, "a", [broker_identity]),
                    broker=endpoint,
                    options=FAST_RECONNECT,
                )
            else:
                while not node.statistics()["handshakes"] > attempt:
                    if time.perf_counter() - started > 30:
                        raise SystemExit("the node did not reconnect within 30 s")
                    node.pump(0.05)
                samples.append(time.perf_counter() - started)
            serving.stop()
            broker.close()
            time.sleep(0.05)  # the node's link sees the connection go
    finally:
        if node is not None:
            node.close(timeout=0)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20, help="connects of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zc-connect-", dir="/tmp") as directory:
        by_dealer, by_node = connects(Path(directory), args.count)
        again = reconnects(Path(directory), args.count)
    print(f"SecureDealer connect, ipc:       {_ms(by_dealer)}")
    print(f"Node.connect, ipc:               {_ms(by_node)}")
    print(f"reconnect after broker restart:  {_ms(again)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
