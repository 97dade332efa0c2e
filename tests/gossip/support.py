"""Helpers the gossip driver tests share: raw and secure peer sockets, a bounded step loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.patterns.gossip.driver import GossipAgent
from zmqcomm.secure import SecureDealer
from zmqcomm.transport.sockets import SocketOptions


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


def secure_peer(
    ctx: zmq.Context[Any], identity: Identity, trust: TrustStore, endpoint: str
) -> SecureDealer:
    """A real secure session to an agent under ``identity`` (which ``trust`` must list, and
    which must trust the agent): a peer without the driver. Comes up while the agent steps."""
    return SecureDealer(
        endpoint,
        identity=identity,
        trust=trust,
        context=ctx,
        connect_timeout=None,
        send_timeout=2.0,
        options=SocketOptions(linger=0),
    )


def connect_secure(agent: GossipAgent, dealer: SecureDealer, timeout: float = 4.0) -> bool:
    """Step ``agent`` (and pump ``dealer``) until the dealer's session is up."""

    def up() -> bool:
        dealer.pump(0.0)
        return dealer.established

    return step_until(agent, up, timeout)


def payloads_of(dealer: SecureDealer) -> list[Any]:
    """What has arrived on ``dealer``'s session so far (gossip frames, undecoded)."""
    dealer.pump(0.0)
    out: list[Any] = []
    while dealer.inbox:
        out += dealer.inbox.popleft().message.payloads
    return out
