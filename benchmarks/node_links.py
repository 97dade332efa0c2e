"""What a Node's ``pump`` costs with many direct links: idle, and with one message waiting.

One process, inproc: a hub node dials N listening nodes (each an authenticated session), then
times ``hub.pump(0)`` with nothing to read, and the round of one peer sending a message and
the hub pumping until it has it. A pump looks only at the readable links (and at all of them
every 20 ms, for their timers), so both should grow slowly with N. All nodes share one
ZeroMQ context, whose 1023-socket limit stops this one-process setup near 150 links.

    python benchmarks/node_links.py                  # 1, 16, 64 and 128 links
    python benchmarks/node_links.py --links 64 --calls 5000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from pathlib import Path

from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.node import Node


def measure(links: int, calls: int, directory: Path) -> tuple[float, float]:
    """Microseconds per idle ``pump(0)`` and per one-message delivery, with ``links`` links."""
    hub_identity = Identity.generate("hub")
    hub_trust = TrustStore(directory / "hub")
    peers = []
    for index in range(links):
        identity = Identity.generate(f"peer-{index}")
        hub_trust.add(identity.public, roles=["agent"])
        trust = TrustStore(directory / f"peer-{index}")
        trust.add(hub_identity.public, roles=["agent"])
        peers.append(Node(identity, trust, bind=f"inproc://links-{links}-{index}"))
    hub = Node(hub_identity, hub_trust, bind=f"inproc://links-{links}-hub")
    try:
        for index, peer in enumerate(peers):
            _dial(hub, peer, f"inproc://links-{links}-{index}")
        for _ in range(100):
            hub.pump(0.0)
        started = time.perf_counter()
        for _ in range(calls):
            hub.pump(0.0)
        idle = (time.perf_counter() - started) / calls * 1e6
        sender = peers[len(peers) // 2]
        rounds = max(1, calls // 10)
        started = time.perf_counter()
        for _ in range(rounds):
            sender.send(hub.agent_id, b"x" * 64)
            while not hub.inbox:
                hub.pump(0.001)
            hub.inbox.popleft()
        delivery = (time.perf_counter() - started) / rounds * 1e6
        return idle, delivery
    finally:
        hub.close(timeout=0)
        for peer in peers:
            peer.close(timeout=0)


def _dial(hub: Node, peer: Node, endpoint: str) -> None:
    """``hub.connect(endpoint)`` in a thread while this one pumps ``peer`` to answer it."""
    failure: list[BaseException] = []
    done = threading.Event()

    def dial() -> None:
        try:
            hub.connect(endpoint, timeout=10.0)
        except BaseException as exc:  # re-raised below, in the caller's thread
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=dial)
    thread.start()
    while not done.is_set():
        peer.pump(0.005)
    thread.join()
    if failure:
        raise failure[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, nargs="+", default=[1, 16, 64, 128])
    parser.add_argument("--calls", type=int, default=2000, help="idle pumps timed per count")
    args = parser.parse_args()
    # Each node and link holds a few descriptors (sockets, wake-up fds, monitors).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print("| direct links | idle pump(0) µs | one message delivered µs |")
    print("| ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as directory:
        for links in args.links:
            idle, delivery = measure(links, args.calls, Path(directory) / f"n{links}")
            print(f"| {links} | {idle:.1f} | {delivery:.1f} |", flush=True)


if __name__ == "__main__":
    main()
