"""What it costs to ask a node's tunnels when their next timer is due, and to run the
timers that are, with many peers.

A node asks this on every pump (to cut its wait short, and to run due timers), and a
secure router (a broker) every 5 ms. The channel table answers from an index of its
channels' deadlines; ``scan_deadline`` asks every channel, as ``next_deadline`` did before
2026-11-27. Once a deadline has come, ``on_timer`` visits the channels the index says are
due; until late on 2026-11-27 it visited every channel, as the last column does. Pure cores
only: the sessions are made in memory, through a broker played by this script, so no
socket or other process takes part.

    python benchmarks/tunnel_timers.py                  # 1,000 peers
    python benchmarks/tunnel_timers.py --peers 100 300 1000 3000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

from zmqcomm.crypto.channel_table import ChannelTable
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.node.tunnel import HopMessage, Tunnels
from zmqcomm.wire import Message, MessageType, WireCodec

NOW = 1_800_000_000.0
_codec = WireCodec()


def _as_delivered(sender: str, hop: HopMessage) -> tuple[str, Message] | None:
    """What the broker hands on for a FORWARD: (recipient, DELIVER)."""
    if hop.msg_type != MessageType.FORWARD:
        return None
    frames = _codec.encode(MessageType.DELIVER, hop.payload, topic=sender)
    return hop.topic, _codec.decode(frames)


def _hub_with_sessions(peers: int, directory: Path) -> Tunnels:
    """A hub whose tunnels hold an established session with each of ``peers`` agents."""
    hub = Identity.generate("hub")
    hub_trust = TrustStore(directory / "hub", watch=False)
    agents: dict[str, Tunnels] = {}
    others = [Identity.generate(f"agent{n}") for n in range(peers)]
    for other in others:
        hub_trust.add(other.public, roles=["agent"])
        trust = TrustStore(directory / other.name, watch=False)
        trust.add(hub.public, roles=["agent"])
        agents[other.agent_id] = Tunnels(
            identity=other, trust=trust, random_bytes=os.urandom, now=NOW
        )
    tunnels = Tunnels(identity=hub, trust=hub_trust, random_bytes=os.urandom, now=NOW)
    agents[hub.agent_id] = tunnels
    for other in others:
        hops = [
            (hub.agent_id, hop) for hop in tunnels.send(other.agent_id, 1, "hi", topic="", now=NOW)
        ]
        while hops:
            routed = _as_delivered(*hops.pop(0))
            if routed is not None:
                recipient, message = routed
                out, _ = agents[recipient].on_hop(message, now=NOW)
                hops += [(recipient, hop) for hop in out]
    assert len(tunnels.table.peers) == peers, "every session established"
    return tunnels


def _per_call_us(call: Callable[[], object], number: int) -> float:
    return timeit.timeit(call, number=number) / number * 1e6


def _visit_every_channel(table: ChannelTable) -> None:
    """What ``on_timer`` did whenever any deadline had come (here none is due)."""
    for channel in table.channels.values():
        channel.on_timer(now=NOW + 1)


def _one_due_us(table: ChannelTable, number: int) -> float:
    """``on_timer`` at the earliest deadline: one channel's rekey (or its retry) each call."""
    spent = 0.0
    for _ in range(number):
        deadline = table.next_deadline()
        assert deadline is not None
        started = time.perf_counter()
        table.on_timer(now=deadline)
        spent += time.perf_counter() - started
    return spent / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[1000])
    args = parser.parse_args()
    print(
        "peers  tunnels.next_deadline  table.next_deadline  scan of every channel"
        "  on_timer, one due  every channel's on_timer   (us)"
    )
    for peers in args.peers:
        with tempfile.TemporaryDirectory() as directory:
            tunnels = _hub_with_sessions(peers, Path(directory))
            table = tunnels.table
            assert table.next_deadline() == table.scan_deadline()
            number = max(20, 200_000 // peers)
            every = _per_call_us(partial(_visit_every_channel, table), max(5, number // 50))
            print(
                f"{peers:5}  {_per_call_us(partial(tunnels.next_deadline, NOW), number):21.2f}"
                f"  {_per_call_us(table.next_deadline, number):19.2f}"
                f"  {_per_call_us(table.scan_deadline, number):21.1f}"
                f"  {_one_due_us(table, min(number, 200)):17.1f}"
                f"  {every:24.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
