"""Fixtures for transport tests: one endpoint per transport, sockets that never linger."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from zmqcomm.transport import SocketOptions, open_socket

TRANSPORTS = ("inproc", "ipc", "tcp")
_names = itertools.count()


@pytest.fixture
def short_dir() -> Iterator[str]:
    # tmp_path can exceed the 107-byte ipc path limit; /tmp stays short.
    directory = tempfile.mkdtemp(prefix="zc-", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=TRANSPORTS)
def endpoint(request: pytest.FixtureRequest, short_dir: str) -> str:
    """A bindable endpoint on each transport (tcp with port 0)."""
    transport = request.param
    if transport == "inproc":
        return f"inproc://test-{next(_names)}"
    if transport == "ipc":
        return f"ipc://{short_dir}/s{next(_names)}.sock"
    return "tcp://127.0.0.1:0"


@pytest.fixture
def make_socket() -> Iterator[Callable[..., zmq.Socket[Any]]]:
    opened: list[zmq.Socket[Any]] = []

    def make(kind: int, **options: Any) -> zmq.Socket[Any]:
        sock = open_socket(kind, SocketOptions(linger=0, **options))
        sock.setsockopt(zmq.RCVTIMEO, 5000)  # a receive in a test never hangs
        opened.append(sock)
        return sock

    yield make
    for sock in opened:
        sock.close(linger=0)
