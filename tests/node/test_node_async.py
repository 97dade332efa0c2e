"""The Node under asyncio: two nodes as tasks of one event loop, talking through a broker."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmqcomm.broker.server import Broker
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import ReceiveTimeout
from zmqcomm.node import Node


@pytest.fixture
def broker_endpoint() -> Iterator[tuple[str, list[Identity], Path]]:
    directory = Path(tempfile.mkdtemp(prefix="zc-", dir="/tmp"))
    broker_id, alice, bob = (Identity.generate(n) for n in ("broker", "alice", "bob"))
    broker_trust = TrustStore(directory / "broker")
    for agent in (alice, bob):
        broker_trust.add(agent.public, roles=["agent"])
    broker = Broker([f"ipc://{directory}/b.sock"], identity=broker_id, trust=broker_trust)
    stop = threading.Event()
    thread = threading.Thread(target=broker.serve, kwargs={"until": stop.is_set})
    thread.start()
    try:
        yield broker.endpoints[0], [broker_id, alice, bob], directory
    finally:
        stop.set()
        thread.join(timeout=10)
        broker.close()


def _node(identity: Identity, others: list[Identity], directory: Path, endpoint: str) -> Node:
    trust = TrustStore(directory / identity.name)
    for other in others:
        trust.add(other.public, roles=["agent"])
    return Node(identity, trust, broker=endpoint, connect_timeout=10.0)


def test_async_request_reply_and_iteration(
    broker_endpoint: tuple[str, list[Identity], Path],
) -> None:
    endpoint, (broker_id, alice, bob), directory = broker_endpoint

    async def scenario() -> tuple[list[object], list[object]]:
        async with (
            _node(alice, [broker_id, bob], directory, endpoint) as a,
            _node(bob, [broker_id, alice], directory, endpoint) as b,
        ):
            seen: list[object] = []

            async def serve() -> None:
                async for message in b.amessages(timeout=2.0):
                    if message.is_request:
                        b.reply(message, {"echo": message.payload})
                    else:
                        seen.append(message.payload)

            server = asyncio.create_task(serve())
            a.send(bob.agent_id, "one-way")
            replies = [await a.arequest(bob.agent_id, n, timeout=5.0) for n in range(3)]
            await server
            with pytest.raises(ReceiveTimeout):
                await a.areceive(timeout=0.1)
            return replies, seen

    replies, seen = asyncio.run(scenario())
    assert replies == [{"echo": 0}, {"echo": 1}, {"echo": 2}]
    assert seen == ["one-way"]
