"""Helpers the gossip driver tests share: a raw peer socket and a bounded step loop."""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq

from zmqcomm.patterns.gossip.driver import GossipAgent


def raw_dealer(ctx: zmq.Context[zmq.Socket[bytes]], rid: str, endpoint: str) -> zmq.Socket[bytes]:
    """A DEALER claiming routing id ``rid``: a peer (or an impostor) without the driver."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 2000)  # every receive in a test has a timeout
    sock.setsockopt(zmq.ROUTING_ID, rid.encode())
    sock.connect(endpoint)
    return sock


def step_until(agent: GossipAgent, done: Callable[[], bool], timeout: float = 4.0) -> bool:
    """Step ``agent`` until ``done()``; False if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        agent.step(0.02)
    return True
