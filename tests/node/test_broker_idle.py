"""An agent that goes quiet longer than the broker's idle timeout is taken back when it
speaks again: its session was never lost, only its 'online' mark."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from zmqcomm.broker.server import Broker
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore

from .support import pump_until, serving, trusting_node


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
    with serving(broker):
        endpoint = broker.endpoints[0]
        a = trusting_node(alice, [broker_id, bob], directory, endpoint)
        b = trusting_node(bob, [broker_id, alice], directory, endpoint)
        nodes = [a, b]
        a.send(bob.agent_id, "before")
        pump_until(nodes, lambda: len(b.inbox) == 1)
        time.sleep(1.6)  # nobody pumps: past the idle timeout the broker counts both gone
        assert broker.core.agents == {}
        a.send(bob.agent_id, "after the silence")  # alice speaks: taken back at once
        # Bob has not spoken yet, so the broker bounces it and alice mails it; when bob
        # speaks (a message, or the PING an idle node sends), he is back and gets his mail.
        pump_until([a], lambda: a.statistics()["mailed"] == 1)
        assert alice.agent_id in broker.core.agents
        b.send(alice.agent_id, "bob is back")
        pump_until(nodes, lambda: len(b.inbox) == 2 and len(a.inbox) == 1)
        assert [m.payload for m in b.inbox] == ["before", "after the silence"]
        assert [m.via for m in b.inbox] == ["session", "mail"]
        assert a.inbox[0].payload == "bob is back"
        a.close()
        b.close()
