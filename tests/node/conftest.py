"""Fixtures for node tests: identities, trust stores, a broker in a thread, node factories.

Trust layout (docs/node.md): the broker trusts every agent (role ``agent``); each agent trusts
the broker and every other agent (roles per test, ``agent`` by default). Every agent gets its
own trust store directory, so one agent revoking another changes nobody else's view.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from zmqcomm.access import Policy
from zmqcomm.broker.server import Broker
from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.key_files import public_file_bytes
from zmqcomm.crypto.keys import Identity, PublicIdentity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.node import Node

from .support import BrokerThread, NodeThread

AGENT_NAMES = ("alice", "bob", "carol", "dave")
_names = itertools.count()


def write_trust_directory(
    directory: Path, publics: Sequence[PublicIdentity], *, roles: Sequence[str] = ("agent",)
) -> TrustStore:
    """A trust store holding ``publics``, written in one pass.

    ``TrustStore.add`` re-reads the whole directory and fsyncs on every call (about 25 ms per
    entry at a hundred entries); a hundred-agent store is written directly instead, in the
    same file format, and loaded once.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for public in publics:
        data = public_file_bytes(public, roles=sorted(roles), expires=None)
        (directory / f"{public.agent_id}.pub").write_bytes(data)
    return TrustStore(directory)


@dataclass
class Bus:
    """The identities of a broker and its agents, and their trust stores."""

    root: Path
    broker: Identity
    agents: dict[str, Identity]
    broker_trust: TrustStore
    _stores: dict[str, TrustStore] = field(default_factory=dict)

    def id(self, name: str) -> str:
        return self.agents[name].agent_id

    def trust(self, name: str, *, roles: Mapping[str, Sequence[str]] | None = None) -> TrustStore:
        """``name``'s trust store: the broker, and every other agent with ``roles[other]``
        (default ``["agent"]``). Made on first use; later calls return the same store."""
        store = self._stores.get(name)
        if store is not None:
            assert roles is None, f"{name}'s trust store exists already"
            return store
        roles = roles or {}
        store = TrustStore(self.root / "trust" / name)
        store.add(self.broker.public)
        for other, identity in self.agents.items():
            if other != name:
                store.add(identity.public, roles=roles.get(other, ["agent"]))
        self._stores[name] = store
        return store


@pytest.fixture
def short_dir() -> Iterator[str]:
    # tmp_path can exceed the 107-byte ipc path limit; /tmp stays short.
    directory = tempfile.mkdtemp(prefix="zc-", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def ipc_endpoint(short_dir: str) -> Callable[[str], str]:
    """Fresh ipc endpoints in a short directory: ``ipc_endpoint("b")``."""

    def make(label: str) -> str:
        return f"ipc://{short_dir}/{label}{next(_names)}.sock"

    return make


@pytest.fixture
def bus(tmp_path: Path) -> Bus:
    broker = Identity.generate("broker")
    agents = {name: Identity.generate(name) for name in AGENT_NAMES}
    broker_trust = TrustStore(tmp_path / "trust" / "broker")
    for identity in agents.values():
        broker_trust.add(identity.public, roles=["agent"])
    return Bus(tmp_path, broker, agents, broker_trust)


@dataclass
class BrokerFactory:
    """Starts brokers in threads; every one is stopped (and closed) at teardown."""

    bus: Bus
    data_root: Path
    endpoint: Callable[[str], str]
    started: list[BrokerThread] = field(default_factory=list)

    def __call__(
        self,
        *,
        endpoint: str | None = None,
        trust: TrustStore | None = None,
        identity: Identity | None = None,
        policy: Policy | None = None,
        data: bool = True,
        data_dir: Path | None = None,
    ) -> BrokerThread:
        """``data_dir``: an earlier broker's (give its endpoint too) to start it again with
        the mail it stored; by default each broker gets a directory of its own."""
        audit = MemoryAuditLog()
        index = len(self.started)
        if data_dir is None and data:
            data_dir = self.data_root / f"broker-data-{index}"

        def make() -> Broker:
            return Broker(
                [endpoint or self.endpoint("broker")],
                identity=identity or self.bus.broker,
                trust=trust or self.bus.broker_trust,
                policy=policy,
                data=data_dir,
                audit=audit,
            )

        thread = BrokerThread(make, name=f"broker-{index}", audit=audit)
        self.started.append(thread)
        return thread


@pytest.fixture
def start_broker(
    bus: Bus, tmp_path: Path, ipc_endpoint: Callable[[str], str]
) -> Iterator[BrokerFactory]:
    factory = BrokerFactory(bus, tmp_path, ipc_endpoint)
    yield factory
    errors = []
    for thread in factory.started:
        try:
            thread.stop()
        except AssertionError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def broker(start_broker: BrokerFactory) -> BrokerThread:
    """A broker on ipc with a mailbox, serving in a thread."""
    return start_broker()


@pytest.fixture
def make_node() -> Iterator[Callable[..., Node]]:
    """Nodes used from the test's own thread; all closed at teardown."""
    made: list[Node] = []

    def make(identity: Identity, trust: TrustStore, **options: Any) -> Node:
        node = Node(identity, trust, **options)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close(timeout=0)


@pytest.fixture
def spawn_node() -> Iterator[Callable[..., NodeThread]]:
    """Nodes that live in threads of their own; stopped at teardown (their errors re-raised).

    ``spawn_node(identity, trust, request_handler=..., **Node options)``.
    """
    threads: list[NodeThread] = []

    def spawn(
        identity: Identity,
        trust: TrustStore,
        *,
        request_handler: Callable[[Any], object] | None = None,
        **options: Any,
    ) -> NodeThread:
        def make() -> Node:
            node = Node(identity, trust, **options)
            node.request_handler = request_handler
            return node

        thread = NodeThread(make, name=f"node-{identity.name}")
        threads.append(thread)
        return thread

    yield spawn
    errors = []
    for thread in threads:
        try:
            thread.stop()
        except AssertionError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique inproc endpoint names within this process."""

    def make(label: str) -> str:
        return f"inproc://zc-node-{label}-{os.getpid()}-{next(_names)}"

    return make
