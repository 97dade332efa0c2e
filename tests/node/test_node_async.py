"""The Node under asyncio: two nodes as tasks of one event loop, talking through a broker."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmqcomm.broker.server import Broker
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import ReceiveTimeout
from zmqcomm.node import aio

from .support import serving, trusting_node


@pytest.fixture
def broker_endpoint() -> Iterator[tuple[str, list[Identity], Path]]:
    directory = Path(tempfile.mkdtemp(prefix="zc-", dir="/tmp"))
    broker_id, alice, bob = (Identity.generate(n) for n in ("broker", "alice", "bob"))
    broker_trust = TrustStore(directory / "broker")
    for agent in (alice, bob):
        broker_trust.add(agent.public, roles=["agent"])
    broker = Broker([f"ipc://{directory}/b.sock"], identity=broker_id, trust=broker_trust)
    with serving(broker):
        yield broker.endpoints[0], [broker_id, alice, bob], directory


def test_async_request_reply_and_iteration(
    broker_endpoint: tuple[str, list[Identity], Path],
) -> None:
    endpoint, (broker_id, alice, bob), directory = broker_endpoint

    async def scenario() -> tuple[list[object], list[object]]:
        async with (
            trusting_node(alice, [broker_id, bob], directory, endpoint) as a,
            trusting_node(bob, [broker_id, alice], directory, endpoint) as b,
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


def test_a_task_that_stops_waiting_leaves_the_others_their_wake_up(
    broker_endpoint: tuple[str, list[Identity], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks await the same node; one gives up. The other must still be woken by the
    node's sockets, not only by its own timeout (readers are per descriptor, not per task)."""
    endpoint, (broker_id, alice, bob), directory = broker_endpoint
    monkeypatch.setattr(aio, "_TICK", 30.0)  # no tick to hide a lost wake-up

    async def scenario() -> bool:
        async with (
            trusting_node(alice, [broker_id, bob], directory, endpoint) as a,
            trusting_node(bob, [broker_id, alice], directory, endpoint) as b,
        ):
            b.pump(0.0)
            leaving = asyncio.create_task(aio.wait_for_input(b, 30.0))
            staying = asyncio.create_task(aio.wait_for_input(b, 30.0))
            await asyncio.sleep(0.05)
            leaving.cancel()
            await asyncio.sleep(0.05)
            a.send(bob.agent_id, "wake up")
            try:
                await asyncio.wait_for(staying, 5.0)
            except TimeoutError:
                return False
            return True

    assert asyncio.run(scenario())


def test_closing_under_asyncio_lets_other_tasks_run(
    broker_endpoint: tuple[str, list[Identity], Path],
) -> None:
    """A node closing with a message still waiting for a session waits for it up to its
    timeout; under asyncio that wait must not block the other tasks of the loop."""
    endpoint, (broker_id, alice, bob), directory = broker_endpoint

    async def scenario() -> tuple[int, int]:
        ticks = 0

        async def ticking() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(ticking())
        b = trusting_node(bob, [broker_id, alice], directory, endpoint)  # never pumped
        a = trusting_node(alice, [broker_id, bob], directory, endpoint)
        a.send(bob.agent_id, "bob never answers: this waits for a session")
        assert a.unsent() == 1
        before = ticks
        await a.aclose(timeout=0.3)
        ticker.cancel()
        b.close(timeout=0)
        assert a.closed and a.statistics()["dropped"] == {"unsent_at_close": 1}
        return before, ticks

    before, after = asyncio.run(scenario())
    assert after - before >= 5  # a blocking close lets the ticker run not once
