"""Fixtures for security tests: trusted identities, an untrusted one, endpoints per transport."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.channel import Established, SecureChannel, Transmit
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.wire.payload import Buffer

TRANSPORTS = ("inproc", "ipc", "tcp")
_names = itertools.count()


@dataclass
class Cast:
    """Alice and Bob trust each other; Mallory is trusted by nobody."""

    alice: Identity
    bob: Identity
    mallory: Identity
    alice_trust: TrustStore
    bob_trust: TrustStore
    audit: MemoryAuditLog


@pytest.fixture(scope="session")
def identities() -> tuple[Identity, Identity, Identity]:
    # Key generation is cheap, but sharing them keeps failure output comparable across tests.
    return Identity.generate("alice"), Identity.generate("bob"), Identity.generate("mallory")


@pytest.fixture
def cast(identities: tuple[Identity, Identity, Identity], tmp_path: Path) -> Cast:
    alice, bob, mallory = identities
    alice_trust = TrustStore(tmp_path / "alice-trust")
    bob_trust = TrustStore(tmp_path / "bob-trust")
    alice_trust.add(bob.public, roles=["agent"])
    bob_trust.add(alice.public, roles=["server"])
    return Cast(alice, bob, mallory, alice_trust, bob_trust, MemoryAuditLog())


@pytest.fixture
def short_dir() -> Iterator[str]:
    # tmp_path can exceed the 107-byte ipc path limit; /tmp stays short.
    directory = tempfile.mkdtemp(prefix="zc-", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=TRANSPORTS)
def endpoint(request: pytest.FixtureRequest, short_dir: str) -> str:
    """A bindable endpoint on each transport (tcp on loopback with port 0)."""
    if request.param == "inproc":
        return f"inproc://security-{os.getpid()}-{next(_names)}"
    if request.param == "ipc":
        return f"ipc://{short_dir}/s{next(_names)}.sock"
    return "tcp://127.0.0.1:0"


def channels(
    cast: Cast, *, policy: RekeyPolicy | None = None, max_failures: int = 16
) -> tuple[SecureChannel, SecureChannel]:
    """An established (alice initiator, bob responder) pair of pure channels."""
    initiator = SecureChannel(
        identity=cast.alice,
        trust=cast.alice_trust,
        random_bytes=os.urandom,
        policy=policy,
        max_failures=max_failures,
    )
    responder = SecureChannel(
        identity=cast.bob,
        trust=cast.bob_trust,
        random_bytes=os.urandom,
        policy=policy,
        max_failures=max_failures,
    )
    handshake(initiator, responder, initiator.connect(now=0.0), now=0.0)
    assert initiator.established and responder.established
    return initiator, responder


def handshake(
    initiator: SecureChannel, responder: SecureChannel, init: Sequence[Buffer], *, now: float
) -> None:
    """Carry a handshake between two channels until both have an Established event."""
    reply = responder.receive(init, now=now)
    assert isinstance(reply[0], Transmit)
    finish = initiator.receive(reply[0].frames, now=now)
    assert isinstance(finish[0], Transmit) and isinstance(finish[1], Established)
    done = responder.receive(finish[0].frames, now=now)
    assert isinstance(done[0], Established)


def establish(router: SecureRouter, *dealers: SecureDealer, timeout: float = 5.0) -> None:
    """Pump a router and dealers that share this thread until every dealer has a session."""
    deadline = router.clock() + timeout
    while not all(dealer.established for dealer in dealers):
        assert router.clock() < deadline, f"no session: {[d.statistics() for d in dealers]}"
        router.pump(0.005)
        for dealer in dealers:
            dealer.pump(0.0)
