"""An agent that goes quiet longer than the broker's idle timeout is taken back when it
speaks again: its session was never lost, only its 'online' mark."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from zmqcomm.broker.server import Broker
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.node import Node


def _pump(nodes: list[Node], until: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():  # type: ignore[operator]
        assert time.monotonic() < deadline, [node.statistics() for node in nodes]
        for node in nodes:
            node.pump(0.005)


def test_a_quiet_agent_is_taken_back_when_it_speaks_again() -> None:
    directory = Path(tempfile.mkdtemp(prefix="zc-", dir="/tmp"))
    broker_id, alice, bob = (Identity.generate(n) for n in ("broker", "alice", "bob"))
    trust = TrustStore(directory / "broker")
    for agent in (alice, bob):
        trust.add(agent.public, roles=["agent"])
    broker = Broker(
        [f"ipc://{directory}/b.sock"],
        identity=broker_id,
        trust=trust,
        data=directory / "data",
        idle_timeout=0.3,
    )
    stop = threading.Event()
    thread = threading.Thread(target=broker.serve, kwargs={"until": stop.is_set})
    thread.start()
    try:
        nodes = []
        for me, other in ((alice, bob), (bob, alice)):
            node_trust = TrustStore(directory / me.name)
            node_trust.add(broker_id.public, roles=["broker"])
            node_trust.add(other.public, roles=["agent"])
            nodes.append(Node(me, node_trust, broker=broker.endpoints[0]))
        a, b = nodes
        a.send(bob.agent_id, "before")
        _pump(nodes, lambda: len(b.inbox) == 1)
        time.sleep(1.6)  # nobody pumps: past the idle timeout the broker counts both gone
        assert broker.core.agents == {}
        a.send(bob.agent_id, "after the silence")  # alice speaks: taken back at once
        # Bob has not spoken yet, so the broker bounces it and alice mails it; when bob
        # speaks (a message, or the PING an idle node sends), he is back and gets his mail.
        _pump([a], lambda: a.statistics()["mailed"] == 1)
        assert alice.agent_id in broker.core.agents
        b.send(alice.agent_id, "bob is back")
        _pump(nodes, lambda: len(b.inbox) == 2 and len(a.inbox) == 1)
        assert [m.payload for m in b.inbox] == ["before", "after the silence"]
        assert [m.via for m in b.inbox] == ["session", "mail"]
        assert a.inbox[0].payload == "bob is back"
        a.close()
        b.close()
    finally:
        stop.set()
        thread.join(timeout=10)
        broker.close()
