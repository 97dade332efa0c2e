"""The load generator connects to every replica at once (zmqcomm/patterns/pbft/loadgen.py):
stand-in replicas are bare SecureRouters on ipc in a temporary directory, served by a thread
the test controls."""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import ConnectError, UsageError
from zmqcomm.patterns.pbft.loadgen import LoadGenerator
from zmqcomm.secure import SecureRouter

N = 4


@dataclass
class Replicas:
    directory: Path
    client: Identity
    client_trust: TrustStore
    identities: list[Identity]
    routers: list[SecureRouter]

    @property
    def endpoints(self) -> list[str]:
        return [router.endpoint for router in self.routers]

    @property
    def agents(self) -> list[str]:
        return [identity.agent_id for identity in self.identities]

    def load(self, **options: object) -> LoadGenerator:
        return LoadGenerator(
            self.client,
            self.client_trust,
            endpoints=self.endpoints,
            replica_agents=self.agents,
            clients=2,
            **options,  # type: ignore[arg-type]
        )


@pytest.fixture
def replicas() -> Iterator[Replicas]:
    directory = Path(tempfile.mkdtemp(prefix="zc-lg-", dir="/tmp"))  # short ipc paths
    client = Identity.generate("loadgen")
    identities = [Identity.generate(f"replica-{r}") for r in range(N)]
    client_trust = TrustStore(directory / "trust-client")
    replica_trust = TrustStore(directory / "trust-replicas")
    replica_trust.add(client.public, roles=["client"])
    routers: list[SecureRouter] = []
    try:
        for r, identity in enumerate(identities):
            client_trust.add(identity.public, roles=["replica"])
            routers.append(
                SecureRouter(f"ipc://{directory}/r{r}", identity=identity, trust=replica_trust)
            )
        yield Replicas(directory, client, client_trust, identities, routers)
    finally:
        for router in routers:
            router.close()
        shutil.rmtree(directory, ignore_errors=True)


def serve(
    routers: list[SecureRouter], stop: threading.Event, hold: Callable[[int], bool]
) -> threading.Thread:
    """Pump ``routers`` in a thread until ``stop``; router r is left alone while
    ``hold(r)``."""

    def run() -> None:
        while not stop.is_set():
            for r, router in enumerate(routers):
                if not hold(r):
                    router.pump(0.002)

    thread = threading.Thread(target=run, name="replicas")
    thread.start()
    return thread


def test_replicas_answer_together_while_the_first_is_still_silent(replicas: Replicas) -> None:
    """Replica 0 answers only once the other three have finished their handshakes. One
    replica at a time, the load generator waited for replica 0 alone and never read the
    others' answers, so this could never connect."""
    client = replicas.client.agent_id
    others = replicas.routers[1:]
    released = threading.Event()

    def hold(r: int) -> bool:
        if r == 0 and not released.is_set():
            if not all(client in router.peers for router in others):
                return True
            released.set()
        return False

    stop = threading.Event()
    thread = serve(replicas.routers, stop, hold)
    try:
        with replicas.load(connect_timeout=10.0) as load:
            assert released.is_set()
            assert all(dealer.established for dealer in load.dealers)
            assert [dealer.peer for dealer in load.dealers] == replicas.agents
    finally:
        stop.set()
        thread.join()


def test_a_replica_that_never_answers_is_named_in_the_connect_error(replicas: Replicas) -> None:
    silent = replicas.endpoints[2]
    stop = threading.Event()
    thread = serve(replicas.routers, stop, lambda r: r == 2)
    try:
        expected = (
            f"no authenticated session with the router at {silent} within 0.5 s: nothing "
            "was refused here: is the router running, and does its trust store hold this "
            f"identity's .pub ({replicas.client.agent_id})?"
        )
        with pytest.raises(ConnectError, match=f"^{re.escape(expected)}$"):
            replicas.load(connect_timeout=0.5)
    finally:
        stop.set()
        thread.join()


def test_every_replica_that_never_answers_is_named(replicas: Replicas) -> None:
    silent = [replicas.endpoints[1], replicas.endpoints[3]]
    stop = threading.Event()
    thread = serve(replicas.routers, stop, lambda r: r in (1, 3))
    try:
        with pytest.raises(ConnectError) as info:
            replicas.load(connect_timeout=0.5)
    finally:
        stop.set()
        thread.join()
    message = str(info.value)
    assert message.startswith("no authenticated session with 2 of 4 replicas within 0.5 s: ")
    assert [message.count(f"the router at {endpoint}: ") for endpoint in silent] == [1, 1]
    assert replicas.endpoints[0] not in message and replicas.endpoints[2] not in message


def test_a_connect_timeout_that_is_no_duration_is_refused_before_any_socket(
    replicas: Replicas,
) -> None:
    with pytest.raises(UsageError, match="connect_timeout"):
        replicas.load(connect_timeout=float("nan"))
