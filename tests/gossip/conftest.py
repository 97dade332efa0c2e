"""Fixtures shared by the gossip tests: a ZeroMQ context and a trust store of their own."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest
import zmq

from zmqcomm.crypto.trust import TrustStore


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.term()


@pytest.fixture
def store() -> Iterator[TrustStore]:
    with tempfile.TemporaryDirectory() as directory:
        yield TrustStore(directory)
